"""Runs inside the sandbox (standard library only; never imported by plaudit): loads the
candidate program, runs each test, and reports one outcome per test on fd 3, away from the
program's own output.

stdin: {"program": str, "style": "asserts" | "check" | "io", "tests": str, "entry_point": str | None,
        "cases": [{"input": str, "output": str}], "test_s": float}
fd 3:  {"loaded": bool, "error": str | None, "tests": [{"name": str, "passed": bool, "message": str | None}]}
"""
import ast
import json
import os
import signal
import subprocess
import sys


class TestTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise TestTimeout()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:300]


def _statements(source: str) -> tuple[str, list[tuple[str, str]]]:
    """Setup code and the tests: each top-level assert is a test, the rest is setup."""
    tree = ast.parse(source)
    setup, tests = [], []
    for node in tree.body:
        text = ast.get_source_segment(source, node) or ast.unparse(node)
        (tests if isinstance(node, ast.Assert) else setup).append(text)
    return "\n".join(setup), [(f"assert #{i + 1}", t) for i, t in enumerate(tests)]


def _check_body(source: str) -> tuple[str, list[tuple[str, str]]]:
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


def _run_test(code: str, namespace: dict, seconds: float) -> tuple[bool, str | None]:
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        exec(compile(code, "<test>", "exec"), namespace)
        return True, None
    except TestTimeout:
        return False, f"timeout: over {seconds:g} s"
    except MemoryError:
        return False, "memory: MemoryError"
    except BaseException as e:  # noqa: BLE001  a test's failure, whatever it raised
        return False, _describe(e)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _io_cases(job: dict) -> list[dict]:
    with open("program.py", "w") as f:  # in the working directory: the sandbox's /work
        f.write(job["program"])
    outcomes = []
    for i, case in enumerate(job["cases"]):
        try:
            done = subprocess.run([sys.executable, "-I", "-B", f.name], input=case["input"].encode(),
                                  capture_output=True, timeout=job["test_s"])
            got = done.stdout.decode(errors="replace")
            passed = done.returncode == 0 and got.split() == case["output"].split()
            failure = (f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-200:]}" if done.returncode
                       else f"expected {case['output'][:80]!r}, got {got[:80]!r}")
            message = None if passed else failure
        except subprocess.TimeoutExpired:
            passed, message = False, f"timeout: over {job['test_s']:g} s"
        outcomes.append({"name": f"case #{i + 1}", "passed": passed, "message": message})
    return outcomes


def main() -> None:
    channel = os.fdopen(int(sys.argv[1]) if len(sys.argv) > 1 else 3, "w")
    job = json.loads(sys.stdin.read())
    signal.signal(signal.SIGALRM, _alarm)
    report = {"loaded": False, "error": None, "tests": []}
    try:
        if job["style"] == "io":
            report["loaded"] = True
            report["tests"] = _io_cases(job)
        else:
            setup, tests = (_check_body if job["style"] == "check" else _statements)(job["tests"])
            namespace = {"__name__": "candidate", "__builtins__": __builtins__}
            loaded, error = _run_test(job["program"], namespace, job["test_s"])
            if not loaded:
                report["error"] = f"the program failed to load: {error}"
            else:
                report["loaded"] = True
                ok, error = _run_test(setup, namespace, job["test_s"])
                if not ok:
                    report["error"] = f"the tests' setup failed: {error}"
                else:
                    if job["style"] == "check":
                        entry = job.get("entry_point")
                        if entry not in namespace:
                            report["error"] = f"the program defines no {entry!r} (the entry point)"
                            tests = []
                        namespace["candidate"] = namespace.get(entry)
                    for name, code in tests:
                        passed, message = _run_test(code, namespace, job["test_s"])
                        report["tests"].append({"name": name, "passed": passed, "message": message})
    except SyntaxError as e:
        report["error"] = f"the tests cannot be parsed: {_describe(e)}"
    except ValueError as e:
        report["error"] = str(e)
    channel.write(json.dumps(report))
    channel.flush()
    os._exit(0)  # nothing the program registered (atexit, threads) runs after the report


if __name__ == "__main__":
    main()
