"""Leaderboards from pairwise judgments, as Arena-Hard-Auto computes them.

Each battle is a question judged between two models (Arena-Hard: every model against one
baseline, in both orders). A Bradley-Terry model is fitted by logistic regression
(scikit-learn) on a design matrix with +1 for model A and -1 for model B. A battle's outcome
is A's share of the win: 1 or 0 for a verdict, 0.5 for a tie, or a judge's P(A beats B)
(two rows, weighted by the share each way); a strong verdict (`A>>B`) counts
`STRONG_WEIGHT` times. Strengths are
on Elo's scale (400 / ln 10 points a logit, the baseline at 1000), and a model's win rate
against the baseline is the Bradley-Terry probability of its strength over the baseline's.
Intervals come from bootstrap rounds over the battles (numpy's generator, seeded): the 5th
to 95th percentile, a 90% interval. With style control the fit also takes the battles'
style differences (normalised length, markdown densities; scaled to unit spread) as features, so that a model
paid for being longer is scored as if both answers had the same style.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

ELO_PER_LOGIT = 400 / math.log(10)
STRONG_WEIGHT = 3  # Arena-Hard counts A>>B and B>>A three times
VERDICTS = {"A>>B": (1.0, STRONG_WEIGHT), "A>B": (1.0, 1), "A=B": (0.5, 1), "B>A": (0.0, 1),
            "B>>A": (0.0, STRONG_WEIGHT)}
INTERVAL = (5.0, 95.0)  # percentiles of the bootstrap: a 90% interval


@dataclass(frozen=True)
class Battle:
    """One judgment: `outcome` is a's share of the win (1: a won, 0: b won, 0.5: a tie, or a
    judge's probability); `style` holds a's style minus b's, feature by feature."""

    model_a: str
    model_b: str
    outcome: float
    weight: float = 1.0
    style: tuple[float, ...] = ()


def battle(model_a: str, model_b: str, verdict: str, style: tuple[float, ...] = ()) -> Battle:
    """A battle from an Arena-Hard verdict label (`A>>B` ... `B>>A`)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    outcome, weight = VERDICTS[verdict]
    return Battle(model_a, model_b, outcome, weight, style)


def strengths(battles: Sequence[Battle], baseline: str, style_control: bool = False) -> dict[str, float]:
    """Bradley-Terry strengths on Elo's scale, the baseline at 1000."""
    from sklearn.linear_model import LogisticRegression

    models = sorted({m for b in battles for m in (b.model_a, b.model_b)})
    if baseline not in models:
        raise ValueError(f"the baseline {baseline!r} is in no battle")
    column = {m: i for i, m in enumerate(models)}
    features = len(battles[0].style) if style_control else 0
    if features:  # scaled to unit spread, as Arena-Hard's z-score, but not shifted: a battle read
        # the other way round keeps exactly the opposite features
        styles = np.array([b.style for b in battles], dtype=float)
        spread = np.sqrt((styles ** 2).mean(axis=0))
        styles = styles / np.where(spread > 0, spread, 1.0)
    rows, labels, weights = [], [], []
    for i, b in enumerate(battles):
        row = np.zeros(len(models) + features)
        row[column[b.model_a]], row[column[b.model_b]] = 1.0, -1.0
        if features:
            row[len(models):] = styles[i]
        for label, share in ((1, b.outcome), (0, 1.0 - b.outcome)):
            if share > 0:
                rows.append(row)
                labels.append(label)
                weights.append(b.weight * share)
    if len(set(labels)) < 2:
        raise ValueError("every battle has the same outcome: the strengths are not finite")
    fit = LogisticRegression(fit_intercept=False, C=1e6, max_iter=1000)  # (almost) unpenalised, as Arena-Hard
    fit.fit(np.array(rows), np.array(labels), sample_weight=np.array(weights))
    logits = fit.coef_[0][:len(models)]
    anchor = logits[column[baseline]]
    return {m: 1000.0 + ELO_PER_LOGIT * (logits[column[m]] - anchor) for m in models}


def win_rate(strength: float, baseline_strength: float = 1000.0) -> float:
    """P(the model beats the baseline), in percent, from their strengths."""
    return 100.0 / (1.0 + 10 ** ((baseline_strength - strength) / 400.0))


def leaderboard(battles: Sequence[Battle], baseline: str, *, rounds: int = 100, seed: int = 0,
                style_control: bool = False) -> list[dict]:
    """One row a model, best first: strength and win rate against the baseline, each with its
    bootstrap interval (`lower`, `upper`), and the battles it was in."""
    point = strengths(battles, baseline, style_control)
    rng = np.random.default_rng(seed)
    drawn = []
    for _ in range(rounds):
        sample = [battles[i] for i in rng.integers(0, len(battles), len(battles))]
        try:
            drawn.append(strengths(sample, baseline, style_control))
        except ValueError:  # a round without the baseline, or with one outcome only: skipped, counted
            continue
    counts = {m: sum(m in (b.model_a, b.model_b) for b in battles) for m in point}
    rows = []
    for model, strength in point.items():
        values = np.array([d[model] for d in drawn if model in d])
        low, high = np.percentile(values, INTERVAL) if len(values) else (math.nan, math.nan)
        rows.append({"model": model, "score": strength, "score_lower": float(low), "score_upper": float(high),
                     "win_rate": win_rate(strength), "lower": win_rate(float(low)), "upper": win_rate(float(high)),
                     "battles": counts[model]})
    rows.sort(key=lambda r: -r["score"])
    for row in rows:
        row["interval"] = f"{INTERVAL[1] - INTERVAL[0]:.0f}% bootstrap ({len(drawn)} of {rounds} rounds, seed {seed})"
    return rows
