"""Prefix sharing: the K responses to one prompt read the prompt once.

A decoder's state at a token depends only on the tokens before it, so sequences that begin
with the same prompt tokens need those tokens computed once. The prompt's forward keeps its
keys and values (transformers' cache); each response then runs on top of them, with position
ids that continue after the prompt. The last hidden states are the full forward's (to float
noise), so every family's head reads them unchanged: a BT or GPM head at the last token, a
PRM's at each step.

Sequences carry the length of their prompt part (`encoding.Tokens`, made by the encoders).
Within one forward batch every distinct prompt runs once; across batches (one sample per
request, as OpenRLHF and verl send them) prompts stay in a cache bounded in bytes, least
recently used out. Encoders (bidirectional attention) and sliding-window models run every
sequence whole.

Memory: a response batch holds its rows' prompt keys and values for every layer at once,
one copy per row (transformers' cache concatenates them with the responses'). That is
small for SmolLM2 (about 46 KB a token in fp32) but on a large model with long prompts it
is what fills the GPU first; a batch that runs out of memory is rerun in halves by the
batcher, and a lower `max_batch_tokens` keeps batches smaller.
"""
from __future__ import annotations

import inspect
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .encoding import Batching, micro_batches, pad, prefix_length, run_batched

# What a cached prompt token costs a response row that attends to it, as a share of a token
# the row computes: attention over the prefix only, no MLP, no projections. The planner
# weighs a row as its response tokens plus this share of its prompt's.
PREFIX_TOKEN_COST = 0.125
# A prompt that only one sequence in a batch has is computed on its own, and cached for its
# later samples, from this many tokens: a shorter one costs a call more than it saves.
MIN_CACHED_PREFIX = 32


@dataclass(frozen=True)
class Split:
    """A family's forward as a decoder backbone and a head over its last hidden states
    (`head(hidden [rows, tokens, features], mask) -> one output row per sequence`)."""

    backbone: nn.Module
    head: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)

    def cached(self, **inputs: Any) -> tuple[torch.Tensor, Any]:
        return cached_forward(self.backbone, **inputs)


def cached_forward(backbone: nn.Module, **inputs: Any) -> tuple[torch.Tensor, Any]:
    """A backbone's last hidden states and its key/value cache; a cache passed in as `cache` is
    read and extended (transformers 5.24 renamed `past_key_values` to `cache`)."""
    if "cache" in inputs and "cache" not in inspect.signature(backbone.forward).parameters:
        inputs["past_key_values"] = inputs.pop("cache")
    out = backbone(**inputs, use_cache=True)
    return out.last_hidden_state, out.get("cache") or out.get("past_key_values")


def responses_on_prompts(backbone: nn.Module, keys: list[torch.Tensor], values: list[torch.Tensor],
                         prompt_hidden: torch.Tensor, lengths: Sequence[int], suffixes: Sequence[Sequence[int]],
                         pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole sequences' last hidden states and mask (right-padded, as the full forward's) from
    their prompts' keys and values per layer ([rows, kv heads, width, head dim]) and hidden
    states ([rows, width, features]), the first `lengths` tokens of each row real, and their
    responses, which run now on top with position ids continuing after their prompt.
    Differentiable: training's forward is this too."""
    from transformers import DynamicCache

    count, width = prompt_hidden.shape[:2]
    longest = max(map(len, suffixes))
    joined = prompt_hidden
    if longest:
        ids, _ = pad([s or [pad_id] for s in suffixes], pad_id, device)
        ids = torch.nn.functional.pad(ids, (0, longest - ids.shape[1]), value=pad_id)
        attention = torch.zeros((count, width + longest), dtype=torch.long, device=device)
        for r, (n, s) in enumerate(zip(lengths, suffixes)):
            attention[r, :n] = 1
            attention[r, width:width + len(s)] = 1
        positions = torch.tensor(list(lengths), device=device)[:, None] + torch.arange(longest, device=device)
        states, _ = cached_forward(backbone, input_ids=ids, attention_mask=attention, position_ids=positions,
                                   cache=DynamicCache(ddp_cache_data=list(zip(keys, values))))
        joined = torch.cat([prompt_hidden, states.to(prompt_hidden.dtype)], dim=1)
    widths = torch.tensor([n + len(s) for n, s in zip(lengths, suffixes)], device=device)
    starts = torch.tensor(list(lengths), device=device)[:, None]
    at = torch.arange(int(widths.max()), device=device)[None, :]
    index = torch.where(at < starts, at, width + at - starts)  # prompt tokens, then the response's
    mask = (at < widths[:, None]).long()
    index = index * mask  # past a row's end: any position, masked
    return joined.gather(1, index[..., None].expand(-1, -1, joined.shape[-1])), mask


