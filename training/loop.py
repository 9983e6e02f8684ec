"""What every reward-model trainer shares: LoRA (PEFT) on the last blocks of a frozen backbone
plus a family's head, the epoch loop over examples (preference pairs, or PRM step
records), and saving the adapter in PEFT's format with the model's metadata. A family supplies
only its head, its encoding and its loss."""
from __future__ import annotations

import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from plaudit.rewardmodels.base import InputError
from plaudit.rewardmodels.loading import choose_device, resolve_path, write_metadata
from plaudit.rewardmodels.lora import add_lora, base_shape, heads_of


@dataclass
class TrainConfig:
    base: str = field(default="default", metadata={"help": "backbone directory, or 'default' (packaged SmolLM2-135M)"})
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = field(default=4, metadata={"help": "examples (preference pairs, PRM records) per step"})
    lora_layers: int = field(default=8, metadata={"help": "adapt the last N transformer blocks"})
    lora_rank: int = 8
    lora_alpha: float = 16.0
    max_length: int = field(default=1024, metadata={"help": "tokens per sequence; the prompt is cut from the left"})
    seed: int = field(default=0, metadata={"help": "initialisation (head, adapters) and, unless --data-seed, data order"})
    data_seed: int | None = field(default=None, metadata={"help": "data order only: WARM members share the init"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})


# One optimisation step's view of a batch: (loss, one signed margin per decision (> 0 is
# right: a pair ordered correctly, a step classified correctly), outputs to log).
Step = Callable[[Sequence[Any], torch.device], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def adapt(model: nn.Module, config: TrainConfig, head_prefixes: tuple[str, ...]) -> tuple[Any, list[nn.Parameter]]:
    """Freeze the backbone, add LoRA to its last blocks (PEFT, in place); the adapters and the
    heads train. Returns the PeftModel that saves them, and the trainable parameters."""
    model.requires_grad_(False)
    adapter = add_lora(model, config.lora_layers, config.lora_rank, config.lora_alpha, heads_of(model, head_prefixes))
    return adapter, [p for p in model.parameters() if p.requires_grad]


def prepare(build: Callable[[Path], nn.Module], config: TrainConfig, head_prefixes: tuple[str, ...]
            ) -> tuple[nn.Module, Any, list[nn.Parameter], int, Any]:
    """Seed, build the family's model on the base backbone, add adapters: (model, tokenizer,
    trainable parameters, pad id, the PeftModel for `save_adapter`), the model on its device in
    training mode. The family's forward passes use `model` itself, adapters in place."""
    from transformers import AutoTokenizer

    torch.manual_seed(config.seed)
    base = resolve_path(config.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = build(base)
    adapter, params = adapt(model, config, head_prefixes)
    model.to(choose_device(config.device)[0]).train()
    return model, tokenizer, params, tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0, adapter


def fit(examples: Sequence[Any], step: Step, params: list[nn.Parameter], config: TrainConfig,
        on_log: Callable[[dict], None], data: str = "") -> dict:
    """Epochs of shuffled batches; returns the summary. Loss is averaged over examples,
    accuracy and margin over decisions."""
    if not examples or config.epochs < 1:
        raise InputError("data", f"training needs examples and at least one epoch ({len(examples)} examples, "
                                 f"{config.epochs} epochs)")
    device, _ = choose_device(config.device)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    order = list(range(len(examples)))
    rng = random.Random(config.seed if config.data_seed is None else config.data_seed)
    start, steps, history = time.time(), 0, {}
    for epoch in range(config.epochs):
        rng.shuffle(order)
        sums, decisions = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}, 0
        for first in range(0, len(order), config.batch_size):
            batch = [examples[i] for i in order[first:first + config.batch_size]]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss, margin, _ = step(batch, device)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            sums["loss"] += loss.item() * len(batch)
            sums["accuracy"] += (margin > 0).float().sum().item()
            sums["margin"] += margin.sum().item()
            decisions += margin.numel()
            seen = min(first + config.batch_size, len(order))
            if steps % 10 == 0 or seen == len(order):
                history = {"loss": round(sums["loss"] / seen, 4),
                           **{k: round(sums[k] / decisions, 4) for k in ("accuracy", "margin")}}
                on_log({"epoch": epoch + 1, "step": steps, "examples": seen, **history,
                        "seconds": round(time.time() - start, 1)})
    summary = {"data": data, "examples": len(examples), "steps": steps, "seconds": round(time.time() - start, 1),
               "final_epoch": history, "config": asdict(config)}
    return summary


def final_outputs(examples: Sequence[Any], step: Step, model: nn.Module, config: TrainConfig) -> list[float]:
    """The trained model's outputs (a BT model's rewards) on the examples, in eval mode, no
    gradients: what normalisation is measured on once the weights have stopped moving."""
    device, _ = choose_device(config.device)
    model.eval()
    with torch.no_grad():
        return [float(r) for first in range(0, len(examples), config.batch_size)
                for r in step(examples[first:first + config.batch_size], device)[2].float().cpu()]


def normalization(rewards: list[float], source: str) -> dict:
    return {"mean": statistics.fmean(rewards), "std": statistics.pstdev(rewards) or 1.0, "stored": True,
            "source": source}


def save_adapter(adapter: Any, out: str | Path, config: TrainConfig, metadata: dict[str, Any]) -> None:
    """Write the adapters and heads in PEFT's format (a few MB) plus metadata naming the base they fit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    adapter.peft_config["default"].base_model_name_or_path = config.base  # not this machine's path
    adapter.save_pretrained(str(out))
    write_metadata(out, {"base": config.base, "max_length": config.max_length,
                         "adapter": {"last_layers": config.lora_layers, "rank": config.lora_rank,
                                     "alpha": config.lora_alpha, "base_shape": base_shape(adapter.get_base_model())},
                         **metadata})
