"""Running untrusted programs: the only place plaudit executes text it was sent.

Every run is a fresh bubblewrap (`bwrap`) sandbox: new user, PID, network, IPC and UTS
namespaces (no network: even 127.0.0.1 is another, empty loopback), a file system of
/usr read-only plus the run's inputs read-only at /code and a size-limited tmpfs at /work
(the only writable place, gone with the run), a clean environment, and limits set by
`prlimit` before bwrap starts: CPU seconds, address space, file size and, when plaudit
runs as root, processes (each pool slot runs as its own unprivileged uid, so a fork bomb
exhausts only its slot; each process on the host takes a block of uids of its own,
`uid_base`, so another process's fork bomb does not exhaust this one's slots either). The
parent keeps the wall time and the output size, and kills the run's whole session at the
end: with the PID namespace gone, every process the program started is gone too.

Without a working bwrap the execution kinds refuse to load, unless the config says
`sandbox: none` (no isolation at all: only for trusted code, and said so in the log).

The warm path (`warm`, on by default; `none` stays cold). A Python job (the interpreter with
-I/-B/-S over a script in /code, nothing bound, no /out) does not start a sandbox of its own:
each slot keeps, per uid and interpreter flags, a long-lived bwrap sandbox as above (root
and /dev read-only besides) running a small trusted fork server (exec_forkserver.py, the
standard library only, with what programs commonly import loaded and frozen). plaudit sends
it, over a unix socket, the run's descriptors (stdin, stdout, stderr, the result channel and
a pair's calls/answers pipes) and a memfd holding the job (argv, the /code files, the
limits), which only the run's own processes read: the server never holds a run's code or
input. The server has a user namespace of its own and serves as PID 1 (Z) of a PID namespace
of its own. Per run Z forks B, PID 1 of a new PID namespace, which takes new mount, IPC and
UTS namespaces, mounts a fresh tmpfs at /work, /tmp, /dev/shm and /code (the job's files,
then read-only) and a /proc of its namespace only, takes a user namespace of the run's own
(its uid mapped, nothing else: no right over the server's), sets the CPU, address space,
file size, process and core limits and forks C, the program: a session keyring of its own,
no capabilities, no new privileges, descriptors 0-2 and the named ones in place and every
other one closed, a clean environment, then the script in that interpreter with a fresh
`__main__` (plaudit's own in-sandbox scripts are compiled once, by the server). So nothing
passes from one run to the next: every process of a run dies with its PID namespace (B
kills and reaps what the program left, then ends; Z waits for B's end before the next run;
Z never reads a run's account or status, which B sends to plaudit itself), every
file with its mount namespace (the only writable places are the run's tmpfs), every module
and object with the forked process (a program never touches the server's own state), every
descriptor with the processes that held it; and the server is out of reach: another PID
namespace (it cannot be named, so not signalled or traced), not dumpable, its socket closed
in the run. What runs of a slot share is what a cold run shares with the host too: the
read-only /usr and the slot sandbox's network namespace (loopback only, no capability over
it; a socket goes with its process). The warm sandboxes run under uids of their own (slot
uid + 128), so that their servers do not count against the cold runs' process limit. CPU
time and peak memory stay measured from outside the program: B's account of the program and
all it reaped (B is out of the program's reach as the server is). plaudit keeps the wall time
and the output budget as on the cold path and asks the server to end the run (B kills every
other process of it and sends its account; the server kills a B that does not within
2 s, and the namespace with it); a run not accounted for in time, or a server that
ends, takes its server's sandbox with it, and the slot's next run starts a new one (cold).
"""
from __future__ import annotations

import array
import base64
import ctypes
import fcntl
import itertools
import json
import logging
import os
import re
import select
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Literal

from .base import ModelLoadError, Unavailable

log = logging.getLogger("plaudit")

