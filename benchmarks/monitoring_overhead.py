"""What online monitoring adds to a /score request: the monitor's work on one answer (its
rewards into the windows, its ids remembered, the counters) against the request's own time
on the default model, one item per request as OpenRLHF sends them. Measured with the window
gauges recomputed on every answer (the worst case) and once a second (the default)."""
from __future__ import annotations

import statistics
import time

from prometheus_client import CollectorRegistry

from plaudit.rewardmodels import Item
from plaudit.service import api
from plaudit.service.config import MonitoringConfig
from plaudit.service.monitoring import Metrics, Monitor
from plaudit.schemas import ScoreRequest


def _median_s(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(pool: api.ModelPool, repeats: int = 30) -> dict:
    request = ScoreRequest(items=[Item(prompt="Write a Python function `add(a, b)`.",
                                       response="def add(a, b):\n    return a + b")])
    scorer = pool.get(None)
    score_s = _median_s(lambda: api.score(pool, request), repeats)
    rewards = api.score(pool, request).rewards
    served = api.Served("score", scorer, "item", [scorer.p_good(r) for r in rewards], rewards,
                        [len(item.response) for item in request.items])
    result = {"score_request_ms": round(score_s * 1e3, 2)}
    for label, interval in (("every_answer", 0.0), ("default", 1.0)):
        monitor = Monitor(MonitoringConfig(update_interval_s=interval), Metrics(CollectorRegistry()))
        for _ in range(1000):  # full windows, as in a long-running service
            monitor.served(served)

        def observe():
            monitor.served(served)
            monitor.request("score", scorer.name, "ok", 0.01)
        result[f"monitor_ms_{label}"] = round(_median_s(observe, repeats * 10) * 1e3, 4)
    result["monitoring_overhead_pct"] = round(100 * result["monitor_ms_every_answer"] / result["score_request_ms"], 3)
    return result
