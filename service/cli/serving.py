"""`plaudit serve`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

def cmd_serve(args) -> None:
    from plaudit.service.config import load_config

    if args.config:
        os.environ["PLAUDIT_CONFIG"] = str(Path(args.config).resolve())
    load_config()  # fail on a bad config here, before BentoML starts
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # Become the small supervisor: waiting on BentoML needs nothing this process imported.
    os.execv(sys.executable, [sys.executable, "-m", "plaudit.service.supervise", args.host, str(args.port)])


def serve_flags(p) -> None:
    p.add_argument("--config", help="YAML config naming the models (default: the embedded default model)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.set_defaults(run=cmd_serve)


COMMANDS = {"serve": ("start the HTTP scoring service (BentoML)", serve_flags)}
