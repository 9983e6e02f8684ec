"""LoRA adapters (through PEFT) on the last blocks of a backbone, and merging them into the weights.

plaudit trains reward models as LoRA adapters plus a head, and ships them in PEFT's format
(`adapter_config.json`, `adapter_model.safetensors`, a few MB) beside `plaudit.json`, which
names the base: TRL, PEFT and vLLM read the same files. At load time the adapters are
merged into the linear weights: serving costs exactly one plain forward pass, and a merged
model is an ordinary transformers model.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from safetensors.torch import load_file, save_file
from torch import nn

from .base import ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
LEGACY_ADAPTER = "adapter.safetensors"  # plaudit's own format before PEFT: `plaudit convert-adapter` reads it


def target_modules(model: nn.Module, last_layers: int) -> list[str]:
    """Names of the linear layers inside the last `last_layers` transformer blocks."""
    numbered = [(name, int(m.group(1))) for name, module in model.named_modules()
                if isinstance(module, nn.Linear) and (m := re.search(r"\.layers?\.(\d+)\.", name))]
    if not numbered:
        raise ValueError("no numbered transformer blocks found to put adapters on")
    top = max(i for _, i in numbered)
    return [name for name, i in numbered if i > top - last_layers]


def lora_config(targets: Sequence[str], rank: int, alpha: float, heads: Sequence[str], base: str = ""):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", target_modules=list(targets),
                      modules_to_save=list(heads) or None, base_model_name_or_path=base or None)


def add_lora(model: nn.Module, last_layers: int, rank: int, alpha: float, heads: Sequence[str] = ()) -> Any:
    """LoRA on every linear layer of the last blocks, and trainable copies of the heads: in
    place, so `model` itself trains; the returned PeftModel saves what was trained."""
    from peft import get_peft_model

    return get_peft_model(model, lora_config(target_modules(model, last_layers), rank, alpha, heads))


SHAPE_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")


@contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Run `model` as its base, its LoRA layers bypassed, and leave each adapter weight's
    requires_grad as it was (PEFT's own toggle sets them all trainable again)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    trainable = {p: p.requires_grad for m in layers for p in m.parameters()}
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in trainable.items():
            p.requires_grad_(flag)


def config_shape(config: Any) -> dict[str, Any]:
    """What an adapter's base must have: its architecture's type and sizes."""
    return {k: getattr(config, k, None) for k in SHAPE_KEYS}


def base_shape(model: nn.Module) -> dict[str, Any]:
    """The shape of a model's first transformers config (a GPM's backbone's included)."""
    configs = (m.config for m in model.modules() if hasattr(m, "config") and hasattr(m.config, "to_dict"))
    return config_shape(next(configs))


def heads_of(model: nn.Module, head_prefixes: Sequence[str]) -> list[str]:
    """The head modules a family trains beside the adapters (`score.` -> `score`), those present."""
    names = dict(model.named_children())
    return [p.rstrip(".") for p in head_prefixes if names.get(p.rstrip(".")) is not None]


def apply_adapter(model: nn.Module, directory: Path, base: str, shape: dict[str, Any] | None = None) -> nn.Module:
    """`model` (the base) with a model folder's PEFT adapters and heads merged in: a plain model.
    Refused when the files do not fit that base (another architecture, depth, rank or head;
    `shape`: the base's shape when the adapter was trained, from plaudit.json)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    if shape and shape != base_shape(model):
        raise ModelLoadError(f"{directory}: the adapter does not match its base {base!r}: trained on "
                             f"{shape}, the base is {base_shape(model)}")
    if not (directory / ADAPTER_CONFIG).exists():
        if (directory / LEGACY_ADAPTER).exists():
            raise ModelLoadError(f"{directory}: an adapter in plaudit's format before PEFT; convert it once with "
                                 f"`plaudit convert-adapter {directory}`")
        raise ModelLoadError(f"{directory}: declares an adapter but {ADAPTER_CONFIG} is missing")
    if not (directory / ADAPTER_WEIGHTS).exists():
        raise ModelLoadError(f"{directory}: declares an adapter but {ADAPTER_WEIGHTS} is missing")
    try:
        config = LoraConfig.from_pretrained(str(directory))
        config.base_model_name_or_path = None  # plaudit.json names the base; PEFT would warn on the path
        peft_model = get_peft_model(model, config)
        result = set_peft_model_state_dict(peft_model, load_file(str(directory / ADAPTER_WEIGHTS)))
    except (RuntimeError, ValueError, KeyError) as e:  # shapes differ: trained on another base or rank
        raise ModelLoadError(f"{directory}: the adapter does not fit its base {base!r}: "
                             f"{str(e).strip().splitlines()[-1].strip()}") from None
    missing = [k for k in result.missing_keys if ".lora_" in k or ".modules_to_save." in k]
    if result.unexpected_keys or missing:
        raise ModelLoadError(f"{directory}: the adapter does not match its base {base!r} "
                             f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})")
    return peft_model.merge_and_unload()


def convert_legacy(directory: Path, base_config: Any = None) -> list[str]:
    """Rewrite a folder's pre-PEFT adapter (`X.lora_a`, `X.lora_b`, head tensors) in PEFT's format,
    the same numbers under PEFT's names; returns the files written. The old file is removed.
    `base_config` (the base's transformers config) adds the base's shape to plaudit.json."""
    from .loading import read_metadata, write_metadata

    metadata = read_metadata(directory)
    state = load_file(str(directory / LEGACY_ADAPTER))
    targets = sorted({k.removesuffix(".lora_a") for k in state if k.endswith(".lora_a")})
    heads = sorted({k.split(".")[0] for k in state if ".lora_" not in k})
    adapter = metadata["adapter"]
    converted = {}
    for key, tensor in state.items():
        if key.endswith((".lora_a", ".lora_b")):
            module, _, which = key.rpartition(".")
            key = f"{module}.lora_{which[-1].upper()}.weight"
        converted[f"base_model.model.{key}"] = tensor.contiguous()
    lora_config(targets, adapter["rank"], adapter["alpha"], heads, metadata.get("base", "")).save_pretrained(
        str(directory))
    if base_config is not None:
        metadata["adapter"]["base_shape"] = config_shape(base_config)
        write_metadata(directory, metadata)
    save_file(converted, str(directory / ADAPTER_WEIGHTS))
    (directory / LEGACY_ADAPTER).unlink()
    return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]

