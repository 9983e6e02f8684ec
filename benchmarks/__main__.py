"""`make bench`: run every benchmark, print one table, write benchmarks/out/latest.json.

Each target is printed next to its measurement, met or not; nothing here is asserted.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from plaudit.rewardmodels.loading import choose_device
from plaudit.service.api import ModelPool
from plaudit.service.config import load_config

from . import (arena, consensus, efficiency, ensemble, execution, gpm_rank, judge_batch, math_answers,
               monitoring_overhead, padding, prefix_groups, score_throughput, serving, soak, startup, warm_merge)

OUT = Path(__file__).resolve().parent / "out" / "latest.json"
TARGETS = {  # key: (what, target, met); met is None where the number is only reported
    "gpm_rank_speedup_k16": ("GPM /rank vs pairwise over ordered pairs, K=16", ">= 8x", lambda v: v >= 8),
    "warm_merge_peak_ratio_m5_m2": ("WARM merge peak memory, M=5 / M=2", "<= 1.3", lambda v: v <= 1.3),
    "judge_checklists_per_instruction": ("TICK checklist generations per instruction (8 responses each)", "1",
                                         lambda v: v == 1),
    "judge_batch_vs_backend": ("plaudit judge vs the backend's own questions/s, same concurrency", ">= 0.8",
                               lambda v: v >= 0.8),
    "monitoring_overhead_pct": ("monitoring's share of a one-item /score request (worst case), %", "< 2",
                                lambda v: v < 2),
    "score_vs_raw_32": ("/score items/s, 32 one-item clients / raw batched forward", ">= 0.85", lambda v: v >= 0.85),
    "score_vs_naive_32": ("/score items/s, 32 one-item clients / naive server", "> 1", lambda v: v > 1),
    "group_vs_raw_k16": ("8 prompts x 16 responses, a /score request per prompt / raw whole forward", ">= 3",
                         lambda v: v >= 3),
    "group_single_vs_raw_k16": ("the same, one response per request from 32 clients / raw whole forward", ">= 2",
                                lambda v: v >= 2),
    "ensemble_m3_vs_single_32": ("3-member ensemble (adapted in the last 8 of 30 blocks) / one member, "
                                 "32 one-item clients", ">= 0.5", lambda v: v >= 0.5),
    "ensemble_vs_ceiling": ("the same / its ceiling, one trunk plus three tails over one model's blocks", ">= 0.9",
                            lambda v: v >= 0.9),
    "padding_sorted_vs_arrival": ("items/s, length-sorted / arrival-order micro-batches", "> 1", lambda v: v > 1),
    "exec_sandbox_overhead": ("one short program: sandboxed (warm path) / a cold plain subprocess", "<= 1.0",
                              lambda v: v <= 1.0),
    "exec_warm_vs_cold": ("HumanEval programs/s, warm sandbox path / cold path, same programs", ">= 3",
                          lambda v: v >= 3),
    "exec_programs_per_s": ("HumanEval programs with their tests per s, default pool", "report", None),
    "exec_judging_outside_cost": ("the same HumanEval runs: judged outside the program / inside its process, time",
                                  "report", None),
    "math_vs_naive": ("math: one /score of 64 references x 16 responses / math-verify pair by pair", ">= 4",
                      lambda v: v >= 4),
    "ready_s": ("start-up to /readyz, default models and local judge, s", "report", None),
    "arena_200x3_s": ("eval arena: 200 questions x 3 models vs a baseline, default reward model as judge, s",
                      "report", None),
    "arena_bootstrap_share_pct": ("eval arena: the leaderboard's fits (100 bootstrap rounds, x2) share of it, %",
                                  "report", None),
    "efficiency_faster_wins": ("efficiency reward: the faster of CodePrefBench's pairs earns more, share", "report",
                               None),
    "efficiency_same_verdict": ("efficiency reward: tasks with the same verdict in every round, share", "report",
                                None),
    "soak_errors": ("soak, 16 clients x 30 s: failed requests", "0", lambda v: v == 0),
    "soak_p99_ms": ("soak: p99 latency, ms", "report", None),
    "soak_rss_growth_mib": ("soak: server RSS growth, MiB", "< 100", lambda v: v < 100),
}


def main() -> None:
    start = time.time()
    pool = ModelPool(load_config())
    results = {"machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                           "device": str(choose_device()[0]), "load_average": os.getloadavg()[0]}}
    results.update(gpm_rank.run(pool.get("default-gpm"), pool.get("default")))
    results.update(warm_merge.run())
    results.update(judge_batch.run())
    results.update(monitoring_overhead.run(pool))
    results.update(padding.run(pool.get("default")))
    results.update(execution.run())
    results.update(math_answers.run())
    results.update(efficiency.run())
    results.update(consensus.run())
    results.update(arena.run(pool.get("default")))
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-") as tmp, \
            serving.plaudit(Path(tmp), serving.BT_ONLY) as service:
        results.update(score_throughput.run(service, pool.get("default")))
        results.update(prefix_groups.run(service, pool.get("default")))
        results.update(soak.run(service))
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-ensemble-") as tmp:
        results.update(ensemble.run(Path(tmp), choose_device()[0]))
    results.update(startup.run())
    results["seconds"] = round(time.time() - start, 1)
    print(f"{'benchmark':58} {'measured':>10}  {'target':>8}  met")
    for key, (what, target, met) in TARGETS.items():
        value = results.get(key)
        verdict = "-" if met is None else "yes" if value is not None and met(value) else "NO"
        print(f"{what:58} {value!s:>10}  {target:>8}  {verdict}")
    print("\nGPM /rank detail:")
    for row in results["gpm_rank"]:
        print(f"  K={row['k']:2}: GPM {row['gpm_rank_s']:.2f}s ({row['gpm_passes']} passes), pairwise "
              f"{row['pairwise_s']:.2f}s ({row['pairwise_passes']} passes): {row['speedup']}x")
    print(f"WARM merge peak GiB by M: {results['warm_merge_peak_gib']}")
    print(f"Judge batch (local llama.cpp, SmolLM2): {results['judge_batch']}")
    throughput = results["score_throughput"]
    print(f"/score, {throughput['items']} mixed-length items, one per request: raw forward "
          f"{throughput['raw_items_per_s']} items/s")
    for row in throughput["phases"]:
        print(f"  {row['target']:7} {row['clients']:2} clients: {row['items_per_s']:7} items/s ({row['vs_raw']}x raw), "
              f"{row['forward_calls']} forward calls, {row['sequences_per_call']} sequences each")
    groups = results["prefix_groups"]
    print(f"Groups, {groups['prompts']} prompts x {groups['k']} responses: raw {groups['raw_items_per_s']} items/s, "
          f"a request per prompt {groups['grouped']}, one per request {groups['single']}")
    for curve in ("by_k", "by_prompt_tokens"):
        for row in groups["curves"][curve]:
            print(f"  K={row['k']:2}, prompt {row['prompt_tokens']:3} tokens: shared "
                  f"{row['shared_ms_per_item']} ms/item, whole {row['whole_ms_per_item']} ms/item ({row['speedup']}x)")
    print(f"Ensemble of 3, 32 one-item clients: {results['ensemble']}")
    for order in ("sorted", "arrival"):
        print(f"Padding, {order:7}: {results['padding'][order]}")
    print(f"Execution: {results['execution']}")
    print(f"Math: {results['math']}")
    print(f"Consensus, top-ranked HumanEval candidate correct: {results['consensus_top1']} ({results['consensus']})")
    print(f"Efficiency: {results['efficiency_faster_wins']} faster wins, {results['efficiency_same_verdict']} same "
          f"verdict over {results['efficiency']['rounds']} rounds")
    print(f"Arena: {results['arena']}")
    print(f"Soak: {results['soak']}")
    print(f"Ready with the defaults: {results['ready_s']} s, {results['ready_rss_mib']} MiB resident")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {OUT}")


if __name__ == "__main__":
    main()
