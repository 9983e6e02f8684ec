"""The scoring work the serving benchmarks share: a fixed, seeded set of mixed-length items
and the raw forward over them (tokenise, length-sorted padded micro-batches, the model),
with the batch limits plaudit serves the default model with.

An RL trainer's rollouts range from a few tokens to a few hundred, so response lengths are
drawn log-uniformly over that range: padding and batching costs show up as they would.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch

from plaudit.rewardmodels import Item, load_scorer
from plaudit.rewardmodels.bt import BradleyTerry
from plaudit.rewardmodels.encoding import encode_item, run_batched
from plaudit.service.config import DEFAULT_MODEL_DIR, ModelConfig
from plaudit.training.humaneval import load_problems

SERVED = ModelConfig(path=str(DEFAULT_MODEL_DIR))  # the default model as `plaudit serve` configures it
BATCHING = SERVED.load_options()["batching"]


def load_model() -> BradleyTerry:
    """The default BT model through rewardmodels' loader, on the device and dtype the service picks."""
    return load_scorer(SERVED.path, name="default", **SERVED.load_options())


def default_count(device: torch.device) -> int:
    """Items per load phase: 512 where a GPU makes a pass take seconds; 48 on CPU, where one
    pass over them takes 10-30 s (enough for 32 clients to overlap, few enough for `make bench`)."""
    return 512 if device.type == "cuda" else 48


def mixed_items(count: int, seed: int = 0) -> list[Item]:
    """HumanEval code cut to a log-uniform 12..1200 characters (about 4..350 tokens) per response."""
    rng = random.Random(seed)
    problems = load_problems()
    items = []
    for _ in range(count):
        problem = rng.choice(problems)
        code = problem["prompt"] + problem["canonical_solution"]
        chars = round(math.exp(rng.uniform(math.log(12), math.log(1200))))
        items.append(Item(prompt=f"Complete the function `{problem['entry_point']}`.",
                          response=(code * (chars // len(code) + 1))[:chars]))
    return items


def encode(scorer: BradleyTerry, items: Sequence[Item]) -> list[list[int]]:
    return [encode_item(scorer.tokenizer, item, scorer.max_length)[0] for item in items]


def pad_id(scorer: BradleyTerry) -> int:
    """The id plaudit's batcher pads with."""
    return scorer.tokenizer.pad_token_id if scorer.tokenizer.pad_token_id is not None else 0


def forward(scorer: BradleyTerry, items: Sequence[Item]) -> list[float]:
    """Normalised rewards computed with no service around the model: the raw path, and the
    naive server's work per request."""
    rows = run_batched(encode(scorer, items), scorer.rows, BATCHING.on(scorer.device), pad_id(scorer), scorer.device)
    return [(float(r) - scorer.mean) / scorer.std for r in rows]
