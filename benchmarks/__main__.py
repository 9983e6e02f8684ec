"""`make bench`: run every benchmark, print one table, write benchmarks/out/latest.json.

Each target is printed next to its measurement, met or not; nothing here is asserted.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from rewardmodels.loading import choose_device
from service.api import ModelPool
from service.config import load_config

from . import gpm_rank, judge_batch, monitoring_overhead, warm_merge

OUT = Path(__file__).resolve().parent / "out" / "latest.json"
TARGETS = {  # key: (what, target, met)
    "gpm_rank_speedup_k16": ("GPM /rank vs pairwise over ordered pairs, K=16", ">= 8x", lambda v: v >= 8),
    "warm_merge_peak_ratio_m5_m2": ("WARM merge peak memory, M=5 / M=2", "<= 1.3", lambda v: v <= 1.3),
    "judge_checklists_per_instruction": ("TICK checklist generations per instruction (8 responses each)", "1",
                                         lambda v: v == 1),
    "judge_batch_vs_backend": ("plaudit judge vs the backend's own questions/s, same concurrency", ">= 0.8",
                               lambda v: v >= 0.8),
    "monitoring_overhead_pct": ("monitoring's share of a one-item /score request (worst case), %", "< 2",
                                lambda v: v < 2),
}


def main() -> None:
    start = time.time()
    pool = ModelPool(load_config())
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "device": str(choose_device()[0])}}
    results.update(gpm_rank.run(pool.get("default-gpm"), pool.get("default")))
    results.update(warm_merge.run())
    results.update(judge_batch.run())
    results.update(monitoring_overhead.run(pool))
    results["seconds"] = round(time.time() - start, 1)
    print(f"{'benchmark':58} {'measured':>10}  {'target':>8}  met")
    for key, (what, target, met) in TARGETS.items():
        value = results.get(key)
        print(f"{what:58} {value!s:>10}  {target:>8}  {'yes' if value is not None and met(value) else 'NO'}")
    print("\nGPM /rank detail:")
    for row in results["gpm_rank"]:
        print(f"  K={row['k']:2}: GPM {row['gpm_rank_s']:.2f}s ({row['gpm_passes']} passes), pairwise "
              f"{row['pairwise_s']:.2f}s ({row['pairwise_passes']} passes): {row['speedup']}x")
    print(f"WARM merge peak GiB by M: {results['warm_merge_peak_gib']}")
    print(f"Judge batch (local llama.cpp, SmolLM2): {results['judge_batch']}")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {OUT}")


if __name__ == "__main__":
    main()
