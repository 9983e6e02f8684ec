"""The warm sandbox (sandbox.py, exec_forkserver.py): Python runs start as forks of an
interpreter already running in the slot's sandbox, and nothing passes from one run to the
next: no process, no file, no module state, no open descriptor; the server itself is out of
the programs' reach, and a server that goes is replaced. (The hostile and forging suites run
on the default path, which is this one.)"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from plaudit.rewardmodels.execution import ExecutionSettings
from plaudit.rewardmodels.sandbox import (WARM_UID_OFFSET, Job, Sandbox, SandboxLimits,
                                          sandbox_unavailable)

pytestmark = pytest.mark.skipif(sandbox_unavailable() is not None, reason="no bubblewrap sandbox here")


@pytest.fixture(scope="module")
def warm():
    sandbox = Sandbox("bwrap", slots=1)  # one slot: every run below goes through the same server
    assert sandbox.warm, "the warm path did not start here"
    yield sandbox
    sandbox.close()


def run(sandbox: Sandbox, code: str, stdin: bytes = b"", wall_s: float = 10.0):
    if wall_s != sandbox.limits.wall_s:
        limits = SandboxLimits(wall_s=wall_s, cpu_s=int(wall_s) + 1)
        return sandbox.run_job(Job((sandbox.python, "-I", "-B", "/code/main.py"), None, stdin, limits=limits,
                                   files={"main.py": code}))
    return sandbox.run({"main.py": code}, ["main.py"], stdin)


def report(sandbox: Sandbox, code: str) -> dict:
    result = run(sandbox, code)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return json.loads(result.stdout)


def server_pids(sandbox: Sandbox) -> set[int]:
    return {server.process.pid for server in sandbox._servers.values() if server.alive()}


def test_warm_is_the_default_and_the_cold_path_stays_available(warm):
    assert ExecutionSettings().warm is True
    assert run(warm, "print(6 * 7)").stdout == b"42\n"
    assert server_pids(warm)  # it ran in a fork server
    arguments = warm.run({"main.py": "import sys\nprint(sys.argv)\n"}, ["main.py", "-5", "x"])
    assert arguments.stdout == b"['/code/main.py', '-5', 'x']\n"
    assert warm._warm_flags(Job((warm.python, "-I", "-B", "/code/main.py", "-5"), None)) == ("-B", "-I")
    cold = Sandbox("bwrap", slots=1, warm=False)
    assert run(cold, "print(6 * 7)").stdout == b"42\n" and not cold._servers


PROGRAMS = {
    "exit code": "import sys\nprint('out')\nsys.exit(3)\n",
    "exit message": "raise SystemExit('bye')\n",
    "exception": "def f():\n    raise ValueError('no')\nf()\n",
    "syntax error": "def f(:\n",
    "stdin": "import sys\nprint(sys.stdin.read().upper(), end='')\nprint('e', file=sys.stderr)\n",
    "killed": "import os, signal\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n",
    "atexit and threads": ("import atexit, threading, time\natexit.register(lambda: print('atexit'))\n"
                           "threading.Thread(target=lambda: (time.sleep(0.2), print('thread'))).start()\n"),
    "main": "import __main__, sys\nprint(__name__, __main__.__file__, sys.argv, sys.path[0] != '/code')\n",
    "memory": "x = bytearray(4 << 30)\n",
}


@pytest.mark.parametrize("name", PROGRAMS)
def test_a_warm_run_looks_like_a_cold_one(warm, name):
    cold = Sandbox("bwrap", slots=1, warm=False)
    code = PROGRAMS[name]
    a, b = run(warm, code, b"hello\n"), run(cold, code, b"hello\n")
    assert (a.returncode, a.stdout) == (b.returncode, b.stdout), (a, b)
    assert a.stderr.splitlines()[-1:] == b.stderr.splitlines()[-1:]
    if b"Traceback" in b.stderr:  # the program's own frames only, not the server's
        assert a.stderr == b.stderr


def test_no_process_outlives_its_run(warm):
    left = run(warm, "import os, subprocess\n"
                     "subprocess.Popen(['/usr/bin/sleep', '4321.5'], start_new_session=True)\n"
                     "if os.fork() == 0:\n    os.setsid()\n    import time\n    time.sleep(4321.5)\n"
                     "print('left')\n")
    assert left.stdout == b"left\n"
    time.sleep(0.3)
    listing = subprocess.run(["ps", "-ww", "-eo", "args="], capture_output=True, text=True).stdout
    assert "4321.5" not in listing
    seen = report(warm, "import os, json\nprint(json.dumps(sorted(int(p) for p in os.listdir('/proc') "
                        "if p.isdigit())))\n")
    assert seen == [1, 2]  # the run's PID 1 (its reaper) and the program: nothing else is visible


WRITE_EVERYWHERE = """
import json, os
wrote = []
for top in ("/", "/work", "/tmp", "/dev", "/dev/shm", "/code", "/usr", "/server", "/proc/self"):
    for folder, dirs, _ in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(folder, d) not in ("/proc", "/sys", "/usr")]
        try:
            with open(os.path.join(folder, "plaudit-marker"), "w") as f:
                f.write("run 1")
            wrote.append(folder)
        except OSError:
            pass
