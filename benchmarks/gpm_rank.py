"""GPM /rank over K candidates vs a pairwise model over all K(K-1) ordered pairs.

A GPM embeds each candidate once (K passes plus one short pass over the prompt) and
ranks from the K x K skew-symmetric table. A pairwise preference model (PairRM, a
CodeFavor-style classifier) must read both responses together, one pass per ordered
pair. The stand-in for it is the default BT backbone reading "Response A ... Response B"
for every ordered pair: the same network size, so the cost is what such a model pays.
"""
from __future__ import annotations

import time

from plaudit.rewardmodels import Item, Scorer
from plaudit.training.humaneval import load_problems


def candidates(k: int) -> tuple[str, list[str]]:
    """One HumanEval prompt and K canonical solutions (of K problems) as candidates."""
    problems = load_problems()[:k]
    return problems[0]["prompt"], [p["canonical_solution"] for p in problems]


def _seconds(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def run(gpm: Scorer, pairwise_backbone: Scorer, ks=(4, 8, 16)) -> dict:
    rows = []
    gpm.rank(*candidates(2))  # warm-up
    for k in ks:
        prompt, responses = candidates(k)
        pairs = [Item(prompt=prompt, response=f"Response A:\n{a}\n\nResponse B:\n{b}")
                 for i, a in enumerate(responses) for j, b in enumerate(responses) if i != j]
        rank_s = _seconds(lambda: gpm.rank(prompt, responses))
        pairwise_s = _seconds(lambda: pairwise_backbone.score(pairs))
        rows.append({"k": k, "gpm_rank_s": round(rank_s, 3), "gpm_passes": k + 1, "pairwise_s": round(pairwise_s, 3),
                     "pairwise_passes": len(pairs), "speedup": round(pairwise_s / rank_s, 1)})
    return {"gpm_rank": rows, "gpm_rank_speedup_k16": next((r["speedup"] for r in rows if r["k"] == 16), None)}
