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

from plaudit.rewardmodels.base import InputError, Item
from plaudit.rewardmodels.encoding import encode_item, encode_text, last_token, prompt_text
from plaudit.rewardmodels.prefix import shared_prompt_states
from plaudit.rewardmodels.gpm import HEAD_PREFIXES, GPMNet, preference

from .data import PreferencePair
from .loop import TrainConfig, UntrainedStates, family_default, fit, prepare, save_adapter

log = logging.getLogger(__name__)
CENTRINGS = ("fixed", "batch", "shift")  # GPMConfig.centring
CENTRE_MOMENTUM = 0.1  # how fast the kept centre follows the batches while training (centring batch, shift)
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
    centring: str = field(default="fixed", metadata={
        "help": "what the head's input is centred on while training: fixed (the mean measured before "
                "training), batch (each batch's own mean), shift (the batch less the mean change the adapters "
                "made to its states); batch and shift measure the kept centre again after training"})
    orthogonality: float = field(default=0.0, metadata={
        "help": "weight of a penalty on cos^2 between each pair's chosen and rejected embeddings"})


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
        x = torch.cat([chosen, rejected])
        if config.centring != "fixed" and net.training:
            if config.centring == "batch":
                shift = x.mean(dim=0) - start
            else:
                shift = (x - torch.cat(states.before_training(net, batch, device)[:2])).mean(dim=0)
            # the kept centre follows (held-out evaluation reads it); the head, which subtracts it,
            # reads x - shift - start: a shift common to the batch moves nothing the loss sees
            net.centre(net.centre_now() + CENTRE_MOMENTUM * (start + shift.detach() - net.centre_now()))
            x = x - shift - start + net.centre_now()
        v = net.embed_difference(x)
        return gpm_loss(v[:len(batch)], v[len(batch):], net.gates(prompts), config.tau, config.orthogonality)

    examples = [encode(p) for p in pairs]
    device = next(net.parameters()).device
    sample = examples[:CENTRING_SAMPLE]  # the same first examples in every process, so DDP's copies agree

    @torch.no_grad()
    def centre(measure) -> None:
        size = config.per_device_train_batch_size
        net.centre(torch.cat([torch.cat(measure(net, sample[i:i + size], device)[:2])
                              for i in range(0, len(sample), size)]).mean(dim=0))

    if config.centring not in CENTRINGS:
        raise InputError("centring", f"one of {', '.join(CENTRINGS)}, not {config.centring!r}")
    centre(states.before_training if config.adapter_start > 0 or config.centring == "shift" else differences)
    start = net.centre_now().clone()  # the untrained backbone's centre
    summary = fit(examples, step, net, config, out, on_log, data, [encode(p) for p in heldout])
    if config.centring != "fixed":
        net.eval()
        centre(differences)
    save_adapter(adapter, out, config, {"kind": "gpm", "tau": config.tau, "training": summary})
    return summary


def gpm_loss(chosen: torch.Tensor, rejected: torch.Tensor, gates: torch.Tensor, tau: float,
             orthogonality: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-logsigmoid(s(chosen, rejected) / tau), plus `orthogonality` times cos^2 between the two
    unit embeddings. A pair's best embeddings are orthogonal (s = <R v_c, v_r> is largest for
    v_r along R v_c, which is orthogonal to v_c), so the penalty moves no pair's optimum; it
    pulls away from the collapse where a prompt's responses all embed alike, a stationary
    point on cyclic data (docs/model-families.md). (loss, margins, logits): `fit`'s Step."""
    logits = preference(chosen, rejected, gates) / tau
    loss = -F.logsigmoid(logits).mean()
    if orthogonality:
        loss = loss + orthogonality * (chosen * rejected).sum(-1).pow(2).mean()
    return loss, logits, logits
