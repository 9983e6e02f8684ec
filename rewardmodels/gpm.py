"""General preference representation models (GPM).

Each response is embedded once: a linear head maps its last-token hidden state, less the
hidden state at the end of its prompt, to 2k numbers, L2-normalised. The
preference of i over j is the skew-symmetric form s(i, j) = <R v_i, v_j>, with R
block-diagonal of 2x2 blocks [[0, -w], [w, 0]]; the block weights w come from a prompt
head (k * softmax at the prompt's last token) or are 1. P(i beats j) = sigmoid(s / tau).
Hence s(i, j) = -s(j, i), order cannot bias it, preferences may be cyclic (which no
scalar reward can express), and K candidates cost one pass over the prompt (whose
last state is also where the prompt head reads), K passes over the responses on its cached
keys and values (prefix.py), and a K x K product. k and the prompt head
are read from the weights.

Why subtract the prompt's state: a pretrained backbone's last-token states vary far more
with the prompt than between the responses to one prompt (cosine ~0.98 in SmolLM2), so
those responses embed nearly collinear, where s(i, j) degenerates to a difference of two
scalars and training falls into BT's answer (on cyclic preferences: all equal). Measured
on rock-paper-scissors preferences with SmolLM2: chance without it, 100% with it.

Why the head reads centred input: even after that subtraction, 81% of the energy of
SmolLM2's differences is one direction shared by every response to every prompt (mean cosine
0.87 between responses to one prompt). Every gradient step on the head's W then moves all
embeddings by nearly the same vector (the update times x is dominated by the shared part), so
they align, s(i, j) goes to 0 for every pair and training stalls at chance: measured on 30
different 3-cycles with the default flags, 48% before, and the head alone reaching 94% within
4 epochs after. The trainer measures the mean difference over the training data before the
first step and keeps it as a fixed `centre`, so the head sees W(x - centre). Heads saved
without a centre (older models) load as before.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Comparison, InputError, Item, ModelLoadError, Pair, Prompt, Ranking, Scores
from .batcher import BatchedScorer
from .encoding import Batching, Tokens, as_messages, encode_item, encode_text, fp32_linear, last_token, prompt_text
from .loading import resolve_path
from .lora import apply_adapter
from .prefix import Split

HEAD_PREFIXES = ("value_head.", "prompt_head.")


class Fp32Linear(nn.Linear):
    """A bias-free head that runs in fp32 whatever the backbone's dtype: responses to one
    prompt differ little, and bf16 would blur their embeddings."""

    def __init__(self, features: int, out_features: int):
        super().__init__(features, out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp32_linear(x, self.weight)


class ValueHead(Fp32Linear):
    """The value head, applied to x - centre; the centre is measured on data and never trained
    (heads trained before it have none)."""

    def __init__(self, features: int, out_features: int, centred: bool):
        super().__init__(features, out_features)
        self.register_buffer("centre", torch.zeros(features) if centred else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float() - self.centre.float() if self.centre is not None else x)


class GPMNet(nn.Module):
    """A backbone plus the value head (and optional prompt head)."""

    def __init__(self, backbone: nn.Module, dims: int, prompt_head: bool, centred: bool = True):
        super().__init__()
        if dims < 2 or dims % 2:
            raise ModelLoadError(f"a GPM embedding needs an even dimension 2k >= 2, got {dims}")
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.value_head = ValueHead(hidden, dims, centred)
        with torch.no_grad():  # each 2x2 block's rows start equal (x = y): every s(i, j) starts at 0
            self.value_head.weight[1::2] = self.value_head.weight[0::2]
        self.prompt_head = Fp32Linear(hidden, dims // 2) if prompt_head else None

    def embed(self, response_states: torch.Tensor, prompt_states: torch.Tensor) -> torch.Tensor:
        return self.embed_difference(response_states.float() - prompt_states.float())

    def embed_difference(self, difference: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.value_head(difference), dim=-1)

    def centre_now(self) -> torch.Tensor:
        return next(m.centre for m in self.value_head.modules() if isinstance(m, ValueHead))

    @torch.no_grad()
    def centre(self, mean_difference: torch.Tensor) -> None:
        """Set the head's centre (in every copy of it: PEFT keeps the original beside the trained one)."""
        for head in self.value_head.modules():
            if isinstance(head, ValueHead) and head.centre is not None:
                head.centre.copy_(mean_difference)

    def gates(self, prompt_states: torch.Tensor) -> torch.Tensor:
        k = self.value_head.out_features // 2
        if self.prompt_head is None:
            return torch.ones(prompt_states.shape[0], k, device=prompt_states.device)
        return k * torch.softmax(self.prompt_head(prompt_states), dim=-1)


