"""Judge methods and how to build a judge: adding a method is one module plus one line here."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plaudit.registry import resolve

from .base import Judge
from .hub import BackendHub

METHODS: dict[str, str] = {
    "tick": "plaudit.judges.tick:TickJudge",
    "pairwise": "plaudit.judges.pairwise:PairwiseJudge",
    "direct": "plaudit.judges.direct:DirectJudge",
}


class JudgeConfig(BaseModel):
    """A judge: a method on a backend."""

    model_config = ConfigDict(extra="forbid")
    method: str = Field(description=f"how the judge asks: {', '.join(METHODS)}")
    backend: str | None = Field(None, description="a name under `backends`; the default backend when absent")
    logprobs: bool = Field(True, description=(
        "ask for the first token's logprobs (P(YES) vs P(NO)) where the server gives them"))
    parse_retries: int = Field(2, ge=0, description="re-asks (at temperature 1.0) of an answer that cannot be read")
    checklist_dir: str | None = Field(None, description=(
        "tick: where checklists are kept (default: the plaudit cache)"))
    checklist_memory: int | None = Field(None, gt=0, description=(
        "tick: checklists kept in memory, least recently used out"))

    @field_validator("method")
    @classmethod
    def _known(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown judge method {method!r}; known: {', '.join(METHODS)}")
        return method

    @model_validator(mode="after")
    def _checklists_for_tick(self):
        for option in ("checklist_dir", "checklist_memory"):
            if getattr(self, option) is not None and self.method != "tick":
                raise ValueError(f"{option} is for tick judges")
        return self


def build_judge(name: str, config: JudgeConfig, hub: BackendHub, backend: str) -> Judge:
    options = config.model_dump(exclude={"method", "backend"}, exclude_none=True)
    return resolve(METHODS[config.method])(name, hub, backend, **options)
