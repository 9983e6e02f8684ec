"""The math kind: agreement with the true verdict on MATH- and GSM8K-style pairs, what was read
on each side, hostile answers bounded in time and size (the worker free again after), calls
from many threads, and each reference parsed once."""
from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from plaudit.rewardmodels import InputError, Item, ModelLoadError, load_scorer

PAIRS = [json.loads(line) for line in (Path(__file__).parent / "math_answers.jsonl").open()]


@pytest.fixture(scope="module")
def math():
    """Time limits generous enough that no honest check meets them, even on a loaded machine
    (at 1 s, one symbolic check timed out beside a training run); the hostile answers' test
    has its own short limit."""
    scorer = load_scorer(None, name="math", kind="math", settings={"timeout_s": 30.0})
    yield scorer
    scorer.close()


def items(pairs: list[tuple[object, str]]) -> list[Item]:
    return [Item(prompt="q", response=response, reference=reference) for reference, response in pairs]


def test_the_math_kind_agrees_with_the_true_verdict(math):
    """46 pairs whose verdict is not in doubt: fractions and decimals, roots, expressions,
    equations, intervals, tuples, sets, matrices, percentages, units, think blocks, ####."""
    assert len(PAIRS) == 46 and sum(p["equivalent"] for p in PAIRS) == 32
    scored = math.score(items([(p["reference"], p["response"]) for p in PAIRS]))
    wrong = [(p["reference"], p["response"], d) for p, d in zip(PAIRS, scored.details)
             if (d["reward"] == 1.0) != p["equivalent"]]
    assert wrong == []
    for pair, detail in zip(PAIRS, scored.details):
        assert detail["path"] in ("exact", "symbolic")
        assert (detail["reason"] is None) == pair["equivalent"]
        if detail["path"] == "symbolic":
            assert detail["answer_parsed"] and detail["reference_parsed"]


def test_details_say_what_was_read_and_why_a_zero(math):
    scored = math.score(items([
        ("\\frac{1}{2}", "<think>\\boxed{0.5}</think>\nI am not sure."),
        ("3", "I give up"), (2, "Answer: 2.0"), (["1/2", "0.5"], "\\boxed{\\frac{2}{4}}"), ("7", ""),
        ("x^2", "\\boxed{" + "x" * 1500 + "}")]))
    first = scored.details[0]
    assert first["answer"] == "I am not sure." and first["reason"] == "mismatch"  # the think block is not the answer
    assert scored.details[1]["reason"] == "mismatch" and scored.details[1]["path"] == "symbolic"
    assert scored.rewards[2:4] == [1.0, 1.0] and scored.details[3]["reference_parsed"][0] == "1/2"
    assert scored.details[4]["reason"] == "no_answer" and scored.logs["no_answer"] == [0, 0, 0, 0, 1, 0]
    assert scored.details[5]["reason"] == "too_long" and scored.details[5]["path"] is None


@pytest.mark.parametrize("reference", [None, "", [], {"a": 1}, True, [1, None]])
def test_a_reference_that_is_no_answer_is_refused_by_item(math, reference):
    with pytest.raises(InputError, match="string or a number") as refused:
        math.score(items([("1", "\\boxed{1}"), (reference, "\\boxed{1}")]))
    assert refused.value.field == "items[1].reference"


@pytest.fixture
def hurried():
    scorer = load_scorer(None, name="math", kind="math", settings={"timeout_s": 3.0})
    yield scorer
    scorer.close()


def test_hostile_answers_are_bounded_and_the_workers_free_again(hurried):
    """A power tower SymPy would evaluate for ever, a sum of powers with a billion digits each,
    brackets nested a thousand deep: each a 0 with its reason, in about the time limit."""
    tower = "\\boxed{9^{9^{9^{9}}}}"
    stuck = "\\boxed{10^{10^{9}} + 10^{10^{9}} - 2 \\cdot 10^{10^{9}}}"
    nested = "\\boxed{" + "(" * 1000 + "1" + ")" * 1000 + "}"
    started = time.monotonic()
    scored = hurried.score(items([("1", tower), ("0", stuck), ("1", nested), ("\\frac12", "\\boxed{0.5}")]))
    took = time.monotonic() - started
    assert [d["reason"] for d in scored.details] == ["timeout", "timeout", "too_long", None]
    assert scored.rewards == [0.0, 0.0, 0.0, 1.0] and scored.logs["timeout"] == [1, 1, 0, 0]
    assert took < 2 * (3.0 + 1.0) + 5  # two timeouts side by side at most, each its limit plus the grace
    again = hurried.score(items([("\\sqrt{2}/2", "\\boxed{\\frac{1}{\\sqrt 2}}")] * 2 + [("(1,2)", "\\boxed{(1,2)}")]))
    assert again.rewards == [1.0, 1.0, 1.0]


def test_checks_from_many_threads_get_their_own_answers(math):
    def check(n: int) -> list[float]:
        return math.score(items([(f"\\frac{{{n}}}{{4}}", f"\\boxed{{{n / 4}}}"),
                                 (f"{n}", f"\\boxed{{{n + 1}}}")])).rewards

    with ThreadPoolExecutor(8) as threads:
        assert list(threads.map(check, range(1, 17))) == [[1.0, 0.0]] * 16


def test_each_reference_is_parsed_once_and_each_pair_checked_once():
    """A GRPO group: one reference, 16 responses, half of them one repeated wrong answer."""
    scorer = load_scorer(None, name="one", kind="math", settings={"workers": 1})
    try:
        forms = ["\\frac{6}{4}", "1.5", "\\frac{3}{2}", "3/2", "\\dfrac{3}{2}", "1.50", "\\tfrac32", "15/10"]
        group = [("\\frac{3}{2}", f"\\boxed{{{form}}}") for form in forms] + [("\\frac{3}{2}", "\\boxed{2}")] * 8
        scored = scorer.score(items(group))
        assert scored.rewards == [1.0] * 8 + [0.0] * 8
        stats = scorer.stats()
        assert stats["references_parsed"] == 1 and stats["symbolic"] == 8 and stats["exact"] == 1
    finally:
        scorer.close()


def test_settings_are_checked_at_load():
    with pytest.raises(ModelLoadError, match="timeout_s"):
        load_scorer(None, name="m", kind="math", settings={"timeout_s": 0})
    with pytest.raises(ModelLoadError, match="unknown"):
        load_scorer(None, name="m", kind="math", settings={"unknown": 1})


def test_a_worker_that_stops_answering_is_killed_and_replaced():
    """Where the worker's own timer cannot reach (stuck in C code, here: stopped by a signal),
    the service kills it past the limit and the next check gets a fresh one."""
    import os
    import signal

    scorer = load_scorer(None, name="one", kind="math", settings={"workers": 1, "timeout_s": 0.5})
    try:
        scorer.workers.start()
        [child] = scorer.workers._children
        os.kill(child.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        stuck = scorer.score(items([("1", "\\boxed{1.0}")]))
        assert stuck.details[0]["reason"] == "timeout" and 1.4 < time.monotonic() - started < 10
        assert scorer.stats()["workers_restarted"] == 1
        assert scorer.score(items([("1", "\\boxed{1.0}")])).rewards == [1.0]
    finally:
        scorer.close()
