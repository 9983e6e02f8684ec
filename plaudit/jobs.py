"""Resumable JSONL jobs: the runner behind `plaudit judge` and `plaudit score`.

An input file holds one item a line; each finished item becomes one output line, written
with a single append, so a line is whole or absent even after kill -9. A re-run with the
same arguments drops a torn last line and the error lines, skips finished ids and runs the
rest: every item appears exactly once once the run succeeds. Bad input lines are reported
with their number and skipped. Items run `concurrency` at a time, in process or against
running services (`Endpoints`, round-robin).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Sequence, TypeVar

from pydantic import BaseModel, ValidationError

from plaudit.files import write_atomically
from plaudit.registry import resolve

Item = TypeVar("Item", bound=BaseModel)


@dataclass
class Inputs(Generic[Item]):
    items: list[tuple[str, Item]] = field(default_factory=list)  # (id key, item)
    bad_lines: list[str] = field(default_factory=list)  # "line N: why"


def why_bad(number: int, error: ValidationError) -> str:
    """A bad input line's report: its number, the field and what is wrong."""
    first = error.errors()[0]
    return f"line {number}: {'.'.join(map(str, first['loc'])) or 'line'}: {first['msg']}"


def read_items(path: Path, model: type[Item], command: str | None = None) -> Inputs[Item]:
    """Every valid line as `model` (which has an optional `id`); the others reported by line
    number (and printed to stderr, as `command`'s, when given). An id is keyed by its JSON
    text; a missing one is the line number."""
    inputs: Inputs[Item] = Inputs()
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = model.model_validate_json(line)
            except ValidationError as e:
                inputs.bad_lines.append(why_bad(number, e))
                continue
            key = json.dumps(item.id if item.id is not None else number)  # type: ignore[attr-defined]
            if key in seen:
                inputs.bad_lines.append(f"line {number}: id {key} repeats line {seen[key]}")
                continue
            seen[key] = number
            inputs.items.append((key, item))
    if command:
        for bad in inputs.bad_lines:
            print(f"plaudit {command}: {path}: {bad} (skipped)", file=sys.stderr)
    return inputs


def finished(out: Path) -> set[str]:
    """Ids already done in `out`. Makes `out` hold only whole result lines first: a torn last
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
        if isinstance(record, dict) and "id" in record and "error" not in record:
            key = json.dumps(record["id"])
            if key not in done:
                done.add(key)
                kept.append(line)
    if len(kept) != len(whole.splitlines()) or len(whole) != len(data):
        write_atomically(out, b"".join(kept))
    return done


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
                  label: str = "judging", failures: tuple[type[BaseException], ...] = (RuntimeError, OSError)
                  ) -> tuple[int, list[str]]:
    """Run every (id key, task) not finished in `out`, `concurrency` at a time, appending
    `{"id", **its record}` as each ends, or `{"id", "error"}` where it raised one of `failures`
    (a backend or endpoint failure, a refused input): (items skipped as done, errors)."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeRemainingColumn)

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

        def record(future: Future) -> None:
            """Write a finished item's line (its record, or the failure it raised)."""
            key = pending.pop(future)
            try:
                writer.write({"id": json.loads(key), **future.result()})
            except failures as e:
                errors.append(f"id {key}: {e}")
                writer.write({"id": json.loads(key), "error": str(e)})
            bar.advance(bar_task)

        try:
            refill()
            while pending:
                finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
                interrupted: BaseException | None = None
                for future in finished_now:  # a set: every finished item is written before an interrupt is raised
                    try:
                        record(future)
                    except BaseException as e:  # a task's Ctrl-C or bug: the rest still get their lines
                        interrupted = interrupted or e
                if interrupted is not None:
                    raise interrupted
                elapsed = bar.tasks[0].elapsed or 0
                bar.update(bar_task, rate=f"{bar.tasks[0].completed / elapsed:.2f}" if elapsed else "-")
                refill()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            for future in [f for f in pending if f.done() and not f.cancelled() and f.exception() is None]:
                record(future)  # finished while the interrupt was on its way: kept, not judged again
            writer.close()
            raise
    pool.shutdown(cancel_futures=True)
    writer.close()
    return len(work) - len(todo), errors


