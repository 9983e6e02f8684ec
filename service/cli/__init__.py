"""The `plaudit` command: the same functions and schemas as the HTTP API, from a shell.

Each command group is a module here whose COMMANDS map a command to its help and the
function that adds its flags, beside their handlers (serving, batches, models, training,
data). Only the group of the command being run builds
its parser in full and imports what it needs, so `plaudit --help` and a typo cost no torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

GROUPS = ("serving", "batches", "models", "evaluation", "training", "data")  # modules of this package


def _groups():
    return [importlib.import_module(f"{__name__}.{name}") for name in GROUPS]


def parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line, or, given the arguments, with only their command built in full."""
    top = argparse.ArgumentParser(prog="plaudit", description="Reward models and judges behind one scoring API.")
    sub = top.add_subparsers(dest="command", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for group in _groups():
        for command, (help_text, build) in group.COMMANDS.items():
            p = sub.add_parser(command, help=help_text)
            if argv is None or command == chosen:  # the others' flags are built when they run
                build(p)
    return top


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per request would bury the progress bar
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv).parse_args(argv)
    from pydantic import ValidationError
    from transformers.utils import logging as hf_logging

    from plaudit.rewardmodels import InputError, ModelLoadError

    hf_logging.disable_progress_bar()
    try:
        args.run(args)
    except (InputError, ModelLoadError) as e:
        sys.exit(f"plaudit: error: {e}")
    except ValidationError as e:
        sys.exit(f"plaudit: error: {e}")
