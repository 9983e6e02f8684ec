"""Running untrusted programs: the only place plaudit executes text it was sent.

Every run is a fresh bubblewrap (`bwrap`) sandbox: new user, PID, network, IPC and UTS
namespaces (no network: even 127.0.0.1 is another, empty loopback), a file system of
/usr read-only plus the run's inputs read-only at /code and a size-limited tmpfs at /work
(the only writable place, gone with the run), a clean environment, and limits set by
`prlimit` before bwrap starts: CPU seconds, address space, file size and, when plaudit
runs as root, processes (each pool slot runs as its own unprivileged uid, so a fork bomb
exhausts only its slot). The parent keeps the wall time and the output size, and kills
the run's whole session at the end: with the PID namespace gone, every process the
program started is gone too.

Without a working bwrap the execution kinds refuse to load, unless the config says
`sandbox: none` (no isolation at all: only for trusted code, and said so in the log).
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .base import ModelLoadError

log = logging.getLogger("plaudit")

BASE_UID = 61000  # pool slot i runs as uid/gid BASE_UID + i (no account needed)
INTERPRETERS = ("/usr/bin/python3", "/usr/local/bin/python3")


class Busy(RuntimeError):
    """Every sandbox slot is taken and the waiting line is full: the service answers 503."""


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 10.0  # the whole run, tests included
    cpu_s: int = 10
    memory_mb: int = 1024  # address space per process
    processes: int = 32  # per slot, when plaudit runs as root
    output_bytes: int = 1 << 20  # stdout + stderr + results together
    work_mb: int = 64  # the writable tmpfs at /work; also the largest file


@dataclass
class Run:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    result: bytes  # what the harness wrote on its own channel (fd 3)
    timed_out: bool = False
    output_exceeded: bool = False


def _interpreter() -> str:
    found = next((p for p in INTERPRETERS if os.access(p, os.X_OK)), None)
    if found is None:
        raise ModelLoadError(f"no Python for sandboxed programs: none of {', '.join(INTERPRETERS)}")
    return found


def sandbox_unavailable() -> str | None:
    """Why bubblewrap cannot run sandboxes here, or None when it can (a probe run, which leaves
    the process as it was: reading the default config must not make it adopt orphans)."""
    try:
        Sandbox("bwrap", slots=1, max_waiting=0, adopt_orphans=False)
    except ModelLoadError as e:
        return str(e)
    return None


class Sandbox:
    """A bounded pool of sandbox slots: `run` waits for a free slot, or raises Busy when
    `max_waiting` runs already wait."""

    def __init__(self, kind: Literal["bwrap", "none"] = "bwrap", limits: SandboxLimits = SandboxLimits(),
                 slots: int = 4, max_waiting: int = 256, adopt_orphans: bool = True):
        self.kind, self.limits, self.max_waiting = kind, limits, max_waiting
        self.python = _interpreter()
        self.as_root = os.geteuid() == 0
        self._slots: list[int] = list(range(slots))
        self._free = threading.Condition()
        self._waiting = 0
        if adopt_orphans:  # what serves runs reaps its sandboxes' first processes (see _become_subreaper)
            _become_subreaper()
        if kind == "none":
            log.warning("sandbox: none: programs sent for execution run UNSANDBOXED with plaudit's own rights")
        else:
            self._check()

    def _check(self) -> None:
        if shutil.which("bwrap") is None or shutil.which("prlimit") is None or shutil.which("setpriv") is None:
            raise ModelLoadError("the execution kind needs bubblewrap (`apt-get install bubblewrap`; make does it) "
                                 "and util-linux's prlimit and setpriv; `sandbox: none` in the config runs code "
                                 "unsandboxed (unsafe)")
        probe = self.run({"probe.py": "print(6 * 7)"}, ["probe.py"])
        if probe.returncode != 0 or probe.stdout.strip() != b"42":
            raise ModelLoadError(f"bubblewrap cannot start a sandbox here (exit {probe.returncode}: "
                                 f"{probe.stderr.decode(errors='replace')[-300:]}); user namespaces may be disabled. "
                                 "`sandbox: none` in the config runs code unsandboxed (unsafe)")

    def _command(self, slot: int, code: Path, script: str) -> list[str]:
        lim = self.limits
        limits = [f"--cpu={lim.cpu_s}", f"--as={lim.memory_mb << 20}", f"--fsize={lim.work_mb << 20}", "--core=0"]
        if self.as_root:  # the slot's own uid, set by setpriv: a uid given to Popen would make it fork, not
            # vfork, and forking the service's large address space costs more than the whole sandbox
            uid = BASE_UID + slot
            limits += [f"--nproc={lim.processes}", "--", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                       "--clear-groups"]
        python = [self.python, "-I", "-B", f"/code/{script}"]
        if self.kind == "none":
            return ["prlimit", *limits, "--", self.python, "-I", "-B", str(code / script)]
        return ["prlimit", *limits, "--", "bwrap", "--info-fd", "{info_fd}", "--unshare-all", "--die-with-parent",
                "--new-session",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
                "--ro-bind", str(code), "/code", "--size", str(lim.work_mb << 20), "--tmpfs", "/work",
                "--size", str(lim.work_mb << 20), "--tmpfs", "/tmp", "--chdir", "/work", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
                "--", *python]

    def run(self, files: dict[str, str], argv: list[str], stdin: bytes = b"") -> Run:
        """Run `python -I /code/argv[0] argv[1:]` over `files` (written read-only at /code) in a free
        slot; an argument `{result_fd}` becomes the descriptor of the result channel (`Run.result`)."""
        slot = self._acquire()
        code = Path(tempfile.mkdtemp(prefix="plaudit-run-"))
        try:
            for name, text in files.items():
                (code / name).write_text(text)
            code.chmod(0o777 if self.kind == "none" else 0o755)  # unsandboxed runs work in it
            return self._execute(self._command(slot, code, argv[0]) + list(argv[1:]), slot, stdin, code)
        finally:
            shutil.rmtree(code, ignore_errors=True)
            self._release(slot)

    def _acquire(self) -> int:
        with self._free:
            if not self._slots and self._waiting >= self.max_waiting:
                raise Busy(f"all sandbox slots are busy and {self._waiting} runs wait (max_waiting)")
            self._waiting += 1
            try:
                while not self._slots:
                    self._free.wait()
                return self._slots.pop()
            finally:
                self._waiting -= 1

    def _release(self, slot: int) -> None:
        with self._free:
            self._slots.append(slot)
            self._free.notify()

    def _execute(self, command: list[str], slot: int, stdin: bytes, code: Path) -> Run:
        read_result, write_result = os.pipe()
        read_info, write_info = os.pipe()  # bwrap says there which pid runs the sandbox
        command = [a.replace("{result_fd}", str(write_result)).replace("{info_fd}", str(write_info)) for a in command]
        try:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       pass_fds=(write_result, write_info), start_new_session=True, close_fds=True,
                                       env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                       cwd=code if self.kind == "none" else None)
        finally:
            os.close(write_result)
            os.close(write_info)
        if process.stdin:
            try:
                process.stdin.write(stdin)
                process.stdin.close()
            except BrokenPipeError:
                pass
        out, err = process.stdout.fileno(), process.stderr.fileno()
        streams = {out: bytearray(), err: bytearray(), read_result: bytearray(), read_info: bytearray()}
        deadline = time.monotonic() + self.limits.wall_s
        timed_out = exceeded = False
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            while selector.get_map() and not (timed_out or exceeded):
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                for key, _ in selector.select(timeout=left):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    streams[key.fd] += chunk
                    if sum(len(v) for fd, v in streams.items() if fd != read_info) > self.limits.output_bytes:
                        exceeded = True
        if not (timed_out or exceeded):  # its output is closed; the program may still be running
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
        _kill(process, streams[read_info])
        os.close(read_result)
        os.close(read_info)
        return Run(process.returncode if not (timed_out or exceeded) else None,
                   bytes(streams[out]), bytes(streams[err]),
                   bytes(streams[read_result]), timed_out, exceeded)


def _become_subreaper() -> None:
    """Adopt our orphaned descendants. bwrap exits as soon as the program's status is known,
    before its namespace's first process is gone; that process is then an orphan, and as the
    host's init's zombie it would count against its slot's process limit until (if ever) init
    reaps it. Adopted, it is reaped here, by pid, at the end of its run."""
    PR_SET_CHILD_SUBREAPER = 36
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: nothing to adopt with
        pass


def _kill(process: subprocess.Popen, info: bytes) -> None:
    """Everything the run started. The sandbox's first process goes first: with it its PID
    namespace and every process inside. Then bwrap's session, for what is left; then the
    first process is reaped (it is ours, see `_become_subreaper`)."""
    try:
        sandbox_pid = json.loads(info)["child-pid"]
    except (ValueError, KeyError):  # bwrap never started a sandbox
        sandbox_pid = None
    if sandbox_pid is not None:
        try:
            os.kill(sandbox_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    if sandbox_pid is not None:
        try:
            os.waitpid(sandbox_pid, 0)
        except ChildProcessError:  # bwrap reaped it
            pass
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
