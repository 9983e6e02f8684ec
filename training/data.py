"""Reading training and evaluation data in TRL's formats, one JSON object a line:
preference pairs (prompt, chosen, rejected) and PRM step records (prompt, completions, labels).

Every bad line is reported with its line number and field; nothing is skipped silently.
"""
from __future__ import annotations

import json
from pathlib import Path

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from plaudit.rewardmodels.base import InputError, Message, Prompt


class PreferencePair(BaseModel):
    """TRL preference record; chosen/rejected may be strings or assistant messages."""

    model_config = ConfigDict(extra="ignore")
    prompt: Prompt
    chosen: str
    rejected: str
    criterion: str | None = None  # what made chosen better (CodeFavor data carries one)

    @field_validator("chosen", "rejected", mode="before")
    @classmethod
    def _last_turn(cls, value):
        """Conversational form: the response is the content of the last message."""
        if isinstance(value, list) and value:
            return Message.model_validate(value[-1]).content
        return value


class StepRecord(BaseModel):
    """TRL's process-supervision record: one label per step, True when the step is good."""

    model_config = ConfigDict(extra="ignore")
    prompt: Prompt
    completions: list[str] = Field(min_length=1)
    labels: list[bool]

    @model_validator(mode="after")
    def _one_label_per_step(self):
        if len(self.labels) != len(self.completions):
            raise ValueError(f"{len(self.labels)} labels for {len(self.completions)} completions (steps)")
        return self


class CodePrefRecord(BaseModel):
    """CodeFavor's classification form: which of two programs better meets the criterion."""

    model_config = ConfigDict(extra="ignore")
    instruction: Prompt
    code_a: str
    code_b: str
    criterion: str | None = None
    answer: Literal["A", "B"]


Record = TypeVar("Record", bound=BaseModel)


def read_records(path: str | Path, record: type[Record]) -> list[Record]:
    """Every line parsed as `record`; the first bad line stops the read, named by line and field."""
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(record.model_validate(json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}", f"not valid JSON ({e.msg})") from None
            except ValidationError as e:
                err = max(e.errors(), key=lambda x: len(x["loc"]))  # the most specific branch of a union
                field = ".".join(str(p) for p in err["loc"]) or "record"
                raise InputError(f"{path}:{number}", f"field {field!r}: {err['msg']}") from None
    if not records:
        raise InputError(str(path), f"no {record.__name__} records in file")
    return records


def read_pairs(path: str | Path) -> list[PreferencePair]:
    return read_records(path, PreferencePair)


def read_steps(path: str | Path) -> list[StepRecord]:
    return read_records(path, StepRecord)


def read_codepref(path: str | Path) -> list[CodePrefRecord]:
    """Classification records as they are; TRL preference pairs (with an optional criterion)
    become two records, one per order."""
    with open(path, encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    try:
        is_pairs = "chosen" in json.loads(first)
    except json.JSONDecodeError:
        is_pairs = False  # read_records names the line
    if not is_pairs:
        return read_records(path, CodePrefRecord)
    return [CodePrefRecord(instruction=p.prompt, code_a=a, code_b=b, criterion=p.criterion, answer=answer)
            for p in read_pairs(path) for a, b, answer in ((p.chosen, p.rejected, "A"), (p.rejected, p.chosen, "B"))]
