"""Cross-request batching of one model's forward passes.

Many threads (the service's request handlers, or any multi-threaded Python caller)
submit token sequences; one worker thread runs everything pending as one length-sorted
set of micro-batches and hands each caller its rows. While the model is busy the queue
fills, so batches grow with load and a lone request runs at once: adaptive batching
without a tuned window. It batches the forward pass, which every family shares and
which is item-independent, so the scores of one request never depend on another's.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import torch

from .base import InputError, LimitExceeded, Scorer
from .encoding import Batching, end_markers, run_batched

Seqs = Sequence[Sequence[int]]


# Told of every forward call: (sequences it carried, each caller's seconds in the queue).
BatchObserver = Callable[[int, list[float]], None]


class ForwardBatcher:
    def __init__(self, run: Callable[[Seqs], list[torch.Tensor]], name: str = "model"):
        self._run = run
        self._pending: list[tuple[Seqs, Future, float]] = []
        self._ready = threading.Condition()
        self.batches = 0  # forward calls made, and the sequences they carried: how well requests merge
        self.sequences = 0
        self.observers: list[BatchObserver] = []  # e.g. the service's metrics
        threading.Thread(target=self._loop, name=f"forward-{name}", daemon=True).start()

    def __call__(self, seqs: Seqs) -> list[torch.Tensor]:
        if not seqs:
            return []
        done: Future = Future()
        with self._ready:
            self._pending.append((seqs, done, time.monotonic()))
            self._ready.notify()
        return done.result()

    def _loop(self) -> None:
        while True:
            with self._ready:
                while not self._pending:
                    self._ready.wait()
                calls, self._pending = self._pending, []
            started = time.monotonic()
            merged = [s for seqs, _, _ in calls for s in seqs]
            try:
                rows = self._run(merged)
            except BaseException as e:  # the callers see the error; the worker lives on
                for _, done, _ in calls:
                    done.set_exception(e)
                continue
            self.batches += 1
            self.sequences += len(merged)
            for observe in self.observers:
                observe(len(merged), [started - queued for _, _, queued in calls])
            start = 0
            for seqs, done, _ in calls:
                done.set_result(rows[start:start + len(seqs)])
                start += len(seqs)


class BatchedScorer(Scorer):
    """A scorer over one transformers model: its tokenizer, its length limit, and its
    forward passes merged across concurrent callers. `rows(ids, mask)` is the family's
    forward, one output row per sequence of a padded micro-batch."""

    def __init__(self, name: str, metadata: dict[str, Any], tokenizer: Any, max_length: int,
                 rows: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], batching: Batching,
                 device: torch.device):
        super().__init__(name, metadata)
        self.tokenizer, self.max_length, self.device = tokenizer, max_length, device
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batching = batching.on(device)
        self.forward = ForwardBatcher(lambda seqs: run_batched(seqs, rows, batching, pad_id, device), name)
        self.max_request_tokens: int | None = None

    def run(self, encoded: Sequence[tuple[list[int], bool]], field: str) -> list[torch.Tensor]:
        """Forward rows for encoded sequences; an empty one is the caller's error, named by index."""
        for i, (ids, _) in enumerate(encoded):
            if not ids:
                raise InputError(f"{field}[{i}]", "nothing to score: the text has no tokens")
        return self.forward_within_limit([ids for ids, _ in encoded], field)

    def limit_tokens(self, max_request_tokens: int) -> None:
        self.max_request_tokens = max_request_tokens

    def end_markers(self) -> Sequence[str]:
        return end_markers(self.tokenizer)  # the module function

    def pad_markers(self) -> Sequence[str]:
        return [self.tokenizer.pad_token] if self.tokenizer.pad_token else []

    def forward_within_limit(self, seqs: Seqs, field: str) -> list[torch.Tensor]:
        """`forward`, unless the sequences hold more tokens than one request may make the model read."""
        total = sum(len(s) for s in seqs)
        if self.max_request_tokens is not None and total > self.max_request_tokens:
            raise LimitExceeded(field, f"{total} tokens to read, over the limit of {self.max_request_tokens} "
                                       f"(limits.max_tokens)")
        return self.forward(seqs)

    def stats(self) -> dict[str, Any]:
        return {"forward_calls": self.forward.batches, "sequences": self.forward.sequences}
