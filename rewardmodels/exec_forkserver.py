"""The warm sandbox's fork server (standard library only; never imported by plaudit): runs in
one slot's long-lived bubblewrap sandbox, under the slot's uid, and starts each Python run of
that slot as a fork of this already started interpreter. It never runs untrusted code and
never reads a run's code, arguments or input: those reach only the run's own processes.

argv: control_fd (a SOCK_SEQPACKET unix socket to plaudit)
from plaudit: {"op": "run"} with descriptors (SCM_RIGHTS): the job (a memfd of JSON, read by
              the run alone), the run's account pipe, then its stdin, stdout, stderr and its
              named descriptors; {"op": "kill"}: end the current run now (ignored between runs)
to plaudit:   {"ready": true} once. A run's account comes from the run's PID 1 on its account
              pipe, one line: {"status": int | null (ended on request), "cpu_s": float,
              "maxrss_kb": int}; none when that PID 1 had to be killed.

At its start the server loads what programs commonly import and plaudit's own in-sandbox
files (compiled once), takes a user namespace of its own (its uid mapped, nothing else) and
a PID namespace whose PID 1, Z, serves; every process of the server is not dumpable.
Per run (see sandbox.py's docstring for the whole design):
  Z --fork--> B: PID 1 of a new PID namespace (Z's own is restored for the next fork): reads
                 the job, sets the run's process limit, takes new mount, IPC and UTS
                 namespaces, mounts a fresh tmpfs at /work, /tmp, /dev/shm and /code (the
                 run's files, then read-only) and a /proc of its namespace only, then a user
                 namespace of the run's own (so no right over the server's), the run's
                 rlimits; forks C and reaps until C ends (or Z asks for the end: SIGTERM), then
                 kills and reaps whatever the run left, sends plaudit C's exit (code, or 128 +
                 signal) with the CPU time and peak memory of all it reaped, and ends (with it
                 the namespaces)
  B --fork--> C: a new session keyring, no capabilities, no new privileges; descriptors
                 0-2 and the named ones in place, every other closed; a clean environment;
                 then the script in this interpreter, with a fresh __main__
Z waits until B has gone before it forks the next run, and on plaudit's request (the
deadline) asks B to end the run, killing B (and with it every process of the run) when it
does not within END_GRACE_S. Z never reads what a run did: B is reaped by the kernel
(SIGCHLD ignored) and its account goes to plaudit, so no later run, a fork of Z, finds an
earlier one's exit status or times in its memory.
"""
import array
import base64
import ctypes
import fcntl
import hashlib
import json
import os
import resource
import select
import signal
import socket
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_RDONLY, MS_REMOUNT, MS_BIND = 2, 4, 8, 1, 32, 4096
PR_SET_DUMPABLE, PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 4, 1, 38, 36
KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 280, "s390x": 280}.get(os.uname().machine)
MAX_FDS = 16
RUN_SIGNALS = {signal.SIGCHLD, signal.SIGTERM}  # what B waits for: C's end, or the server's request to end
END_GRACE_S = 2.0
SETUP_FAILED = 125  # B or C could not set the run up: the run's exit status, with a message on stderr

# What programs commonly import, loaded once here so that a run does not: the standard library
# only, and nothing that starts a thread or opens a descriptor at import.
PRELOAD = ("abc ast array base64 binascii bisect calendar cmath codecs collections collections.abc contextlib "
           "copy csv dataclasses datetime decimal difflib enum fractions functools hashlib heapq inspect io "
           "itertools json keyword math numbers operator pprint queue random re runpy statistics string "
           "struct textwrap time traceback types typing unicodedata warnings").split()

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
TRUSTED = "/server/trusted"  # plaudit's own in-sandbox files (exec_program.py, exec_judge.py, plain_data.py)
compiled = {}  # (path in /code, sha256 of its text) -> code: a trusted script is not compiled again per run
preloaded = {}  # module name -> sha256 of its text: kept for a run whose /code holds the same file


def _check(result, what):
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, data=None):
    _check(libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                      flags, data.encode() if data else None), f"mount {target}")


def main():
    control = socket.socket(fileno=int(sys.argv[1]))
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl dumpable")  # no process of this uid may trace us
    for name in PRELOAD:
        try:
            __import__(name)
        except ImportError:
            pass
    _load_trusted()
    import gc
    gc.collect()
    gc.freeze()  # what is loaded now is never collected: a run does not copy it page by page to scan it
    sys.stdout.flush()
    # A user namespace of the server's own (its uid mapped, nothing else), where it may make a
    # PID namespace per run; Z, PID 1 of a first one, serves (this process waits for it).
    _map_own_ids(CLONE_NEWUSER)
    _check(libc.unshare(CLONE_NEWPID), "unshare pid")
    z = os.fork()
    if z != 0:
        control.close()
        _, status = os.waitpid(z, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)
    global own_pid_namespace
    own_pid_namespace = os.open("/proc/self/ns/pid", os.O_RDONLY)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # runs are reaped by the kernel: no run's status is read here
    control.send(json.dumps({"ready": True}).encode())
    waiting = None
    while True:
        message, fds = waiting or _receive(control)
        waiting = None
        if message is None:  # plaudit has gone
            os._exit(0)
        if message.get("op") != "run":
            for fd in fds:
                os.close(fd)
            continue  # a kill that came after its run had ended
        waiting = _serve(control, fds)


