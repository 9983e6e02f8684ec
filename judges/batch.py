"""`plaudit judge IN.jsonl -o OUT.jsonl`: a JSONL file of items through a judge, resumable
(plaudit/jobs.py's runner, shared with `plaudit score`).

One item a line, `{"id", "instruction", "response"}` (or `"responses": [a, b]` for a
pairwise judge; `"checklist"` and `"models"` optional). Each finished item is one line
`{"id", "result"}` (a `JudgeResponse`; `models` copied when given) or `{"id", "error"}`. Backend failures are errors,
counted, and retried next run.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plaudit.jobs import Call, JobKind, distribution, run_job, write_summary
from plaudit.rewardmodels.base import Prompt
from plaudit.schemas import JudgeRequest, JudgeResponse

from .backends import BackendUnavailable


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="defaults to the line number")
    instruction: Prompt
    response: str | None = None
    responses: list[str] | None = Field(None, min_length=1)
    checklist: list[str] | None = Field(None, min_length=1, max_length=8)
    models: list[str] | None = Field(None, min_length=2, max_length=2, description=(
        "who wrote `responses` ([model, baseline]), copied to the result line so that `plaudit eval arena "
        "--judgments` can rank them"))

    @model_validator(mode="after")
    def _one_of_response_or_responses(self):
        if (self.response is None) == (self.responses is None):
            raise ValueError("give `response` or `responses` (a list, e.g. two for a pairwise judge), not both")
        return self

    def request(self, judge: str | None) -> JudgeRequest:
        return JudgeRequest(judge=judge, instruction=self.instruction, checklist=self.checklist,
                            responses=self.responses if self.responses is not None else [self.response])


def run(inputs: Path, out: Path, judge: Call, *, judge_name: str | None, concurrency: int = 8,
        progress: bool = True) -> dict[str, Any]:
    """Judge every unfinished item of `inputs` into `out`; the summary (also written beside `out`)."""
    summary = run_job(JUDGE, inputs, out, judge, model=judge_name, concurrency=concurrency, progress=progress)
    write_summary(out, summary)
    return summary


def record(response: JudgeResponse) -> dict[str, Any]:
    """An item's output record (beside its id); a partly judged item is an error, so that the
    next run judges it whole."""
    failed = [v.error for v in response.results if v.error]
    if failed:
        raise BackendUnavailable(f"{len(failed)} of {len(response.results)} responses failed: {failed[0]}")
    return {"result": response.model_dump(mode="json")}


def summarise(out: Path, **run_counts: Any) -> dict[str, Any]:
    """Over every result in `out` (this run's and earlier ones'): the reward distribution,
    unscored counts, pairwise consistency and where checklists came from."""
    rewards: list[float] = []
    counts: Counter[str] = Counter()
    with open(out, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "result" not in record:
                continue
            result = JudgeResponse.model_validate(record["result"])
            counts["results"] += 1
            counts[f"checklist_{result.checklist_source}"] += result.checklist_source is not None
            for verdict in result.results:
                counts["responses"] += 1
                counts["unscored_responses"] += verdict.reward is None
                counts["unscored_questions"] += verdict.unscored
                if verdict.reward is not None:
                    rewards.append(verdict.reward)
            if result.comparison is not None:
                counts["pairs"] += 1
                counts["pairs_consistent"] += result.comparison.consistent is True
                counts["pairs_inconsistent"] += result.comparison.consistent is False
    errors, bad_lines = run_counts.pop("errors"), run_counts.pop("bad_lines")
    summary: dict[str, Any] = {**run_counts, "errors": len(errors), "bad_lines": len(bad_lines),
                               **{k: v for k, v in sorted(counts.items()) if v or not k.startswith("checklist_")}}
    if rewards:
        summary["reward"] = distribution(rewards)
    if counts["pairs"]:
        read_both = counts["pairs_consistent"] + counts["pairs_inconsistent"]
        summary["pairwise_consistency"] = counts["pairs_consistent"] / read_both if read_both else None
    summary["error_examples"], summary["bad_line_examples"] = errors[:10], bad_lines[:10]
    return summary


JUDGE = JobKind(name="judge", line=BatchItem, path="/judge", answer=JudgeResponse, record=record,
                summarise=summarise, counted="items", done="judged", label="judging", carried=("models",))

