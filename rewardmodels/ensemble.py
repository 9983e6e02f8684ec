"""A prediction ensemble: M reward models served together, reward = their mean, plus the
spread (standard deviation across members) per item as a cheap uncertainty signal.

This is what WARM trades away for one model's cost; plaudit serves both. The folder's
plaudit.json lists the members (sub-folders), e.g. what `plaudit warm train` writes in
DIR/members/. Each member is loaded as its own kind with the same options.
"""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

from .base import Item, ModelLoadError, Scorer, Scores
from .bt import BradleyTerry
from .loading import read_metadata, resolve_path


class Ensemble(Scorer):
    kind = "ensemble"

    def __init__(self, name: str, members: list[BradleyTerry], metadata: dict[str, Any]):
        super().__init__(name, metadata)
        self.members = members

    @classmethod
    def load(cls, path: str | Path, name: str | None = None, **options: Any) -> "Ensemble":
        from .registry import load_scorer

        directory = resolve_path(path)
        metadata = read_metadata(directory)
        names = metadata.get("members")
        if not names or not isinstance(names, list):
            raise ModelLoadError(f"{directory}: an ensemble's plaudit.json lists its member folders in `members`")
        members = [load_scorer(directory / member, name=f"{name or directory.name}/{member}", **options)
                   for member in names]
        kinds = {m.kind for m in members}
        if kinds != {"bt"}:
            raise ModelLoadError(f"{directory}: ensemble members must be BT models with absolute rewards, got {kinds}")
        metadata = {**metadata, "kind": "ensemble", "member_metadata": [m.metadata for m in members]}
        return cls(name or directory.name, members, metadata)

    @staticmethod
    def _combine(submitted: list[Callable[[], Scores]]) -> Scores:
        """Mean and spread per item. Every member was submitted to before any is waited on, so
        the members run at the same time, and concurrent requests merge in each member's
        batcher (a pool of threads per request serialised them)."""
        results = [collect() for collect in submitted]
        columns = list(zip(*(r.rewards for r in results)))
        return Scores([statistics.fmean(c) for c in columns], list(results[0].truncated),
                      [statistics.pstdev(c) for c in columns])

    def score(self, items: Sequence[Item]) -> Scores:
        return self._combine([m.submit_score(items) for m in self.members])

    def score_rendered(self, texts: Sequence[str]) -> Scores:
        return self._combine([m.submit_score_rendered(texts) for m in self.members])

    def end_markers(self) -> Sequence[str]:
        return list(dict.fromkeys(marker for m in self.members for marker in m.end_markers()))

    def pad_markers(self) -> Sequence[str]:
        return list(dict.fromkeys(marker for m in self.members for marker in m.pad_markers()))

    def stats(self) -> dict[str, Any]:
        return {m.name: m.stats() for m in self.members}

    def limit_tokens(self, max_request_tokens: int) -> None:
        for member in self.members:
            member.limit_tokens(max_request_tokens)
