"""The `math` kind: 1 when the final answer is equivalent to the reference, as math-verify
(Hugging Face's checker, used by TRL and open-r1) decides: numbers in their forms,
fractions, roots, expressions, equations, intervals, tuples, sets, matrices, percentages.

The answer is read as the rule kinds read it (the last `\\boxed{}`, an `Answer:` line,
GSM8K's `####`, a `<think>` block ignored: `answer` in the settings); the reference may be
LaTeX, plain text, a number or a list of accepted ones. What each side was read as, the
path that decided (`exact` or `symbolic`) and why a 0 are in `details`; the reasons:
no_answer, too_long, unparsed, unparsed_reference, mismatch, timeout, out_of_memory,
crashed, error.

Fast for GRPO, where a group of responses shares one reference: an answer written as the
reference is (after normalisation), or two plain integers, are decided here without SymPy;
each distinct (reference, answer) pair is checked once per request; a reference's checks go
to one worker, which parses it once; and the checks are spread over `workers` child
processes (math_worker.py, which also bounds each check's time and memory).
"""
from __future__ import annotations

import importlib.util
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .base import InputError, Item, LoadContext, ModelLoadError, Scores
from .math_worker import MathWorkers
from .rules import AnswerPart, Rule, answer_of, normalised

INTEGER = re.compile(r"[-+]?\d+")
OPENING, CLOSING = "({[", ")}]"


class MathSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: AnswerPart = "final"
    timeout_s: float = Field(2.0, gt=0, le=60, description="each check's time limit (past it: reason `timeout`)")
    max_chars: int = Field(1000, ge=1, description="a longer answer is not checked (reason `too_long`)")
    max_depth: int = Field(30, ge=1, description="an answer with brackets nested deeper is not checked "
                                                 "(reason `too_long`)")
    workers: int | None = Field(None, ge=1, le=64, description="checking processes (the machine's cores when "
                                                               "absent)")
    memory_mb: int = Field(1024, ge=256, description="each checking process's address-space limit")
    float_rounding: int = Field(6, ge=0, description="math-verify: decimals kept when comparing floats")
    numeric_precision: int = Field(15, ge=1, description="math-verify: digits SymPy evaluates numbers to")
    strict: bool = Field(True, description="math-verify: variables must match and sets are not intervals")


def nesting(text: str) -> int:
    """How deep brackets of any kind nest in a text."""
    depth = deepest = 0
    for char in text:
        if char in OPENING:
            depth += 1
            deepest = max(deepest, depth)
        elif char in CLOSING:
            depth = max(depth - 1, 0)
    return deepest


def accepted(reference: Any, field: str) -> tuple[str, ...]:
    """The reference's accepted answers, as text."""
    values = reference if isinstance(reference, list) else [reference]
    if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values) \
            or any(str(v).strip() == "" for v in values):
        raise InputError(field, f"the math kind takes the expected answer as a string or a number (or a list of "
                                f"accepted ones), got {reference!r}")
    return tuple(str(v) for v in values)


def exact(answer: str, references: tuple[str, ...]) -> bool | None:
    """The verdict when it needs no SymPy: the same text after normalisation, or integers
    on both sides; None when only the symbolic check can tell."""
    written = normalised(answer)
    if any(written == normalised(r) for r in references):
        return True
    if INTEGER.fullmatch(written) and all(INTEGER.fullmatch(normalised(r)) for r in references):
        return int(written) in {int(normalised(r)) for r in references}
    return None


class MathAnswer(Rule):
    kind = "math"
    Settings = MathSettings

    def __init__(self, name: str, settings: MathSettings):
        super().__init__(name, settings)
        size = settings.workers or os.cpu_count() or 1
        self.workers = MathWorkers(size, settings.memory_mb)
        self.dispatch = ThreadPoolExecutor(max_workers=size, thread_name_prefix=f"math-{name}")
        self.counts = dict.fromkeys(["checks", "exact", "symbolic", "references_parsed", "timeouts"], 0)

    @classmethod
    def load(cls, context: LoadContext) -> "MathAnswer":
        if importlib.util.find_spec("math_verify") is None:  # imported by the workers only
            raise ModelLoadError("the math kind needs math-verify (`pip install 'plaudit[serve]'`)")
        return super().load(context)

    def score(self, items: Sequence[Item]) -> Scores:
        details: list[dict[str, Any]] = []
        pending: dict[tuple[tuple[str, ...], str], list[int]] = {}  # distinct pairs to check -> items
        for i, item in enumerate(items):
            references = accepted(item.reference, f"items[{i}].reference")
            answer = answer_of(item.response, self.settings.answer)
            detail = {"reward": 0.0, "answer": answer and answer[:200], "path": None, "reason": None}
            details.append(detail)
            if answer is None or not answer.strip():
                detail["reason"] = "no_answer"
            elif len(answer) > self.settings.max_chars or nesting(answer) > self.settings.max_depth:
                detail["reason"] = "too_long"
            elif (decided := exact(answer, references)) is not None:
                detail.update(reward=float(decided), path="exact", reason=None if decided else "mismatch")
            else:
                pending.setdefault((references, answer), []).append(i)
        for pair, answer in zip(pending, self._check(list(pending))):
            for i in pending[pair]:
                details[i].update(reward=float(answer.get("passed", False)), path="symbolic",
                                  reason=answer["reason"], answer_parsed=answer.get("answer_parsed"),
                                  reference_parsed=answer.get("reference_parsed"))
                if "during" in answer:
                    details[i]["during"] = answer["during"]
        self.counts["checks"] += len(items)
        self.counts["exact"] += sum(d["path"] == "exact" for d in details)
        rewards = [d["reward"] for d in details]
        return Scores(rewards, [False] * len(items), details=details,
                      logs={"no_answer": [float(d["reason"] == "no_answer") for d in details],
                            "timeout": [float(d["reason"] == "timeout") for d in details]})

    def _check(self, pairs: list[tuple[tuple[str, ...], str]]) -> list[dict[str, Any]]:
        """math-verify's answers for distinct (references, answer) pairs, in order: a
        reference's pairs in one batch on one worker, split only to keep every worker busy."""
        if not pairs:
            return []
        by_reference: dict[tuple[str, ...], list[int]] = {}
        for index, (references, _) in enumerate(pairs):
            by_reference.setdefault(references, []).append(index)
        groups = list(by_reference.values())
        if len(groups) < self.workers.size:  # few references: share each one's answers out
            share = -(-len(pairs) // self.workers.size)
            groups = [group[k:k + share] for group in groups for k in range(0, len(group), share)]
        wrap = self.settings.answer != "whole"
        settings = {"wrap": wrap, "float_rounding": self.settings.float_rounding,
                    "numeric_precision": self.settings.numeric_precision, "strict": self.settings.strict}
        batches = [[{**settings, "references": list(pairs[i][0]), "answer": pairs[i][1]} for i in group]
                   for group in groups]
        answers: list[dict[str, Any]] = [{}] * len(pairs)
        for group, replies in zip(groups, self.dispatch.map(
                lambda batch: self.workers.run(batch, self.settings.timeout_s), batches)):
            for i, reply in zip(group, replies):
                answers[i] = reply
        self.counts["symbolic"] += len(pairs)
        self.counts["references_parsed"] += sum(a.get("reference_cached") is False for a in answers)
        self.counts["timeouts"] += sum(a.get("reason") == "timeout" for a in answers)
        return answers

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "workers": self.workers.size, "workers_restarted": self.workers.restarts}

    def close(self) -> None:
        self.workers.close()
        self.dispatch.shutdown(wait=False)
