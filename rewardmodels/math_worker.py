"""math-verify in child processes: every check under a deadline, from any thread.

SymPy can take unbounded time (or memory) on a hostile answer such as `9^{9^{9^{9}}}`,
and math-verify's own timeout uses SIGALRM, which works only in a process's main thread;
the service checks from many threads. So the checks run here, in long-lived child
processes that each answer one JSON line at a time:

- the child arms its own interval timer per check and answers `timeout` when it fires
  (an exception math-verify's `except Exception` cannot swallow);
- the parent waits the same time plus a grace period, then kills and replaces a child that
  is stuck in C code the timer cannot interrupt; the next check gets a fresh child;
- each child runs with an address-space limit and dies with its parent (PR_SET_PDEATHSIG)
  or when its stdin closes.

Answers are not programs: math-verify reads LaTeX with an ANTLR grammar and evaluates
plain expressions only after a regex has kept digits, operators and brackets, so a child
needs time and memory limits, not the code sandbox (whose Python has no math-verify).
This file runs as a script (`python -I math_worker.py`): the child imports only the
standard library and math-verify, never plaudit's package (which would import torch).
"""
from __future__ import annotations

import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Any

GRACE_S = 1.0  # what the parent waits past a check's deadline before killing the child
START_TIMEOUT_S = 120.0  # importing sympy on a loaded machine
REFERENCE_CACHE = 1024  # parsed references a child keeps (a GRPO group shares one)


# ---------------------------------------------------------------- the parent side

class MathWorkers:
    """A fixed set of child processes; `check` borrows an idle one, so at most `size` checks
    run at once whichever threads call. Children start on first use, in parallel."""

    def __init__(self, size: int, memory_mb: int):
        self.size, self.memory_mb = size, memory_mb
        self._idle: queue.Queue[_Child] = queue.Queue()
        self._children = [_Child(memory_mb) for _ in range(size)]
        for child in self._children:
            self._idle.put(child)
        self._started = threading.Lock()
        self.restarts = 0  # children killed past a deadline or found dead

    def start(self) -> None:
        """Start every child now (at the first check otherwise), all importing at once."""
        with self._started:
            for child in self._children:
                child.spawn()
            for child in self._children:
                child.wait_ready()

    def run(self, checks: list[dict[str, Any]], timeout_s: float) -> list[dict[str, Any]]:
        """Answers to `checks`, in order, all on one child (so a reference it parsed for the
        first is cached for the rest)."""
        child = self._idle.get()
        try:
            answers = []
            for check in checks:
                answer = child.ask(check, timeout_s)
                if answer.get("restarted"):
                    self.restarts += 1
                answers.append(answer)
            return answers
        finally:
            self._idle.put(child)

    def close(self) -> None:
        for child in self._children:
            child.stop()


class _Child:
    def __init__(self, memory_mb: int):
        self.memory_mb = memory_mb
        self.proc: subprocess.Popen | None = None
        self._buffer = b""

    def spawn(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            self._buffer = b""
            self.proc = subprocess.Popen([sys.executable, "-I", __file__, str(self.memory_mb)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def wait_ready(self) -> None:
        line = self._line(time.monotonic() + START_TIMEOUT_S)
        if line != b"ready":
            self.stop()
            raise RuntimeError("a math-verify worker did not start (is math-verify installed? `make install`)")

    def ask(self, check: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        if self.proc is None or self.proc.poll() is not None:
            self.spawn()
            self.wait_ready()
        try:
            self.proc.stdin.write(json.dumps({**check, "timeout_s": timeout_s}).encode() + b"\n")
            self.proc.stdin.flush()
            line = self._line(time.monotonic() + timeout_s + GRACE_S)
        except BrokenPipeError:
            line = None
        if line is None:  # stuck past the deadline where the child's timer could not reach, or dead
            crashed = self.proc.poll() is not None
            self.stop()
            return {"reason": "crashed" if crashed else "timeout", "restarted": True}
        return json.loads(line)

    def _line(self, deadline: float) -> bytes | None:
        """One line from the child by `deadline`, or None (timed out or the child exited)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            self.proc = None


# ---------------------------------------------------------------- the child side

class _Overtime(BaseException):
    """Raised by the check's timer; a BaseException so that no `except Exception` keeps it."""


def _child(memory_mb: int) -> None:
    import ctypes
    import logging
    import resource

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the service
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # "timeout is disabled": ours is on

    def overtime(*_: Any) -> None:
        raise _Overtime()

    signal.signal(signal.SIGALRM, overtime)
    references: dict[tuple[str, bool], list] = {}

    def read(text: str, wrap: bool) -> list:
        """A final answer as math-verify reads one: boxed (so that bare `1/2` or `x = 5` is read
        whole), else as given."""
        if wrap:
            text = text.strip()
            if len(text) > 1 and text[0] == text[-1] == "$":
                text = text.strip("$")
            parsed = parse(text if "\\boxed" in text else f"\\boxed{{{text}}}", parsing_timeout=None)
            if parsed:
                return parsed
        return parse(text, parsing_timeout=None)

    def shown(parsed: list) -> list[str]:
        return [str(p)[:200] for p in parsed]

    stage = ["reference"]  # what a timeout interrupted

    def check(request: dict[str, Any]) -> dict[str, Any]:
        stage[0] = "reference"
        gold, cached = [], True
        for reference in request["references"]:
            key = (reference, True)
            if key not in references:
                cached = False
                if len(references) >= REFERENCE_CACHE:
                    references.pop(next(iter(references)))
                references[key] = read(reference, True)
            gold.append(references[key])
        stage[0] = "answer"
        answer = read(request["answer"], request["wrap"])
        result = {"answer_parsed": shown(answer), "reference_parsed": shown(gold[0]), "reference_cached": cached}
        if not answer:
            return {**result, "reason": "unparsed"}
        if not any(gold):
            return {**result, "reason": "unparsed_reference"}
        stage[0] = "verify"
        passed = any(verify(g, answer, float_rounding=request["float_rounding"],
                            numeric_precision=request["numeric_precision"], strict=request["strict"],
                            timeout_seconds=None) for g in gold if g)
        return {**result, "passed": passed, "reason": None if passed else "mismatch"}

    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            signal.setitimer(signal.ITIMER_REAL, request["timeout_s"])
            try:
                answer = check(request)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _Overtime:
            answer = {"reason": "timeout", "during": stage[0]}
        except MemoryError:
            answer = {"reason": "out_of_memory"}
        except Exception as e:  # noqa: BLE001  a library error on this answer, reported, never fatal
            answer = {"reason": "error", "error": f"{type(e).__name__}: {str(e)[:200]}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _child(int(sys.argv[1]))
