"""The consensus reward on HumanEval: does the top-ranked candidate pass the hidden tests?

Each problem's candidates are plaudit's own (training/humaneval.py): its canonical solution
and up to K-1 of its single-point mutants that fail HumanEval's hidden tests (shuffled by
seed, tried in order). The consensus kind tests them on the prompt's `>>>` examples only;
the hidden tests only say which candidate is correct. For each problem, the chance that
the top-ranked candidate is correct (ties broken at random, so a tie of n with one correct
counts 1/n) is averaged over the problems that have readable examples, for:

- random: a candidate picked at random (correct / K);
- pass rate: the candidates with the highest pass rate on the examples (MaxPass);
- codet: the paper's tests x size; codet-sqrt: tests x sqrt(size), CodeT's released code;
- b4 (beta_0 = 1e4, 1e5, 1e6; alpha = 1e3): B4's score.

`--copies C` puts the canonical solution in C times (a policy that often samples it).

    python -m benchmarks.consensus [--limit N] [--candidates K] [--copies C] [--seed S]
"""
from __future__ import annotations

import argparse
import random
import time
from concurrent.futures import ThreadPoolExecutor

from plaudit.rewardmodels import Item
from plaudit.rewardmodels.consensus import Consensus, ConsensusSettings, prompt_tests, score_matrix
from plaudit.rewardmodels.execution import Execution, ExecutionSettings
from plaudit.training.humaneval import _prompt, _response, load_problems, mutants, passes_tests, solution_source

METHODS = {"codet": dict(method="codet"), "codet-sqrt": dict(method="codet", codet_exponent=0.5),
           "b4 (beta0 1e4)": dict(method="b4", b4_beta0=1e4), "b4 (beta0 1e5)": dict(method="b4", b4_beta0=1e5),
           "b4 (beta0 1e6)": dict(method="b4", b4_beta0=1e6)}


def candidates(problem: dict, k: int, copies: int, seed: int) -> list[tuple[str, bool]] | None:
    """(source, correct) for the canonical solution (`copies` times) and up to k - copies
    failing mutants; None when the canonical solution fails its own tests."""
    source = solution_source(problem)
    if not passes_tests(problem, source):
        return None
    pool = mutants(source, problem["entry_point"])
    random.Random(f"{seed}:{problem['task_id']}").shuffle(pool)
    failing = []
    for mutant in pool:
        if len(failing) >= k - copies:
            break
        if not passes_tests(problem, mutant):
            failing.append(mutant)
    return [(source, True)] * copies + [(m, False) for m in failing]


def top_correct(rewards: list[float], correct: list[bool]) -> float:
    """The chance that the best-rewarded candidate is correct, ties broken at random."""
    best = max(rewards)
    top = [c for r, c in zip(rewards, correct) if r == best]
    return sum(top) / len(top)


def run(limit: int | None = None, k: int = 8, copies: int = 1, seed: int = 0, workers: int = 2) -> dict:
    start = time.perf_counter()
    execution = Execution("bench-consensus", ExecutionSettings(slots=4, wall_s=10, test_s=5, memory_mb=1024))
    consensus = Consensus("bench-consensus", ConsensusSettings(execution="bench-consensus"), execution)
    problems = load_problems()[:limit]

    def one(problem: dict) -> dict:
        found = prompt_tests(problem["prompt"])
        if found is None or found[0].style != "asserts":  # `>>>` examples only
            return {"task_id": problem["task_id"], "examples": 0}
        chosen = candidates(problem, k, copies, seed)
        if chosen is None or len(chosen) < 2:
            return {"task_id": problem["task_id"], "examples": len(found[1]), "skipped": True}
        correct = [c for _, c in chosen]
        scored = consensus.score([Item(prompt=_prompt(problem), response=_response(s)) for s, _ in chosen])
        matrix = scored.details[0]["matrix"]
        m = len(matrix[0]) if matrix else 0
        picks = {"random": sum(correct) / len(correct),
                 "pass rate": top_correct([sum(row) for row in matrix], correct)}
        for name, options in METHODS.items():
            picks[name] = top_correct(score_matrix(matrix, **options)[0], correct)
        return {"task_id": problem["task_id"], "examples": m, "k": len(chosen), "picks": picks,
                "canonical_passes_examples": all(matrix[0]), "groups": len(scored.details[0]["groups"])}

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, problems))
    measured = [r for r in results if "picks" in r]
    names = ["random", "pass rate", *METHODS]
    top1 = {name: round(sum(r["picks"][name] for r in measured) / max(len(measured), 1), 3) for name in names}
    return {"consensus_top1": top1,
            "consensus": {"problems": len(problems), "with_examples": sum(r["examples"] > 0 for r in results),
                          "measured": len(measured), "skipped": sum(bool(r.get("skipped")) for r in results),
                          "candidates_per_problem": round(sum(r["k"] for r in measured) / max(len(measured), 1), 2),
                          "examples_per_problem": round(sum(r["examples"] for r in measured) / max(len(measured), 1),
                                                        2),
                          "groups_per_problem": round(sum(r["groups"] for r in measured) / max(len(measured), 1), 2),
                          "canonical_fails_an_example": [r["task_id"] for r in measured
                                                         if not r["canonical_passes_examples"]],
                          "copies": copies, "seed": seed, "runs": consensus.stats()["runs"],
                          "seconds": round(time.perf_counter() - start, 1)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=None, help="the first N problems (all 164 by default)")
    parser.add_argument("--candidates", type=int, default=8, help="K: candidates per problem")
    parser.add_argument("--copies", type=int, default=1, help="times the canonical solution is among them")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="problems at once")
    args = parser.parse_args()
    result = run(args.limit, args.candidates, args.copies, args.seed, args.workers)
    info = result["consensus"]
    print(f"HumanEval, {info['measured']} problems with `>>>` examples of {info['problems']} "
          f"({info['skipped']} skipped), {info['candidates_per_problem']} candidates and "
          f"{info['examples_per_problem']} examples per problem, {info['groups_per_problem']} groups, "
          f"the canonical solution {info['copies']}x; {info['runs']} runs, {info['seconds']} s")
    print(f"canonical solution fails one of its own examples: {', '.join(info['canonical_fails_an_example']) or 'none'}")
    for name, share in result["consensus_top1"].items():
        print(f"  top-ranked candidate correct, {name:<15} {share:.3f}")


if __name__ == "__main__":
    main()
