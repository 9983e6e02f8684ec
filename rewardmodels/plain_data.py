"""Plain data across the sandbox wall (standard library only: it is copied into both the
program's sandbox and its judge's). Only None, bool, int, float, str, bytes, complex, list,
tuple, dict, set and frozenset cross, as tagged JSON; the receiving side builds its own
values from it, so nothing of the sender (a class, an `__eq__`) arrives with them.

    tuple -> {"$tuple": [...]}    set -> {"$set": [...]}    frozenset -> {"$frozenset": [...]}
    dict  -> {"$dict": [[k, v], ...]}    bytes -> {"$bytes": "<base64>"}
    nan, inf -> {"$float": "nan"}    complex -> {"$complex": [re, im]}
    a handle on a remote object (only where the receiver allows them) -> {"$handle": n}
"""
import base64
import math

MAX_DEPTH = 200


class NotPlain(TypeError):
    """A value that is not plain data, or a message that is not well formed."""


def tag(value, handle=None, depth=0):
    """The JSON-ready form of `value`; `handle(value)` names what is not plain, or it raises."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"$float": repr(value)}
    if kind is list:
        return [tag(v, handle, depth + 1) for v in value]
    if kind in (tuple, set, frozenset):
        return {f"${kind.__name__}": [tag(v, handle, depth + 1) for v in value]}
    if kind is dict:
        return {"$dict": [[tag(k, handle, depth + 1), tag(v, handle, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode()}
    if kind is complex:
        return {"$complex": [tag(value.real), tag(value.imag)]}
    if handle is not None:
        return {"$handle": handle(value)}
    raise NotPlain(f"a value of type {kind.__name__} is not plain data")


def untag(data, handle=None, depth=0):
    """The value a tagged form stands for; `handle(n)` resolves handles where they are allowed."""
    if depth > MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    kind = type(data)
    if data is None or kind in (bool, int, str, float):
        return data
    if kind is list:
        return [untag(v, handle, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise NotPlain("a malformed value")
    (name, inner), = data.items()
    try:
        if name in ("$tuple", "$set", "$frozenset") and type(inner) is list:
            items = [untag(v, handle, depth + 1) for v in inner]
            return {"$tuple": tuple, "$set": set, "$frozenset": frozenset}[name](items)
        if name == "$dict" and type(inner) is list and all(type(p) is list and len(p) == 2 for p in inner):
            return {untag(k, handle, depth + 1): untag(v, handle, depth + 1) for k, v in inner}
        if name == "$bytes" and type(inner) is str:
            return base64.b64decode(inner, validate=True)
        if name == "$float" and inner in ("nan", "inf", "-inf"):
            return float(inner)
        if name == "$complex" and type(inner) is list and len(inner) == 2:
            return complex(*(untag(v, None, depth + 1) for v in inner))
        if name == "$handle" and handle is not None and type(inner) is int:
            return handle(inner)
    except (TypeError, ValueError) as e:  # an unhashable set member, bad base64, a complex of strings
        raise NotPlain(f"a malformed {name[1:]}: {e}") from None
    raise NotPlain(f"a malformed value ({name})")


def reject_constant(name):
    """For json.loads: NaN and Infinity arrive tagged, never as bare constants."""
    raise NotPlain(f"a bare {name}")
