"""Runs in the judge's sandbox (standard library only; never imported by plaudit): holds the
tests, calls the program (in its own sandbox, see exec_program.py) through stand-ins for its
functions, compares what comes back here, and writes the report. The program never sees
this process: only the calls' arguments reach it, and only plain data comes back.

stdin: {"style": "asserts" | "check" | "calls", "tests": str, "entry_point": str | None,
        "context": str | None, "calls": [{"args": [...], "output": ...}], "fn_name": str | None,
        "test_s": float, "float_tolerance": float | None}
argv:  result_fd calls_fd answers_fd
report: {"loaded": bool, "error": str | None, "tests": [{"name": str, "passed": bool, "message": str | None}]}
"""
import ast
import builtins
import json
import math
import os
import select
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))  # /code in the sandbox
sys.path.insert(0, HERE)
import plain_data  # noqa: E402

MAX_ANSWER_BYTES = 16 << 20
GRACE_S = 1.0  # the program times its own calls out; past this more, it is taken as gone


class TestTimeout(BaseException):
    pass


class PlainDataError(TypeError):
    """A value that cannot cross the sandbox wall as plain data."""


class ProgramGone(RuntimeError):
    """The program exited, stopped answering or broke the protocol: no later test can pass."""


def _alarm(signum, frame):
    raise TestTimeout()


def _describe(error):
    return f"{type(error).__name__}: {error}"[:300]


class Link:
    """The judge's end of the line to the program."""

    def __init__(self, calls_fd, answers_fd, seconds):
        self.calls, self.answers, self.seconds = calls_fd, answers_fd, seconds
        self.buffer, self.next_id, self.gone = b"", 0, None

    def _line(self, deadline):
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.answers], [], [], left)[0]:
                raise self._lose(f"the program stopped answering (over {self.seconds + GRACE_S:g} s)")
            chunk = os.read(self.answers, 1 << 16)
            if not chunk:
                raise self._lose("the program exited")
            self.buffer += chunk
            if len(self.buffer) > MAX_ANSWER_BYTES:
                raise self._lose(f"the program answered with over {MAX_ANSWER_BYTES >> 20} MB")
        line, self.buffer = self.buffer.split(b"\n", 1)
        try:
            return json.loads(line, parse_constant=plain_data.reject_constant)
        except (ValueError, RecursionError, plain_data.NotPlain):
            raise self._lose("the program's answer is not well formed") from None

    def _lose(self, why):
        self.gone = why
        return ProgramGone(why)

    def hello(self):
        answer = self._line(time.monotonic() + self.seconds + GRACE_S)
        if not isinstance(answer, dict):
            raise self._lose("the program's answer is not well formed")
        return answer

    def ask(self, op, target, **fields):
        if self.gone:
            raise ProgramGone(self.gone)
        self.next_id += 1
        request = {"id": self.next_id, "op": op, "target": target, **fields}
        try:
            os.write(self.calls, (json.dumps(request) + "\n").encode())
        except BrokenPipeError:
            raise self._lose("the program exited") from None
        deadline = time.monotonic() + self.seconds + GRACE_S
        while True:
            answer = self._line(deadline)
            if isinstance(answer, dict) and answer.get("id") == self.next_id:
                return self._result(answer)

    def _result(self, answer):
        if answer.get("timeout"):
            raise TestTimeout()
        if "raised" in answer:
            raised, message = str(answer["raised"]), str(answer.get("message", ""))
            if raised == "NotPlain":
                raise PlainDataError(f"the program's value cannot cross as plain data: {message}")
            known = getattr(builtins, raised, None)  # a builtin exception is rebuilt here, so that
            if isinstance(known, type) and issubclass(known, Exception):  # `except ValueError` still works
                raise known(message)
            raise RuntimeError(f"{raised}: {message}")
        if "handle" in answer and type(answer["handle"]) is int:
            return Remote(self, answer["handle"], str(answer.get("type", "object")))
        if "value" not in answer:
            raise self._lose("the program's answer is not well formed")
        try:
            return plain_data.untag(answer["value"])
        except (plain_data.NotPlain, RecursionError) as e:
            raise self._lose(f"the program's answer is not plain data: {e}") from None


def _argument(value):
    if isinstance(value, Remote):
        return object.__getattribute__(value, "_target")
    raise PlainDataError(f"an argument of type {type(value).__name__} cannot cross to the program")


class Remote:
    """A function or object that lives in the program's sandbox: it can be called and its
    attributes read; it has no value here (no truth, no equality, no length) because only
    plain data crosses."""

    __slots__ = ("_link", "_target", "_label")

    def __init__(self, link, target, label):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_label", label)

    def __call__(self, *args, **kwargs):
        link = object.__getattribute__(self, "_link")
        return link.ask("call", object.__getattribute__(self, "_target"),
                        args=plain_data.tag(list(args), _argument), kwargs=plain_data.tag(kwargs, _argument))

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        link = object.__getattribute__(self, "_link")
        return link.ask("getattr", object.__getattribute__(self, "_target"), name=name)

    def _no_value(self, *args):
        raise PlainDataError(f"the program returned a {object.__getattribute__(self, '_label')} object, which is not "
                             "plain data (numbers, strings, booleans, None, lists, tuples, dicts, sets)")

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __len__ = __iter__ = __contains__ = _no_value
    __hash__ = object.__hash__

    def __repr__(self):
        return f"<{object.__getattribute__(self, '_label')} in the program>"


def _statements(source):
    """Setup code and the tests: each top-level assert is a test, the rest is setup."""
    tree = ast.parse(source)
    setup, tests = [], []
    for node in tree.body:
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        (tests if isinstance(node, ast.Assert) else setup).append(text)
    return "\n".join(setup), [(f"assert #{i + 1}", t) for i, t in enumerate(tests)]


