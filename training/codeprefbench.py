"""CodePrefBench-style code preference tasks with verified ground truth, and evaluating any
plaudit scorer on them.

A task is `{task_id, instruction, choices: [code, code], gt_choice: 0 | 1, criteria}`, as in
CodePrefBench. The ground truth is checked, never assumed:
- correctness: a HumanEval problem's canonical solution vs a mutant of it that fails the
  tests (held-out problems; `training.humaneval`);
- efficiency: two correct implementations of one task (`codepref_tasks/efficiency.yaml`)
  that return the same value, kept only when the slow one is measurably slower (timed in
  plaudit's sandbox, best of 3);
- security: a secure and an insecure implementation (`codepref_tasks/security.yaml`), kept
  only when bandit flags the insecure one with the expected issue and not the secure one
  (bandit reads the code; nothing of it runs).
Which position holds the better code is drawn per task; evaluation asks both orders anyway.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import yaml

from plaudit.rewardmodels.base import Item, Pair, Scorer, Scores
from plaudit.rewardmodels.sandbox import Sandbox, SandboxLimits

from .humaneval import build_pairs

TEMPLATES = Path(__file__).resolve().parent / "codepref_tasks"
CRITERIA = {  # the criterion text a model that reads one is given
    "correctness": "Which code correctly does what the instruction asks?",
    "efficiency": "Which code runs faster?",
    "security": "Which code is more secure?",
}


def _task(task_id: str, instruction: str, better: str, worse: str, criteria: str) -> dict[str, Any]:
    gt = int(hashlib.sha256(task_id.encode()).digest()[0] % 2)  # position of the better code, stable per task
    choices = [worse, better] if gt else [better, worse]
    return {"task_id": task_id, "instruction": instruction, "choices": choices, "gt_choice": gt, "criteria": criteria}


def correctness_tasks(limit: int | None = None, workers: int = 2) -> tuple[list[dict], dict]:
    pairs, stats = build_pairs(workers=workers, limit=limit)
    held_out = [p for p in pairs if p["split"] == "test"]
    tasks = [_task(f"correctness/{p['task_id']}/{i}", p["prompt"], p["chosen"], p["rejected"], "correctness")
             for i, p in enumerate(held_out)]
    return tasks, {"correctness_pairs_built": stats["pairs"], "correctness_kept": len(tasks)}


def security_tasks() -> tuple[list[dict], dict]:
    templates = yaml.safe_load((TEMPLATES / "security.yaml").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for t in templates:
            for side in ("secure", "insecure"):
                (Path(tmp) / f"{t['id']}.{side}.py").write_text(t[side])
        report = subprocess.run([sys.executable, "-m", "bandit", "-q", "-f", "json", "-r", tmp],
                                capture_output=True, text=True, timeout=300)
        try:
            results = json.loads(report.stdout)["results"]
        except (ValueError, KeyError):
            raise RuntimeError(f"bandit gave no report: {report.stderr[-500:]}") from None
        issues: dict[str, set[str]] = defaultdict(set)
        for r in results:
            issues[Path(r["filename"]).name].add(r["test_id"])
    tasks, dropped = [], []
    for t in templates:
        flagged, clean = issues[f"{t['id']}.insecure.py"], issues[f"{t['id']}.secure.py"]
        if t["issue"] in flagged and t["issue"] not in clean:
            tasks.append(_task(f"security/{t['id']}", t["instruction"], t["secure"], t["insecure"], "security"))
        else:
            dropped.append(f"{t['id']}: bandit found {sorted(flagged)} in the insecure code, {sorted(clean)} in the "
                           f"secure one (expected {t['issue']} only in the insecure)")
    return tasks, {"security_templates": len(templates), "security_kept": len(tasks), "security_dropped": dropped}


_TIMER = """
import json, sys, time
namespace = {}
exec(open("/code/candidate.py").read(), namespace)
best, value = float("inf"), None
for _ in range(3):
    start = time.perf_counter()
    value = eval(sys.argv[1], namespace)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "value": repr(value)}))
