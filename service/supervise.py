"""What `plaudit serve` becomes once the config is checked: a small process (no torch) that
runs `bentoml serve`, forwards SIGTERM, and turns a model that cannot be served into the
reason and a non-zero exit, where BentoML alone would respawn the failing worker forever.

    python -m plaudit.service.supervise HOST PORT
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import plaudit

# Where `plaudit` imports from (site-packages, or the checkout of an editable install):
# BentoML's working directory, so its import of the service finds this same plaudit.
IMPORT_ROOT = Path(plaudit.__file__).resolve().parent.parent


def _wait(process: subprocess.Popen) -> int | None:
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the server too (same process group); it is shutting down
        return None


def main(host: str, port: str) -> None:
    bentoml = Path(sys.executable).with_name("bentoml")
    with tempfile.TemporaryDirectory() as tmp:
        error_file = Path(tmp) / "startup-error"
        os.environ["PLAUDIT_STARTUP_ERROR_FILE"] = str(error_file)  # written by service.app on failure
        server = subprocess.Popen([str(bentoml), "serve", "plaudit.service.app:Plaudit",
                                   "--working-dir", str(IMPORT_ROOT),
                                   "--host", host, "--port", port])
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        while (code := _wait(server)) is None:
            pass
        if error_file.exists():
            sys.exit(f"plaudit: error: {error_file.read_text()}")
    sys.exit(code)


if __name__ == "__main__":
    main(*sys.argv[1:3])
