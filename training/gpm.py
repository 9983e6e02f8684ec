"""Train a GPM: LoRA on the last blocks, a value head to a 2k-dim embedding (and optionally
a prompt head); loss -logsigmoid(s(chosen, rejected) / tau) on the same preference pairs as BT.
Each pair's batch carries chosen, rejected and the prompt alone, as scoring does."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from plaudit.rewardmodels.base import Item
from plaudit.rewardmodels.encoding import encode_item, encode_text, last_token_states, pad, prompt_text
from plaudit.rewardmodels.gpm import HEAD_PREFIXES, GPMNet, preference

from .data import PreferencePair
from .loop import TrainConfig, fit, prepare, save_adapter

log = logging.getLogger(__name__)


@dataclass
class GPMConfig(TrainConfig):
    dims: int = field(default=6, metadata={"help": "embedding dimension 2k (even)"})
    prompt_head: bool = field(default=False, metadata={"help": "gate the blocks with a prompt head"})
    tau: float = field(default=0.1, metadata={"help": "P(i beats j) = sigmoid(s / tau)"})


def train_gpm(pairs: list[PreferencePair], out: str | Path, config: GPMConfig,
              on_log: Callable[[dict], None] = lambda row: log.info("%s", row), data: str = "",
              heldout: list[PreferencePair] = ()) -> dict:
    from transformers import AutoModel

    net, tokenizer, pad_id, adapter = prepare(
        lambda base: GPMNet(AutoModel.from_pretrained(base, dtype=torch.float32), config.dims, config.prompt_head),
        config, HEAD_PREFIXES)

    def encode(p: PreferencePair) -> list[list[int]]:
        seqs = [encode_item(tokenizer, Item(prompt=p.prompt, response=r), config.max_length)[0]
                for r in (p.chosen, p.rejected)]
        return seqs + [encode_text(tokenizer, prompt_text(tokenizer, p.prompt), config.max_length)[0]]

    def step(net, batch, device):
        n = len(batch)
        columns = list(zip(*batch))  # chosen seqs, rejected seqs, prompt seqs
        states = last_token_states(net.backbone, *pad([s for col in columns for s in col], pad_id, device))
        prompts = states[2 * n:]
        v = net.embed(states[:2 * n], torch.cat([prompts, prompts]))
        logits = preference(v[:n], v[n:], net.gates(prompts)) / config.tau
        return -F.logsigmoid(logits).mean(), logits, logits

    examples = [encode(p) for p in pairs]
    summary = fit(examples, step, net, config, out, on_log, data, [encode(p) for p in heldout])
    save_adapter(adapter, out, config, {"kind": "gpm", "tau": config.tau, "training": summary})
    return summary
