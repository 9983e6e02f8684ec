"""Members that share a frozen trunk run it once.

WARM members and LoRA fine-tunes of one base adapt only their last blocks: the embedding and
the blocks below are the same weights in every member. An ensemble over them computes those
blocks once per sequence, then each member's own blocks (its tail) on the trunk's hidden
states, so M members cost one trunk plus M tails instead of M whole models (with adapters on
8 of 30 blocks: 22 + 3 x 8 = 46 block passes for 3 members, against 90). The members' copies
of the trunk are dropped, so memory shrinks the same way.

`TrunkAndTails` is a backbone like any decoder's: it takes input ids, mask, positions and a
key/value cache, and returns each member's last hidden states side by side on the feature
axis, so the prefix sharing of prefix.py runs on it unchanged (its cache holds the trunk's
layers, then each tail's). The trunk and the tails are views of the members' own transformers
models (their forward code, their masks and rotary positions), built and checked at load:
a model whose forward does more than embed and run blocks (older Gemma scaled its input inside
`forward`) fails the check and the ensemble runs its members whole. Sharing renumbers the
tails' blocks for the joined cache, so the members' own forwards are not used afterwards.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from torch import nn


def shared_blocks(backbones: Sequence[nn.Module]) -> int:
    """How many leading blocks (with the embedding) hold the same weights in every backbone;
    0 when they differ from the embedding on, or the backbones are not decoders of one shape."""
    first = backbones[0]
    if len(backbones) < 2 or not all(_is_decoder(b) for b in backbones):
        return 0
    if any(type(b) is not type(first) or len(b.layers) != len(first.layers) for b in backbones):
        return 0
    if not all(_same(first.embed_tokens, b.embed_tokens) for b in backbones[1:]):
        return 0
    count = 0
    while count < len(first.layers) - 1 and all(_same(first.layers[count], b.layers[count]) for b in backbones[1:]):
        count += 1
    return count


def _is_decoder(backbone: nn.Module) -> bool:
    return all(isinstance(getattr(backbone, name, None), nn.Module) for name in ("embed_tokens", "layers", "norm"))


def _same(a: nn.Module, b: nn.Module) -> bool:
    if a is b:
        return True
    ours, theirs = a.state_dict(), b.state_dict()
    return ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _view(backbone: nn.Module, start: int, stop: int) -> nn.Module:
    """The backbone's own module running only blocks start..stop-1, and its final norm only if
    they are its last: a shallow copy whose module table is its own, every weight shared."""
    view = copy.copy(backbone)
    view._modules = dict(backbone._modules)
    view._modules["layers"] = nn.ModuleList(backbone.layers[start:stop])
    if stop < len(backbone.layers):
        view._modules["norm"] = nn.Identity()
    config = copy.deepcopy(backbone.config)
    if getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[start:stop])
    config.num_hidden_layers = stop - start
    view.config = config
    return view


class TrunkAndTails(nn.Module):
    """The shared blocks once, then each member's own blocks and final norm; the output's last
    hidden states are the members' side by side ([rows, tokens, members x hidden])."""

    def __init__(self, backbones: Sequence[nn.Module], blocks: int):
        super().__init__()
        first = backbones[0]
        self.config = first.config  # what prefix sharing reads to decide it may share
        self.trunk = _view(first, 0, blocks)
        self.tails = nn.ModuleList(_view(b, blocks, len(b.layers)) for b in backbones)
        self._check(backbones)
        for tail in self.tails:  # a tail's cache counts its own blocks from 0
            for index, layer in enumerate(tail.layers):
                for module in layer.modules():
                    if hasattr(module, "layer_idx"):
                        module.layer_idx = index
        for backbone in backbones[1:]:  # one copy of the trunk in memory
            backbone.embed_tokens = first.embed_tokens
            for i in range(blocks):
                backbone.layers[i] = first.layers[i]

    @torch.inference_mode()
    def _check(self, backbones: Sequence[nn.Module]) -> None:
        """Trunk then tails must give each member's own last hidden states (a padded probe
        batch): a forward that does more than embed and run its blocks fails here."""
        device = next(backbones[0].parameters()).device
        ids = torch.arange(1, 17, device=device).reshape(2, 8)
        mask = torch.ones_like(ids)
        mask[1, 5:] = 0
        joined = self(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        for member, (backbone, ours) in enumerate(zip(backbones, joined.chunk(len(backbones), dim=-1))):
            whole = backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state.float()
            tolerance = 1e-3 if next(backbone.parameters()).dtype == torch.float32 else 5e-2
            if not torch.allclose(ours * mask[..., None], whole * mask[..., None], rtol=tolerance, atol=tolerance):
                raise ValueError(f"member {member}: trunk then tail differs from its own forward "
                                 f"({(ours - whole).abs().max().item():.3g})")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor | None = None,
                cache: Any = None, use_cache: bool = False) -> Any:
        from transformers import DynamicCache
        from transformers.modeling_outputs import BaseModelOutputWithPast

        sizes = [len(self.trunk.layers)] + [len(tail.layers) for tail in self.tails]
        parts: list[Any] = [None] * len(sizes)
        if cache is not None:  # one cache in, the trunk's layers then each tail's: split it
            layers, start = list(cache.layers), 0
            for i, size in enumerate(sizes):
                parts[i] = DynamicCache(ddp_cache_data=[(layer.keys, layer.values)
                                                        for layer in layers[start:start + size]])
                start += size
        common = {"attention_mask": attention_mask, "position_ids": position_ids, "use_cache": use_cache}
        trunk = self.trunk(input_ids=input_ids, cache=parts[0], **common)
        outputs = [tail(inputs_embeds=trunk.last_hidden_state, cache=part, **common)
                   for tail, part in zip(self.tails, parts[1:])]
        hidden = torch.cat([out.last_hidden_state for out in outputs], dim=-1)
        if not use_cache:
            return BaseModelOutputWithPast(last_hidden_state=hidden)
        caches = [trunk.cache, *(out.cache for out in outputs)]
        joined = DynamicCache(ddp_cache_data=[(layer.keys, layer.values) for c in caches for layer in c.layers])
        return BaseModelOutputWithPast(last_hidden_state=hidden, cache=joined)