def _map_own_ids(flags):
    """unshare(flags), which holds CLONE_NEWUSER, mapping only this process's uid and gid."""
    uid, gid = os.getuid(), os.getgid()
    _check(libc.unshare(flags), "unshare")
    _check(libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), "prctl dumpable")  # its own /proc/self is its own again
    try:
        for path, text in (("/proc/self/setgroups", "deny"), ("/proc/self/uid_map", f"{uid} {uid} 1"),
                           ("/proc/self/gid_map", f"{gid} {gid} 1")):
            with open(path, "w") as f:
                f.write(text)
    finally:
        _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl dumpable")  # and no run's process may trace it


def _load_trusted():
    """plaudit's own in-sandbox files, compiled once as they will be run from /code, and the
    modules among them imported (a run keeps one only when its /code holds the same text)."""
    import importlib.util
    for name in sorted(os.listdir(TRUSTED)) if os.path.isdir(TRUSTED) else []:
        with open(os.path.join(TRUSTED, name), "rb") as f:
            source = f.read()
        digest = hashlib.sha256(source).digest()
        compiled[(f"/code/{name}", digest)] = compile(source, f"/code/{name}", "exec")
        module_name = name[:-3]
        if name.endswith(".py") and not module_name.startswith("exec_"):
            spec = importlib.util.spec_from_file_location(module_name, f"/code/{name}")
            module = importlib.util.module_from_spec(spec)
            exec(compiled[(f"/code/{name}", digest)], module.__dict__)
            sys.modules[module_name] = module
            preloaded[module_name] = digest


def _receive(control):
    fds = array.array("i")
    try:
        data, ancillary, _, _ = control.recvmsg(1 << 16, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
    except (ConnectionError, OSError):
        return None, []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[:len(payload) - len(payload) % fds.itemsize])
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    try:
        return json.loads(data), list(fds)
    except ValueError:
        return {}, list(fds)


def _serve(control, fds):
    """One run: fork B; wait until it has gone, or end it when plaudit says. Nothing of the
    run comes back here: B sends its account to plaudit itself, and the kernel reaps it.
    Returns the next run's request when it came before B had gone (it waits until then)."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, RUN_SIGNALS)  # B starts with them blocked (see _run_b)
    _check(libc.unshare(CLONE_NEWPID), "unshare pid")  # the next child is PID 1 of a new namespace
    b = os.fork()
    if b == 0:
        code = SETUP_FAILED
        try:
            control.close()
            os.close(own_pid_namespace)
            code = _run_b(fds)
        finally:
            os._exit(code)
    _check(libc.setns(own_pid_namespace, CLONE_NEWPID), "setns")  # and the one after it is again in ours
    signal.pthread_sigmask(signal.SIG_UNBLOCK, RUN_SIGNALS)
    for fd in fds:  # the run's descriptors are the run's alone now
        os.close(fd)
    try:
        b_fd = os.pidfd_open(b)
    except ProcessLookupError:  # gone already
        return None
    try:
        while not select.select([b_fd, control], [], [])[0].count(b_fd):
            message, extra = _receive(control)
            if message is None or message.get("op") == "kill":
                _end(b_fd)
                if message is None:  # plaudit has gone
                    os._exit(0)
                return None
            select.select([b_fd], [], [])  # the next run (its account read, this one's B is ending)
            return message, extra
        return None
    finally:
        os.close(b_fd)


def _end(b_fd):
    """End a run: B, asked, kills every process of it and sends its account; one that does not
    within END_GRACE_S is killed, and the namespace with it. Returns when B has gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(b_fd, sig)
        except ProcessLookupError:
            return
        if select.select([b_fd], [], [], END_GRACE_S)[0]:
            return
    select.select([b_fd], [], [])


def _say(fd, text):
    try:
        os.write(fd, text.encode())
    except OSError:
        pass


