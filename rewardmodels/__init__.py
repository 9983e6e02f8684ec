"""Reward-model families behind one scorer interface.

    from plaudit.rewardmodels import load_scorer, Item
    rm = load_scorer("plaudit/models/default-bt")  # in a checkout; or any checkpoint directory
    rm.score([Item(prompt="2+2?", response="4")]).rewards
"""
from .base import (AGGREGATES, Comparison, InputError, Item, LimitExceeded, Message, ModelLoadError, Pair, Ranking,
                   Scorer, Scores, Steps, StepScores, UnsupportedOperation)
from .encoding import Batching
from .registry import KINDS, load_scorer

__all__ = ["AGGREGATES", "Batching", "Comparison", "InputError", "Item", "KINDS", "LimitExceeded", "Message",
           "ModelLoadError",
           "Pair", "Ranking", "Scorer", "Scores", "StepScores", "Steps", "UnsupportedOperation", "load_scorer"]