BASE_UID = 61000  # pool slot i runs its program as uid/gid base + i (no account needed)
JUDGE_UID_OFFSET = 64  # and the program's judge, when it has one, as base + 64 + i
MAX_SLOTS = JUDGE_UID_OFFSET
WARM_UID_OFFSET = 2 * JUDGE_UID_OFFSET  # a warm sandbox's server and runs: uid + 128 (not counted with the cold runs')
UID_BLOCK = 4 * JUDGE_UID_OFFSET  # one process's uids: base = BASE_UID + block * 256
UID_BLOCKS = 16  # processes with sandboxes on one host (uids up to 65095, below nobody's 65534)
UID_LOCKS = Path(tempfile.gettempdir()) / "plaudit-sandbox-uids"
INTERPRETERS = ("/usr/bin/python3", "/usr/local/bin/python3")
FORKSERVER = Path(__file__).parent / "exec_forkserver.py"
TRUSTED_FILES = ("exec_program.py", "exec_judge.py", "plain_data.py")  # compiled once by each fork server
WARM_FLAGS = frozenset({"-I", "-B", "-S"})  # a Python job with these flags alone may start warm
SERVER_START_S = 20.0  # a fork server's start (bwrap and the interpreter's imports)
SERVER_ANSWER_S = 5.0  # a killed run's account, once asked for
SERVER_PROCESSES = 4096  # the fork server's own process limit; each run sets its own below it


_claimed: tuple[int, int, int] | None = None  # (pid, base uid, the lock's descriptor) of this process
_claim_lock = threading.Lock()


