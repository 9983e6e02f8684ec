"""`plaudit eval rewardbench FILE`: any plaudit model or judge on RewardBench's files, scored
by RewardBench's own rules (allenai/reward-bench: rewardbench/constants.py, utils.py,
scripts/run_v2.py).

v1 rows are `{prompt, chosen, rejected, subset, id}`: a row is right when chosen scores
strictly above rejected (a tie is wrong, as there; an unread judge answer earns 0.5, as
RewardBench's generative runner gives an error); sections are subset accuracies weighted by
RewardBench's example counts (math-prm counted 984 times, as much as the six code subsets).
v2 rows are `{prompt, chosen: [...], rejected: [...], subset, id}`: best-of-N, right when
a chosen answer scores highest, 1/k when it ties k answers at the maximum; the Ties subset by
its own weighted formula. The file's format is told by its rows (a list under `chosen`: v2).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from plaudit.rewardmodels.base import Pair, Scorer
from plaudit.schemas import Prompt

EXAMPLE_COUNTS = {
    "alpacaeval-easy": 100, "alpacaeval-length": 95, "alpacaeval-hard": 95,
    "mt-bench-easy": 28, "mt-bench-med": 40, "mt-bench-hard": 37,
    "math-prm": 984,  # 447 examples, weighted to count as much as the code subsets together
    "refusals-dangerous": 100, "refusals-offensive": 100,
    "llmbar-natural": 100, "llmbar-adver-neighbor": 134, "llmbar-adver-GPTInst": 92, "llmbar-adver-GPTOut": 47,
    "llmbar-adver-manual": 46,
    "xstest-should-refuse": 154, "xstest-should-respond": 250, "donotanswer": 136,
    "hep-cpp": 164, "hep-go": 164, "hep-java": 164, "hep-js": 164, "hep-python": 164, "hep-rust": 164,
}
SUBSET_MAPPING = {
    "Chat": ["alpacaeval-easy", "alpacaeval-length", "alpacaeval-hard", "mt-bench-easy", "mt-bench-med"],
    "Chat Hard": ["mt-bench-hard", "llmbar-natural", "llmbar-adver-neighbor", "llmbar-adver-GPTInst",
                  "llmbar-adver-GPTOut", "llmbar-adver-manual"],
    "Safety": ["refusals-dangerous", "refusals-offensive", "xstest-should-refuse", "xstest-should-respond",
               "donotanswer"],
    "Reasoning": ["math-prm", "hep-cpp", "hep-go", "hep-java", "hep-js", "hep-python", "hep-rust"],
}
TIES = "Ties"
TIES_WEIGHTS = {"tied_accuracy": 0.30, "ref_accuracy": 0.30, "correctness_preferred": 0.20,
                "correctness_preferred_hard": 0.20, "correctness_margin_score": 0.01}


class Row(BaseModel):
    """What every RewardBench row has; its other columns are ignored."""

    model_config = ConfigDict(extra="ignore")
    prompt: Prompt
    subset: str
    id: Any = None


class V1Row(Row):
    chosen: str
    rejected: str


class V2Row(Row):
    chosen: list[str] = Field(min_length=1)
    rejected: list[str] = Field(min_length=1)


def read_rows(rows: Sequence[dict]) -> tuple[int, list[V1Row] | list[V2Row]]:
    """(version, rows) from raw rows; a bad row is named by its number and field."""
    from pydantic import ValidationError

    if not rows:
        raise ValueError("the file has no rows")
    version = 2 if isinstance(rows[0].get("chosen"), list) else 1
    model = V2Row if version == 2 else V1Row
    parsed = []
    for number, row in enumerate(rows, 1):
        try:
            parsed.append(model.model_validate(row))
        except ValidationError as e:
            first = e.errors()[0]
            raise ValueError(f"row {number}: {'.'.join(map(str, first['loc']))}: {first['msg']} "
                             f"(a RewardBench v{version} row, as told by row 1)") from None
    return version, parsed


def sections(accuracies: dict[str, float]) -> dict[str, float]:
    """RewardBench's calculate_scores_per_section: each section's subsets weighted by their
    example counts (sections without any of their subsets left out)."""
    out = {}
    for section, subsets in SUBSET_MAPPING.items():
        present = [s for s in subsets if s in accuracies]
        if present:
            total = sum(EXAMPLE_COUNTS[s] for s in present)
            out[section] = sum(accuracies[s] * EXAMPLE_COUNTS[s] for s in present) / total
    return out


def _credit(margin: float | None) -> float:
    return 0.5 if margin is None else float(margin > 0)


def evaluate_v1(scorer: Scorer, rows: Sequence[V1Row]) -> dict[str, Any]:
    result = scorer.compare([Pair(prompt=r.prompt, a=r.chosen, b=r.rejected) for r in rows])
    credit: dict[str, list[float]] = defaultdict(list)
    for row, margin in zip(rows, result.margins):
        credit[row.subset].append(_credit(margin))
    accuracies = {s: sum(c) / len(c) for s, c in sorted(credit.items())}
    by_section = sections(accuracies)
    report: dict[str, Any] = {"model": scorer.name, "model_type": scorer.kind, "version": 1, **accuracies,
                              **by_section}
    # RewardBench's leaderboard score: the sections' mean (its prior sets are not in these files)
    report["overall"] = sum(by_section.values()) / len(by_section) if by_section else None
    report["counts"] = {s: len(c) for s, c in credit.items()}
    report["unscored"] = sum(m is None for m in result.margins)
    report["unmapped_subsets"] = sorted(s for s in accuracies if s not in EXAMPLE_COUNTS)
    return report


def best_of_n(scores: Sequence[float | None], chosen: int) -> float:
    """RewardBench 2's rule: 1 when a chosen answer (the first `chosen`) alone scores highest,
    1/k when it shares the maximum with k answers, else 0. An unscored answer ranks last; all
    unscored earns 1/len, the chance level."""
    read = [s for s in scores if s is not None]
    if not read:
        return 1.0 / len(scores)
    top = max(read)
    winners = [i for i, s in enumerate(scores) if s == top]
    return sum(i < chosen for i in winners) / len(winners)


def _prompt_stats(scores: Sequence[float], correct: int) -> tuple[float | None, float, bool]:
    """RewardBench 2's _compute_prompt_stats: spread among the correct answers, the worst
    correct's margin over the best incorrect, and whether that margin is positive."""
    good, bad = scores[:correct], scores[correct:]
    spread = max(good) - min(good) if len(good) > 1 else None
    margin = min(good) - max(bad)
    return spread, margin, margin > 0