print(json.dumps(wrote))
"""

FIND_MARKERS = """
import json, os
found = [os.path.join(folder, name) for top in ("/", "/proc/self") for folder, dirs, names in os.walk(top)
         for name in names if name == "plaudit-marker" and not folder.startswith("/proc/1/")]
print(json.dumps(found))
"""


def test_no_file_outlives_its_run(warm):
    wrote = report(warm, WRITE_EVERYWHERE)
    assert {"/work", "/tmp", "/dev/shm"} <= set(wrote)  # where a run may write
    assert report(warm, FIND_MARKERS) == []


def test_no_module_state_outlives_its_run(warm):
    report(warm, "import builtins, collections, json, os, sys\n"
                 "builtins.len = lambda x: 42\njson.dumps = None\ncollections.planted = 1\n"
                 "sys.modules['planted'] = sys\nsys.path.append('/planted')\nos.environ['PLANTED'] = '1'\n"
                 "import random\nrandom.seed(7)\nprint('{}')\n")
    seen = report(warm, "import builtins, collections, json, os, sys, random\n"
                        "print(json.dumps({'len': len([1]), 'attribute': hasattr(collections, 'planted'), "
                        "'module': 'planted' in sys.modules, 'path': '/planted' in sys.path, "
                        "'env': 'PLANTED' in os.environ, 'random': random.random()}))\n")
    assert seen["len"] == 1 and not seen["attribute"] and not seen["module"] and not seen["path"]
    assert not seen["env"]
    again = report(warm, "import json, random\nprint(json.dumps({'random': random.random()}))\n")
    assert again["random"] != seen["random"]  # each run draws its own seed, as a fresh interpreter does


def test_no_descriptor_outlives_its_run(warm):
    listing = "import os, json\nprint(json.dumps(sorted(int(fd) for fd in os.listdir('/proc/self/fd'))))\n"
    before = report(warm, listing)
    report(warm, "import os, socket\nfd = os.open('/work/x', os.O_CREAT | os.O_RDWR)\nos.dup2(fd, 50)\n"
                 "r, w = os.pipe()\nos.dup2(w, 51)\ns = socket.socket()\nos.dup2(s.fileno(), 52)\n"
                 "os.set_inheritable(50, True)\nprint('{}')\n")
    after = report(warm, listing)
    assert after == before and not {50, 51, 52} & set(after)
    assert max(after) <= 4  # 0-2, the result channel and the listing's own descriptor


def test_the_server_is_out_of_the_programs_reach(warm):
    report(warm, "print('{}')")
    servers = server_pids(warm)
    hostile = report(warm, """
import ctypes, json, os, signal
libc = ctypes.CDLL(None, use_errno=True)
sent = []
for pid in range(1, 4096):
    if pid != os.getpid():
        try:
            os.kill(pid, signal.SIGKILL)
            sent.append(pid)
        except OSError:
            pass
try:
    os.kill(-1, signal.SIGKILL)
except OSError:
    pass
traced = libc.ptrace(16, 1, None, None)  # PTRACE_ATTACH to the run's PID 1
try:
    environ = open("/proc/1/environ").read()
except OSError:
    environ = None
try:
    caps = [line for line in open("/proc/self/status") if line.startswith("CapEff")][0].split()[1]
except OSError:
    caps = None
