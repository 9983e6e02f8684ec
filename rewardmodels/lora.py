"""Low-rank adapters on the last blocks of a backbone, and merging them into the weights.

plaudit trains reward models as LoRA adapters plus a head so that what it ships is a few
MB, then merges the adapters into the linear weights at load time: serving costs exactly
one plain forward pass, and a merged model is an ordinary transformers model.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from .base import ModelLoadError
from .loading import METADATA_FILE

ADAPTER_FILE = "adapter.safetensors"


class LoRALinear(nn.Module):
    """y = W x + (alpha / r) * B A x, with W frozen and B initialised to zero."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=5 ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        with torch.no_grad():
            self.base.weight += (self.lora_b @ self.lora_a * self.scale).to(self.base.weight.dtype)
        return self.base


def _targets(model: nn.Module, last_layers: int) -> list[str]:
    """Names of the linear layers inside the last `last_layers` transformer blocks."""
    numbered = [(name, int(m.group(1))) for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and (m := re.search(r"\.layers?\.(\d+)\.", name))]
    if not numbered:
        raise ValueError("no numbered transformer blocks found to put adapters on")
    top = max(i for _, i in numbered)
    return [name for name, i in numbered if i > top - last_layers]


def _swap(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, module)


def add_lora(model: nn.Module, last_layers: int, rank: int, alpha: float) -> list[str]:
    """Wrap every linear layer of the last blocks; returns the wrapped names."""
    names = _targets(model, last_layers)
    for name in names:
        _swap(model, name, LoRALinear(model.get_submodule(name), rank, alpha))
    return names


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if ".lora_" in k}


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its linear layer, leaving a plain model."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _swap(model, name, module.merged())


def apply_adapter(model: nn.Module, directory: Path, metadata: dict[str, Any], head_prefixes: tuple[str, ...]) -> None:
    """Load a plaudit model folder's adapters and heads into `model` (its base) and merge them."""
    add_lora(model, **metadata["adapter"])
    if not (directory / ADAPTER_FILE).exists():
        raise ModelLoadError(f"{directory}: {METADATA_FILE} declares an adapter but {ADAPTER_FILE} is missing")
    try:
        missing, unexpected = model.load_state_dict(load_file(str(directory / ADAPTER_FILE)), strict=False)
    except RuntimeError as e:  # shapes differ: trained on another base, or another rank
        raise ModelLoadError(f"{directory}: {ADAPTER_FILE} does not fit its base {metadata['base']!r}: "
                             f"{str(e).splitlines()[-1].strip()}") from None
    expected = {k for k in model.state_dict() if ".lora_" in k or k.startswith(head_prefixes)}
    if unexpected or expected & set(missing):
        raise ModelLoadError(f"{directory}: {ADAPTER_FILE} does not match its base {metadata['base']!r} "
                             f"(missing {sorted(expected & set(missing))[:3]}, unexpected {unexpected[:3]})")
    merge_lora(model)
