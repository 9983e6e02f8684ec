"""Cross-request batching of one model's forward passes.

Many threads (the service's request handlers, or any multi-threaded Python caller)
submit token sequences; one worker thread runs everything pending as one length-sorted
set of micro-batches and hands each caller its rows. While the model is busy the queue
fills, so batches grow with load and a lone request runs at once: adaptive batching
without a tuned window. Where a call costs about the same whatever it holds (a GPU), the
worker also lingers, for at most `linger` times its last forward's time, until as many
callers are waiting as its last batch served plus those that queued meanwhile: otherwise
it alternates between two halves of its clients. It batches the forward pass, which every family shares and
which is item-independent, so the scores of one request never depend on another's.

Nothing one batch does stops the worker: a forward that fails (out of memory, say) is run
again in halves, so only the sequences that cannot run fail, and only their callers see the
error; an observer that raises is logged and skipped; a caller whose worker has died gets an
error instead of waiting forever.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .base import Batcher, InputError, LimitExceeded, LoadContext, ModelLoadError, Scorer
from .encoding import Batching, end_markers, generation_prompt, run_batched
from .loading import choose_device, read_metadata, resolve_path
from .prefix import SharedPrefixForward, Split, can_share

Seqs = Sequence[Sequence[int]]
log = logging.getLogger(__name__)


# Told of every forward call: (sequences it carried, each caller's seconds in the queue).
BatchObserver = Callable[[int, list[float]], None]


class ForwardBatcher:
    def __init__(self, run: Callable[[Seqs], list[torch.Tensor]], name: str = "model", linger: float = 0.0):
        self._run, self.linger = run, linger
        self._pending: list[tuple[Seqs, Future, float]] = []
        self._ready = threading.Condition()
        self.batches = 0  # forward calls made, and the sequences they carried: how well requests merge
        self.sequences = 0
        self.observers: list[BatchObserver] = []  # e.g. the service's metrics
        self._worker = threading.Thread(target=self._loop, name=f"forward-{name}", daemon=True)
        self._worker.start()

    def __call__(self, seqs: Seqs) -> list[torch.Tensor]:
        return self.wait(self.submit(seqs))

    def submit(self, seqs: Seqs) -> Future:
        """Queue `seqs` and return at once: a caller with several models (an ensemble) submits
        to each, then waits, so its models run at the same time."""
        done: Future = Future()
        if not seqs:
            done.set_result([])
            return done
        with self._ready:
            self._pending.append((seqs, done, time.monotonic()))
            self._ready.notify()
        return done

    def wait(self, done: Future) -> list[torch.Tensor]:
        """The rows of a submission, or its error; never a wait on a worker that is gone."""
        while True:
            try:
                return done.result(timeout=1.0)
            except TimeoutError:
                if not self._worker.is_alive():
                    raise RuntimeError(f"the forward worker of {self._worker.name} has stopped") from None

    def _run_in_halves(self, seqs: list[Sequence[int]]) -> list[torch.Tensor | BaseException]:
        """Rows for `seqs`; where the forward fails, the halves are run separately, down to
        single sequences, whose failure is their row."""
        try:
            return list(self._run(seqs))
        except Exception as e:  # noqa: BLE001 - handed to the callers of the failing sequences
            if len(seqs) == 1:
                return [e]
            if torch.cuda.is_available() and isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            half = len(seqs) // 2
            return self._run_in_halves(seqs[:half]) + self._run_in_halves(seqs[half:])

    def _loop(self) -> None:
        expected, last_forward_s = 0, 0.0  # callers likely to come back, and the last call's time
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                deadline = time.monotonic() + self.linger * last_forward_s
                while len(self._pending) < expected and (left := deadline - time.monotonic()) > 0:
                    self._ready.wait(left)
                calls, self._pending = self._pending, []
            started = time.monotonic()
            merged = [s for seqs, _, _ in calls for s in seqs]
            rows = self._run_in_halves(merged)
            last_forward_s = time.monotonic() - started
            with self._ready:
                expected = len(calls) + len(self._pending)
            self.batches += 1
            self.sequences += len(merged)
            for observe in self.observers:
                try:
                    observe(len(merged), [started - queued for _, _, queued in calls])
                except Exception:  # noqa: BLE001 - metrics must not stop scoring
                    log.exception("a batch observer of %s failed", self._worker.name)
            start = 0
            for seqs, done, _ in calls:
                mine, start = rows[start:start + len(seqs)], start + len(seqs)
                error = next((r for r in mine if isinstance(r, BaseException)), None)
                if error is not None:
                    done.set_exception(error)
                else:
                    done.set_result(mine)


class BatchedScorer(Scorer):
    """A scorer over one transformers model: its tokenizer, its length limit, and its
    forward passes merged across concurrent callers. `rows(ids, mask)` is the family's
    forward, one output row per sequence of a padded micro-batch; given as a Split of a
    decoder (backbone, head), sequences that share a prompt compute it once."""

    def __init__(self, name: str, metadata: dict[str, Any], tokenizer: Any, max_length: int,
                 rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batching: Batching,
                 device: torch.device):
        super().__init__(name, metadata)
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batching = batching.on(device)
        self.prefixes: SharedPrefixForward | None = None
        if isinstance(rows, Split) and batching.share_prefixes and can_share(rows.backbone):
            self.prefixes = SharedPrefixForward(rows, batching, pad_id, device, int(batching.prefix_cache_mb * 2**20))
            run: Callable[[Seqs], list[torch.Tensor]] = self.prefixes
        else:
            def run(seqs: Seqs) -> list[torch.Tensor]:
                return run_batched(seqs, rows, batching, pad_id, device)
        self.forward = ForwardBatcher(run, name, batching.linger or 0.0)
        self.max_request_tokens: int | None = None

    @classmethod
    def load(cls, context: LoadContext) -> "BatchedScorer":
        """The weight-loading families' one loader: the folder and its metadata, the device and
        dtype, the length limit, what is recorded in the metadata. `read` is each family's part."""
        if context.path is None:
            raise ModelLoadError(f"{context.name}: the {cls.kind} kind loads a model folder: give its `path`")
        if context.settings:
            raise ModelLoadError(f"{context.name}: settings: the {cls.kind} kind takes none (it reads its folder)")
        directory = resolve_path(context.path)
        metadata = read_metadata(directory)
        device, dtype = choose_device(context.device, context.dtype)
        model, tokenizer, metadata = cls.read(directory, metadata, dtype)
        model.to(device=device, dtype=dtype).eval()
        max_length = context.max_length or metadata.get("max_length") or min(tokenizer.model_max_length, 4096)
        metadata = {**metadata, "kind": cls.kind, "max_length": max_length, "device": str(device),
                    "dtype": str(dtype).removeprefix("torch.")}
        return cls(context.name or directory.name, model, tokenizer, metadata, device, max_length,
                   context.batching or Batching())

    @classmethod
    def read(cls, directory: Path, metadata: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
        """The family's model (on the host, in `dtype` or fp32), its tokenizer, and the metadata
        to serve it with."""
        raise NotImplementedError

    def run(self, encoded: Sequence[tuple[list[int], bool]], field: str) -> list[torch.Tensor]:
        """Forward rows for encoded sequences; an empty one is the caller's error, named by index."""
        return self.forward.wait(self.submit(encoded, field))

    def submit(self, encoded: Sequence[tuple[list[int], bool]], field: str) -> Future:
        """`run` without the wait: checked now, the rows later from `self.forward.wait`."""
        for i, (ids, _) in enumerate(encoded):
            if not ids:
                raise InputError(f"{field}[{i}]", "nothing to score: the text has no tokens")
        return self.submit_within_limit([ids for ids, _ in encoded], field)

    def limit_tokens(self, max_request_tokens: int) -> None:
        self.max_request_tokens = max_request_tokens

    def end_markers(self) -> Sequence[str]:
        return end_markers(self.tokenizer)  # the module function

    def pad_markers(self) -> Sequence[str]:
        return [self.tokenizer.pad_token] if self.tokenizer.pad_token else []

    def turn_starts(self) -> Sequence[str]:
        start = generation_prompt(self.tokenizer)
        return [start] if start else super().turn_starts()

    def forward_within_limit(self, seqs: Seqs, field: str) -> list[torch.Tensor]:
        return self.forward.wait(self.submit_within_limit(seqs, field))

    def submit_within_limit(self, seqs: Seqs, field: str) -> Future:
        """Submit to the forward batcher, unless the sequences hold more tokens than one request
        may make the model read."""
        total = sum(len(s) for s in seqs)
        if self.max_request_tokens is not None and total > self.max_request_tokens:
            raise LimitExceeded(field, f"{total} tokens to read, over the limit of {self.max_request_tokens} "
                                       f"(limits.max_tokens)")
        return self.forward.submit(seqs)

    def batchers(self) -> list[Batcher]:
        return [Batcher(self.name, self.forward.observers, self.prefixes.stats if self.prefixes else None)]

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"forward_calls": self.forward.batches, "sequences": self.forward.sequences}
        if self.prefixes is not None:
            stats["prefix_cache"] = self.prefixes.stats()
        return stats
