"""The math kind against math-verify called pair by pair: one /score request of 64 references
x 16 responses (a GRPO step of 64 groups) on a server serving only `math`, against
`verify(parse(reference), parse(response))` in this process, on the same pairs, in one run.

A group is what a policy writes for one problem: some responses give the answer as the
reference writes it, some in another correct form (a decimal for a fraction, a root
simplified otherwise, an expanded polynomial), the rest wrong, often the same wrong answer
more than once. Both sides read a reference as `\\boxed{reference}`, so they do the same
work, and each verdict is compared with the truth (the groups are made knowing it).
"""
from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import httpx2

from . import serving

MATH_ONLY = {"models": {"math": {"kind": "math"}}, "default_model": "math",
             "limits": {"max_items": 1024}}  # a GRPO step in one request


def _problem(rng: random.Random) -> tuple[str, list[str], list[str]]:
    """(reference, other correct forms, wrong answers) for one problem."""
    kind = rng.choice(["integer", "fraction", "root", "polynomial"])
    if kind == "integer":
        n = rng.randint(2, 999)
        return str(n), [f"{n}.0", f"{n:,}" if n > 999 else f"{n}.00"], [str(n + d) for d in (1, -1, 10)]
    if kind == "fraction":
        a, b = rng.choice([(1, 2), (3, 4), (1, 8), (5, 8), (3, 5), (7, 20)])
        return f"\\frac{{{a}}}{{{b}}}", [str(a / b), f"\\dfrac{{{2 * a}}}{{{2 * b}}}", f"{a}/{b}"], \
            [f"\\frac{{{b}}}{{{a}}}", str(round(a / b + 0.1, 3)), f"\\frac{{{a + 1}}}{{{b}}}"]
    if kind == "root":
        k, m = rng.choice([(2, 3), (3, 2), (2, 5), (5, 2), (4, 3)])
        return f"{k}\\sqrt{{{m}}}", [f"\\sqrt{{{k * k * m}}}", f"\\sqrt{{{m}}} \\cdot {k}"], \
            [f"{k}\\sqrt{{{m + 1}}}", f"\\sqrt{{{k * m}}}", f"{k * m}"]
    n = rng.randint(2, 9)
    return f"x^2 - {n * n}", [f"(x-{n})(x+{n})", f"(x+{n})(x-{n})"], [f"(x-{n})^2", f"x^2 + {n * n}", f"x - {n}"]


def _response(rng: random.Random, answer: str) -> str:
    steps = "\n".join(f"Step {i + 1}: we simplify the expression further." for i in range(rng.randint(1, 4)))
    ending = rng.choice([f"The answer is $\\boxed{{{answer}}}$.", f"Answer: {answer}", f"\\boxed{{{answer}}}"])
    thought = "<think>Let me try a few values first.</think>\n" if rng.random() < 0.3 else ""
    return f"{thought}{steps}\n{ending}"


def groups(seed: int, problems: int = 64, k: int = 16) -> list[tuple[str, str, bool]]:
    """(reference, response, equivalent) triples: per problem 6 written as the reference, 3 in
    other correct forms, 7 wrong drawn from 3 wrong answers."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(problems):
        reference, other, wrong = _problem(rng)
        answers = [(reference, True)] * 6 + [(rng.choice(other), True) for _ in range(3)] \
            + [(rng.choice(wrong), False) for _ in range(k - 9)]
        pairs += [(reference, _response(rng, a), equivalent) for a, equivalent in answers]
    return pairs


def _naive(pairs: list[tuple[str, str, bool]]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    started = time.perf_counter()
    verdicts = [verify(parse(f"\\boxed{{{reference}}}"), parse(response)) for reference, response, _ in pairs]
    return time.perf_counter() - started, verdicts


def _served(url: str, pairs: list[tuple[str, str, bool]]) -> tuple[float, list[float]]:
    items = [{"prompt": "Solve it.", "response": response, "reference": reference} for reference, response, _ in pairs]
    started = time.perf_counter()
    answer = httpx2.post(f"{url}/score", json={"model": "math", "items": items}, timeout=600)
    took = time.perf_counter() - started
    answer.raise_for_status()
    return took, answer.json()["rewards"]


def run() -> dict:
    pairs = groups(seed=0)
    naive_s, naive_verdicts = _naive(pairs)
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-math-") as tmp, \
            serving.plaudit(Path(tmp), MATH_ONLY) as service:
        _served(service.url, groups(seed=1, problems=8))  # the workers started, on other pairs
        before = service.forward_stats("math")
        served_s, rewards = _served(service.url, pairs)
        after = service.forward_stats("math")
    truth = [equivalent for _, _, equivalent in pairs]
    return {"math_vs_naive": round(naive_s / served_s, 2),
            "math": {"pairs": len(pairs), "naive_s": round(naive_s, 2), "naive_ms_per_pair": round(1e3 * naive_s /
                                                                                                     len(pairs), 2),
                     "served_s": round(served_s, 2),
                     "served_right": sum((r == 1.0) == t for r, t in zip(rewards, truth)),
                     "naive_right": sum(v == t for v, t in zip(naive_verdicts, truth)),
                     "agree_with_naive": sum((r == 1.0) == v for r, v in zip(rewards, naive_verdicts)),
                     "exact": after["exact"] - before["exact"],
                     "symbolic_checks": after["symbolic"] - before["symbolic"], "workers": after["workers"]}}


if __name__ == "__main__":
    print(run())
