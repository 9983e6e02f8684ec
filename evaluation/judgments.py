"""Judgments of models against a baseline: made by any plaudit scorer (a judge, or a reward
model as a cheap judge), resumably, or read from the files other evaluators write.

A `Judgment` is one question: the model's answer against the baseline's, read once with the
model shown first and once with it shown second (`readings`). Every leaderboard and win rate
in plaudit is computed from these, whichever tool made them.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator

from plaudit.files import read_jsonl
from plaudit.schemas import Pair, PairVerdict, Prompt

from .leaderboard import Battle

# ---- style: what a judge may pay for besides content (Arena-Hard's style control) ----

_CODE_BLOCK = re.compile(r"```.*?```", re.DOTALL)
_HEADER = re.compile(r"^#{1,6} ", re.MULTILINE)
_LIST_ITEM = re.compile(r"^\s*(?:[-*+]|\d+\.) ", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")
STYLE_FEATURES = ("length", "headers", "lists", "bold")


def style(text: str) -> tuple[float, ...]:
    """An answer's style, as Arena-Hard counts it: its length (in words here, tiktoken tokens
    there) and its markdown headers, list items and bold spans outside code blocks."""
    prose = _CODE_BLOCK.sub("", text)
    return (float(len(text.split())), float(len(_HEADER.findall(prose))), float(len(_LIST_ITEM.findall(prose))),
            float(len(_BOLD.findall(prose))))


def style_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, ...]:
    """a's style against b's, Arena-Hard's way: length as (a - b) / (a + b); each markdown count
    as a density (count / (length + 1)), then (a - b) / (a + b + 1)."""
    length = (a[0] - b[0]) / (a[0] + b[0]) if a[0] + b[0] else 0.0
    density_a = [x / (a[0] + 1) for x in a[1:]]
    density_b = [x / (b[0] + 1) for x in b[1:]]
    return (length, *((x - y) / (x + y + 1.0) for x, y in zip(density_a, density_b)))


# ---- one question judged ----

@dataclass(frozen=True)
class Reading:
    """P(the model beats the baseline) as one order was read (None: unread), the model shown
    first (True), second (False) or in an order the file does not say (None)."""

    p: float | None
    model_first: bool | None
    weight: float = 1.0


@dataclass(frozen=True)
class Judgment:
    model: str
    baseline: str
    question: str
    readings: tuple[Reading, ...]
    model_style: tuple[float, ...] | None = None
    baseline_style: tuple[float, ...] | None = None
    error: str | None = None

    @property
    def preference(self) -> float | None:
        """The readings' weighted mean: the model's share of the win on this question."""
        read = [r for r in self.readings if r.p is not None]
        if not read:
            return None
        return sum(r.p * r.weight for r in read) / sum(r.weight for r in read)

    @property
    def consistent(self) -> bool | None:
        """Both orders prefer the same answer; None unless both orders were read."""
        first = [r.p for r in self.readings if r.model_first is True and r.p is not None]
        second = [r.p for r in self.readings if r.model_first is False and r.p is not None]
        if not first or not second:
            return None
        return (first[0] - 0.5) * (second[0] - 0.5) > 0

    def battles(self) -> list[Battle]:
        """Each read order one battle, A being the answer shown first."""
        diff = (style_difference(self.model_style, self.baseline_style)
                if self.model_style is not None and self.baseline_style is not None else ())
        out = []
        for r in self.readings:
            if r.p is None:
                continue
            if r.model_first is False:
                out.append(Battle(self.baseline, self.model, 1.0 - r.p, r.weight, tuple(-d for d in diff)))
            else:
                out.append(Battle(self.model, self.baseline, r.p, r.weight, diff))
        return out


# ---- the answers to judge ----

class Output(BaseModel):
    """One model's answer to one question, as the common evaluators write it: plaudit's and
    AlpacaEval's field names, and Arena-Hard's `uid` and `messages`."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    question: str | None = Field(None, validation_alias=AliasChoices("question_id", "uid", "id"))
    instruction: Prompt = Field(validation_alias=AliasChoices("instruction", "prompt"))
    output: str = Field(validation_alias=AliasChoices("output", "response", "answer"))
    model: str | None = Field(None, validation_alias=AliasChoices("model", "generator", "model_id"))

    @field_validator("question", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value


def _arena_hard_answer(row: dict) -> dict:
    """Arena-Hard's answer rows hold the question and answer as `messages` (newer) or
    `choices[0].turns[0].content` (older)."""
    if "messages" in row and "output" not in row:
        messages = row["messages"]
        user = next((m["content"] for m in messages if m.get("role") == "user"), None)
        answer = next((m["content"] for m in reversed(messages) if m.get("role") == "assistant"), None)
        if isinstance(answer, dict):
            answer = answer.get("answer")
        return {**row, "instruction": user, "output": answer}
    if "choices" in row and "output" not in row:
        return {**row, "output": row["choices"][0]["turns"][0]["content"]}
    return row


def read_rows(path: Path) -> list[dict]:
    """A JSONL file, or a JSON list (AlpacaEval's files), as rows."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        rows = json.loads(text)
        if not all(isinstance(r, dict) for r in rows):
            raise ValueError(f"{path}: a JSON list of objects was expected")
        return rows
    return read_jsonl(path)


def read_outputs(paths: Sequence[Path]) -> dict[str, dict[str, Output]]:
    """model -> question -> answer, from one file per model (the model named by its `model`
    or `generator` field, else by the file's name) or one file with a `model` column. A
    question without an id is keyed by its instruction. A bad row names its file and row."""
    by_model: dict[str, dict[str, Output]] = {}
    for path in paths:
        for number, row in enumerate(read_rows(Path(path)), 1):
            try:
                answer = Output.model_validate(_arena_hard_answer(row))
            except (ValidationError, KeyError, IndexError, TypeError) as e:
                raise ValueError(f"{path}: row {number}: {_why(e)}") from None
            model = answer.model or Path(path).stem
            question = answer.question or json.dumps(answer.instruction if isinstance(answer.instruction, str)
                                                     else [m.model_dump() for m in answer.instruction])
            answers = by_model.setdefault(model, {})
            if question in answers:
                raise ValueError(f"{path}: row {number}: model {model!r} answers question {question!r} twice")
            answers[question] = answer
    return by_model


def _why(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        return f"{'.'.join(map(str, first['loc'])) or 'row'}: {first['msg']}"
    return f"not an answer row ({type(error).__name__}: {error})"


# ---- making judgments with a plaudit scorer, resumably ----

def judgment_record(model: str, baseline: str, question: str, verdict: PairVerdict,
                    model_answer: str, baseline_answer: str) -> dict[str, Any]:
    """One line of `judgments.jsonl` (beside its id): the two readings of P(model beats baseline)."""
    return {"model": model, "baseline": baseline, "question": question, "orders": verdict.orders,
            "consistent": verdict.consistent, "model_style": style(model_answer),
            "baseline_style": style(baseline_answer)}


def make_judgments(outputs: dict[str, dict[str, Output]], baseline: str, verdicts: Callable[[Pair], PairVerdict],
                   out: Path, *, concurrency: int = 4, progress: bool = True) -> dict[str, Any]:
    """Every model's answer to every question the baseline answered, judged against the
    baseline's in both orders by `verdicts`, into `out` (plaudit's resumable runner: a re-run
    judges only what is missing or failed). What was judged, skipped and failed."""
    from plaudit.jobs import run_resumable

    if baseline not in outputs:
        raise ValueError(f"--baseline: no answers from {baseline!r}; models: {', '.join(sorted(outputs))}")
    reference = outputs[baseline]
    work, unmatched = [], {}
    for model, answers in sorted(outputs.items()):
        if model == baseline:
            continue
        missing = [q for q in answers if q not in reference]
        if missing:
            unmatched[model] = len(missing)
        for question, answer in answers.items():
            if question in reference:
                work.append((json.dumps(f"{model}|{question}"),
                             _task(model, baseline, question, answer, reference[question], verdicts)))
    skipped, errors = run_resumable(work, out, concurrency=concurrency, progress=progress, label="judging")
    return {"judgments": len(work), "skipped": skipped, "judged": len(work) - skipped, "errors": errors,
            "questions_without_baseline": unmatched}


def _task(model: str, baseline: str, question: str, answer: Output, against: Output,
          verdicts: Callable[[Pair], PairVerdict]) -> Callable[[], dict[str, Any]]:
    def task() -> dict[str, Any]:
        verdict = verdicts(Pair(prompt=against.instruction, a=answer.output, b=against.output))
        if verdict.error:
            raise RuntimeError(verdict.error)
        return judgment_record(model, baseline, question, verdict, answer.output, against.output)
    return task


# ---- reading judgments, whoever made them ----

ARENA_HARD_SCORE = re.compile(r"^\s*\[*\s*([AB]\s*(?:>>|>|=|<<|<)\s*[AB])\s*\]*\s*$")


def _arena_hard(row: dict, baseline: str | None) -> Judgment:
    """Arena-Hard: game 1 shows the baseline as A and the model as B, game 2 the other way;
    `A>>B` and `B>>A` count 3 times."""
    from .leaderboard import VERDICTS

    readings = []
    for game, model_first in zip(row["games"], (False, True)):
        label = game.get("score")
        verdict = _arena_label(label)
        if verdict is None:
            readings.append(Reading(None, model_first))
            continue
        outcome, weight = VERDICTS[verdict]  # A's share
        readings.append(Reading(outcome if model_first else 1.0 - outcome, model_first, weight))
    question = str(row.get("uid", row.get("question_id")))
    return Judgment(row["model"], row.get("baseline", baseline or "baseline"), question, tuple(readings))


def _arena_label(label: Any) -> str | None:
    if not isinstance(label, str):
        return None
    compact = label.replace(" ", "").strip("[]")
    flipped = {"B<<A": "A>>B", "B<A": "A>B", "A<B": "B>A", "A<<B": "B>>A", "B=A": "A=B"}
    compact = flipped.get(compact, compact)
    return compact if compact in ("A>>B", "A>B", "A=B", "B>A", "B>>A") else None


def _alpaca_eval(row: dict) -> Judgment:
    """AlpacaEval: output_1 is the baseline's, output_2 the model's; `preference` is 1 (the
    baseline) to 2 (the model), 1.5 a tie, null unannotated. The order the annotator showed is
    not in the file."""
    preference = row.get("preference")
    p = None if preference is None else float(preference) - 1.0
    question = row.get("instruction") if isinstance(row.get("instruction"), str) else json.dumps(row["instruction"])
    return Judgment(row["generator_2"], row["generator_1"], question, (Reading(p, None),),
                    style(row["output_2"]) if "output_2" in row else None,
                    style(row["output_1"]) if "output_1" in row else None)


def _plaudit(row: dict) -> Judgment:
    """plaudit's own: `eval arena`'s judgments, or `plaudit judge` output on items that named
    their `models` ([model, baseline]) with a pairwise judge."""
    if "orders" in row:
        first, second = row["orders"]
        return Judgment(row["model"], row["baseline"], str(row["question"]),
                        (Reading(first, True), Reading(second, False)),
                        _tuple(row.get("model_style")), _tuple(row.get("baseline_style")))
    comparison = (row["result"] or {}).get("comparison")
    if comparison is None or "models" not in row:
        raise KeyError("a `plaudit judge` line must come from a pairwise judge on items with `models`")
    model, baseline = row["models"]
    first, second = comparison["orders"]
    return Judgment(model, baseline, str(row["id"]), (Reading(first, True), Reading(second, False)))


def _tuple(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(float(v) for v in value)


def read_judgments(paths: Iterable[Path], baseline: str | None = None) -> list[Judgment]:
    """Judgments from Arena-Hard's judgment JSONL, AlpacaEval's annotations.json, or plaudit's
    own (`eval arena`'s judgments.jsonl, `plaudit judge` output); the format is told by each
    row's fields. Error lines of a plaudit run (still to be judged) are skipped."""
    judgments = []
    for path in paths:
        for number, row in enumerate(read_rows(Path(path)), 1):
            if "error" in row and "id" in row:
                continue
            try:
                if "games" in row:
                    judgments.append(_arena_hard(row, baseline))
                elif "generator_2" in row:
                    judgments.append(_alpaca_eval(row))
                else:
                    judgments.append(_plaudit(row))
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise ValueError(f"{path}: row {number}: not a judgment Arena-Hard, AlpacaEval or plaudit "
                                 f"writes ({type(e).__name__}: {e})") from None
    return judgments


@dataclass
class ModelCounts:
    """Per model: questions judged, readings unread, position consistency and bias."""

    questions: int = 0
    unscored: int = 0  # readings whose answer could not be read
    both_read: int = 0
    consistent: int = 0
    first_wins: list[float] = field(default_factory=list)  # P(the answer shown first wins), per reading

    def row(self) -> dict[str, Any]:
        return {"questions": self.questions, "unscored": self.unscored,
                "position_consistency": round(100 * self.consistent / self.both_read, 1) if self.both_read else None,
                "first_position_wins": (round(100 * sum(self.first_wins) / len(self.first_wins), 1)
                                        if self.first_wins else None)}


def counts(judgments: Sequence[Judgment]) -> dict[str, ModelCounts]:
    by: dict[str, ModelCounts] = {}
    for j in judgments:
        c = by.setdefault(j.model, ModelCounts())
        c.questions += 1
        c.unscored += sum(r.p is None for r in j.readings)
        if j.consistent is not None:
            c.both_read += 1
            c.consistent += j.consistent
        c.first_wins += [r.p if r.model_first else 1.0 - r.p for r in j.readings
                         if r.p is not None and r.model_first is not None]
    return by
