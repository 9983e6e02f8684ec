"""`plaudit eval winrate`: win rates against a baseline, AlpacaEval 2's way: the raw win rate
(a tie is half a win) with its standard error, and the length-controlled (LC) win rate.

The LC win rate comes from a GLM per model on the judge's preference for the model:

    logit P(model wins on x) = theta + phi * tanh(delta_x / sd(delta)) + psi * difficulty_x

where delta_x is the baseline's answer length minus the model's (AlpacaEval's sign, in words
here, characters there), fitted by logistic regression on soft labels (each question twice,
as a win weighted by the preference and a loss weighted by the rest), then predicted with
delta = 0 and averaged over the questions. Where plaudit differs from AlpacaEval:
instruction difficulty comes from AlpacaEval's own leaderboard of models there; here it is
the logit of the *other* models' mean preference on the question in this run (absent with
one model), and there are no "gamed" baseline rows to regularise toward the baseline: a
small L2 penalty stands in for both. The warning is AlpacaEval's, on the same thresholds.
"""
from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from .judgments import Judgment

L2_C = 1.0  # inverse L2 strength: keeps the fit finite when a model wins (or loses) every question


def extreme_change(raw: float, lc: float, abs_diff: float = 10, rel_diff: float = 4) -> bool:
    """AlpacaEval's test of an LC win rate far from the raw one (a GLM that may have failed)."""
    too_small = lc < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = lc > max(raw + (100 - raw) / rel_diff, raw + abs_diff)
    return too_small or too_large


def _difficulties(judgments: Sequence[Judgment]) -> dict[tuple[str, str], float]:
    """(model, question) -> the logit of the other models' mean preference on the question,
    smoothed by half a win and half a loss; absent where no other model answered it."""
    by_question: dict[str, dict[str, float]] = defaultdict(dict)
    for j in judgments:
        if j.preference is not None:
            by_question[j.question][j.model] = j.preference
    out = {}
    for question, preferences in by_question.items():
        for model in preferences:
            others = [p for m, p in preferences.items() if m != model]
            if others:
                share = (sum(others) + 0.5) / (len(others) + 1.0)
                out[model, question] = math.log(share / (1.0 - share))
    return out


def length_controlled(preferences: Sequence[float], deltas: Sequence[float],
                      difficulties: Sequence[float] | None) -> float:
    """The GLM above fitted on one model's questions; its mean prediction at delta = 0, in %."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(preferences, dtype=float)
    delta = np.asarray(deltas, dtype=float)
    sd = delta.std(ddof=1) if len(delta) > 1 else 0.0
    columns = [np.ones_like(y), np.tanh(delta / sd) if sd > 0 else np.zeros_like(y)]
    if difficulties is not None:
        columns.append(np.asarray(difficulties, dtype=float))
    x = np.column_stack(columns)
    rows = np.vstack([x, x])
    labels = np.concatenate([np.ones_like(y), np.zeros_like(y)])
    weights = np.concatenate([y, 1.0 - y])
    keep = weights > 0
    if len(set(labels[keep])) < 2:  # every question won (or lost) outright: nothing for length to explain
        return float(100.0 * y.mean())
    fit = LogisticRegression(fit_intercept=False, C=L2_C, max_iter=1000)
    fit.fit(rows[keep], labels[keep], sample_weight=weights[keep])
    at_zero = x.copy()
    at_zero[:, 1] = 0.0
    return float(100.0 * fit.predict_proba(at_zero)[:, 1].mean())


def win_rates(judgments: Sequence[Judgment]) -> list[dict[str, Any]]:
    """One row a model, best LC win rate first: raw win rate and standard error (both in %),
    wins, losses and draws, the LC win rate, and AlpacaEval's warning where they disagree."""
    difficulty = _difficulties(judgments)
    by_model: dict[str, list[Judgment]] = defaultdict(list)
    for j in judgments:
        if j.preference is not None:
            by_model[j.model].append(j)
    rows = []
    for model, own in sorted(by_model.items()):
        p = [j.preference for j in own]
        row: dict[str, Any] = {
            "model": model, "baseline": own[0].baseline, "questions": len(p),
            "win_rate": 100.0 * statistics.fmean(p),
            "standard_error": 100.0 * statistics.stdev(p) / math.sqrt(len(p)) if len(p) > 1 else None,
            "wins": sum(x > 0.5 for x in p), "losses": sum(x < 0.5 for x in p), "draws": sum(x == 0.5 for x in p),
            "unscored": sum(1 for j in judgments if j.model == model and j.preference is None),
            "lc_win_rate": None, "lc_terms": None, "warning": None}
        if all(j.model_style is not None and j.baseline_style is not None for j in own):
            deltas = [j.baseline_style[0] - j.model_style[0] for j in own]
            known = [difficulty.get((model, j.question)) for j in own]
            use_difficulty = all(d is not None for d in known)
            row["lc_win_rate"] = length_controlled(p, deltas, known if use_difficulty else None)
            row["lc_terms"] = "length + difficulty" if use_difficulty else "length only"
            if extreme_change(row["win_rate"], row["lc_win_rate"]):
                row["warning"] = (f"Length controlled win rate is very different from the raw one: "
                                  f"{row['lc_win_rate']:.1f}% vs {row['win_rate']:.1f}%. This might be a sign of "
                                  f"failure of the GLM.")
        rows.append(row)
    rows.sort(key=lambda r: -(r["lc_win_rate"] if r["lc_win_rate"] is not None else r["win_rate"]))
    return rows
