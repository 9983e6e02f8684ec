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
import re
import select
import selectors
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

from .base import ModelLoadError, Unavailable

log = logging.getLogger("plaudit")

BASE_UID = 61000  # pool slot i runs its program as uid/gid BASE_UID + i (no account needed)
JUDGE_UID_OFFSET = 64  # and the program's judge, when it has one, as BASE_UID + 64 + i
MAX_SLOTS = JUDGE_UID_OFFSET
INTERPRETERS = ("/usr/bin/python3", "/usr/local/bin/python3")


class Busy(Unavailable):
    """Every sandbox slot is taken and the waiting line is full."""

    kind = "SandboxBusy"


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
    result: bytes  # what the job wrote on its result channel (`{result_fd}`)
    timed_out: bool = False
    output_exceeded: bool = False
    seconds: float = 0.0
    cpu_s: float | None = None  # user + system time of every process of the run, measured from outside
    peak_memory_mb: float | None = None  # the largest resident set among them


@dataclass(frozen=True)
class Job:
    """One sandboxed process: `argv` as seen inside, over `code` (read-only at /code), with
    `out` (when given) writable at /out, `binds` (host paths, read-only at the same place, or
    `host:inside`)
    and `env`. An argument may name a descriptor: `{result_fd}` (read back as `Run.result`),
    and in a pair `{calls_fd}` / `{answers_fd}`, the judge's line to its program."""

    argv: tuple[str, ...]
    code: Path
    stdin: bytes = b""
    out: Path | None = None
    binds: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    limits: SandboxLimits = SandboxLimits()


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
    """A bounded pool of sandbox slots: a run waits for a free slot, or raises Busy when
    `max_waiting` runs already wait."""

    def __init__(self, kind: Literal["bwrap", "none"] = "bwrap", limits: SandboxLimits = SandboxLimits(),
                 slots: int = 4, max_waiting: int = 256, adopt_orphans: bool = True):
        if not 1 <= slots <= MAX_SLOTS:
            raise ModelLoadError(f"slots: between 1 and {MAX_SLOTS}")
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

    def _command(self, job: Job, uid: int) -> list[str]:
        lim = job.limits
        limits = [f"--cpu={lim.cpu_s}", f"--as={lim.memory_mb << 20}", f"--fsize={lim.work_mb << 20}", "--core=0"]
        if self.as_root:  # the slot's own uid, set by setpriv: a uid given to Popen would make it fork, not
            # vfork, and forking the service's large address space costs more than the whole sandbox
            limits += [f"--nproc={lim.processes}", "--", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                       "--clear-groups"]
        mounts = {target or source: source for source, _, target in (b.partition(":") for b in job.binds)}
        if self.kind == "none":  # the same paths, outside: each inside path stands for its folder
            places = {"/code": str(job.code), "/out": str(job.out), **mounts}
            pattern = "^(" + "|".join(re.escape(p) for p in places) + ")(?=/|$)"
            argv = [re.sub(pattern, lambda m: places[m.group(0)], a) for a in job.argv]
            return ["prlimit", *limits, "--", "env", "-i", *(f"{k}={v}" for k, v in job.env), *argv]
        binds = [arg for target, source in mounts.items() for arg in ("--ro-bind", source, target)]
        if job.out is not None:
            binds += ["--bind", str(job.out), "/out"]
        env = [arg for key, value in job.env for arg in ("--setenv", key, value)]
        return ["prlimit", *limits, "--", "bwrap", "--info-fd", "{info_fd}", "--unshare-all", "--die-with-parent",
                "--new-session",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
                "--ro-bind", str(job.code), "/code", *binds, "--size", str(lim.work_mb << 20), "--tmpfs", "/work",
                "--size", str(lim.work_mb << 20), "--tmpfs", "/tmp", "--chdir", "/work", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
                *env, "--", *job.argv]

    def run(self, files: dict[str, str], argv: list[str], stdin: bytes = b"") -> Run:
        """Run `python -I /code/argv[0] argv[1:]` over `files` (written read-only at /code)."""
        with self.folder(files) as code:
            return self.run_job(Job((self.python, "-I", "-B", f"/code/{argv[0]}", *argv[1:]), code, stdin,
                                    limits=self.limits))

    @contextmanager
    def folder(self, files: dict[str, str | bytes]) -> Iterator[Path]:
        """A fresh folder holding `files`, for a job's /code; removed afterwards."""
        code = Path(tempfile.mkdtemp(prefix="plaudit-run-"))
        try:
            for name, text in files.items():
                (code / name).parent.mkdir(parents=True, exist_ok=True)
                (code / name).write_bytes(text.encode() if isinstance(text, str) else text)
            code.chmod(0o777 if self.kind == "none" else 0o755)  # unsandboxed runs work in it
            yield code
        finally:
            shutil.rmtree(code, ignore_errors=True)

    def writable_folder(self) -> Path:
        """A folder a job may write into at /out (a compiler's output): the caller removes it."""
        out = Path(tempfile.mkdtemp(prefix="plaudit-build-"))
        out.chmod(0o777)  # the sandbox's uid is not ours; nobody else can reach inside /tmp's mkdtemp name
        return out

    def run_job(self, job: Job) -> Run:
        """One job in a free slot."""
        with self._slot() as slot:
            return self._execute([(self._command(job, BASE_UID + slot), job)], job.limits)[0]

    def run_pair(self, program: Job, judge: Job) -> tuple[Run, Run]:
        """A program and the judge that questions it, side by side in one slot, each in its own
        sandbox under its own uid, joined only by two pipes: the judge sends calls on
        `{calls_fd}` and reads answers on `{answers_fd}`; in the program's argv the same names
        are its ends. The run ends when the judge has reported; the program goes with it."""
        with self._slot() as slot:
            calls_read, calls_write = os.pipe()  # _execute closes them, whatever happens
            answers_read, answers_write = os.pipe()
            runs = self._execute(
                [(self._command(judge, BASE_UID + JUDGE_UID_OFFSET + slot), judge,
                  {"calls_fd": calls_write, "answers_fd": answers_read}),
                 (self._command(program, BASE_UID + slot), program,
                  {"calls_fd": calls_read, "answers_fd": answers_write})], judge.limits)
        return runs[0], runs[1]

    @contextmanager
    def _slot(self) -> Iterator[int]:
        with self._free:
            if not self._slots and self._waiting >= self.max_waiting:
                raise Busy(f"all sandbox slots are busy and {self._waiting} runs wait (max_waiting)")
            self._waiting += 1
            try:
                while not self._slots:
                    self._free.wait()
                slot = self._slots.pop()
            finally:
                self._waiting -= 1
        try:
            yield slot
        finally:
            with self._free:
                self._slots.append(slot)
                self._free.notify()

    def _execute(self, processes: list[tuple], limits: SandboxLimits) -> list[Run]:
        """Start each (command, job[, shared descriptors]) and collect their output under one
        deadline and one output budget; the first is the one whose end ends the run. Input is
        fed as it is read: a program that never reads its stdin cannot stall the service."""
        started, streams, infos, pending = [], {}, set(), {}
        handed = {fd for _, _, *shared in processes for fd in (shared[0].values() if shared else ())}
        begun = time.monotonic()
        try:
            for command, job, *shared in processes:
                read_result, write_result = os.pipe()
                read_info, write_info = os.pipe()  # bwrap says there which pid runs the sandbox
                named = {"result_fd": write_result, "info_fd": write_info, **(shared[0] if shared else {})}
                command = [re.sub(r"\{(\w+_fd)\}", lambda m: str(named[m.group(1)]), a) for a in command]
                try:
                    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                               stderr=subprocess.PIPE, pass_fds=tuple(named.values()),
                                               start_new_session=True, close_fds=True,
                                               env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                               cwd=job.code if self.kind == "none" else None)
                except BaseException:
                    os.close(read_result)
                    os.close(read_info)
                    raise
                finally:
                    os.close(write_result)
                    os.close(write_info)
                fds = {"out": process.stdout.fileno(), "err": process.stderr.fileno(), "result": read_result,
                       "info": read_info}
                started.append((process, fds))
                streams.update({fd: bytearray() for fd in fds.values()})
                infos.add(read_info)
                os.set_blocking(process.stdin.fileno(), False)
                pending[process.stdin.fileno()] = (process.stdin, memoryview(job.stdin))
            for fd in handed:  # the pipes between the sandboxes are theirs alone now: an end left
                os.close(fd)  # open here would hide from one that the other has gone
            handed.clear()
            timed_out, exceeded = self._collect(streams, pending, set(started[0][1].values()), infos, limits,
                                                begun + limits.wall_s)
            lead = started[0][0]
            if not (timed_out or exceeded):  # its output is closed; it may still be running
                timed_out = not _exited(lead.pid, begun + limits.wall_s - time.monotonic())
            seconds = time.monotonic() - begun
            codes = [_exit_code(process.pid) for process, _ in started]
        finally:
            for fd in handed:
                os.close(fd)
            for stream, _ in pending.values():
                stream.close()
            usages = []
            for process, fds in started:
                usages.append(_kill(process, bytes(streams.get(fds["info"], b""))))
                os.close(fds["result"])
                os.close(fds["info"])
        failed = timed_out or exceeded
        return [Run(None if failed and i == 0 else code, bytes(streams[fds["out"]]), bytes(streams[fds["err"]]),
                    bytes(streams[fds["result"]]), timed_out, exceeded, seconds, *usage)
                for i, ((_, fds), code, usage) in enumerate(zip(started, codes, usages))]

    @staticmethod
    def _collect(streams: dict, pending: dict, lead: set, infos: set, limits: SandboxLimits,
                 deadline: float) -> tuple[bool, bool]:
        """Read every stream and feed every stdin until the lead process's streams close, the
        deadline passes (timed out) or the output budget is spent (exceeded)."""
        with selectors.DefaultSelector() as selector:
            for fd in streams:
                selector.register(fd, selectors.EVENT_READ)
            for fd in pending:
                selector.register(fd, selectors.EVENT_WRITE)
            while lead & selector.get_map().keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    return True, False
                for key, _ in selector.select(timeout=left):
                    if key.fd in pending:
                        stream, rest = pending[key.fd]
                        try:
                            rest = rest[os.write(key.fd, rest[:65536]):]
                        except BrokenPipeError:
                            rest = rest[:0]
                        if rest:
                            pending[key.fd] = (stream, rest)
                        else:
                            selector.unregister(key.fd)
                            stream.close()
                            del pending[key.fd]
                        continue
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fd)
                        continue
                    streams[key.fd] += chunk
                    if sum(len(v) for fd, v in streams.items() if fd not in infos) > limits.output_bytes:
                        return False, True
        return False, False


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


