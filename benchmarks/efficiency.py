"""The execution kind's `efficiency` setting on CodePrefBench's efficiency tasks: each task's
fast and slow implementations (both correct, training/codepref_tasks/efficiency.yaml) scored
together as one group, `rounds` times over. How often the faster one earns more, and how
often a task gets the same verdict in every round (the measure's noise).

    python -m benchmarks.efficiency [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import time

import yaml

from plaudit.rewardmodels.base import Item
from plaudit.rewardmodels.execution import Execution, ExecutionSettings
from plaudit.training.codeprefbench import TEMPLATES, _timed


def tasks() -> list[dict]:
    """Each template with an assert on the value both versions return (its repr, computed by
    the fast one)."""
    out = []
    for t in yaml.safe_load((TEMPLATES / "efficiency.yaml").read_text()):
        value = _timed(t["fast"], t["check"])["value"]
        out.append({**t, "tests": f"assert repr({t['check']}) == {value!r}"})
    return out


def run(rounds: int = 5, settings: dict | None = None) -> dict:
    scorer = Execution("efficiency", ExecutionSettings(slots=2, efficiency=settings or {"against": "group"}))
    verdicts: dict[str, list[bool]] = {}
    rewards: dict[str, list[list[float]]] = {}
    start = time.perf_counter()
    measured = tasks()
    for _ in range(rounds):
        for t in measured:
            scored = scorer.score([Item(prompt=t["instruction"], response=f"```python\n{code}```", reference=t["tests"])
                                   for code in (t["fast"], t["slow"])])
            fast, slow = scored.rewards
            verdicts.setdefault(t["id"], []).append(fast > slow)
            rewards.setdefault(t["id"], []).append([round(fast, 3), round(slow, 3)])
    wins = sum(v for vs in verdicts.values() for v in vs)
    total = sum(len(vs) for vs in verdicts.values())
    return {"efficiency_faster_wins": round(wins / total, 3),
            "efficiency_same_verdict": round(sum(len(set(vs)) == 1 for vs in verdicts.values()) / len(verdicts), 3),
            "efficiency": {"tasks": len(verdicts), "rounds": rounds, "seconds": round(time.perf_counter() - start, 1),
                           "rewards_fast_slow": rewards}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(run(parser.parse_args().rounds), indent=2))
