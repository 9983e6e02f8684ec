"""`plaudit export`: a BT or PRM model folder as a plain transformers checkpoint, its adapter
merged, that TRL, vLLM's pooling runner or anyone's transformers code loads with
`AutoModelForSequenceClassification` (`AutoModelForTokenClassification` for a PRM) and
scores as plaudit does before its normalisation.

One difference is mended on the way: when the tokenizer's pad token is also its
end-of-turn token (SmolLM2: `<|im_end|>`), transformers' sequence classifiers read the
score at the last token that is not pad, which skips an `<|im_end|>` that ends the
sequence (a trainer's query); plaudit reads the last real token. The export pads with a token the chat
template never writes, so both read the same token. plaudit.json travels along (without
the adapter), so plaudit serves the export with the same normalised rewards.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from plaudit.rewardmodels.base import InputError
from plaudit.rewardmodels.bt import load_classifier
from plaudit.rewardmodels.loading import read_metadata, resolve_path, write_metadata

EXPORTABLE = {"bt": (1, False), "prm": (2, True)}  # kind: (outputs, per token)


def spare_pad_token(tokenizer: Any) -> str | None:
    """A special token other than eos for padding, when pad is eos; None when pad is fine."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return None
    for token in (tokenizer.unk_token, "<|endoftext|>", "<|finetune_right_pad_id|>", "<pad>"):
        if token and token != tokenizer.eos_token and token in tokenizer.get_vocab():
            return token
    return None


def export(model: str | Path, out: str | Path) -> dict[str, Any]:
    directory = resolve_path(model)
    metadata = read_metadata(directory)
    kind = metadata.get("kind", "bt")
    if kind not in EXPORTABLE:
        raise InputError("model", f"{directory} is kind {kind!r}; export writes plain classifiers: "
                                  f"{', '.join(EXPORTABLE)}")
    outputs, per_token = EXPORTABLE[kind]
    classifier, tokenizer = load_classifier(directory, metadata, torch.float32, outputs, per_token)
    pad = spare_pad_token(tokenizer)
    if pad is not None:
        tokenizer.pad_token = pad
    classifier.config.pad_token_id = tokenizer.pad_token_id
    out = Path(out)
    classifier.save_pretrained(out)
    tokenizer.save_pretrained(out)
    kept = {k: v for k, v in metadata.items() if k not in ("adapter", "base")}
    write_metadata(out, {**kept, "kind": kind, "exported_from": str(directory)})
    return {"out": str(out), "kind": kind, "architecture": type(classifier).__name__,
            "pad_token": tokenizer.pad_token, "parameters": sum(p.numel() for p in classifier.parameters())}
