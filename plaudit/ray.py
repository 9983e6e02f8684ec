"""plaudit on Ray Data: datasets larger than one machine, scored or judged by actors that each
hold the models in process (or a client to a running service).

In a user's own Ray pipeline, one line:

    ds.map_batches(plaudit.ray.ScoreRows, fn_constructor_kwargs={"model": "default"}, concurrency=4)

adds a `reward` column to rows with `prompt` and `response` (each batch is one /score request).

`plaudit score --ray` and `plaudit judge --ray` run `run_job`: the JSONL input's lines are
cut into shards of `shard_lines`; every shard whose output (OUT.shards/NNNNN.jsonl, written
atomically once whole) exists is skipped, the rest run on an actor pool of `num_workers`, and
OUT is then the shards merged in input order, with the same lines `plaudit score`/`judge`
write in process (and the same summary). Without an address a local Ray starts for the job.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from pydantic import ValidationError

from plaudit.files import write_atomically
from plaudit.jobs import Endpoints, JobKind, job_kind, why_bad, write_summary

Kind = Literal["score", "judge"]  # plaudit.jobs.KINDS


def _pool(model: str | None, config: str | None, endpoint: str | None, kind: JobKind):
    """A callable (request, index) -> answer: the models in this process, or a service."""
    if endpoint:
        return Endpoints(kind, [endpoint]), model
    from plaudit.service import api  # the actor's process holds the models

    pool, name = api.pool_for(model, config)
    answer = getattr(api, kind.name)
    return (lambda request, index: answer(pool, request)), name


class ScoreRows:
    """`map_batches` callable: a `reward` column for rows with `prompt` and `response`."""

    def __init__(self, model: str | None = None, config: str | None = None, endpoint: str | None = None):
        self.score, self.model = _pool(model, config, endpoint, job_kind("score"))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from plaudit.schemas import Item, ScoreRequest

        items = [Item(prompt=_plain(p), response=str(r)) for p, r in zip(batch["prompt"], batch["response"])]
        answer = self.score(ScoreRequest(model=self.model, items=items), 0)
        return {**batch, "reward": np.array([np.nan if r is None else r for r in answer.rewards], dtype=float)}


def _plain(value: Any) -> Any:
    """Ray hands back strings as numpy scalars and lists of messages as arrays of dicts."""
    if isinstance(value, (list, np.ndarray)):
        return [dict(m) for m in value]
    return str(value)


class JobRows:
    """`map_batches` callable for `run_job`: JSONL lines in, each line's output record out (a
    result, `{"error"}` where the model or backend failed, or `{"bad_line"}` where the line is
    not a valid item), as JSON text."""

    def __init__(self, kind: Kind, model: str | None, config: str | None, endpoint: str | None):
        self.kind = job_kind(kind)
        self.call, self.name = _pool(model, config, endpoint, self.kind)

    def _one(self, text: str, number: int) -> dict[str, Any]:
        try:
            line = self.kind.line.model_validate_json(text)
        except ValidationError as e:
            return {"id": number, "bad_line": why_bad(number, e)}
        key = line.id if line.id is not None else number
        try:
            return {"id": key, **self.kind.output(line, self.call(line.request(self.name), number))}
        except self.kind.failures as e:
            return {"id": key, "error": str(e)}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [json.dumps(self._one(str(text), int(number)), ensure_ascii=False)
                   for text, number in zip(batch["text"], batch["line"])]
        return {"shard": batch["shard"], "line": batch["line"], "record": np.array(records, dtype=object)}


def shard_dir(out: Path) -> Path:
    return out.with_name(out.name + ".shards")


def run_job(kind: Kind, inputs: Path, out: Path, *, model: str | None = None, config: str | None = None,
            endpoint: str | None = None, address: str | None = None, num_workers: int = 2,
            cpus_per_worker: float = 1, gpus_per_worker: float = 0, shard_lines: int = 256,
            batch_size: int = 16) -> dict[str, Any]:
    """Score or judge `inputs` into `out` on Ray; the summary (as the in-process run gives it)."""
    lines = [(number, text) for number, text in enumerate(inputs.read_text(encoding="utf-8").splitlines(), 1)
             if text.strip()]
    shards = shard_dir(out)
    shards.mkdir(parents=True, exist_ok=True)
    count = (len(lines) + shard_lines - 1) // shard_lines
    todo = [s for s in range(count) if not _finished(shards / f"{s:05d}.jsonl")]
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, ignore_reinit_error=True)
        rows = [{"shard": s, "line": number, "text": text} for s in todo
                for number, text in lines[s * shard_lines:(s + 1) * shard_lines]]
        done = ray.data.from_items(rows).map_batches(
            JobRows, fn_constructor_kwargs={"kind": kind, "model": model, "config": config, "endpoint": endpoint},
            batch_size=batch_size, concurrency=num_workers, num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)
        expected = {s: len(lines[s * shard_lines:(s + 1) * shard_lines]) for s in todo}
        pending: dict[int, list[tuple[int, str]]] = {s: [] for s in todo}
        for row in done.iter_rows():  # streamed: a shard is written as soon as its lines are all back
            shard = int(row["shard"])
            pending[shard].append((int(row["line"]), str(row["record"])))
            if len(pending[shard]) == expected[shard]:
                write_atomically(shards / f"{shard:05d}.jsonl",
                                  "".join(record + "\n" for _, record in sorted(pending.pop(shard))))
    return _merge(kind, shards, count, out, len(lines), skipped_shards=count - len(todo))


def _finished(shard: Path) -> bool:
    """Written whole and without errors: a shard with failed lines runs again, as failed
    lines do in process."""
    return shard.exists() and not any("error" in json.loads(t) for t in shard.read_text(encoding="utf-8").splitlines())


def _merge(kind: Kind, shards: Path, count: int, out: Path, lines: int, skipped_shards: int) -> dict[str, Any]:
    """OUT from the shards in order; bad lines are reported, not written (as in process)."""
    records, bad_lines, errors = [], [], []
    for s in range(count):
        for text in (shards / f"{s:05d}.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(text)
            if "bad_line" in record:
                bad_lines.append(record["bad_line"])
                continue
            if "error" in record:
                errors.append(f"id {json.dumps(record['id'])}: {record['error']}")
            records.append(text)
    write_atomically(out, "".join(r + "\n" for r in records))
    job = job_kind(kind)
    summary = job.summarise(out, **{job.counted: lines - len(bad_lines), "skipped_shards": skipped_shards,
                                    "shards": count, "errors": errors, "bad_lines": bad_lines})
    write_summary(out, summary)
    return summary
