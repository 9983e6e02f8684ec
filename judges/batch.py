"""`plaudit judge IN.jsonl -o OUT.jsonl`: a JSONL file of items through a judge, resumable.

One item a line, `{"id", "instruction", "response"}` (or `"responses": [a, b]` for a
pairwise judge; `"checklist"` optional). Each finished item is one line
`{"id", "result"}` (a `JudgeResponse`) or `{"id", "error"}`, written with a single
append, so a line is whole or absent even after kill -9. A re-run with the same
arguments drops a torn last line and the error lines, skips finished ids and judges the
rest: every item appears exactly once once the run succeeds. A bad input line is reported
with its number and skipped; backend failures are errors, counted, and retried next run.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import threading
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx2
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

from plaudit.rewardmodels.base import InputError, Prompt

from .backends import BackendUnavailable
from plaudit.schemas import JudgeRequest, JudgeResponse

JudgeFn = Callable[[JudgeRequest, int], JudgeResponse]  # (request, item index) -> verdict; index picks a shard


class BatchItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | int | None = Field(None, description="defaults to the line number")
    instruction: Prompt
    response: str | None = None
    responses: list[str] | None = Field(None, min_length=1)
    checklist: list[str] | None = Field(None, min_length=1, max_length=8)

    @model_validator(mode="after")
    def _one_of_response_or_responses(self):
        if (self.response is None) == (self.responses is None):
            raise ValueError("give `response` or `responses` (a list, e.g. two for a pairwise judge), not both")
        return self

    def request(self, judge: str | None) -> JudgeRequest:
        return JudgeRequest(judge=judge, instruction=self.instruction, checklist=self.checklist,
                            responses=self.responses if self.responses is not None else [self.response])


@dataclass
class Inputs:
    items: list[tuple[str, BatchItem]] = field(default_factory=list)  # (id key, item)
    bad_lines: list[str] = field(default_factory=list)  # "line N: why"


def read_items(path: Path) -> Inputs:
    """Every valid line; the others reported by line number. An id is keyed by its JSON text."""
    inputs, seen = Inputs(), {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = BatchItem.model_validate_json(line)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(map(str, err["loc"])) or "line"
                inputs.bad_lines.append(f"line {number}: {where}: {err['msg']}")
                continue
            key = json.dumps(item.id if item.id is not None else number)
            if key in seen:
                inputs.bad_lines.append(f"line {number}: id {key} repeats line {seen[key]}")
                continue
            seen[key] = number
            inputs.items.append((key, item))
    return inputs


def finished(out: Path) -> set[str]:
    """Ids already judged in `out`. Makes `out` hold only whole result lines first: a torn last
    line (the run was killed mid-write) and error lines (to be retried) are removed."""
    if not out.exists():
        return set()
    data = out.read_bytes()
    whole = data[:data.rfind(b"\n") + 1]
    kept, done = [], set()
    for line in whole.splitlines(keepends=True):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if "result" in record:
            key = json.dumps(record["id"])
            if key not in done:
                done.add(key)
                kept.append(line)
    if len(kept) != len(whole.splitlines()) or len(whole) != len(data):
        _replace(out, b"".join(kept))
    return done


def _replace(path: Path, data: bytes) -> None:
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp", delete=False) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(f.name, path)


class LineWriter:
    """Appends whole lines from many threads, one write() each."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)


Task = Callable[[], dict[str, Any]]  # one item's work: its result record


