"""Train a Bradley-Terry reward model: LoRA on the last blocks plus a one-output head.

Loss is TRL's: -logsigmoid(r_chosen - r_rejected) + 0.01 * mean((r_c + r_r)^2), the
second term keeping rewards centred. What is written is a plaudit model folder: metadata
plus a small adapter file over the named base, loadable by `rewardmodels.load_scorer`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from plaudit.rewardmodels.base import Item
from plaudit.rewardmodels.bt import HEAD_PREFIXES, last_token_rewards, reward_head
from plaudit.rewardmodels.encoding import encode_item, pad
from plaudit.rewardmodels.prefix import shared_prompt_states

from .data import PreferencePair
from .loop import DeeperRecipe, final_outputs, fit, main_process, normalization, prepare, save_adapter

log = logging.getLogger(__name__)


@dataclass
class BTConfig(DeeperRecipe):
    """The deeper recipe, with which the shipped `default` was trained (its fit and held-out
    accuracy against the shallower one: docs/model-families.md)."""
    center_coef: float = field(default=1e-2, metadata={"help": "weight of the term keeping rewards centred"})


def train_bt(pairs: list[PreferencePair], out: str | Path, config: BTConfig,
             on_log: Callable[[dict], None] = lambda row: log.info("%s", row), data: str = "",
             heldout: list[PreferencePair] = ()) -> dict:
    """Train, write the model folder to `out`, and return the training summary."""
    from transformers import AutoModelForSequenceClassification

    model, tokenizer, pad_id, adapter = prepare(
        lambda base: AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32),
        config, HEAD_PREFIXES)

    def encode(response: str, prompt) -> list[int]:
        return encode_item(tokenizer, Item(prompt=prompt, response=response), config.max_length)[0]

    def step(model, batch, device):
        """Both responses of each pair read their prompt once (prefix.py), on decoders."""
        n = len(batch)
        seqs = [c for c, _ in batch] + [r for _, r in batch]
        if getattr(model, "score", None) is None:  # an encoder classifier pools its own way
            rewards = last_token_rewards(model, *pad(seqs, pad_id, device))
        else:
            rewards = reward_head(model, *shared_prompt_states(model.base_model, seqs, pad_id, device))
        rewards = rewards.float()
        chosen, rejected = rewards[:n], rewards[n:]
        loss = -F.logsigmoid(chosen - rejected).mean() + config.center_coef * ((chosen + rejected) ** 2).mean()
        return loss, chosen - rejected, rewards

    examples = [(encode(p.chosen, p.prompt), encode(p.rejected, p.prompt)) for p in pairs]
    summary = fit(examples, step, model, config, out, on_log, data,
                  [(encode(p.chosen, p.prompt), encode(p.rejected, p.prompt)) for p in heldout])
    if main_process():  # the one that writes the model measures its scale
        norm = normalization(final_outputs(examples, step, model, config),
                             f"raw rewards of the {len(examples)} training pairs, final model")
        save_adapter(adapter, out, config, {"kind": "bt", "normalization": norm, "training": summary})
    return summary
