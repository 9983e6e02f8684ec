"""Start-up time with the default models and judge: from launching `plaudit serve` with no
config (BT, GPM and PRM loaded, llama.cpp started for the local judge) to GET /readyz 200.
What a restarted reward server costs a training run that waits for it."""
from __future__ import annotations

import tempfile
from pathlib import Path

from . import serving


def run() -> dict:
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-startup-") as tmp, serving.plaudit(Path(tmp)) as service:
        return {"ready_s": round(service.ready_s, 1), "ready_rss_mib": round(service.rss_mib(), 1)}