def run_resumable(work: Sequence[tuple[str, Task]], out: Path, *, concurrency: int = 8, progress: bool = True,
                  label: str = "judging") -> tuple[int, list[str]]:
    """Run every (id key, task) not finished in `out`, `concurrency` at a time, appending
    `{"id", "result"}` or `{"id", "error"}` as each ends: (items skipped as done, errors)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    done = finished(out)
    todo = [(key, task) for key, task in work if key not in done]
    errors: list[str] = []
    writer = LineWriter(out)
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[rate]} items/s"), TimeRemainingColumn())
    # Not `with`: on Ctrl-C the queued items are cancelled instead of waited for.
    pool = ThreadPoolExecutor(concurrency, thread_name_prefix="batch")
    with Progress(*columns, disable=not progress, transient=False) as bar:
        bar_task = bar.add_task(label, total=len(todo), rate="-")
        pending: dict[Future, str] = {}
        queue = iter(todo)

        def refill() -> None:
            for key, task in queue:
                pending[pool.submit(task)] = key
                if len(pending) >= concurrency * 2:
                    return

        try:
            refill()
            while pending:
                finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished_now:
                    key = pending.pop(future)
                    try:
                        writer.write({"id": json.loads(key), "result": future.result()})
                    except (InputError, RuntimeError, OSError) as e:  # backend or endpoint failures, refused input
                        errors.append(f"id {key}: {e}")
                        writer.write({"id": json.loads(key), "error": str(e)})
                    bar.advance(bar_task)
                    elapsed = bar.tasks[0].elapsed or 0
                    bar.update(bar_task, rate=f"{bar.tasks[0].completed / elapsed:.2f}" if elapsed else "-")
                refill()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    pool.shutdown(cancel_futures=True)
    writer.close()
    return len(work) - len(todo), errors


def run(inputs: Path, out: Path, judge: JudgeFn, *, judge_name: str | None, concurrency: int = 8,
        progress: bool = True) -> dict[str, Any]:
    """Judge every unfinished item of `inputs` into `out`; the summary (also written beside `out`)."""
    read = read_items(inputs)
    for bad in read.bad_lines:
        print(f"plaudit judge: {inputs}: {bad} (skipped)", file=sys.stderr)

    def task(request: JudgeRequest, index: int) -> Task:
        def judged() -> dict[str, Any]:
            response = judge(request, index)
            failed = [v.error for v in response.results if v.error]
            if failed:  # a partly judged item is an error too, so the next run judges it whole
                raise BackendUnavailable(f"{len(failed)} of {len(response.results)} responses failed: {failed[0]}")
            return response.model_dump(mode="json")
        return judged

    work = [(key, task(item.request(judge_name), i)) for i, (key, item) in enumerate(read.items)]
    skipped, errors = run_resumable(work, out, concurrency=concurrency, progress=progress)
    summary = summarise(out, items=len(read.items), skipped=skipped, judged=len(work) - skipped, errors=errors,
                        bad_lines=read.bad_lines)
    summary_path(out).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


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
        deciles = statistics.quantiles(rewards, n=10, method="inclusive") if len(rewards) > 1 else [rewards[0]] * 9
        summary["reward"] = {"mean": statistics.fmean(rewards), "std": statistics.pstdev(rewards),
                             "min": min(rewards), "p10": deciles[0], "p50": deciles[4], "p90": deciles[8],
                             "max": max(rewards)}
    if counts["pairs"]:
        read_both = counts["pairs_consistent"] + counts["pairs_inconsistent"]
        summary["pairwise_consistency"] = counts["pairs_consistent"] / read_both if read_both else None
    summary["error_examples"], summary["bad_line_examples"] = errors[:10], bad_lines[:10]
    return summary


class EndpointError(RuntimeError):
    """A plaudit service answered a /judge request with an error, or could not be reached."""


class Endpoints:
    """Items sharded round-robin across running plaudit services, each asked `POST /judge`."""

    def __init__(self, urls: list[str], timeout_s: float = 600.0, api_key: str | None = None):
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.clients = [httpx2.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=headers) for url in urls]

    def __call__(self, request: JudgeRequest, index: int) -> JudgeResponse:
        client = self.clients[index % len(self.clients)]
        try:
            answer = client.post("/judge", json=request.model_dump(mode="json", exclude_none=True))
        except httpx2.HTTPError as e:
            raise EndpointError(f"{client.base_url}: {type(e).__name__}: {e}") from None
        if answer.status_code != 200:
            raise EndpointError(f"{client.base_url}: HTTP {answer.status_code}: {answer.text[:500]}")
        return JudgeResponse.model_validate(answer.json())

    def close(self) -> None:
        for client in self.clients:
            client.close()
