"""`plaudit score IN.jsonl -o OUT.jsonl`: a dataset's rewards, resumable (plaudit/jobs.py's
runner, shared with `plaudit judge`): best-of-N selection, re-scoring a preference set with
a new model, DPO pairs from N samples.

One prompt a line, `{"id", "prompt", "response"}` or `{"id", "prompt", "responses": [...]}`;
each becomes one line `{"id", "rewards": [...], "truncated": [...], "model"}` (one reward
per response, in order; null where a judge could not read its answer), or `{"id", "error"}`
to be retried by the next run. All of a line's responses go in one /score request, so a
GPM compares them with each other and the prompt's pass is shared. In process, or against
running services (`--endpoint`, round-robin). `--pairs best-worst` then writes TRL
preference pairs beside OUT: chosen = the best, rejected = the worst of each prompt's
responses, with their rewards and the margin.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plaudit.files import write_jsonl
from plaudit.jobs import Call, JobKind, distribution, read_items, run_job, write_summary
from plaudit.rewardmodels.base import InputError, Prompt
from plaudit.schemas import Item, ScoreRequest, ScoreResponse
PAIRS = ("best-worst",)


class ScoreLine(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="defaults to the line number")
    prompt: Prompt
    response: str | None = None
    responses: list[str] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_of_response_or_responses(self):
        if (self.response is None) == (self.responses is None):
            raise ValueError("give `response` or `responses` (a list), not both")
        return self

    def texts(self) -> list[str]:
        return self.responses if self.responses is not None else [self.response]  # type: ignore[list-item]

    def request(self, model: str | None) -> ScoreRequest:
        return ScoreRequest(model=model, items=[Item(prompt=self.prompt, response=r) for r in self.texts()])


def run(inputs: Path, out: Path, score: Call, *, model: str | None, concurrency: int = 4, progress: bool = True,
        pairs: str | None = None) -> dict[str, Any]:
    """Score every unfinished line of `inputs` into `out`; the summary (also written beside `out`)."""
    if pairs is not None and pairs not in PAIRS:
        raise InputError("pairs", f"{pairs!r} is not one of {list(PAIRS)}")
    summary = run_job(SCORE, inputs, out, score, model=model, concurrency=concurrency, progress=progress)
    if pairs == "best-worst":
        lines = dict(read_items(inputs, ScoreLine, "score").items)
        summary["pairs"] = write_best_worst(lines, out, pairs_path(out))
    write_summary(out, summary)
    return summary


def record(answer: ScoreResponse) -> dict[str, Any]:
    """A line's output record (beside its id)."""
    fields: dict[str, Any] = {"rewards": answer.rewards, "truncated": answer.truncated, "model": answer.model}
    for extra in ("uncertainty", "unscored", "errors"):
        if getattr(answer, extra) is not None:
            fields[extra] = getattr(answer, extra)
    return fields


def pairs_path(out: Path) -> Path:
    return out.with_name(out.stem + ".pairs.jsonl")


def _results(out: Path) -> list[dict[str, Any]]:
    with open(out, encoding="utf-8") as f:
        return [record for record in map(json.loads, f) if "rewards" in record]


def summarise(out: Path, **run_counts: Any) -> dict[str, Any]:
    """Over every result in `out` (this run's and earlier ones'): responses, unscored, rewards."""
    rewards = [r for record in _results(out) for r in record["rewards"] if r is not None]
    responses = sum(len(record["rewards"]) for record in _results(out))
    errors, bad_lines = run_counts.pop("errors"), run_counts.pop("bad_lines")
    summary: dict[str, Any] = {**run_counts, "errors": len(errors), "bad_lines": len(bad_lines),
                               "responses": responses, "unscored": responses - len(rewards)}
    if rewards:
        summary["reward"] = distribution(rewards)
    summary["error_examples"], summary["bad_line_examples"] = errors[:10], bad_lines[:10]
    return summary


def write_best_worst(lines: dict[str, ScoreLine], out: Path, path: Path) -> dict[str, int]:
    """TRL preference pairs, one per prompt with two scored responses of different rewards:
    `{"id", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "margin"}`,
    conversational (messages) where the prompt is messages. Rewritten whole from `out` each run."""
    counts = {"written": 0, "tied": 0, "too_few_scored": 0}
    pairs = []
    for record in _results(out):
        line = lines.get(json.dumps(record["id"]))
        scored = [(r, text) for r, text in zip(record["rewards"], line.texts() if line else []) if r is not None]
        if len(scored) < 2:
            counts["too_few_scored"] += 1
            continue
        (best, chosen), (worst, rejected) = max(scored, key=lambda s: s[0]), min(scored, key=lambda s: s[0])
        if best == worst:
            counts["tied"] += 1
            continue
        conversational = isinstance(line.prompt, list)
        prompt = [m.model_dump() for m in line.prompt] if conversational else line.prompt
        turn = (lambda text: [{"role": "assistant", "content": text}]) if conversational else (lambda text: text)
        pair = {"id": record["id"], "prompt": prompt, "chosen": turn(chosen), "rejected": turn(rejected),
                "chosen_reward": best, "rejected_reward": worst, "margin": best - worst}
        pairs.append(pair)
        counts["written"] += 1
    write_jsonl(pairs, path)
    return counts


SCORE = JobKind(name="score", line=ScoreLine, path="/score", answer=ScoreResponse, record=record,
                summarise=summarise, counted="lines", done="scored", label="scoring")

