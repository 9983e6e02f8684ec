"""Held-out evaluation: any scorer on preference pairs, a process reward model on step labels."""
from __future__ import annotations

from plaudit.rewardmodels.base import AGGREGATES, Pair, Scorer, Steps

from .data import PreferencePair, StepRecord


def eval_pairs(scorer: Scorer, pairs: list[PreferencePair]) -> dict:
    """Accuracy (a tie counts 0.5) and mean margin of chosen over rejected."""
    result = scorer.compare([Pair(prompt=p.prompt, a=p.chosen, b=p.rejected) for p in pairs])
    wins = sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in result.margins)
    return {"model": scorer.name, "pairs": len(pairs), "accuracy": wins / len(pairs),
            "mean_margin": sum(result.margins) / len(pairs),
            "ties": sum(m == 0 for m in result.margins), "truncated": sum(result.truncated)}


def auroc(scores: list[float], labels: list[bool]) -> float | None:
    """Area under the ROC curve: P(a random positive outscores a random negative), ties 0.5
    (Mann-Whitney with average ranks). None when one class is absent."""
    positives = sum(labels)
    negatives = len(labels) - positives
    if not positives or not negatives:
        return None
    order = sorted(range(len(scores)), key=scores.__getitem__)
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for k in range(start, end + 1):
            ranks[order[k]] = (start + end) / 2 + 1
        start = end + 1
    positive_ranks = sum(r for r, y in zip(ranks, labels) if y)
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def eval_steps(scorer: Scorer, records: list[StepRecord]) -> dict:
    """Step-level AUROC (good steps should score higher) and accuracy at 0.5; for traces with
    a bad step, how often the lowest-scored step is the first bad one; and trace-level AUROC
    of the model's aggregate against "every step is good"."""
    scored = scorer.score_steps([Steps(prompt=r.prompt, steps=r.completions) for r in records])
    rewards = [x for s in scored for x in s.step_rewards]
    labels = [y for r in records for y in r.labels]
    flawed = [(s.step_rewards, r.labels.index(False)) for s, r in zip(scored, records) if False in r.labels]
    combine = AGGREGATES[scorer.metadata.get("aggregate", "min")]
    return {"model": scorer.name, "records": len(records), "steps": len(labels), "bad_steps": labels.count(False),
            "step_auroc": auroc(rewards, labels),
            "step_accuracy": sum((x > 0.5) == y for x, y in zip(rewards, labels)) / len(labels),
            "first_bad_step_found": (sum(min(range(len(r)), key=r.__getitem__) == bad for r, bad in flawed)
                                     / len(flawed)) if flawed else None,
            "trace_auroc": auroc([combine(s.step_rewards) for s in scored], [all(r.labels) for r in records]),
            "truncated": sum(s.truncated for s in scored)}
