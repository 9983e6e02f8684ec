"""`plaudit serve`."""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

def cmd_serve(args) -> None:
    from plaudit.service.config import load_config
    from plaudit.service.feedback_ids import share_with_workers

    if args.config:
        os.environ["PLAUDIT_CONFIG"] = str(Path(args.config).resolve())
    config = load_config()  # fail on a bad config here, before BentoML starts
    # One key for all the workers this server starts (they inherit the environment), said once.
    if not share_with_workers(config.monitoring.feedback_key):
        logging.getLogger("plaudit").warning(
            "feedback ids are signed with a key made for this start and shared by its workers only: labels for "
            "ids served before a restart or by another replica are refused (reason other_key in "
            "plaudit_feedback_unmatched_total). Set monitoring.feedback_key or $PLAUDIT_FEEDBACK_KEY to one "
            "secret for every replica to keep them")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # Become the small supervisor: waiting on BentoML needs nothing this process imported.
    os.execv(sys.executable, [sys.executable, "-m", "plaudit.service.supervise", args.host, str(args.port)])


def serve_flags(p) -> None:
    p.add_argument("--config", help="YAML config naming the models (default: the embedded default model)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.set_defaults(run=cmd_serve)


COMMANDS = {"serve": ("start the HTTP scoring service (BentoML)", serve_flags)}
