"""Leaderboards from pairwise judgments: on battles drawn from known Bradley-Terry strengths
the fit recovers the order and the win rates, its 90% intervals hold the true win rate in
about 90% of seeds, and style control removes what a model won by length alone."""
from __future__ import annotations

import math
import random

import pytest

from plaudit.evaluation.leaderboard import Battle, battle, leaderboard, strengths, win_rate

TRUE = {"baseline": 1000.0, "weaker": 950.0, "better": 1100.0, "best": 1200.0}


def battles_against_baseline(seed: int, n: int = 200) -> list[Battle]:
    """Every model against the baseline, both orders, outcomes drawn from the true strengths."""
    rng = random.Random(seed)
    drawn = []
    for model, strength in TRUE.items():
        if model == "baseline":
            continue
        p = win_rate(strength) / 100
        for i in range(n):
            won = rng.random() < p
            a_is_model = i % 2 == 0
            outcome = float(won == a_is_model)
            drawn.append(Battle(model, "baseline", outcome) if a_is_model else Battle("baseline", model, outcome))
    return drawn


def test_the_fit_recovers_the_order_and_the_win_rates():
    rows = leaderboard(battles_against_baseline(0), "baseline", rounds=40, seed=1)
    assert [r["model"] for r in rows] == ["best", "better", "baseline", "weaker"]
    for row in rows:
        assert row["win_rate"] == pytest.approx(win_rate(TRUE[row["model"]]), abs=6)
        assert row["lower"] <= row["win_rate"] <= row["upper"]
    assert next(r for r in rows if r["model"] == "baseline")["win_rate"] == 50.0
    assert rows[0]["interval"] == "90% bootstrap (40 of 40 rounds, seed 1)"


def test_the_90_percent_intervals_hold_the_true_win_rate_about_90_percent_of_the_time():
    held, total = 0, 0
    for seed in range(30):
        for row in leaderboard(battles_against_baseline(seed, n=120), "baseline", rounds=60, seed=seed):
            if row["model"] == "baseline":
                continue
            total += 1
            held += row["lower"] <= win_rate(TRUE[row["model"]]) <= row["upper"]
    assert 0.78 <= held / total <= 0.98, (held, total)


def test_a_model_that_wins_by_length_alone_is_even_under_style_control():
    """`long` and `varied` are the baseline's equals and the judge prefers length; `long`
    always writes longer, `varied` longer or shorter (which tells the fit what length buys)."""
    rng = random.Random(3)
    drawn = []
    for model, lengths in (("long", (0.0, 2.0)), ("varied", (-2.0, 2.0))):
        for i in range(600):
            longer = rng.uniform(*lengths)  # normalised length difference, model minus baseline
            won = rng.random() < 1 / (1 + math.exp(-2.0 * longer))
            a_is_model = i % 2 == 0
            diff, outcome = (longer if a_is_model else -longer), float(won == a_is_model)
            drawn.append(Battle(model, "baseline", outcome, style=(diff,)) if a_is_model
                         else Battle("baseline", model, outcome, style=(diff,)))
    raw = {r["model"]: r for r in leaderboard(drawn, "baseline", rounds=20)}
    controlled = {r["model"]: r for r in leaderboard(drawn, "baseline", rounds=20, style_control=True)}
    assert raw["long"]["win_rate"] > 75
    assert controlled["long"]["win_rate"] == pytest.approx(50, abs=8)
    assert controlled["long"]["lower"] < 50 < controlled["long"]["upper"]


def test_verdicts_ties_and_strong_wins():
    assert battle("m", "base", "A>>B").weight == 3 and battle("m", "base", "B>A").outcome == 0.0
    with pytest.raises(ValueError, match="not one of"):
        battle("m", "base", "A>>>B")
    even = [Battle("m", "base", 0.5)] * 10 + [Battle("m", "base", 1.0), Battle("m", "base", 0.0)]
    assert strengths(even, "base")["m"] == pytest.approx(1000, abs=1)
    with pytest.raises(ValueError, match="same outcome"):
        strengths([Battle("m", "base", 1.0)] * 3, "base")
    # A judge's probability is a soft outcome: P(m beats base) = 0.75 in every battle fits 75%.
    soft = strengths([Battle("m", "base", 0.75)] * 20 + [Battle("base", "m", 0.25)] * 20, "base")
    assert win_rate(soft["m"]) == pytest.approx(75, abs=0.5)
    with pytest.raises(ValueError, match="baseline"):
        strengths([Battle("m", "n", "a"), Battle("m", "n", "b")], "base")
