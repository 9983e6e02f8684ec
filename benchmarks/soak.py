"""A bounded soak: concurrent one-item /score clients for a fixed time. Nothing may fail,
the tail latency stays bounded, and the server's memory must not grow with requests served
(a leak per request shows here long before it would take a trainer's reward server down).
"""
from __future__ import annotations

import statistics

from . import serving
from .workload import mixed_items


def run(service: serving.Server, clients: int = 16, seconds: float = 30.0) -> dict:
    items = mixed_items(512)
    serving.drive(service.url, items[:clients], clients)  # warm-up: a first batch this size grows the heap once
    rss_start = service.rss_mib()
    load = serving.drive(service.url, items, clients, seconds)
    rss_end = service.rss_mib()
    ms = [1e3 * s for s in load.latencies]
    p99 = round(statistics.quantiles(ms, n=100)[98], 1)
    return {"soak": {"clients": clients, "seconds": round(load.seconds, 1), "requests": load.requests,
                     "errors": load.errors, "p50_ms": round(statistics.median(ms), 1),
                     "p99_ms": p99,
                     "rss_start_mib": round(rss_start, 1), "rss_end_mib": round(rss_end, 1)},
            "soak_errors": load.errors, "soak_p99_ms": p99,
            "soak_rss_growth_mib": round(rss_end - rss_start, 1)}
