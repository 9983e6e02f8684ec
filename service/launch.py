"""Start a server as a child process on 127.0.0.1 and wait until it is ready: what the
benchmarks and the tests do with `plaudit serve` (and the benchmarks' naive baseline).
Each server runs in its own process group, so stopping it stops its whole tree.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import httpx2


@dataclass
class Launched:
    url: str
    process: subprocess.Popen
    ready_s: float  # launch to the first ready answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched(args: Sequence[str], port: int, log: Path, env: dict[str, str], timeout_s: float = 600,
             cwd: str | os.PathLike | None = None) -> Iterator[Launched]:
    """Start `args` and yield it once GET /readyz on `port` answers 200; its output goes to
    `log`, whose tail is in the error when it exits or is not ready in time."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as out:
        start = time.perf_counter()
        process = subprocess.Popen(args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            while time.perf_counter() - start < timeout_s:
                if process.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
                with contextlib.suppress(httpx2.HTTPError):
                    if httpx2.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                time.sleep(0.2)
            else:
                raise RuntimeError(f"{args[0]} not ready in {timeout_s}s:\n{log.read_text()[-3000:]}")
            yield Launched(url, process, time.perf_counter() - start)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
                process.wait()