def uid_base() -> int:
    """This process's first sandbox uid: a block of 256 that no other live process on the host
    holds (an flock on UID_LOCKS/<block>, released by the kernel when the process ends). A
    process limit counts every process of a uid, so two processes' slots on one uid (a
    service's workers, a batch job beside it) would let one's fork bomb fail the other's runs."""
    global _claimed
    with _claim_lock:
        if _claimed is not None and _claimed[0] == os.getpid():
            return _claimed[1]
        UID_LOCKS.mkdir(mode=0o700, exist_ok=True)
        for block in range(UID_BLOCKS):  # a forked child holds its parent's lock too: it takes its own
            fd = os.open(UID_LOCKS / str(block), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _claimed = (os.getpid(), BASE_UID + block * UID_BLOCK, fd)
            return _claimed[1]
    raise ModelLoadError(f"sandbox: {UID_BLOCKS} processes on this host already run sandboxes "
                         f"(the uid blocks under {UID_LOCKS} are all held)")


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
    and `env` (`files` in place of `code`: written to a folder only when the run starts
    cold). An argument may name a descriptor: `{result_fd}` (read back as `Run.result`),
    and in a pair `{calls_fd}` / `{answers_fd}`, the judge's line to its program."""

    argv: tuple[str, ...]
    code: Path | None  # None: `files` are the code
    stdin: bytes = b""
    out: Path | None = None
    binds: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    limits: SandboxLimits = SandboxLimits()
    files: dict[str, str | bytes] | None = None  # /code's files, when no folder holds them (a cold run writes one)


def _interpreter() -> str:
    found = next((p for p in INTERPRETERS if os.access(p, os.X_OK)), None)
    if found is None:
        raise ModelLoadError(f"no Python for sandboxed programs: none of {', '.join(INTERPRETERS)}")
    return found


def sandbox_unavailable() -> str | None:
    """Why bubblewrap cannot run sandboxes here, or None when it can (a probe run, which leaves
    the process as it was: reading the default config must not make it adopt orphans)."""
    try:
        Sandbox("bwrap", slots=1, max_waiting=0, adopt_orphans=False, warm=False)
    except ModelLoadError as e:
        return str(e)
    return None


class Sandbox:
    """A bounded pool of sandbox slots: a run waits for a free slot, or raises Busy when
    `max_waiting` runs already wait."""

    def __init__(self, kind: Literal["bwrap", "none"] = "bwrap", limits: SandboxLimits = SandboxLimits(),
                 slots: int = 4, max_waiting: int = 256, adopt_orphans: bool = True, warm: bool = True):
        if not 1 <= slots <= MAX_SLOTS:
            raise ModelLoadError(f"slots: between 1 and {MAX_SLOTS}")
        self.kind, self.limits, self.max_waiting = kind, limits, max_waiting
        self.warm = warm and kind == "bwrap"
        self._servers: dict[tuple[int, tuple[str, ...]], _Server] = {}
        self._servers_lock = threading.Lock()
        self._server_dir: Path | None = None
        self.python = _interpreter()
        self.as_root = os.geteuid() == 0
        self.uid_base = uid_base() if self.as_root and kind == "bwrap" else BASE_UID  # uids are set as root only
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
        warm, self.warm = self.warm, False
        probe = self.run({"probe.py": "print(6 * 7)"}, ["probe.py"])
        if probe.returncode != 0 or probe.stdout.strip() != b"42":
            raise ModelLoadError(f"bubblewrap cannot start a sandbox here (exit {probe.returncode}: "
                                 f"{probe.stderr.decode(errors='replace')[-300:]}); user namespaces may be disabled. "
                                 "`sandbox: none` in the config runs code unsandboxed (unsafe)")
        if warm:
            self.warm = True
            probe = self.run({"probe.py": "print(6 * 7)"}, ["probe.py"])
            if probe.returncode != 0 or probe.stdout.strip() != b"42":
                self.warm = False
                self.close()
                log.warning("the warm sandbox cannot start here (exit %s: %s); every run starts a cold sandbox",
                            probe.returncode, probe.stderr.decode(errors="replace")[-300:])

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
        return self.run_job(Job((self.python, "-I", "-B", f"/code/{argv[0]}", *argv[1:]), None, stdin,
                                limits=self.limits, files=files))

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
            server = self._server(job, self.uid_base + slot)
            if server is not None:
                return self._execute_warm([(server, job, {})], job.limits)[0]
            with self._written(job) as job:
                return self._execute([(self._command(job, self.uid_base + slot), job)], job.limits)[0]

    @contextmanager
    def _written(self, job: Job) -> Iterator[Job]:
        """The job with its `files` in a folder of their own (for the cold path)."""
        if job.files is None:
            yield job
            return
        with self.folder(job.files) as code:
            yield replace(job, code=code, files=None)

    def run_pair(self, program: Job, judge: Job) -> tuple[Run, Run]:
        """A program and the judge that questions it, side by side in one slot, each in its own
        sandbox under its own uid, joined only by two pipes: the judge sends calls on
        `{calls_fd}` and reads answers on `{answers_fd}`; in the program's argv the same names
        are its ends. The run ends when the judge has reported; the program goes with it."""
        with self._slot() as slot:
            servers = (self._server(judge, self.uid_base + JUDGE_UID_OFFSET + slot),
                       self._server(program, self.uid_base + slot))
            if None not in servers:
                calls_read, calls_write = os.pipe()  # _execute_warm closes them, whatever happens
                answers_read, answers_write = os.pipe()
                runs = self._execute_warm(
                    [(servers[0], judge, {"calls_fd": calls_write, "answers_fd": answers_read}),
                     (servers[1], program, {"calls_fd": calls_read, "answers_fd": answers_write})], judge.limits)
                return runs[0], runs[1]
            with self._written(judge) as judge, self._written(program) as program:
                calls_read, calls_write = os.pipe()  # _execute closes them, whatever happens
                answers_read, answers_write = os.pipe()
                runs = self._execute(
                    [(self._command(judge, self.uid_base + JUDGE_UID_OFFSET + slot), judge,
                      {"calls_fd": calls_write, "answers_fd": answers_read}),
                     (self._command(program, self.uid_base + slot), program,
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

    # The warm path (see the module's docstring): each slot's Python runs are forks of a fork
    # server that runs in a long-lived sandbox of that slot, one per uid and interpreter flags.

    def _warm_flags(self, job: Job) -> tuple[str, ...] | None:
        """The interpreter flags of a job the warm path can run (a Python script under /code,
        nothing bound, nothing written outside), or None: it runs cold."""
        if not self.warm or job.out is not None or job.binds or not job.argv:
            return None
        if os.path.realpath(job.argv[0]) != os.path.realpath(self.python):
            return None
        flags = tuple(itertools.takewhile(lambda a: a.startswith("-"), job.argv[1:]))  # before the script
        script = job.argv[1 + len(flags)] if len(job.argv) > 1 + len(flags) else ""
        if not set(flags) <= WARM_FLAGS or not script.startswith("/code/"):
            return None
        return tuple(sorted(set(flags)))

    def _server(self, job: Job, uid: int) -> _Server | None:
        """The live fork server for this job's uid and flags (started now, cold, when there is
        none or the last one has gone), or None: the job runs cold."""
        flags = self._warm_flags(job)
        if flags is None:
            return None
        uid += WARM_UID_OFFSET
        key = (uid, flags)
        with self._servers_lock:  # a slot's uids are its own: only the lock's holder starts them
            server = self._servers.get(key)
            if self._server_dir is None:
                self._server_dir = Path(tempfile.mkdtemp(prefix="plaudit-forkserver-"))
                (self._server_dir / FORKSERVER.name).write_text(FORKSERVER.read_text())
                (self._server_dir / "trusted").mkdir()
                for name in TRUSTED_FILES:
                    (self._server_dir / "trusted" / name).write_text((FORKSERVER.parent / name).read_text())
                (self._server_dir / "trusted").chmod(0o755)
                self._server_dir.chmod(0o755)
        if server is not None and server.alive():
            return server
        if server is not None:
            server.close()
        try:
            server = _Server(self._server_command(uid, flags))
        except OSError as e:
            log.warning("a warm sandbox did not start (%s); this run starts cold", e)
            return None
        with self._servers_lock:
            self._servers[key] = server
        return server

    def _server_command(self, uid: int, flags: tuple[str, ...]) -> list[str]:
        limits = ["--core=0"]
        if self.as_root:
            limits += [f"--nproc={SERVER_PROCESSES}", "--", "setpriv", f"--reuid={uid}", f"--regid={uid}",
                       "--clear-groups"]
        return ["prlimit", *limits, "--", "bwrap", "--info-fd", "{info_fd}", "--unshare-all", "--new-session",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
                "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev",
                "--ro-bind", str(self._server_dir), "/server", "--dir", "/code", "--dir", "/work", "--dir", "/tmp",
                "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/", "--clearenv",
                "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/work", "--setenv", "LANG", "C.UTF-8",
                "--", self.python, *flags, f"/server/{FORKSERVER.name}", "{control_fd}"]

    def close(self) -> None:
        """End the fork servers (a later run starts them again)."""
        with self._servers_lock:
            servers, self._servers = list(self._servers.values()), {}
            folder, self._server_dir = self._server_dir, None
        for server in servers:
            server.close()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def _execute_warm(self, processes: list[tuple], limits: SandboxLimits) -> list[Run]:
        """`_execute` on the warm path: each (server, job, shared descriptors) is sent to its
        fork server with the run's pipes; the same deadline, output budget and feeding of stdin.
        A run the server does not account for in time takes its server with it."""
        started, streams, pending = [], {}, {}
        handed = {fd for _, _, shared in processes for fd in shared.values()}
        begun = time.monotonic()
        deadline = begun + limits.wall_s
        accounts: list[dict | None] = []
        timed_out = exceeded = False
        try:
            for server, job, shared in processes:
                child, fds = [], {}
                try:
                    for name in ("account", "in", "out", "err", "result"):
                        read, write = os.pipe()
                        ours, theirs = (write, read) if name == "in" else (read, write)
                        fds[name] = ours
                        child.append(theirs)
                    named = {"result_fd": child[-1], **shared}
                    sent = child[:-1]
                    order = list(named)
                    argv = [re.sub(r"\{(\w+_fd)\}", lambda m: str(3 + order.index(m.group(1))), a) for a in job.argv]
                    payload = json.dumps({"argv": argv, "env": list(job.env), "files": _files(job),
                                          "limits": {"cpu_s": job.limits.cpu_s, "memory_mb": job.limits.memory_mb,
                                                     "processes": job.limits.processes,
                                                     "work_mb": job.limits.work_mb}}).encode()
                    memfd = os.memfd_create("plaudit-job", os.MFD_CLOEXEC)
                    child.append(memfd)
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(memfd, view):]
                    server.start([memfd, *sent, *(named[n] for n in order)])  # account, in, out, err
                except BaseException:
                    for fd in fds.values():
                        os.close(fd)
                    raise
                finally:
                    for fd in child:
                        os.close(fd)
                started.append((server, fds))
                accounts.append(None)
                streams.update({fds[n]: bytearray() for n in ("out", "err", "result")})
                os.set_blocking(fds["in"], False)
                pending[fds["in"]] = (_Fd(fds["in"]), memoryview(job.stdin))
                del fds["in"]
            for fd in handed:
                os.close(fd)
            handed.clear()
            timed_out, exceeded = self._collect(streams, pending, set(started[0][1].values()), set(), limits,
                                                deadline)
            if not (timed_out or exceeded):  # its output is closed; it may still be running
                accounts[0] = _account(started[0][1]["account"], deadline - time.monotonic())
                timed_out = accounts[0] is None
            seconds = time.monotonic() - begun
            for i, (_, fds) in enumerate(started):
                if accounts[i] is None:
                    accounts[i] = _account(fds["account"], 0)
        finally:
            for fd in handed:
                os.close(fd)
            for stream, _ in pending.values():
                stream.close()
            for i, (server, fds) in enumerate(started):
                if accounts[i] is None:  # still running: the server ends it, and its account follows
                    server.end_run()
                    accounts[i] = _account(fds["account"], SERVER_ANSWER_S)
                    if accounts[i] is None:
                        log.warning("a warm sandbox did not end a run in time: ended with it")
                        server.close()
                for fd in fds.values():
                    os.close(fd)
        failed = timed_out or exceeded
        runs = []
        for i, ((_, fds), account) in enumerate(zip(started, accounts)):
            account = account or {}
            runs.append(Run(None if failed and i == 0 else account.get("status"), bytes(streams[fds["out"]]),
                            bytes(streams[fds["err"]]), bytes(streams[fds["result"]]), timed_out, exceeded,
                            seconds, account.get("cpu_s"),
                            account["maxrss_kb"] / 1024.0 if account.get("maxrss_kb") is not None else None))
        return runs

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


def _end_sandbox(process: subprocess.Popen, sandbox_pid: int | None) -> tuple:
    """Kill a sandbox's first process (with it its PID namespace), then bwrap's session, and
    reap both: (bwrap's resource usage, the first process's, or None where bwrap reaped it)."""
    if sandbox_pid is not None:
        try:
            os.kill(sandbox_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    outer = inner = None
    try:
        _, status, outer = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    except ChildProcessError:  # reaped already (Popen.poll)
        pass
    if sandbox_pid is not None:
        try:
            inner = os.wait4(sandbox_pid, 0)[2]
        except ChildProcessError:  # bwrap reaped it: its usage is in bwrap's
            pass
    return outer, inner


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
    outer, inner = _end_sandbox(process, sandbox_pid)
    for stream in (process.stdout, process.stderr):
        if stream:
            stream.close()
    if inner is not None:  # the sandbox's processes alone (bwrap's own start is plaudit's cost, not the run's)
        return inner.ru_utime + inner.ru_stime, inner.ru_maxrss / 1024.0  # ru_maxrss is in KiB
    if outer is None:
        return None, None
    # Without the sandbox's own account, bwrap's (or the unsandboxed program's), whose peak
    # memory may be this process's at the fork that started it: the CPU time only.
    return outer.ru_utime + outer.ru_stime, None


class _Fd:
    """A descriptor with a file's close(), for the stdin being fed (closed once)."""

    def __init__(self, fd: int):
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _account(fd: int, timeout: float) -> dict | None:
    """A warm run's account, from its PID 1 (the exit status, None when it was ended on
    request; the CPU time and peak memory of all it reaped), {} when it went without one (it
    was killed), or None while it is still running after `timeout`."""
    if not select.select([fd], [], [], max(0.0, timeout))[0]:
        return None
    data = b""
    while not data.endswith(b"\n") and (chunk := os.read(fd, 4096)):  # one short line (or the end: killed)
        data += chunk
    try:
        account = json.loads(data)
    except ValueError:
        return {}
    return account if isinstance(account, dict) else {}


def _files(job: Job) -> dict[str, str]:
    """A job's /code, sent with the job to be written in the run's own /code."""
    if job.files is not None:
        return {name: base64.b64encode(text.encode() if isinstance(text, str) else text).decode()
                for name, text in job.files.items()}
    return {str(path.relative_to(job.code)): base64.b64encode(path.read_bytes()).decode()
            for path in sorted(job.code.rglob("*")) if path.is_file()}


class _Server:
    """One fork server (exec_forkserver.py) in its long-lived sandbox: started cold, then asked
    for runs over a unix socket. Whatever goes wrong with it (it ends, it does not answer in
    time, the socket fails) ends its whole sandbox, and the slot's next run starts a new one."""

    def __init__(self, command: list[str]):
        self.socket, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        read_info, write_info = os.pipe()
        named = {"control_fd": theirs.fileno(), "info_fd": write_info}
        command = [re.sub(r"\{(\w+_fd)\}", lambda m: str(named[m.group(1)]), a) for a in command]
        self.sandbox_pid: int | None = None
        self.errors = tempfile.TemporaryFile()
        self.process: subprocess.Popen | None = None
        try:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=self.errors, pass_fds=tuple(named.values()),
                                            start_new_session=True, close_fds=True,
                                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        except BaseException:
            self.close()
            raise
        finally:
            theirs.close()
            os.close(write_info)
        deadline = time.monotonic() + SERVER_START_S
        try:
            info = b""
            while select.select([read_info], [], [], max(0.0, deadline - time.monotonic()))[0]:
                chunk = os.read(read_info, 4096)
                if not chunk:
                    break
                info += chunk
                try:
                    self.sandbox_pid = json.loads(info)["child-pid"]
                    break
                except (ValueError, KeyError):
                    continue
        finally:
            os.close(read_info)
        ready = self.answer(max(0.0, deadline - time.monotonic()))
        if not ready or not ready.get("ready"):
            self.errors.seek(0)
            said = self.errors.read()[-500:].decode(errors="replace")
            self.close()
            raise OSError(f"the fork server did not start: {said or 'no answer'}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, fds: list[int]) -> None:
        try:
            self.socket.sendmsg([b'{"op": "run"}'], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        except OSError:
            self.close()
            raise

    def answer(self, timeout: float) -> dict | None:
        """The server's next message, or None when none comes within `timeout`; a server that
        has ended answers that its run was killed (its sandbox, the run's included, is gone)."""
        if self.process is None:
            return {"status": None, "killed": True, "error": "the warm sandbox has ended"}
        try:
            if not select.select([self.socket], [], [], max(0.0, timeout))[0]:
                return None
            data = self.socket.recv(1 << 16)
            answer = json.loads(data) if data else None
        except (OSError, ValueError):
            answer = None
        if not isinstance(answer, dict):
            self.close()
            return {"status": None, "killed": True, "error": "the warm sandbox has ended"}
        return answer

    def end_run(self) -> None:
        """Ask for the current run's end (ignored when it has ended): its PID 1 kills the rest
        and sends its account; the server kills a PID 1 that does not."""
        try:
            self.socket.send(b'{"op": "kill"}')
        except OSError:
            pass

    def close(self) -> None:
        """The whole sandbox, as `_kill` ends a cold one."""
        process, self.process = self.process, None
        if process is not None:
            _end_sandbox(process, self.sandbox_pid)
        self.socket.close()
        self.errors.close()
