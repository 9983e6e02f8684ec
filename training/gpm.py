"""Train a GPM: LoRA on the last blocks, a value head to a 2k-dim embedding (and optionally
a prompt head); loss -logsigmoid(s(chosen, rejected) / tau) on the same preference pairs as BT.
Each pair's batch carries chosen, rejected and the prompt alone, as scoring does. Before the
first step the value head is centred on the training data (see plaudit.rewardmodels.gpm)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from plaudit.rewardmodels.base import Item
from plaudit.rewardmodels.encoding import encode_item, encode_text, last_token, prompt_text
from plaudit.rewardmodels.prefix import shared_prompt_states
from plaudit.rewardmodels.gpm import HEAD_PREFIXES, GPMNet, preference

from .data import PreferencePair
from .loop import TrainConfig, UntrainedStates, family_default, fit, prepare, save_adapter

log = logging.getLogger(__name__)
CENTRING_SAMPLE = 512  # pairs whose mean response-minus-prompt state centres the value head


@dataclass
class GPMConfig(TrainConfig):
    """The GPM's own defaults: 4 epochs, a 16-dim embedding, and adapters at a lower rate than
    the heads, because one shared rate high enough for the heads collapsed the embeddings on
    cyclic preferences. `default-gpm` was trained with them; what each choice measured, on
    cycles and on HumanEval, is in docs/model-families.md."""
    num_train_epochs: int = family_default("num_train_epochs", 4)
    adapter_learning_rate: float | None = family_default("adapter_learning_rate", 3e-4)
    dims: int = field(default=16, metadata={"help": "embedding dimension 2k (even)"})
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

    def differences(net, batch, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each pair's chosen and rejected response-minus-prompt states, and its prompt's state;
        a pair's prompt runs once for its three sequences (prefix.py)."""
        n = len(batch)
        columns = list(zip(*batch))  # chosen seqs, rejected seqs, prompt seqs
        states = last_token(*shared_prompt_states(net.backbone, [s for col in columns for s in col], pad_id,
                                                  device)).float()
        prompts = states[2 * n:]
        return states[:n] - prompts, states[n:2 * n] - prompts, prompts

    states = UntrainedStates(differences)  # the heads' own steps (adapter_start) read the backbone once

    def step(net, batch, device):
        chosen, rejected, prompts = states(net, batch, device)
        v = net.embed_difference(torch.cat([chosen, rejected]))
        logits = preference(v[:len(batch)], v[len(batch):], net.gates(prompts)) / config.tau
        return -F.logsigmoid(logits).mean(), logits, logits

    examples = [encode(p) for p in pairs]
    device = next(net.parameters()).device
    with torch.no_grad():  # the same first examples in every process, so DDP's copies agree
        sample = examples[:CENTRING_SAMPLE]
        size = config.per_device_train_batch_size
        measure = states.before_training if config.adapter_start > 0 else differences
        net.centre(torch.cat([torch.cat(measure(net, sample[i:i + size], device)[:2])
                              for i in range(0, len(sample), size)]).mean(dim=0))
    summary = fit(examples, step, net, config, out, on_log, data, [encode(p) for p in heldout])
    save_adapter(adapter, out, config, {"kind": "gpm", "tau": config.tau, "training": summary})
    return summary
