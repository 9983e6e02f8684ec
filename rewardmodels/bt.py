"""Bradley-Terry reward models: a sequence classifier with one output, read at the last real token."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import nn

from .base import Item, ModelLoadError, Scores
from .batcher import BatchedScorer
from .encoding import Batching, encode_item, encode_text, fp32_linear, last_token, rendered_text
from .loading import resolve_path
from .lora import apply_adapter
from .prefix import Split

HEAD_PREFIXES = ("score.", "classifier.")


def last_token_rewards(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One reward per row, independent of padding and batch neighbours.

    Decoder classifiers (`.score` head) are read at the last position of the attention
    mask rather than through transformers' pad-token search, which goes wrong when the
    pad token is also the end-of-turn token (as in SmolLM2). Encoder classifiers pool
    their own way ([CLS]), which padding cannot move.
    """
    if getattr(model, "score", None) is None:
        return model(input_ids=ids, attention_mask=mask).logits[:, 0].float()
    return reward_head(model, model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def reward_head(model: nn.Module, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A decoder classifier's `.score` head, in fp32, at each row's last real token."""
    return fp32_linear(last_token(hidden, mask), model.score.weight, model.score.bias).squeeze(-1)


def load_classifier(directory: Path, metadata: dict[str, Any], dtype: torch.dtype, num_labels: int = 1,
                    per_token: bool = False) -> tuple[nn.Module, Any]:
    """A classifier (one output row per sequence, or per token for a PRM) and its tokenizer.
    A plain checkpoint loads straight in `dtype` (an 8B model must not pass through fp32 on
    the host); adapters merge in fp32. A checkpoint whose head is missing is refused."""
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    auto = AutoModelForTokenClassification if per_token else AutoModelForSequenceClassification
    family = "prm" if per_token else "bt"
    if "adapter" in metadata:  # plaudit's own: base backbone + a PEFT adapter and head, a few MB
        base = resolve_path(metadata["base"])
        model = auto.from_pretrained(base, num_labels=num_labels, dtype=torch.float32)
        return (apply_adapter(model, directory, metadata["base"], metadata["adapter"].get("base_shape")),
                AutoTokenizer.from_pretrained(base))
    try:
        model, info = auto.from_pretrained(directory, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        what = "token" if per_token else "sequence"
        raise ModelLoadError(f"{directory}: not a loadable {what}-classification checkpoint ({e})") from None
    untrained = [k for k in info["missing_keys"] if k.startswith(HEAD_PREFIXES)]
    if untrained:
        raise ModelLoadError(
            f"{directory}: has no trained reward head ({untrained[0]} is missing), so it would score "
            f"with random weights. It is a base model: train a head with `plaudit train {family} --base {directory}`.")
    if model.config.num_labels != num_labels:
        raise ModelLoadError(f"{directory}: declared kind {family!r} needs a head with {num_labels} output(s), "
                             f"but this checkpoint's head has {model.config.num_labels}")
    return model, AutoTokenizer.from_pretrained(directory)


class ClassifierScorer(BatchedScorer):
    """A family served from a transformers classifier: one output per sequence (BT) or two
    classes per token (PRM). Loading, device, dtype and length limits are the same for both.
    A decoder's forward is its backbone then `head` over the hidden states, so that responses
    to one prompt can share the prompt's pass (prefix.py); an encoder's runs whole (`rows`)."""

    per_token: ClassVar[bool] = False
    defaults: ClassVar[dict[str, Any]] = {}  # metadata a checkpoint without plaudit.json is read with

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, metadata: dict[str, Any],
                 device: torch.device, max_length: int, batching: Batching):
        self.model = model
        forward = Split(model.base_model, self.head) if getattr(model, "score", None) is not None else self.rows
        super().__init__(name, metadata, tokenizer, max_length, forward, batching, device)

    def rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """One output row per sequence of a padded micro-batch, from the whole forward."""
        raise NotImplementedError

    def head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`rows` from a decoder's last hidden states."""
        raise NotImplementedError

    @classmethod
    def read(cls, directory: Path, metadata: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
        model, tokenizer = load_classifier(directory, metadata, dtype, 2 if cls.per_token else 1, cls.per_token)
        return model, tokenizer, {"base": str(directory), **cls.defaults, **metadata}


class BradleyTerry(ClassifierScorer):
    kind = "bt"
    defaults = {"normalization": {"mean": 0.0, "std": 1.0, "stored": False}}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        norm = self.metadata["normalization"]
        self.mean, self.std = float(norm.get("mean", 0.0)), float(norm.get("std", 1.0))

    def rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return last_token_rewards(self.model, ids, mask)

    def head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return reward_head(self.model, hidden, mask)

    def _submit_scores(self, encoded: list[tuple[list[int], bool]], field: str) -> Callable[[], Scores]:
        pending = self.submit(encoded, field)

        def collect() -> Scores:
            raw = [float(r) for r in self.forward.wait(pending)]
            return Scores([(r - self.mean) / self.std for r in raw], [cut for _, cut in encoded])
        return collect

    def submit_score(self, items: Sequence[Item]) -> Callable[[], Scores]:
        """`score` in two halves: submit now, collect the Scores later (an ensemble submits to
        every member before waiting on any)."""
        return self._submit_scores([encode_item(self.tokenizer, it, self.max_length) for it in items], "items")

    def submit_score_rendered(self, texts: Sequence[str]) -> Callable[[], Scores]:
        return self._submit_scores([encode_text(self.tokenizer, rendered_text(self.tokenizer, t), self.max_length)
                                    for t in texts], "query")

    def score(self, items: Sequence[Item]) -> Scores:
        return self.submit_score(items)()

    def score_rendered(self, texts: Sequence[str]) -> Scores:
        return self.submit_score_rendered(texts)()
