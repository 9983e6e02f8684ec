"""Rule rewards: the checks every RL reward function writes by hand, as kinds.

- `match`: 1 when the response's answer equals the item's reference (or any of a list of
  them), after normalisation unless `normalise: false`;
- `numeric`: 1 when the answer's number is within tolerance of the reference's;
- `regex`: 1 when the configured pattern is found in the answer (or matches it whole);
- `format`: 1 when the response has every required part (a code block, a final answer,
  a think block).

Each reward is 0 or 1, with what was read in `details` (the answer, the reason for a 0).
The answer (`answer:` in the settings) is, by default, the final answer: the last
`\\boxed{...}`, else the last line starting `Answer:` / `Final answer:` / `####`, else the
last non-empty line; `last_line` and `whole` (the whole response) read less into it.

A regex pattern comes only from the config, never from a request: Python's `re` has no time
limit, and a pattern sent by a client could hold a worker forever.
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .base import InputError, Item, LoadContext, ModelLoadError, Scorer, Scores
from .languages import FENCE

AnswerPart = Literal["final", "last_line", "whole"]
ANSWER_LINE = re.compile(r"^\s*(?:\**\s*(?:final\s+)?answer\s*\**\s*(?:is\s*)?[:：]\s*\**|####)\s*(.*?)\s*\**\s*$",
                         re.I | re.M)
THINK = re.compile(r"<think>.*?</think>", re.S)
NUMBER = re.compile(r"(?<![\w.])[-+−]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?(?:\s*/\s*\d+)?(?!\w)|"
                    r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")


def boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (braces balanced), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def answer_of(response: str, part: AnswerPart) -> str | None:
    """The part of a response a rule reads; None when there is nothing there."""
    if part == "whole":
        return response
    text = THINK.sub("", response)  # a reasoning model's thoughts are not its answer
    if part == "final":
        found = boxed(text)
        if found is not None:
            return found
        lines = ANSWER_LINE.findall(text)
        if lines:
            return lines[-1]
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None


def normalised(text: str) -> str:
    """Case, width, spacing, emphasis, quotes, `$` and a final full stop do not count."""
    text = unicodedata.normalize("NFKC", text).strip().lower()
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", text)
    text = re.sub(r"\s+", " ", text).strip(" \t*_`\"'$")
    return text.rstrip(".").strip()


def number_in(text: str) -> float | None:
    """The last number written in a text: 1,234.5, -3, 2.5e-3, 3/4 or \\frac{3}{4}."""
    found = None
    for match in NUMBER.finditer(text.replace("−", "-")):
        if match[1] is not None:
            found = Fraction(int(match[1]), int(match[2])) if int(match[2]) else None
            continue
        token = match[0].replace(",", "").replace(" ", "")
        numerator, _, denominator = token.partition("/")
        try:
            found = Fraction(numerator) / Fraction(denominator) if denominator else Fraction(numerator)
        except (ValueError, ZeroDivisionError):
            found = None
    return None if found is None else float(found)


@dataclass
class Verdict:
    passed: bool
    answer: str | None  # what the rule read (cut to 200 characters)
    reason: str | None = None  # why a 0: no_answer, mismatch, no_match, missing: ...


def verdict(passed: bool, answer: str | None, failure: str) -> Verdict:
    return Verdict(passed, answer, None if passed else failure)


class Rule(Scorer):
    """The shared frame: settings validated at load, one verdict per item, 0 or 1."""

    Settings: ClassVar[type[BaseModel]]
    needs_reference: ClassVar[bool] = True
    neutral_reward = 0.5

    def __init__(self, name: str, settings: BaseModel):
        super().__init__(name, {"kind": self.kind, **settings.model_dump()})
        self.settings = settings

    @classmethod
    def load(cls, context: LoadContext) -> "Rule":
        name = context.name or cls.kind
        settings = cls.settings_from(context)
        try:
            return cls(name, settings)
        except re.error as e:  # a regex's pattern, compiled once here
            raise ModelLoadError(f"{name}: settings.pattern: {e}") from None

    def p_good(self, reward: float | None) -> float | None:
        """A rule's 0 or 1 is already what feedback labels."""
        return reward

    def score(self, items: Sequence[Item]) -> Scores:
        verdicts = []
        for i, item in enumerate(items):
            if self.needs_reference and (item.reference is None or item.reference == "" or item.reference == []):
                raise InputError(f"items[{i}].reference", f"the {self.kind} kind needs the expected answer here")
            verdicts.append(self.check(item.response, item.reference, f"items[{i}].reference"))
        return Scores([float(v.passed) for v in verdicts], [False] * len(items),
                      details=[{"reward": float(v.passed), "answer": v.answer and v.answer[:200], "reason": v.reason}
                               for v in verdicts],
                      logs={"no_answer": [float(v.reason == "no_answer") for v in verdicts]})

    def check(self, response: str, reference: Any, field: str) -> Verdict:
        raise NotImplementedError


class MatchSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: AnswerPart = "final"
    normalise: bool = Field(True, description="ignore case, spacing, emphasis, quotes, $ and a final full stop")


class Match(Rule):
    kind = "match"
    Settings = MatchSettings

    def check(self, response: str, reference: Any, field: str) -> Verdict:
        expected = reference if isinstance(reference, list) else [reference]
        if not all(isinstance(e, (str, int, float)) for e in expected):
            raise InputError(field, "the match kind takes a string (or a list of accepted strings)")
        answer = answer_of(response, self.settings.answer)
        if answer is None:
            return Verdict(False, None, "no_answer")
        same = (lambda a, b: normalised(a) == normalised(b)) if self.settings.normalise else str.__eq__
        return verdict(any(same(answer, str(e)) for e in expected), answer, "mismatch")


class NumericSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: AnswerPart = "final"
    abs_tol: float = Field(1e-6, ge=0)
    rel_tol: float = Field(1e-4, ge=0)


class Numeric(Rule):
    kind = "numeric"
    Settings = NumericSettings

    def check(self, response: str, reference: Any, field: str) -> Verdict:
        expected = float(reference) if isinstance(reference, (int, float)) and not isinstance(reference, bool) \
            else number_in(reference) if isinstance(reference, str) else None
        if expected is None or not math.isfinite(expected):
            raise InputError(field, f"the numeric kind needs a number here, got {reference!r}")
        answer = answer_of(response, self.settings.answer)
        value = None if answer is None else number_in(answer)
        if value is None:
            return Verdict(False, answer, "no_answer")
        close = math.isclose(value, expected, rel_tol=self.settings.rel_tol, abs_tol=self.settings.abs_tol)
        return verdict(close, answer, "mismatch")


class RegexSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pattern: str = Field(description="a Python regular expression (from the config only, never a request)")
    answer: AnswerPart = "whole"
    fullmatch: bool = Field(False, description="the whole answer must match, not just a part of it")
    ignore_case: bool = False

    def compiled(self) -> re.Pattern:
        return re.compile(self.pattern, (re.I if self.ignore_case else 0) | re.M)


class Regex(Rule):
    kind = "regex"
    Settings = RegexSettings
    needs_reference = False

    def __init__(self, name: str, settings: RegexSettings):
        super().__init__(name, settings)
        self.pattern = settings.compiled()

    def check(self, response: str, reference: Any, field: str) -> Verdict:
        answer = answer_of(response, self.settings.answer)
        if answer is None:
            return Verdict(False, None, "no_answer")
        found = (self.pattern.fullmatch if self.settings.fullmatch else self.pattern.search)(answer)
        return verdict(found is not None, answer, "no_match")


class FormatSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    require: list[Literal["code_block", "final_answer", "think"]] = Field(
        ["code_block"], min_length=1, description="code_block: a fenced block; final_answer: a \\boxed{} or an "
                                                  "`Answer:` line; think: a <think>...</think> block")
    language: str | None = Field(None, description="the code block's language, e.g. python (any when absent)")


class Format(Rule):
    kind = "format"
    Settings = FormatSettings
    needs_reference = False

    def check(self, response: str, reference: Any, field: str) -> Verdict:
        text = THINK.sub("", response)
        present = {
            "code_block": any(self.settings.language is None or lang.strip().lower() == self.settings.language.lower()
                              for lang, _ in FENCE.findall(text)),
            "final_answer": boxed(text) is not None or bool(ANSWER_LINE.search(text)),
            "think": bool(THINK.search(response)),
        }
        missing = [part for part in self.settings.require if not present[part]]
        return Verdict(not missing, None, f"missing: {', '.join(missing)}" if missing else None)

