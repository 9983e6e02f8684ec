"""Padding waste: the same mixed-length items through the same model and batch limits, as
length-sorted micro-batches (what plaudit does) and in arrival order. A padded position
costs as much compute as a real one, so the sorted batches' gain is the padding they avoid.
"""
from __future__ import annotations

import time
from typing import Sequence

import torch

from plaudit.rewardmodels.encoding import Batching, micro_batches, pad

from .workload import BATCHING, default_count, encode, mixed_items, pad_id


def arrival_batches(lengths: Sequence[int], batching: Batching) -> list[list[int]]:
    """Consecutive items, cut where the next would break a limit (rows, or rows x widest)."""
    batches: list[list[int]] = [[]]
    width = 0
    for i, length in enumerate(lengths):
        rows, width = len(batches[-1]) + 1, max(width, length)
        if batches[-1] and (rows > batching.max_batch_size or rows * width > batching.max_batch_tokens):
            batches.append([])
            width = length
        batches[-1].append(i)
    return batches


def _measure(scorer, seqs: list[list[int]], batches: list[list[int]]) -> dict:
    padded = sum(len(b) * max(len(seqs[i]) for i in b) for b in batches)
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            scorer.rows(*pad([seqs[i] for i in batch], pad_id(scorer), scorer.device)).float().cpu()
    seconds = time.perf_counter() - start
    return {"items_per_s": round(len(seqs) / seconds, 3), "batches": len(batches),
            "padding_fraction": round(1 - sum(map(len, seqs)) / padded, 3)}


def run(scorer, count: int | None = None) -> dict:
    seqs = encode(scorer, mixed_items(count or default_count(scorer.device)))
    lengths = [len(s) for s in seqs]
    _measure(scorer, seqs[:4], [[0, 1, 2, 3]])  # warm-up
    sorted_ = _measure(scorer, seqs, micro_batches(lengths, BATCHING.on(scorer.device)))
    arrival = _measure(scorer, seqs, arrival_batches(lengths, BATCHING))
    return {"padding": {"items": len(seqs), "tokens": sum(lengths), "sorted": sorted_, "arrival": arrival},
            "padding_sorted_vs_arrival": round(sorted_["items_per_s"] / arrival["items_per_s"], 3)}