def preference(v_i: torch.Tensor, v_j: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """s(i, j) = sum_b w_b (x_i y_j - y_i x_j) over the 2x2 blocks; broadcasts over leading dims."""
    x_i, y_i, x_j, y_j = v_i[..., 0::2], v_i[..., 1::2], v_j[..., 0::2], v_j[..., 1::2]
    return (gates * (x_i * y_j - y_i * x_j)).sum(-1)


def load_net(directory: Path, metadata: dict[str, Any]) -> tuple[GPMNet, Any]:
    """The base backbone with the folder's adapters merged and its heads, sized from the weights."""
    from safetensors import safe_open
    from transformers import AutoModel, AutoTokenizer

    from .lora import ADAPTER_WEIGHTS

    if "adapter" not in metadata:
        raise ModelLoadError(f"{directory}: a GPM folder is written by `plaudit train gpm` (adapter + heads)")
    base = resolve_path(metadata["base"])
    try:
        with safe_open(str(directory / ADAPTER_WEIGHTS), "pt") as f:
            shapes = {k.removeprefix("base_model.model."): f.get_slice(k).get_shape() for k in f.keys()}
    except FileNotFoundError:
        raise ModelLoadError(f"{directory}: {ADAPTER_WEIGHTS} is missing") from None
    if "value_head.weight" not in shapes:
        raise ModelLoadError(f"{directory}: declared kind 'gpm' but {ADAPTER_WEIGHTS} has no value_head.weight")
    net = GPMNet(AutoModel.from_pretrained(base, dtype=torch.float32), shapes["value_head.weight"][0],
                 "prompt_head.weight" in shapes, centred="value_head.centre" in shapes)
    net = apply_adapter(net, directory, metadata["base"], metadata["adapter"].get("base_shape"))
    return net, AutoTokenizer.from_pretrained(base)


def prompt_key(prompt: Prompt) -> str:
    return prompt if isinstance(prompt, str) else json.dumps(as_messages(prompt))


class GPM(BatchedScorer):
    kind = "gpm"
    relative = True  # /score: mean preference against the other responses to the prompt
    neutral_reward = 0.5  # mean P(win) / P(good step)

    def __init__(self, name: str, net: GPMNet, tokenizer: Any, metadata: dict[str, Any],
                 device: torch.device, max_length: int, batching: Batching):
        super().__init__(name, metadata, tokenizer, max_length, Split(net.backbone, last_token), batching, device)
        self.net = net
        self.tau = float(metadata.get("tau", 0.1))

    @classmethod
    def read(cls, directory: Path, metadata: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
        net, tokenizer = load_net(directory, metadata)
        return net, tokenizer, {**metadata, "embedding_dim": net.value_head.out_features,
                                "prompt_head": net.prompt_head is not None}

    def _embed(self, responses: list[tuple[list[int], bool]], prompt_texts: list[str], prompt_of: list[int],
               field: str, prompt_field: str = "items[{}].prompt") -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """Embeddings of the responses (response i belongs to prompt prompt_of[i]) and the
        gates of each prompt, from one forward call over responses and prompts together. A
        prompt without tokens is refused as `prompt_field` of the first response to it."""
        # A prompt's sequence is all prompt: where it begins each of its responses (no truncation),
        # its pass is theirs too, and the responses run on top of it.
        prompts = [(Tokens(ids, len(ids)), cut) for ids, cut in
                   (encode_text(self.tokenizer, t, self.max_length) for t in prompt_texts)]
        for j, (ids, _) in enumerate(prompts):
            if not ids:
                raise InputError(prompt_field.format(prompt_of.index(j)), "the prompt has no tokens to compare under")
        weight = self.net.value_head.weight
        with torch.inference_mode():
            states = torch.stack(self.run(responses + prompts, field)).to(weight.device)  # fp32 rows
            response_states, prompt_states = states[:len(responses)], states[len(responses):]
            v = self.net.embed(response_states, prompt_states[prompt_of])
            return v, self.net.gates(prompt_states), [cut for _, cut in responses]

    def _prompts(self, items: Sequence[Item]) -> tuple[list[int], list[str]]:
        """Each item's prompt index, and the distinct prompts as the model sees them."""
        index: dict[str, int] = {}
        texts: list[str] = []
        for it in items:
            if prompt_key(it.prompt) not in index:
                index[prompt_key(it.prompt)] = len(texts)
                texts.append(prompt_text(self.tokenizer, it.prompt))
        return [index[prompt_key(it.prompt)] for it in items], texts

    def _embed_items(self, items: Sequence[Item], prompt_of: list[int], texts: list[str]):
        encoded = [encode_item(self.tokenizer, it, self.max_length) for it in items]
        return self._embed(encoded, texts, prompt_of, "items")

    def compare(self, pairs: Sequence[Pair]) -> Comparison:
        n = len(pairs)
        items = [Item(prompt=p.prompt, response=getattr(p, side)) for side in ("a", "b") for p in pairs]
        prompt_of, texts = self._prompts(items)
        v, gates, cut = self._embed_items(items, prompt_of, texts)
        logits = preference(v[:n], v[n:], gates[prompt_of[:n]]) / self.tau
        return Comparison(torch.sigmoid(logits / self.temperature).tolist(), logits.tolist(),
                          [cut[i] or cut[n + i] for i in range(n)])

    def _table(self, v: torch.Tensor, gates: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
        """The K x K preference logits and each response's mean logit against the others."""
        logits = preference(v[:, None, :], v[None, :, :], gates) / self.tau
        k = v.shape[0]
        return logits, (logits.sum(dim=1) / max(k - 1, 1)).tolist()

    def rank(self, prompt: Prompt, responses: Sequence[str], reference: Any = None) -> Ranking:
        items = [Item(prompt=prompt, response=r) for r in responses]
        v, gates, cut = self._embed_items(items, [0] * len(items), [prompt_text(self.tokenizer, prompt)])
        logits, rewards = self._table(v, gates[0])
        order = sorted(range(len(responses)), key=lambda i: -rewards[i])
        return Ranking(rewards, order, cut, torch.sigmoid(logits / self.temperature).tolist())

    @staticmethod
    def _groups(prompt_of: Sequence[int], field: str) -> list[list[int]]:
        """Indices by prompt; checked before any forward pass is spent."""
        groups: dict[int, list[int]] = {}
        for i, p in enumerate(prompt_of):
            groups.setdefault(p, []).append(i)
        for members in groups.values():
            if len(members) < 2:
                raise InputError(f"{field}[{members[0]}]", "a GPM scores a response against the other responses "
                                 "to the same prompt in the request, and this prompt has only one")
        return [groups[p] for p in sorted(groups)]

    def _group_rewards(self, v: torch.Tensor, groups: list[list[int]], gates: torch.Tensor) -> list[float]:
        rewards = [0.0] * v.shape[0]
        for members, g in zip(groups, gates):
            for i, r in zip(members, self._table(v[members], g)[1]):
                rewards[i] = r
        return rewards

    def score(self, items: Sequence[Item]) -> Scores:
        """Mean preference logit against the other items with the same prompt in this call:
        a GPM has no absolute reward, so each prompt needs at least two items."""
        prompt_of, texts = self._prompts(items)
        groups = self._groups(prompt_of, "items")
        v, gates, cut = self._embed_items(items, prompt_of, texts)
        return Scores(self._group_rewards(v, groups, gates), cut)