print(json.dumps({"sent": sent, "traced": traced, "environ": environ, "caps": caps}))
""")
    assert hostile["sent"] in ([], [1])  # its own namespace: at most its reaper, which ignores the signal
    assert hostile["traced"] == -1 and hostile["environ"] is None and int(hostile["caps"], 16) == 0
    assert run(warm, "print(6 * 7)").stdout == b"42\n"
    assert server_pids(warm) == servers  # the same server, still serving


def test_a_run_past_its_time_is_killed_and_the_next_starts_at_once(warm):
    endless = run(warm, "import os\nos.fork()\nwhile True:\n    pass\n", wall_s=1.0)
    assert endless.timed_out and endless.returncode is None
    start = time.monotonic()
    assert run(warm, "print(6 * 7)").stdout == b"42\n"
    assert time.monotonic() - start < 2


def test_a_server_that_goes_is_replaced(warm):
    report(warm, "print('{}')")
    (server,) = warm._servers.values()
    os.kill(server.sandbox_pid, signal.SIGKILL)  # its whole sandbox, from outside
    time.sleep(0.2)
    assert run(warm, "print(6 * 7)").stdout == b"42\n"
    assert server_pids(warm) and server.process is None or not server.alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="per-slot uids need root")
def test_the_server_runs_as_the_slots_uid(warm):
    run(warm, "print(6 * 7)")
    listing = subprocess.run(["ps", "-ww", "-eo", "uid=,args="], capture_output=True, text=True).stdout
    assert any(line.split()[0] == str(warm.uid_base + WARM_UID_OFFSET) and "exec_forkserver.py" in line
               for line in listing.splitlines())


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the syscall numbers below are x86_64's")
def test_no_ipc_object_or_key_outlives_its_run(warm):
    """System V shared memory and the session's and user's keyrings: each run has its own."""
    plant = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
shm = libc.shmget(0x504C4144, 4096, 0o1666)  # IPC_CREAT | 0666
keys = [libc.syscall(248, b"user", b"plaudit-mark", b"run 1", 5, ring) for ring in (-3, -4)]  # add_key
print(json.dumps({"shm": shm, "keys": keys}))
"""
    find = """
import ctypes, json
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
print(json.dumps({"shm": libc.shmget(0x504C4144, 0, 0),
                  "key": libc.syscall(249, b"user", b"plaudit-mark", None, 0)}))  # request_key
"""
    planted = report(warm, plant)
    assert planted["shm"] >= 0 and all(k > 0 for k in planted["keys"])  # the first run could make them
    assert report(warm, find) == {"shm": -1, "key": -1}  # the next one finds none


HOLD_EVERY_PROCESS = ("import os, time\nwhile True:\n    try:\n        if os.fork() == 0:\n            time.sleep(8)\n"
                      "            os._exit(0)\n    except OSError:\n        break\ntime.sleep(8)\n")
FORK_THREE = ("import os\nfor _ in range(3):\n    pid = os.fork()\n    if pid == 0:\n        os._exit(0)\n"
              "    os.waitpid(pid, 0)\nprint('forked')\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="per-slot uids and process limits need root")
def test_another_process_fork_bomb_does_not_fail_this_ones_runs():
    """Two processes on one host (a service's two workers, a batch job beside a service) hold
    uid blocks of their own. On the cold path a run's process limit counts every process of its
    uid on the host: with one uid for both, a program holding every process its slot may have,
    in the other process, failed this process's honest run ("Creating new namespace failed:
    Resource temporarily unavailable"). (A warm run counts in a user namespace of its own.)"""
    other = subprocess.Popen([sys.executable, "-c", (
        "from plaudit.rewardmodels.sandbox import Sandbox\n"
        "sandbox = Sandbox('bwrap', slots=1, warm=False)\nprint(sandbox.uid_base, flush=True)\n"
        f"sandbox.run({{'main.py': {HOLD_EVERY_PROCESS!r}}}, ['main.py'])\n")], stdout=subprocess.PIPE, text=True)
    cold = Sandbox("bwrap", slots=1, warm=False)
    try:
        other_base = int(other.stdout.readline())
        assert other_base != cold.uid_base
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until its run holds its slot's whole process limit
            uids = subprocess.run(["ps", "-eo", "uid="], capture_output=True, text=True).stdout.split()
            if uids.count(str(other_base)) >= SandboxLimits().processes:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the other process's program never held its process limit")
        done = run(cold, FORK_THREE)
        assert (done.returncode, done.stdout) == (0, b"forked\n"), done.stderr[-500:]
    finally:
        other.kill()
        other.wait()
        cold.close()
