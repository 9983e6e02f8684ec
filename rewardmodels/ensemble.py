"""A prediction ensemble: M reward models served together, reward = their mean, plus the
spread (standard deviation across members) per item as a cheap uncertainty signal.

This is what WARM trades away for one model's cost; plaudit serves both. The folder's
plaudit.json lists the members (sub-folders), e.g. what `plaudit warm train` writes in
DIR/members/. Each member is loaded as its own kind with the same options.

Members that share their lower blocks (WARM members, LoRA fine-tunes of one base) run as one
forward: the shared blocks once, each member's own blocks after them (trunk.py), with one
batcher and prefix sharing over it. Members that share nothing run side by side: a request
is submitted to every member's batcher before any is waited on.
"""
from __future__ import annotations

import logging
import statistics
from typing import Any, Callable, Sequence

import torch

from .base import Batcher, Item, LoadContext, ModelLoadError, Scorer, Scores
from .batcher import BatchedScorer
from .bt import BradleyTerry
from .encoding import Batching, encode_item, encode_text, fp32_linear, last_token, rendered_text
from .loading import read_metadata, resolve_path
from .prefix import Split
from .trunk import TrunkAndTails, shared_blocks

log = logging.getLogger(__name__)


def summarise(columns: Sequence[Sequence[float]], truncated: Sequence[bool]) -> Scores:
    """Each item's mean over its members' rewards, and their spread."""
    return Scores([statistics.fmean(c) for c in columns], list(truncated), [statistics.pstdev(c) for c in columns])


class SharedTrunk(BatchedScorer):
    """The members as one model: one forward row per sequence holds every member's raw reward."""

    kind = "ensemble"

    def __init__(self, name: str, members: list[BradleyTerry], backbone: TrunkAndTails, batching: Batching):
        self.members = members
        first = members[0]
        super().__init__(name, {}, first.tokenizer, first.max_length, Split(backbone, self.head), batching,
                         first.device)

    def head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        last = last_token(hidden, mask).chunk(len(self.members), dim=-1)
        return torch.stack([fp32_linear(state, m.model.score.weight, m.model.score.bias).squeeze(-1)
                            for state, m in zip(last, self.members)], dim=-1)

    def _scores(self, encoded: list[tuple[list[int], bool]], field: str) -> Scores:
        rows = self.run(encoded, field)
        return summarise([[(float(r) - m.mean) / m.std for r, m in zip(row, self.members)] for row in rows],
                         [cut for _, cut in encoded])

    def score(self, items: Sequence[Item]) -> Scores:
        return self._scores([encode_item(self.tokenizer, it, self.max_length) for it in items], "items")

    def score_rendered(self, texts: Sequence[str]) -> Scores:
        return self._scores([encode_text(self.tokenizer, rendered_text(self.tokenizer, t), self.max_length)
                             for t in texts], "query")


class Ensemble(Scorer):
    kind = "ensemble"

    def __init__(self, name: str, members: list[BradleyTerry], metadata: dict[str, Any],
                 batching: Batching | None = None):
        super().__init__(name, metadata)
        self.members = members
        self.tokenizer = members[0].tokenizer
        self.shared = self._share_trunk(batching or Batching())
        self.metadata["shared_blocks"] = self.shared_blocks

    @classmethod
    def load(cls, context: LoadContext) -> "Ensemble":
        from .registry import load_scorer

        if context.path is None:
            raise ModelLoadError(f"{context.name}: an ensemble is a folder of members: give its `path`")
        directory = resolve_path(context.path)
        name = context.name or directory.name
        metadata = read_metadata(directory)
        names = metadata.get("members")
        if not names or not isinstance(names, list):
            raise ModelLoadError(f"{directory}: an ensemble's plaudit.json lists its member folders in `members`")
        members = [load_scorer(directory / member, name=f"{name}/{member}", device=context.device,
                               dtype=context.dtype, max_length=context.max_length, batching=context.batching)
                   for member in names]
        kinds = {m.kind for m in members}
        if kinds != {"bt"}:
            raise ModelLoadError(f"{directory}: ensemble members must be BT models with absolute rewards, got {kinds}")
        metadata = {**metadata, "kind": "ensemble", "member_metadata": [m.metadata for m in members]}
        return cls(name, members, metadata, context.batching)

    def _share_trunk(self, batching: Batching) -> SharedTrunk | None:
        """One forward over the members when their lower blocks are the same weights, their
        tokenizers read text alike and the trunk-then-tails forward checks out; else None."""
        self.shared_blocks = 0
        decoders = [getattr(m.model, "score", None) is not None for m in self.members]
        if len(self.members) < 2 or not all(decoders):
            return None
        first = self.members[0]
        if any(m.tokenizer.get_vocab() != first.tokenizer.get_vocab() or m.max_length != first.max_length
               or m.tokenizer.chat_template != first.tokenizer.chat_template for m in self.members[1:]):
            return None
        blocks = shared_blocks([m.model.base_model for m in self.members])
        if not blocks:
            return None
        try:
            backbone = TrunkAndTails([m.model.base_model for m in self.members], blocks)
        except ValueError as e:
            log.warning("%s: members run whole: %s", self.name, e)
            return None
        self.shared_blocks = blocks
        return SharedTrunk(f"{self.name}/shared", self.members, backbone, batching)

    def score(self, items: Sequence[Item]) -> Scores:
        if self.shared is not None:
            return self.shared.score(items)
        return self._side_by_side([m.submit_score(items) for m in self.members])

    def score_rendered(self, texts: Sequence[str]) -> Scores:
        if self.shared is not None:
            return self.shared.score_rendered(texts)
        return self._side_by_side([m.submit_score_rendered(texts) for m in self.members])

    @staticmethod
    def _side_by_side(submitted: list[Callable[[], Scores]]) -> Scores:
        """Every member was submitted to before any is waited on, so the members run at the same
        time and concurrent requests merge in each member's batcher."""
        results = [wait() for wait in submitted]
        return summarise(list(zip(*(r.rewards for r in results))), results[0].truncated)

    def end_markers(self) -> Sequence[str]:
        return list(dict.fromkeys(marker for m in self.members for marker in m.end_markers()))

    def pad_markers(self) -> Sequence[str]:
        return list(dict.fromkeys(marker for m in self.members for marker in m.pad_markers()))

    def batchers(self) -> list[Batcher]:
        """The shared trunk's one batcher, or each member's when they run side by side."""
        if self.shared is not None:
            return [Batcher(self.name, b.observers, b.prefix_stats) for b in self.shared.batchers()]
        return [batcher for m in self.members for batcher in m.batchers()]

    def turn_starts(self) -> Sequence[str]:
        return list(dict.fromkeys(start for m in self.members for start in m.turn_starts()))

    def stats(self) -> dict[str, Any]:
        if self.shared is not None:
            return {"shared_blocks": self.shared_blocks, **self.shared.stats()}
        return {m.name: m.stats() for m in self.members}

    def limit_tokens(self, max_request_tokens: int) -> None:
        for scorer in [self.shared] if self.shared is not None else self.members:
            scorer.limit_tokens(max_request_tokens)
