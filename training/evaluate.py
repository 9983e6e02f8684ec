"""Held-out evaluation of any scorer on preference pairs."""
from __future__ import annotations

from rewardmodels.base import Pair, Scorer

from .data import PreferencePair


def eval_pairs(scorer: Scorer, pairs: list[PreferencePair]) -> dict:
    """Accuracy (a tie counts 0.5) and mean margin of chosen over rejected."""
    result = scorer.compare([Pair(prompt=p.prompt, a=p.chosen, b=p.rejected) for p in pairs])
    wins = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in result.margins)
    return {"model": scorer.name, "pairs": len(pairs), "accuracy": wins / len(pairs),
            "mean_margin": sum(result.margins) / len(pairs),
            "ties": sum(m == 0 for m in result.margins), "truncated": sum(result.truncated)}
