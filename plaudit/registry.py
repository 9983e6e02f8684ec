"""Registries name what they hold as `module:attr` (imported when first used, so a registry
line costs nothing until its kind is asked for): the scorer kinds, the judge methods and the
batch job kinds all resolve through here."""
from __future__ import annotations

import importlib
from typing import Any


def resolve(spec: str) -> Any:
    """The attribute a `module:attr` line names, its module imported now."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)
