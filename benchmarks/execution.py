"""The execution reward's cost: one short program through the bubblewrap sandbox (the warm
path, the default: a fork of the slot's fork server) against a plain subprocess run of the same
program (the isolation's price; the cold path's run beside them), HumanEval programs per second
on the warm path over the cold path (the same programs, alternately, each path's servers
started first), HumanEval programs with
their tests per second through the execution kind at its default pool size (its tests judged
in a sandbox of their own) beside the same runs judged inside the program's one process (the
price of judging outside), and per language a short program's compile and run time and
runs per second at the default pool size."""
from __future__ import annotations

import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from plaudit.rewardmodels import Item, load_scorer
from plaudit.rewardmodels.execution import Execution, ExecutionSettings
from plaudit.rewardmodels.languages import LANGUAGES
from plaudit.rewardmodels.sandbox import Sandbox
from plaudit.training.humaneval import load_problems, solution_source

PROGRAM = "print(sum(i * i for i in range(10_000)))\n"
RUNS = 60


def _medians_s(*calls) -> list[float]:
    """Each call's median time, the calls interleaved so that a busy moment hits all alike."""
    for call in calls:
        call()  # warm the page cache
    times = [[] for _ in calls]
    for _ in range(RUNS):
        for call, spent in zip(calls, times):
            start = time.perf_counter()
            call()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def run() -> dict:
    sandbox, cold = Sandbox("bwrap", slots=1), Sandbox("bwrap", slots=1, warm=False)
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-exec-") as tmp:
        script = Path(tmp) / "program.py"
        script.write_text(PROGRAM)
        plain_s, sandboxed_s, cold_s = _medians_s(
            lambda: subprocess.run([sandbox.python, "-I", "-B", str(script)], check=True, capture_output=True),
            lambda: sandbox.run({"program.py": PROGRAM}, ["program.py"]),
            lambda: cold.run({"program.py": PROGRAM}, ["program.py"]))
    sandbox.close()

    execution = load_scorer(None, name="bench", kind="execution")
    problems = load_problems()[:64]
    items = [Item(prompt="p", response=f"```python\n{solution_source(p)}\n```",
                  reference={"tests": p["test"], "entry_point": p["entry_point"]}) for p in problems]
    inside_s, inside_passed = _judged_inside(execution.sandbox, problems)
    warm_per_s, cold_per_s = _warm_and_cold(execution, items)
    start = time.perf_counter()
    rewards = execution.score(items).rewards
    seconds = time.perf_counter() - start
    return {"exec_sandbox_overhead": round(sandboxed_s / plain_s, 2),
            "exec_warm_vs_cold": round(warm_per_s / cold_per_s, 2),
            "exec_languages": _languages(execution),
            "exec_programs_per_s": round(len(items) / seconds, 1),
            "exec_judging_outside_cost": round(seconds / inside_s, 2),
            "execution": {"plain_ms": round(plain_s * 1000, 1), "sandboxed_ms": round(sandboxed_s * 1000, 1),
                          "cold_sandboxed_ms": round(cold_s * 1000, 1),
                          "warm_programs_per_s": round(warm_per_s, 1), "cold_programs_per_s": round(cold_per_s, 1),
                          "programs": len(items), "all_passed": sum(r == 1.0 for r in rewards),
                          "judged_inside_per_s": round(len(items) / inside_s, 1),
                          "judged_inside_passed": inside_passed, "slots": ExecutionSettings().slots}}


def _warm_and_cold(warm, items, rounds: int = 2) -> tuple[float, float]:
    """HumanEval programs per second through the execution kind on the warm path (`warm`, the
    default settings) and on the cold path (`warm: false`), the same items, alternately; each
    path's first batch (the fork servers' start) is not timed."""
    cold = Execution("bench-cold", ExecutionSettings(warm=False))
    spent = {"warm": 0.0, "cold": 0.0}
    for scorer in (warm, cold):
        scorer.score(items[:8])
    for _ in range(rounds):
        for name, scorer in (("warm", warm), ("cold", cold)):
            start = time.perf_counter()
            scorer.score(items)
            spent[name] += time.perf_counter() - start
    return rounds * len(items) / spent["warm"], rounds * len(items) / spent["cold"]


def _judged_inside(sandbox, problems) -> tuple[float, int]:
    """Before judging outside: the same HumanEval runs as one sandboxed process each, the
    program and its check() together (what a forging program defeats), on as many slots."""
    from concurrent.futures import ThreadPoolExecutor

    def inside(problem) -> bool:
        program = f"{solution_source(problem)}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
        return sandbox.run({"main.py": program}, ["main.py"]).returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(ExecutionSettings().slots) as pool:
        passed = sum(pool.map(inside, problems))
    return time.perf_counter() - start, passed


def _languages(execution) -> dict:
    """Per language: the first compile (a fresh program), one run, and runs per second with
    every slot busy (the build cached, as a GRPO group's repeats are)."""
    import sys
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from languages import INPUT, PROGRAMS

    programs, slots = execution.programs, ExecutionSettings().slots
    table = {}
    for name, outcomes in PROGRAMS.items():
        language = LANGUAGES[name]
        if language.missing:
            table[name] = "unavailable"
            continue
        code = outcomes["correct"] + ("\n" if name != "python" else "\n# bench\n")  # not in the cache yet
        start = time.perf_counter()
        with programs.built(language, code) as build:
            compiled_s = time.perf_counter() - start
            limits = programs.limits(language, 10)
            run_s = _medians_s(lambda: programs.run(build, INPUT.encode(), limits))[0]
            runs = 4 * slots
            start = time.perf_counter()
            with ThreadPoolExecutor(slots) as pool:
                list(pool.map(lambda _: programs.run(build, INPUT.encode(), limits), range(runs)))
            table[name] = {"compile_ms": round(compiled_s * 1000) if language.compile else None,
                           "run_ms": round(run_s * 1000, 1),
                           "runs_per_s": round(runs / (time.perf_counter() - start), 1)}
    return table