def _exited(pid: int, timeout: float) -> bool:
    """Whether our child `pid` ends within `timeout` seconds; it is left to be reaped (with
    its resource usage) by `_kill`."""
    try:
        with _pidfd(pid) as fd:
            return bool(select.select([fd], [], [], max(0.0, timeout))[0])
    except ProcessLookupError:  # gone and reaped already: only _kill reaps, so never here
        return True


@contextmanager
def _pidfd(pid: int) -> Iterator[int]:
    fd = os.pidfd_open(pid)
    try:
        yield fd
    finally:
        os.close(fd)


def _exit_code(pid: int) -> int | None:
    """Our child's exit status as Popen reports it (-N: killed by signal N), None while it
    runs; it is not reaped."""
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    if info is None:
        return None
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _kill(process: subprocess.Popen, info: bytes) -> tuple[float | None, float | None]:
    """Everything the run started. The sandbox's first process goes first: with it its PID
    namespace and every process inside. Then bwrap's session, for what is left; then the
    first process is reaped (it is ours, see `_become_subreaper`). Returns the CPU seconds
    (user + system) and the peak resident MiB of the sandbox's processes, from the kernel's
    account of its first process (with the program and all it reaped): measured where the
    program cannot reach."""
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
    _, status, outer = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    inner = None
    if sandbox_pid is not None:
        try:
            inner = os.wait4(sandbox_pid, 0)[2]
        except ChildProcessError:  # bwrap reaped it: its usage is in bwrap's
            pass
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
    if inner is not None:  # the sandbox's processes alone (bwrap's own start is plaudit's cost, not the run's)
        return inner.ru_utime + inner.ru_stime, inner.ru_maxrss / 1024.0  # ru_maxrss is in KiB
    # Without the sandbox's own account, bwrap's (or the unsandboxed program's), whose peak
    # memory may be this process's at the fork that started it: the CPU time only.
    return outer.ru_utime + outer.ru_stime, None