def shared_prompt_states(backbone: nn.Module, seqs: Sequence[Sequence[int]], pad_id: int,
                         device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden states and mask of a padded batch, each distinct prompt computed once
    (a sequence without a marked prompt counts as one whole): what a trainer's step runs, with
    gradients, so a pair's two responses read their prompt once. A backbone that cannot share
    runs every sequence whole."""
    if not can_share(backbone):
        ids, mask = pad(seqs, pad_id, device)
        return backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask
    prompt_of = [tuple(s[:prefix_length(s)] if prefix_length(s) else s) for s in seqs]
    prompts = list(dict.fromkeys(prompt_of))
    where = {prompt: i for i, prompt in enumerate(prompts)}
    hidden, cache = cached_forward(backbone, **dict(zip(("input_ids", "attention_mask"),
                                                        pad(prompts, pad_id, device))))
    index = torch.tensor([where[p] for p in prompt_of], device=device)
    return responses_on_prompts(backbone, [layer.keys.index_select(0, index) for layer in cache.layers],
                                [layer.values.index_select(0, index) for layer in cache.layers],
                                hidden.index_select(0, index), [len(p) for p in prompt_of],
                                [list(s[len(p):]) for s, p in zip(seqs, prompt_of)], pad_id, device)


def can_share(backbone: nn.Module) -> bool:
    """A causal decoder with full attention in every layer: the states of a prefix do not
    depend on what follows it."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    config = backbone.config
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # BERT and its kind, causal only as decoders
        return False
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    windowed = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return (config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not config.is_encoder_decoder
            and layer_types == {"full_attention"} and not windowed)


@dataclass
class Prefix:
    """A prompt's keys and values per layer ([kv heads, tokens, head dim]) and its last hidden states."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    hidden: torch.Tensor

    @property
    def length(self) -> int:
        return self.hidden.shape[0]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values, self.hidden])


class PrefixCache:
    """Prompts' keys and values, bounded in bytes, least recently used out. Only the forward
    worker touches the entries; the counters are read by the metrics."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.bytes = 0

    def holds(self, key: tuple[int, ...]) -> bool:
        return key in self._entries

    def get(self, key: tuple[int, ...]) -> Prefix | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
            else:
                self.hits += 1
                self._entries.move_to_end(key)
            return entry

    def put(self, key: tuple[int, ...], entry: Prefix) -> None:
        size = entry.nbytes
        if size > self.max_bytes:
            return
        with self._lock:
            while self._entries and self.bytes + size > self.max_bytes:
                _, old = self._entries.popitem(last=False)
                self.bytes -= old.nbytes
                self.evictions += 1
            self._entries[key] = entry
            self.bytes += size

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "bytes": self.bytes,
                "entries": len(self._entries), "max_bytes": self.max_bytes}


