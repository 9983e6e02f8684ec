"""Runs in the program's sandbox, with the candidate (standard library only; never imported by
plaudit): loads /code/main.py and answers its judge's calls, one JSON line each way, on the two
descriptors it is given. It holds no test, no expected value and no report: the judge, in
another sandbox, has them. Whatever the candidate does to this process can only change the
answers it gives, and those arrive as plain data.

argv: calls_fd answers_fd seconds_per_call
from the judge: {"id": n, "op": "call", "target": name | handle, "args": [...], "kwargs": {...}}
                {"id": n, "op": "getattr", "target": handle, "name": str}
to the judge:   {"names": [...]} or {"error": str} once, when loaded; then per call
                {"id": n, "value": tagged} | {"id": n, "handle": h, "type": str}
                | {"id": n, "raised": type name, "message": str} | {"id": n, "timeout": true}
"""
import json
import os
import signal
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))  # /code in the sandbox
sys.path.insert(0, HERE)
import plain_data  # noqa: E402

PROGRAM_MODULE = "candidate"


class CallTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise CallTimeout()


def _describe(error):
    return f"{type(error).__name__}: {error}"[:300]


def main():
    calls = os.fdopen(int(sys.argv[1]), "rb")
    answers = os.fdopen(int(sys.argv[2]), "w")
    seconds = float(sys.argv[3])
    signal.signal(signal.SIGALRM, _alarm)
    handles = []

    def send(message):
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    def timed(work):
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            return work()
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def handle_of(value):
        handles.append(value)
        return len(handles) - 1

    def remote(value):
        """What stays here, for the judge to call: the program's functions and objects."""
        return callable(value) or getattr(type(value), "__module__", None) == PROGRAM_MODULE

    namespace = {"__name__": PROGRAM_MODULE, "__builtins__": __builtins__}
    try:
        with open(os.path.join(HERE, "main.py")) as f:
            source = f.read()
        timed(lambda: exec(compile(source, "main.py", "exec"), namespace))
    except CallTimeout:
        send({"error": f"timeout: loading took over {seconds:g} s"})
        return
    except BaseException as e:  # noqa: BLE001  the program's failure, whatever it raised
        send({"error": _describe(e)})
        return
    send({"names": [n for n, v in namespace.items()
                    if not n.startswith("__") and callable(v) and not isinstance(v, types.ModuleType)]})
    for line in calls:
        request = json.loads(line)
        answer = {"id": request["id"]}
        try:
            target = request["target"]
            target = namespace[target] if isinstance(target, str) else handles[target]
            if request["op"] == "getattr":
                result = timed(lambda: getattr(target, request["name"]))
            else:
                args = plain_data.untag(request["args"], handles.__getitem__)
                kwargs = plain_data.untag(request["kwargs"], handles.__getitem__)
                result = timed(lambda: target(*args, **kwargs))
            if remote(result):
                answer.update(handle=handle_of(result), type=type(result).__name__)
            else:
                answer["value"] = plain_data.tag(result)
        except CallTimeout:
            answer["timeout"] = True
        except BaseException as e:  # noqa: BLE001  passed on: the test decides what it means
            answer.update(raised=type(e).__name__, message=str(e)[:300])
        send(answer)
    os._exit(0)


if __name__ == "__main__":
    main()
