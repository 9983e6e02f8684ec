"""Train a Bradley-Terry reward model: LoRA on the last blocks plus a one-output head.

Loss is TRL's: -logsigmoid(r_chosen - r_rejected) + 0.01 * mean((r_c + r_r)^2), the
second term keeping rewards centred. What is written is a plaudit model folder: metadata
plus a small adapter file over the named base, loadable by `rewardmodels.load_scorer`.
"""
from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rewardmodels.base import InputError, Item
from rewardmodels.bt import ADAPTER_FILE, HEAD_PREFIXES, last_token_rewards
from rewardmodels.encoding import encode_item, pad
from rewardmodels.loading import choose_device, resolve_path, write_metadata
from rewardmodels.lora import add_lora, lora_state_dict

from .data import PreferencePair

log = logging.getLogger(__name__)


@dataclass
class BTConfig:
    base: str = "default"
    epochs: int = 2
    lr: float = 1e-3
    batch_pairs: int = 4
    lora_layers: int = 8
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_length: int = 1024
    center_coef: float = 1e-2
    seed: int = 0
    device: str = "auto"


def train_bt(pairs: list[PreferencePair], out: str | Path, config: BTConfig,
             on_log: Callable[[dict], None] = lambda row: log.info("%s", row)) -> dict:
    """Train, write the model folder to `out`, and return the training summary."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not pairs or config.epochs < 1:
        raise InputError("data", f"training needs pairs and at least one epoch ({len(pairs)} pairs, "
                                 f"{config.epochs} epochs)")
    torch.manual_seed(config.seed)
    base = resolve_path(config.base)
    device, _ = choose_device(config.device)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    model.requires_grad_(False)
    add_lora(model, config.lora_layers, config.lora_rank, config.lora_alpha)
    trainable = [p for n, p in model.named_parameters() if ".lora_" in n or n.startswith(HEAD_PREFIXES)]
    for p in trainable:
        p.requires_grad_(True)
    model.to(device).train()
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.0)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    encoded = [(encode_item(tokenizer, Item(prompt=p.prompt, response=p.chosen), config.max_length)[0],
                encode_item(tokenizer, Item(prompt=p.prompt, response=p.rejected), config.max_length)[0])
               for p in pairs]
    order = list(range(len(encoded)))
    rng = random.Random(config.seed)
    start, step, last_epoch_rewards = time.time(), 0, []
    history: dict[str, float] = {}
    for epoch in range(config.epochs):
        rng.shuffle(order)
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        last_epoch_rewards = []
        for first in range(0, len(order), config.batch_pairs):
            batch = [encoded[i] for i in order[first:first + config.batch_pairs]]
            n = len(batch)
            ids, mask = pad([c for c, _ in batch] + [r for _, r in batch], pad_id, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                rewards = last_token_rewards(model, ids, mask).float()
            chosen, rejected = rewards[:n], rewards[n:]
            margin = chosen - rejected
            loss = -F.logsigmoid(margin).mean() + config.center_coef * ((chosen + rejected) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            sums["loss"] += loss.item() * n
            sums["accuracy"] += (margin > 0).float().sum().item()
            sums["margin"] += margin.sum().item()
            last_epoch_rewards += rewards.detach().cpu().tolist()
            seen = min(first + config.batch_pairs, len(order))
            if step % 10 == 0 or seen == len(order):
                history = {k: v / seen for k, v in sums.items()}
                on_log({"epoch": epoch + 1, "step": step, "pairs": seen, **{k: round(v, 4) for k, v in history.items()},
                        "seconds": round(time.time() - start, 1)})

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = lora_state_dict(model)
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)})
    save_file(state, str(out / ADAPTER_FILE))
    summary = {"pairs": len(pairs), "steps": step, "seconds": round(time.time() - start, 1),
               "final_epoch": {k: round(v, 4) for k, v in history.items()}, "config": asdict(config)}
    write_metadata(out, {
        "kind": "bt",
        "base": config.base,
        "adapter": {"last_layers": config.lora_layers, "rank": config.lora_rank, "alpha": config.lora_alpha},
        "normalization": {"mean": statistics.fmean(last_epoch_rewards),
                          "std": statistics.pstdev(last_epoch_rewards) or 1.0, "stored": True,
                          "source": "raw rewards of the training pairs during the last epoch"},
        "max_length": config.max_length,
        "training": summary,
    })
    return summary