def distribution(values: list[float]) -> dict[str, float]:
    """Mean, std and deciles of a job's rewards, for its summary."""
    deciles = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values), "min": min(values),
            "p10": deciles[0], "p50": deciles[4], "p90": deciles[8], "max": max(values)}


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    write_atomically(summary_path(out), json.dumps(summary, indent=2) + "\n")


# What a line's record may be an error for, done again by the next run: a refused input
# (InputError is a ValueError), a backend or a service failing after its retries, a lost file.
RETRIED: tuple[type[BaseException], ...] = (ValueError, RuntimeError, OSError)


@dataclass(frozen=True)
class JobKind:
    """One kind of batch job as every runner takes it (in this process, on running services,
    on Ray): how a line is read, what answers it, what is written and what is retried.
    `plaudit score` and `plaudit judge` are two of them (service/batch_score.py, judges/batch.py)."""

    name: str  # the command, and the service.api function that answers a line in process
    line: type[BaseModel]  # a JSONL line: an optional `id`, and `request(model)`
    path: str  # where a running service answers the request
    answer: type[BaseModel]
    record: Callable[[Any], dict[str, Any]]  # an answer's output record, beside the line's id
    summarise: Callable[..., dict[str, Any]]  # over every record in OUT, with the run's counts
    counted: str  # what the summary counts: "lines" or "items"
    done: str  # and calls the ones answered this run: "scored" or "judged"
    label: str  # the progress bar's
    failures: tuple[type[BaseException], ...] = RETRIED
    carried: tuple[str, ...] = ()  # line fields copied into its record when given (a judge item's `models`)

    def output(self, line: BaseModel, answer: Any) -> dict[str, Any]:
        """A line's output record (beside its id): what it carries, then its answer's record."""
        carried = {name: getattr(line, name) for name in self.carried if getattr(line, name) is not None}
        return {**carried, **self.record(answer)}


KINDS = {"score": "plaudit.service.batch_score:SCORE", "judge": "plaudit.judges.batch:JUDGE"}


def job_kind(name: str) -> JobKind:
    return resolve(KINDS[name])


Call = Callable[[BaseModel, int], BaseModel]  # (request, line index) -> answer; the index picks a shard


def run_job(kind: JobKind, inputs: Path, out: Path, call: Call, *, model: str | None, concurrency: int,
            progress: bool) -> dict[str, Any]:
    """Every unfinished line of `inputs` through `call` into `out`: the summary (not yet written)."""
    read = read_items(inputs, kind.line, kind.name)

    def task(line: BaseModel, index: int) -> Task:
        request = line.request(model)  # type: ignore[attr-defined]
        return lambda: kind.output(line, call(request, index))

    work = [(key, task(line, i)) for i, (key, line) in enumerate(read.items)]
    skipped, errors = run_resumable(work, out, concurrency=concurrency, progress=progress, label=kind.label,
                                    failures=kind.failures)
    return kind.summarise(out, **{kind.counted: len(read.items), "skipped": skipped, kind.done: len(work) - skipped,
                                  "errors": errors, "bad_lines": read.bad_lines})


class Endpoints:
    """A job's lines sharded round-robin across running plaudit services, through
    `plaudit.client` (its retries and backoff, its API key)."""

    def __init__(self, kind: JobKind, urls: list[str], api_key: str | None = None, timeout_s: float = 600.0,
                 **client_options: Any):
        from plaudit.client import Client

        self.kind = kind
        self.clients = [Client(url, api_key=api_key, timeout_s=timeout_s, **client_options) for url in urls]

    def __call__(self, request: BaseModel, index: int) -> BaseModel:
        return self.clients[index % len(self.clients)].send(self.kind.path, request, self.kind.answer)

    def close(self) -> None:
        for client in self.clients:
            client.close()