def _run_b(fds):
    """PID 1 of the run's PID namespace: its other namespaces, its file system, its limits,
    then the program in C; at C's end (or when the server asks, SIGTERM) every process of the
    run killed and reaped, and the account of them all sent to plaudit on the account pipe."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # reaped here, with their usage (still blocked: see _serve)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl pdeathsig")  # the server gone: the run
    account_fd, status = fds[1], SETUP_FAILED
    try:
        status = _set_up_and_wait(fds[0], fds[2:])
    except BaseException as e:  # noqa: BLE001
        _say(fds[4] if len(fds) > 4 else 2, f"warm sandbox: the run could not start: {e}\n")
    for _ in range(100_000):  # the run is over: what it left is killed and reaped, so that its work counts
        try:
            os.kill(-1, signal.SIGKILL)  # every process of this namespace but B
        except ProcessLookupError:
            pass
        try:
            os.wait()
        except ChildProcessError:
            break
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    _say(account_fd, json.dumps({"status": status, "cpu_s": usage.ru_utime + usage.ru_stime,
                                 "maxrss_kb": usage.ru_maxrss}) + "\n")
    return 0


def _set_up_and_wait(job_fd, fds):
    """C's exit status (code, or 128 + signal), or None when the server asked for the end."""
    job = json.loads(os.pread(job_fd, os.fstat(job_fd).st_size, 0))
    os.close(job_fd)
    limits = job["limits"]
    nproc = limits["processes"] + 2  # the server's two processes and B count beside the program's, as bwrap's
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    _check(libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS), "unshare")
    work = f"size={limits['work_mb'] << 20},mode=1777"
    _mount("tmpfs", "/work", "tmpfs", MS_NOSUID | MS_NODEV, work)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, work)
    _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, work)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    files = job["files"]
    _mount("tmpfs", "/code", "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={sum(len(v) for v in files.values()) + (1 << 20)},mode=755")
    for name, data in files.items():
        path = os.path.join("/code", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
    _mount(None, "/code", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _map_own_ids(CLONE_NEWUSER)  # and a user namespace of the run's own: none of the server's rights over it
    for limit, value in ((resource.RLIMIT_CPU, limits["cpu_s"]), (resource.RLIMIT_AS, limits["memory_mb"] << 20),
                         (resource.RLIMIT_FSIZE, limits["work_mb"] << 20), (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(limit, (value, value))
    c = os.fork()
    if c == 0:
        try:
            _run_c(job, fds)
        except BaseException as e:  # noqa: BLE001
            _say(2, f"warm sandbox: the run could not start: {e}\n")
        os._exit(SETUP_FAILED)
    for fd in fds:
        os.close(fd)
    while True:  # reap whatever the run orphans, until C ends or the server asks for the end
        if signal.sigwaitinfo(RUN_SIGNALS).si_signo == signal.SIGTERM:
            return None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return SETUP_FAILED
            if pid == 0:
                break
            if pid == c:
                return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _run_c(job, fds):
    """The program's process: its descriptors, no privileges, then the program."""
    signal.pthread_sigmask(signal.SIG_SETMASK, set())  # as a fresh process has them
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]  # out of the way of 0..n-1
    for i, fd in enumerate(moved):
        os.dup2(fd, i)
    os.closerange(len(moved), 1 << 16)  # nothing of the server's, nor of the setup, stays open
    if SYS_KEYCTL is None:  # no keyring of the run's own: no warm run (the probe at start turns the path off)
        raise OSError("keyctl: unknown on this machine")
    _check(int(libc.syscall(SYS_KEYCTL, KEYCTL_JOIN_SESSION_KEYRING, None) < 0), "keyctl")  # the run's own keyring
    _check(libc.capset(ctypes.byref(_CapHeader(0x20080522, 0)), (_CapData * 2)()), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl no_new_privs")
    os.chdir("/work")
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "HOME": "/work", "LANG": "C.UTF-8", **dict(job["env"])})
    argv = job["argv"]
    script = next(a for a in argv[1:] if not a.startswith("-"))
    sys.argv = argv[argv.index(script):]
    _run_program(script)


def _run_program(script):
    """As the interpreter runs a script: a fresh __main__, SystemExit's code, a traceback of
    the program's own frames, non-daemon threads joined, atexit, stdio flushed."""
    import atexit
    import builtins
    import importlib.machinery
    import threading
    import types
    for name, digest in preloaded.items():  # a preloaded module stays only where /code holds its very text
        try:
            with open(f"/code/{name}.py", "rb") as f:
                same = hashlib.sha256(f.read()).digest() == digest
        except OSError:
            same = False
        if not same:
            sys.modules.pop(name, None)
    code = 0
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __builtins__=builtins, __cached__=None,
                         __loader__=importlib.machinery.SourceFileLoader("__main__", script))
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            source = f.read()
        program = compiled.get((script, hashlib.sha256(source).digest())) or compile(source, script, "exec")
        exec(program, main.__dict__)
    except SystemExit as e:
        code = _exit_code(e.code)
    except BaseException as e:  # noqa: BLE001  the program's failure
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != script:
            tb = tb.tb_next
        try:
            sys.excepthook(type(e), e.with_traceback(tb), tb)
        except BaseException:  # noqa: BLE001
            pass
        code = 1
    try:
        threading._shutdown()
    except BaseException:  # noqa: BLE001
        pass
    try:
        atexit._run_exitfuncs()
    except BaseException:  # noqa: BLE001
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:  # noqa: BLE001
            code = code or 120
    os._exit(code)


def _exit_code(value):
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    try:
        print(value, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        pass
    return 1


if __name__ == "__main__":
    main()
