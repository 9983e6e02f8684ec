"""Tests for the execution-grounded HumanEval preference pairs (training/humaneval.py)."""

import difflib
import time

import pytest

from plaudit.training.humaneval import (
    build_pairs,
    build_steps,
    load_problems,
    mutants,
    passes_tests,
    solution_source,
    split_of,
)

FENCE_OPEN = "```python\n"
FENCE_CLOSE = "\n```"


@pytest.fixture(scope="module")
def problems():
    return {problem["task_id"]: problem for problem in load_problems()}


@pytest.fixture(scope="module")
def built():
    return build_pairs(limit=5)


def unfence(response):
    assert response.startswith(FENCE_OPEN) and response.endswith(FENCE_CLOSE)
    return response[len(FENCE_OPEN) : -len(FENCE_CLOSE)]


def changed_lines(a, b):
    diff = difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=0)
    return [line for line in diff if line[:1] in "+-" and line[:3] not in ("---", "+++")]


def test_load_problems_sorted(problems):
    task_ids = list(problems)
    assert len(task_ids) == 164
    assert task_ids[:3] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]


def test_split_is_by_problem_and_stable(problems):
    splits = {task_id: split_of(task_id) for task_id in problems}
    assert splits == {task_id: split_of(task_id) for task_id in problems}
    assert set(splits.values()) == {"train", "test"}
    test_fraction = sum(split == "test" for split in splits.values()) / len(splits)
    assert 0.12 <= test_fraction <= 0.28
    assert all(split_of(task_id, 0.0) == "train" for task_id in problems)
    assert all(split_of(task_id, 1.0) == "test" for task_id in problems)


@pytest.mark.parametrize("task_id", ["HumanEval/0", "HumanEval/10", "HumanEval/38"])
def test_solution_source_passes_and_has_no_docstrings(problems, task_id):
    problem = problems[task_id]
    source = solution_source(problem)
    assert '"""' not in source and ">>>" not in source
    assert passes_tests(problem, source)


def test_broken_solution_fails(problems):
    problem = problems["HumanEval/0"]
    source = solution_source(problem).replace("return True", "return False")
    assert not passes_tests(problem, source)


def test_infinite_loop_times_out_quickly():
    problem = {
        "task_id": "loop",
        "entry_point": "spin",
        "test": "def check(candidate):\n    candidate()\n",
    }
    start = time.perf_counter()
    assert not passes_tests(problem, "def spin():\n    while True:\n        pass\n", timeout=1)
    assert time.perf_counter() - start < 3


def test_mutants_of_tiny_function():
    source = "def lower(a, b):\n    return a < b and not a == 0\n"
    result = mutants(source, "lower")
    assert "def lower(a, b):\n    return a <= b and (not a == 0)" in result
    assert "def lower(a, b):\n    return a < b or not a == 0" in result
    assert "def lower(a, b):\n    return a < b and a == 0" in result
    assert "def lower(a, b):\n    return a < b and (not a == 1)" in result
    assert "def lower(a, b):\n    return None" in result
    assert len(result) == len(set(result))
    assert "def lower(a, b):\n    return a < b and (not a == 0)" not in result
    assert result == mutants(source, "lower")


def test_mutants_leave_signature_alone():
    source = "def f(x: int = 3) -> int:\n    return x\n"
    assert mutants(source, "f") == ["def f(x: int=3) -> int:\n    return None"]


def test_build_pairs_records_and_stats(built):
    pairs, stats = built
    assert stats["problems"] == 5 and stats["problems_skipped"] == 0
    assert stats["pairs"] == len(pairs) == stats["train_pairs"] + stats["test_pairs"]
    assert 0 < len(pairs) <= 5 * 4
    assert stats["mutants_tried"] == len(pairs) + stats["mutants_equivalent"]
    for pair in pairs:
        assert set(pair) == {"prompt", "chosen", "rejected", "task_id", "split"}
        assert pair["split"] == split_of(pair["task_id"])
        assert pair["prompt"].startswith("Write a Python function `")
        assert pair["prompt"].endswith("```")
        assert pair["chosen"] != pair["rejected"]
        changed = changed_lines(unfence(pair["chosen"]), unfence(pair["rejected"]))
        assert sum(line.startswith("-") for line in changed) == 1
        assert sum(line.startswith("+") for line in changed) == 1


def test_build_pairs_is_deterministic(built):
    pairs, _ = built
    again, _ = build_pairs(limit=2, workers=1)
    assert again == [pair for pair in pairs if pair["task_id"] in {"HumanEval/0", "HumanEval/1"}]


def test_build_pairs_labels_are_execution_grounded(built, problems):
    pairs, _ = built
    for task_id in sorted({pair["task_id"] for pair in pairs}):
        first = next(pair for pair in pairs if pair["task_id"] == task_id)
        assert passes_tests(problems[task_id], unfence(first["chosen"]))
    for pair in pairs[::4]:
        assert not passes_tests(problems[pair["task_id"]], unfence(pair["rejected"]))


@pytest.fixture(scope="module")
def steps():
    return build_steps(limit=4)


def bad_index(record):
    return len(record["labels"]) - 1


def test_build_steps_records_and_stats(steps):
    records, stats = steps
    assert stats["problems"] == 4 and stats["problems_skipped"] == 0
    assert stats["records"] == len(records) == stats["train_records"] + stats["test_records"]
    assert stats["good_records"] == 4
    assert stats["bad_labels"] == len(records) - stats["good_records"] > 0
    assert stats["step_labels"] == sum(len(record["labels"]) for record in records)
    assert stats["mutants_tried"] == stats["bad_labels"] + stats["mutants_equivalent"]
    for record in records:
        assert set(record) == {"prompt", "completions", "labels", "task_id", "split"}
        assert len(record["completions"]) == len(record["labels"]) >= 1
        assert record["split"] == split_of(record["task_id"])
        assert record["prompt"].startswith("Write a Python function `")
    assert len(records) <= 4 * (1 + 4)


def test_build_steps_good_record_is_the_passing_solution(steps, problems):
    records, _ = steps
    task_ids = list(dict.fromkeys(record["task_id"] for record in records))
    assert task_ids == list(problems)[:4]
    for task_id in task_ids:
        good = [r for r in records if r["task_id"] == task_id and all(r["labels"])]
        assert len(good) == 1
        source = "\n".join(good[0]["completions"])
        assert source == solution_source(problems[task_id])
        assert passes_tests(problems[task_id], source)


def test_build_steps_bad_labels_are_execution_grounded(steps, problems):
    records, _ = steps
    bad_records = [record for record in records if not all(record["labels"])]
    for record in bad_records:
        index = bad_index(record)
        assert record["labels"] == [True] * index + [False]
        canonical = solution_source(problems[record["task_id"]]).splitlines()
        assert record["completions"][:index] == canonical[:index]
        assert record["completions"][index] != canonical[index]
    for task_id in {record["task_id"] for record in bad_records}:
        indices = [bad_index(r) for r in bad_records if r["task_id"] == task_id]
        assert len(indices) == len(set(indices))
    for record in bad_records[::3]:
        index = bad_index(record)
        lines = solution_source(problems[record["task_id"]]).splitlines()
        lines[index] = record["completions"][index]
        assert not passes_tests(problems[record["task_id"]], "\n".join(lines))


def test_build_steps_is_deterministic(steps):
    records, _ = steps
    again, _ = build_steps(limit=2, workers=1)
    assert again == [record for record in records if record["task_id"] in {"HumanEval/0", "HumanEval/1"}]
