"""Runs in the sandbox around a program that was sent files or asked for some back (standard
library only; never imported by plaudit): copies the files sent into the working folder, runs the
program there with this process's stdin, stdout and stderr, then writes the files asked for
on the result channel as {path: base64} and ends as the program ended (its exit status, or
the signal that killed it).

argv: result_fd fetch_json files_folder|"" -- program argv...
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys


def main():
    result_fd, fetch, files = int(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    program = sys.argv[sys.argv.index("--") + 1:]
    if files:
        shutil.copytree(files, os.getcwd(), dirs_exist_ok=True)
    code = subprocess.call(program)  # the program gets none of this process's descriptors beyond 0-2
    fetched = {}
    for path in fetch:
        try:
            with open(path, "rb") as f:
                fetched[path] = base64.b64encode(f.read()).decode()
        except OSError:
            pass  # as SandboxFusion: a file that is not there is left out
    with os.fdopen(result_fd, "w") as channel:
        json.dump(fetched, channel)
    if code < 0:  # killed by a signal: end the same way, so the sandbox reports it as such
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


if __name__ == "__main__":
    main()