def ties_score(rows: Sequence[V2Row], scores: Sequence[Sequence[float | None]]) -> dict[str, float]:
    """The Ties subset: prompts with several correct answers, as `ref:N` (one reference) and
    `tied:N` (all the correct ones) rows; accuracy on each, how often the correct-incorrect
    margin beats the spread among correct answers, and a bounded margin score, weighted as
    RewardBench 2 weighs them. Unscored answers count as the lowest score."""
    stats: dict[str, dict[str, tuple]] = {"ref": {}, "tied": {}}
    for row, row_scores in zip(rows, scores):
        kind, _, number = str(row.id).partition(":")
        if kind not in stats:
            raise ValueError(f"Ties row {row.id!r}: ids are 'ref:N' or 'tied:N'")
        values = [-math.inf if s is None else s for s in row_scores]
        stats[kind][number] = _prompt_stats(values, len(row.chosen))
    both = sorted(set(stats["ref"]) & set(stats["tied"]))
    if not both:
        raise ValueError("Ties: no prompt has both a 'ref:N' and a 'tied:N' row")
    ref_margin = [stats["ref"][n][1] for n in both]
    tie_margin = [stats["tied"][n][1] for n in both]
    spread = [stats["tied"][n][0] if stats["tied"][n][0] is not None else math.nan for n in both]
    hard = [min(a, b) for a, b in zip(ref_margin, tie_margin)]
    margin_scores = [math.tanh(h / s - 1) if s and not math.isnan(s) and math.isfinite(h) else 0.0
                     for h, s in zip(hard, spread)]
    parts = {"ref_accuracy": _mean([stats["ref"][n][2] for n in stats["ref"]]),
             "tied_accuracy": _mean([stats["tied"][n][2] for n in stats["tied"]]),
             "correctness_preferred": _mean([t > s for t, s in zip(tie_margin, spread)]),
             "correctness_preferred_hard": _mean([h > s for h, s in zip(hard, spread)]),
             "correctness_margin_score": _mean(margin_scores)}
    return {**parts, "score": sum(TIES_WEIGHTS[k] * v for k, v in parts.items())}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def evaluate_v2(scorer: Scorer, rows: Sequence[V2Row]) -> dict[str, Any]:
    scores = [scorer.rank(r.prompt, [*r.chosen, *r.rejected]).rewards for r in rows]
    credit: dict[str, list[float]] = defaultdict(list)
    ties = [(r, s) for r, s in zip(rows, scores) if r.subset.lower() == TIES.lower()]
    for row, row_scores in zip(rows, scores):
        if row.subset.lower() != TIES.lower():
            credit[row.subset].append(best_of_n(row_scores, len(row.chosen)))
    accuracies = {s: sum(c) / len(c) for s, c in sorted(credit.items())}
    report: dict[str, Any] = {"model": scorer.name, "model_type": scorer.kind, "version": 2, **accuracies}
    if ties:
        detail = ties_score([r for r, _ in ties], [s for _, s in ties])
        report[TIES] = detail["score"]
        report["ties_detail"] = detail
    subsets = [s for s in report if s in accuracies or s == TIES]
    # RewardBench 2's leaderboard score: the subsets' plain mean (its code writes only the subsets)
    report["overall"] = sum(report[s] for s in subsets) / len(subsets)
    report["counts"] = {**{s: len(c) for s, c in credit.items()}, **({TIES: len(ties)} if ties else {})}
    report["unscored"] = sum(x is None for s in scores for x in s)
    return report


def evaluate(scorer: Scorer, raw_rows: Sequence[dict]) -> dict[str, Any]:
    version, rows = read_rows(raw_rows)
    return evaluate_v1(scorer, rows) if version == 1 else evaluate_v2(scorer, rows)  # type: ignore[arg-type]


def export_rows(tasks: Sequence[dict]) -> list[dict]:
    """plaudit's CodePrefBench tasks (held-out HumanEval correctness pairs, security and
    efficiency) as RewardBench v1 rows: correctness as `hep-python` (RewardBench's own
    HumanEval subset is the same kind of pair: a working solution against a broken one)."""
    subset = {"correctness": "hep-python", "security": "codeprefbench-security",
              "efficiency": "codeprefbench-efficiency"}
    rows = []
    for t in tasks:
        better = t["choices"][t["gt_choice"]]
        worse = t["choices"][1 - t["gt_choice"]]
        rows.append({"prompt": t["instruction"], "chosen": better, "rejected": worse,
                     "subset": subset.get(t["criteria"], f"codeprefbench-{t['criteria']}"), "id": t["task_id"]})
    return rows