"""


@functools.cache
def _timing_sandbox() -> Sandbox:
    """One slot, so that the two versions of a task are never timed against each other."""
    return Sandbox("bwrap", SandboxLimits(wall_s=120, cpu_s=120, memory_mb=2048), slots=1)


def _timed(code: str, check: str) -> dict[str, Any]:
    """The best of 3 timings of `check` over `code`, in the sandbox."""
    run = _timing_sandbox().run({"timer.py": _TIMER, "candidate.py": code}, ["timer.py", check])
    stderr = run.stderr.decode(errors="replace").strip()
    if run.timed_out:
        raise RuntimeError("over 120 s")
    if run.returncode:
        raise RuntimeError(stderr.splitlines()[-1] if stderr else f"exit {run.returncode}")
    return json.loads(run.stdout)


def efficiency_tasks(min_ratio: float = 3.0) -> tuple[list[dict], dict]:
    templates = yaml.safe_load((TEMPLATES / "efficiency.yaml").read_text())
    tasks, dropped, ratios = [], [], {}
    for t in templates:
        try:
            fast, slow = _timed(t["fast"], t["check"]), _timed(t["slow"], t["check"])
        except RuntimeError as e:
            dropped.append(f"{t['id']}: {e}")
            continue
        ratio = slow["seconds"] / max(fast["seconds"], 1e-9)
        if fast["value"] != slow["value"]:
            dropped.append(f"{t['id']}: the two versions return different values")
        elif ratio < min_ratio:
            dropped.append(f"{t['id']}: slow version only {ratio:.1f}x slower (need {min_ratio}x)")
        else:
            ratios[t["id"]] = round(ratio, 1)
            tasks.append(_task(f"efficiency/{t['id']}", t["instruction"], t["fast"], t["slow"], "efficiency"))
    return tasks, {"efficiency_templates": len(templates), "efficiency_kept": len(tasks),
                   "efficiency_slowdown": ratios, "efficiency_dropped": dropped}


def build_tasks(limit: int | None = None, workers: int = 2) -> tuple[list[dict], dict]:
    """Every category's verified tasks and what was dropped, and why."""
    tasks, stats = [], {}
    for build in (lambda: correctness_tasks(limit, workers), security_tasks, efficiency_tasks):
        more, more_stats = build()
        tasks += more
        stats.update(more_stats)
    stats["tasks"] = len(tasks)
    return tasks, stats


def eval_codepref(scorer: Scorer, tasks: Sequence[dict]) -> dict[str, Any]:
    """Accuracy per criterion over both orders of every task; an undecided comparison (P = 0.5,
    or no answer from a judge) earns 0.5 and is counted."""
    pairs = []
    for t in tasks:
        first, second = t["choices"]
        criterion = CRITERIA.get(t["criteria"], t["criteria"])
        pairs += [Pair(prompt=t["instruction"], a=first, b=second, criterion=criterion),
                  Pair(prompt=t["instruction"], a=second, b=first, criterion=criterion)]
    probabilities = scorer.compare(pairs).probabilities
    by: dict[str, dict[str, float]] = defaultdict(lambda: {"comparisons": 0, "credit": 0.0, "undecided": 0})
    for i, t in enumerate(tasks):
        as_given, swapped = probabilities[2 * i], probabilities[2 * i + 1]
        for p, better_is_a in ((as_given, t["gt_choice"] == 0), (swapped, t["gt_choice"] == 1)):
            row = by[t["criteria"]]
            row["comparisons"] += 1
            if p is None or p == 0.5:
                row["undecided"] += 1
                row["credit"] += 0.5
            else:
                row["credit"] += float((p > 0.5) == better_is_a)
    report = {c: {"accuracy": round(r["credit"] / r["comparisons"], 4), "comparisons": r["comparisons"],
                  "undecided": r["undecided"]} for c, r in sorted(by.items())}
    total = sum(r["comparisons"] for r in by.values())
    return {"model": scorer.name, "tasks": len(tasks), "by_criteria": report,
            "accuracy": round(sum(r["credit"] for r in by.values()) / total, 4) if total else None,
            "undecided": sum(r["undecided"] for r in by.values())}


class LongerWins(Scorer):
    """Baseline: the longer code is preferred (equal lengths are undecided)."""

    kind = "baseline"

    def __init__(self) -> None:
        super().__init__("longer-wins", {})

    def score(self, items: Sequence[Item]) -> Scores:
        return Scores([float(len(i.response)) for i in items], [False] * len(items))

    def compare(self, pairs: Sequence[Pair]):
        result = super().compare(pairs)
        result.probabilities = [0.5 if m == 0 else float(m > 0) for m in result.margins]
        return result