class SharedPrefixForward:
    """`run(seqs) -> rows` for a Split: sequences with a prompt part run on its cached keys and
    values; the others (and, without a cache, prompts met once) run whole."""

    def __init__(self, split: Split, batching: Batching, pad_id: int, device: torch.device, cache_bytes: int):
        self.split, self.batching, self.pad_id, self.device = split, batching, pad_id, device
        self.cache = PrefixCache(cache_bytes)
        self.shared_sequences = 0  # sequences that ran on a prompt computed once

    def __call__(self, seqs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        groups: dict[tuple[int, ...], list[int]] = {}
        whole: list[int] = []
        for i, s in enumerate(seqs):
            if prefix_length(s):
                groups.setdefault(tuple(s[:prefix_length(s)]), []).append(i)
            else:
                whole.append(i)
        # A prompt met once in this batch is worth a pass of its own only if it is cached already
        # or, long enough to save more than a call costs, is kept for its later samples.
        for key in [k for k, members in groups.items() if len(members) == 1 and not self._worth_alone(k)]:
            whole += groups.pop(key)
        out: list[torch.Tensor | None] = [None] * len(seqs)
        if whole:
            for i, row in zip(whole, run_batched([seqs[i] for i in whole], self.split, self.batching,
                                                 self.pad_id, self.device)):
                out[i] = row
        if groups:
            with torch.inference_mode():
                prefixes = self._prefixes(list(groups))
                rows = [(i, prefixes[key]) for key, members in groups.items() for i in members]
                self.shared_sequences += len(rows)
                costs = [len(seqs[i]) - p.length + int(PREFIX_TOKEN_COST * p.length) for i, p in rows]
                for batch in micro_batches(costs, self.batching):
                    picked = [rows[b] for b in batch]
                    for (i, _), row in zip(picked, self._run_on_prefixes([(seqs[i], p) for i, p in picked])):
                        out[i] = row.float().cpu()
        return out  # type: ignore[return-value]

    def _worth_alone(self, key: tuple[int, ...]) -> bool:
        return bool(self.cache.max_bytes) and (len(key) >= MIN_CACHED_PREFIX or self.cache.holds(key))

    def _prefixes(self, keys: list[tuple[int, ...]]) -> dict[tuple[int, ...], Prefix]:
        """Each prompt's Prefix: from the cache, or computed now (batched) and cached."""
        found = {key: self.cache.get(key) for key in keys} if self.cache.max_bytes else dict.fromkeys(keys)
        missing = [key for key, entry in found.items() if entry is None]
        for batch in micro_batches([len(k) for k in missing], self.batching):
            ids, mask = pad([missing[b] for b in batch], self.pad_id, self.device)
            hidden, cache = self.split.cached(input_ids=ids, attention_mask=mask)
            for row, b in enumerate(batch):
                n = len(missing[b])  # right padding: the prompt's own tokens come first
                entry = Prefix([layer.keys[row, :, :n].clone() for layer in cache.layers],
                               [layer.values[row, :, :n].clone() for layer in cache.layers],
                               hidden[row, :n].clone())
                found[missing[b]] = entry
                if self.cache.max_bytes:
                    self.cache.put(missing[b], entry)
        return found  # type: ignore[return-value]

    def _run_on_prefixes(self, rows: list[tuple[Sequence[int], Prefix]]) -> torch.Tensor:
        """The head's rows for sequences whose prompts are computed: the responses run on the
        prompts' keys and values (prompts of any lengths, masked where shorter), then the head
        reads each sequence's hidden states, prompt's and response's, as the full forward's."""
        lengths = [p.length for _, p in rows]
        width = max(lengths)
        prefixes = [p for _, p in rows]
        layers = range(len(prefixes[0].keys))
        hidden, mask = responses_on_prompts(
            self.split.backbone, [_stack([p.keys[layer] for p in prefixes], width) for layer in layers],
            [_stack([p.values[layer] for p in prefixes], width) for layer in layers],
            _stack([p.hidden for p in prefixes], width), lengths, [list(s[p.length:]) for s, p in rows],
            self.pad_id, self.device)
        return self.split.head(hidden, mask)

    def stats(self) -> dict[str, Any]:
        return {**self.cache.stats(), "shared_sequences": self.shared_sequences}


def _stack(parts: list[torch.Tensor], width: int) -> torch.Tensor:
    """[..., n tokens, features] tensors zero-padded to `width` tokens and stacked into a batch."""
    return torch.stack([torch.nn.functional.pad(t, (0, 0, 0, width - t.shape[-2])) for t in parts])
