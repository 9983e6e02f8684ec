"""Reward-model families behind one scorer interface.

    from plaudit.rewardmodels import load_scorer, Item
    rm = load_scorer("plaudit/models/default-bt")  # in a checkout; or any checkpoint directory
    rm.score([Item(prompt="2+2?", response="4")]).rewards
"""
from .base import (AGGREGATES, Comparison, InputError, Item, LimitExceeded, Message, ModelLoadError, Pair, Ranking,
                   Scorer, Scores, Steps, StepScores, UnsupportedOperation)
from .batch_limits import Batching


def __getattr__(name: str):
    """The registry loads on first use: it brings torch, which the schemas, the config and
    the command line do not need."""
    if name in ("KINDS", "load_scorer"):
        from . import registry
        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["AGGREGATES", "Batching", "Comparison", "InputError", "Item", "KINDS", "LimitExceeded", "Message",
           "ModelLoadError",
           "Pair", "Ranking", "Scorer", "Scores", "StepScores", "Steps", "UnsupportedOperation", "load_scorer"]
