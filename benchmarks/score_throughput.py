"""/score throughput with 1, 8 and 32 clients sending one item per request, against
(a) the raw forward over the same items in this process (tokenise, length-sorted padded
micro-batches with the service's limits, the model: the same work with no service), and (b) a naive
server that scores each request alone, as OpenRLHF's serve_rm.py does.

Every phase scores the same mixed-length items once each. Targets at 32 clients: plaudit
reaches 0.85x the raw forward (batching across requests recovers what one-item requests
lose) and beats the naive server. The forward calls each phase took on the server show
how well requests merged.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

from . import serving
from .workload import default_count, forward, mixed_items

CLIENTS = (1, 8, 32)  # the last is the one the targets are set at


def _phase(server: serving.Server, items, clients: int) -> dict:
    before = server.forward_stats()
    load = serving.drive(server.url, items, clients)
    after = server.forward_stats()
    calls = after["forward_calls"] - before["forward_calls"]
    return {"clients": clients, "items_per_s": round(len(items) / load.seconds, 3), "errors": load.errors,
            "forward_calls": calls, "sequences_per_call": round(len(items) / max(calls, 1), 1),
            "rewards": load.rewards}


def run(service: serving.Server, scorer, count: int | None = None) -> dict:
    items = mixed_items(count or default_count(scorer.device))
    forward(scorer, items[:4])  # warm-up
    start = time.perf_counter()
    forward(scorer, items)
    raw = len(items) / (time.perf_counter() - start)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-naive-") as tmp, serving.naive(Path(tmp)) as naive:
        for target, server in (("plaudit", service), ("naive", naive)):
            serving.drive(server.url, items[:4], 4)  # warm-up
            rows[target] = [_phase(server, items, c) for c in CLIENTS]
    top = {target: phases[-1] for target, phases in rows.items()}
    answered = top["plaudit"]["rewards"].keys() & top["naive"]["rewards"].keys()
    reward_gap = max((abs(top["plaudit"]["rewards"][i] - top["naive"]["rewards"][i]) for i in answered), default=None)
    detail = [{"target": target, **{k: v for k, v in row.items() if k != "rewards"},
               "vs_raw": round(row["items_per_s"] / raw, 3)}
              for target, phases in rows.items() for row in phases]
    return {"score_throughput": {"items": len(items), "raw_items_per_s": round(raw, 3), "phases": detail,
                                 "max_reward_diff_plaudit_naive": reward_gap},
            "score_vs_raw_32": round(top["plaudit"]["items_per_s"] / raw, 3),
            "score_vs_naive_32": round(top["plaudit"]["items_per_s"] / top["naive"]["items_per_s"], 3)}