def _check_body(source):
    """HumanEval's `check(candidate)`: the module's other code is setup, each statement of
    check's body that asserts (an assert, or a loop of them) a test, run with `candidate` bound."""
    tree = ast.parse(source)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("the tests define no check(candidate) function")
    setup = "\n".join(ast.get_source_segment(source, n) or ast.unparse(n) for n in tree.body if n is not check)
    tests, pre = [], []
    for node in check.body:
        text = ast.unparse(node)
        if any(isinstance(inner, ast.Assert) for inner in ast.walk(node)):
            tests.append((f"assert #{len(tests) + 1}", "\n".join(pre + [text])))
        else:
            pre.append(text)  # a helper line inside check(): run again before every later assert
    return setup, tests


def _timed(work, seconds, grace=0.0):
    signal.setitimer(signal.ITIMER_REAL, seconds + grace)
    try:
        work()
        return True, None
    except TestTimeout:
        return False, f"timeout: over {seconds:g} s"
    except MemoryError:
        return False, "memory: MemoryError"
    except BaseException as e:  # noqa: BLE001  a test's failure, whatever it raised
        return False, _describe(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _normal(value):
    """Tuples as lists, as JSON has them (a function-call case's expected value is JSON)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value


def _same(got, expected, tolerance):
    if tolerance is not None and type(got) in (int, float) and type(expected) in (int, float) \
            and not isinstance(got, bool) and not isinstance(expected, bool):
        return math.isclose(got, expected, rel_tol=tolerance, abs_tol=tolerance)
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(_same(g, e, tolerance) for g, e in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(_same(got[k], expected[k], tolerance) for k in got)
    numbers = (int, float)
    if type(got) in numbers and type(expected) in numbers:
        return got == expected
    return type(got) is type(expected) and got == expected


def _call_tests(job, namespace):
    """Function-call cases (APPS/TACO `fn_name`): call it with the case's arguments and compare
    to its output (APPS wraps an output in a one-element list; either form is accepted)."""
    name = job["fn_name"]
    if name in namespace and isinstance(namespace[name], Remote):
        target = namespace[name]
    elif isinstance(namespace.get("Solution"), Remote):  # LeetCode's shape
        target = None
    else:
        raise ValueError(f"the program defines no {name!r} (the function the cases call)")
    tests = []
    for i, case in enumerate(job["calls"]):
        def test(case=case):
            function = target if target is not None else getattr(namespace["Solution"](), name)
            got = function(*case["args"])
            if isinstance(got, Remote):
                got._no_value()
            got = _normal(got)
            expected = _normal(case["output"])
            tolerance = job.get("float_tolerance")
            if not (_same(got, expected, tolerance) or (isinstance(expected, list) and len(expected) == 1
                                                       and _same(got, expected[0], tolerance))):
                raise AssertionError(f"expected {json.dumps(expected)[:80]}, got {json.dumps(got)[:80]}")
        tests.append((f"call #{i + 1}", test))
    return tests


def main():
    result_fd, calls_fd, answers_fd = (int(a) for a in sys.argv[1:4])
    job = json.loads(sys.stdin.read())
    signal.signal(signal.SIGALRM, _alarm)
    seconds = job["test_s"]
    link = Link(calls_fd, answers_fd, seconds)
    report = {"loaded": False, "error": None, "tests": []}
    try:
        report["tests"], report["loaded"], report["error"] = _judge(job, link, seconds)
    except SyntaxError as e:
        report["error"] = f"the tests cannot be parsed: {_describe(e)}"
    except (ValueError, ProgramGone) as e:
        report["error"] = str(e)
    with os.fdopen(result_fd, "w") as channel:
        channel.write(json.dumps(report))
    os._exit(0)


def _judge(job, link, seconds):
    hello = link.hello()
    if "names" not in hello:
        if isinstance(hello.get("error"), str):
            return [], False, f"the program failed to load: {hello['error']}"
        return [], False, "the program did not load: its first answer was not the loader's"
    namespace = {"__name__": "tests", "__builtins__": builtins}
    trusted = set()
    if job.get("context"):  # the task's own code (HumanEval's prompt): its helpers are not the program's
        ok, error = _timed(lambda: exec(compile(job["context"], "<context>", "exec"), namespace), seconds)
        trusted = set(namespace) if ok else set()
    entry = job.get("entry_point")
    for name in hello["names"] if isinstance(hello["names"], list) else []:
        if isinstance(name, str) and not hasattr(builtins, name) and (name not in trusted or name == entry):
            namespace[name] = Remote(link, name, "function")
    if job["style"] == "calls":
        tests = _call_tests(job, namespace)
    else:
        setup, sources = (_check_body if job["style"] == "check" else _statements)(job["tests"])
        ok, error = _timed(lambda: exec(compile(setup, "<tests>", "exec"), namespace), seconds)
        if not ok:
            return [], True, f"the tests' setup failed: {error}"
        if job["style"] == "check":
            if not isinstance(namespace.get(entry), Remote):
                return [], True, f"the program defines no {entry!r} (the entry point)"
            namespace["candidate"] = namespace[entry]
        tests = [(name, lambda code=code: exec(compile(code, "<test>", "exec"), namespace)) for name, code in sources]
    outcomes = []
    for name, test in tests:
        passed, message = _timed(test, seconds, GRACE_S) if not link.gone else (False, link.gone)
        outcomes.append({"name": name, "passed": passed, "message": message})
    return outcomes, True, None


if __name__ == "__main__":
    main()
