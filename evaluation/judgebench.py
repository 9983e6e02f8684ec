"""`plaudit eval judge FILE`: a judge (or a reward model) on pairs whose better answer is
known, JudgeBench's format: `{question, response_A, response_B, label}` with label `A>B` or
`B>A` (and `pair_id`, `source`). Every pair is read in both orders (Scorer.verdicts) and
counted by both benchmarks' rules:

- JudgeBench: each order votes +1 when it picks the labelled answer, -1 when it picks the
  other, 0 for a tie or an unread answer; the pair is right when the votes net positive.
- CodeJudgeBench: each order is a sample of its own, right when it picks the labelled answer.

Position consistency, unscored readings and errors are counted beside, per source and overall.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict

from plaudit.rewardmodels.base import Pair, Scorer
from plaudit.schemas import PairVerdict


class JudgePair(BaseModel):
    model_config = ConfigDict(extra="ignore")
    question: str
    response_A: str
    response_B: str
    label: Literal["A>B", "B>A"]
    source: str = ""
    pair_id: Any = None


def _pick(p: float | None) -> str | None:
    """What one reading says: A, B, a tie (=) or nothing (None)."""
    if p is None:
        return None
    return "A" if p > 0.5 else "B" if p < 0.5 else "="


def tally(pairs: Sequence[JudgePair], verdicts: Sequence[PairVerdict]) -> dict[str, Any]:
    """Both rules' accuracies (in %), consistency, unscored and errors, per source and overall."""
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for pair, verdict in zip(pairs, verdicts):
        for source in {"overall", pair.source or "overall"}:
            row = rows[source]
            row["pairs"] += 1
            if verdict.error is not None:
                row["errors"] += 1
                row["orders"] += 2
                continue
            right = pair.label[0]
            votes = 0
            for p in verdict.orders:
                pick = _pick(p)
                row["orders"] += 1
                row["unscored"] += pick is None
                row["ties"] += pick == "="
                row["orders_right"] += pick == right
                votes += 1 if pick == right else -1 if pick in ("A", "B") else 0
            row["pairs_right"] += votes > 0
            if verdict.consistent is not None:
                row["both_read"] += 1
                row["consistent"] += verdict.consistent
    report = {}
    for source, r in sorted(rows.items()):
        report[source] = {
            "pairs": int(r["pairs"]),
            "judgebench_accuracy": round(100 * r["pairs_right"] / r["pairs"], 2),
            "codejudgebench_accuracy": round(100 * r["orders_right"] / r["orders"], 2),
            "position_consistency": round(100 * r["consistent"] / r["both_read"], 2) if r["both_read"] else None,
            "ties": int(r["ties"]), "unscored": int(r["unscored"]), "errors": int(r["errors"])}
    return report


def evaluate(scorer: Scorer, pairs: Sequence[JudgePair]) -> dict[str, Any]:
    verdicts = scorer.verdicts([Pair(prompt=p.question, a=p.response_A, b=p.response_B) for p in pairs])
    return {"model": scorer.name, "model_type": scorer.kind, "by_source": tally(pairs, verdicts)}
