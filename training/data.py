"""Reading training and evaluation data: TRL's preference format, one JSON object a line.

Every bad line is reported with its line number and field; nothing is skipped silently.
"""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from rewardmodels.base import InputError, Message, Prompt


class PreferencePair(BaseModel):
    """TRL preference record; chosen/rejected may be strings or assistant messages."""

    model_config = ConfigDict(extra="ignore")
    prompt: Prompt
    chosen: str
    rejected: str

    @field_validator("chosen", "rejected", mode="before")
    @classmethod
    def _last_turn(cls, value):
        """Conversational form: the response is the content of the last message."""
        if isinstance(value, list) and value:
            return Message.model_validate(value[-1]).content
        return value


def read_pairs(path: str | Path) -> list[PreferencePair]:
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                pairs.append(PreferencePair.model_validate(json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{number}", f"not valid JSON ({e.msg})") from None
            except ValidationError as e:
                err = max(e.errors(), key=lambda x: len(x["loc"]))  # the most specific branch of a union
                field = ".".join(str(p) for p in err["loc"])
                raise InputError(f"{path}:{number}", f"field {field!r}: {err['msg']}") from None
    if not pairs:
        raise InputError(str(path), "no preference pairs in file")
    return pairs
