"""Train a process reward model on TRL's PRM format (prompt, completions, labels).

A two-class token-classification head (1 = good step) plus LoRA on the last blocks; the
loss is cross-entropy at the last token of each step only (TRL's PRMTrainer labels that
token and ignores the rest), with the steps encoded exactly as scoring encodes them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from plaudit.rewardmodels.base import AGGREGATES, InputError
from plaudit.rewardmodels.bt import HEAD_PREFIXES
from plaudit.rewardmodels.encoding import pad
from plaudit.rewardmodels.prm import encode_steps

from .data import StepRecord
from .loop import DeeperRecipe, fit, prepare, save_adapter

log = logging.getLogger(__name__)


@dataclass
class PRMConfig(DeeperRecipe):
    separator: str = field(default="\n", metadata={"help": "text that ends each step; the head is read there"})
    aggregate: str = field(default="min", metadata={"help": f"step rewards to one reward for /score: {', '.join(AGGREGATES)}"})


def train_prm(records: list[StepRecord], out: str | Path, config: PRMConfig,
              on_log: Callable[[dict], None] = lambda row: log.info("%s", row), data: str = "",
              heldout: list[StepRecord] = ()) -> dict:
    """Train, write the model folder to `out`, and return the training summary."""
    from transformers import AutoModelForTokenClassification

    if config.aggregate not in AGGREGATES:
        raise InputError("aggregate", f"must be one of {sorted(AGGREGATES)}, got {config.aggregate!r}")
    model, tokenizer, pad_id, adapter = prepare(
        lambda base: AutoModelForTokenClassification.from_pretrained(base, num_labels=2, dtype=torch.float32),
        config, HEAD_PREFIXES)

    def encode(number: int, r: StepRecord) -> tuple[list[int], list[int], list[int]]:
        ids, positions, _ = encode_steps(tokenizer, r.prompt, r.completions, config.separator, config.max_length,
                                         f"{data or 'data'}: record {number} completions")
        return ids, positions, [int(label) for label in r.labels]

    def step(model, batch, device):
        ids, mask = pad([seq for seq, _, _ in batch], pad_id, device)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        rows = torch.tensor([row for row, (_, positions, _) in enumerate(batch) for _ in positions], device=device)
        cols = torch.tensor([p for _, positions, _ in batch for p in positions], device=device)
        labels = torch.tensor([y for _, _, ys in batch for y in ys], device=device)
        picked = logits[rows, cols]
        loss = F.cross_entropy(picked, labels)
        margin = (picked[:, 1] - picked[:, 0]) * (2 * labels - 1)
        return loss, margin, picked.softmax(dim=-1)[:, 1]

    examples = [encode(n, r) for n, r in enumerate(records, 1)]
    summary = fit(examples, step, model, config, out, on_log, data, [encode(n, r) for n, r in enumerate(heldout, 1)])
    save_adapter(adapter, out, config, {"kind": "prm", "separator": config.separator,
                                                      "aggregate": config.aggregate, "training": summary})
    return summary
