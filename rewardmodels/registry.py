"""Model kinds and how to load them: adding a family is one module plus one line here."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from plaudit.registry import resolve

from .base import LoadContext, ModelLoadError, Scorer
from .loading import read_metadata, resolve_path

KINDS: dict[str, str] = {
    "bt": "plaudit.rewardmodels.bt:BradleyTerry",
    "gpm": "plaudit.rewardmodels.gpm:GPM",
    "prm": "plaudit.rewardmodels.prm:ProcessRewardModel",
    "ensemble": "plaudit.rewardmodels.ensemble:Ensemble",
    "codepref": "plaudit.rewardmodels.codepref:CodePreference",
    "execution": "plaudit.rewardmodels.execution:Execution",
    "consensus": "plaudit.rewardmodels.consensus:Consensus",
    "match": "plaudit.rewardmodels.rules:Match",
    "numeric": "plaudit.rewardmodels.rules:Numeric",
    "regex": "plaudit.rewardmodels.rules:Regex",
    "format": "plaudit.rewardmodels.rules:Format",
    "math": "plaudit.rewardmodels.math_answer:MathAnswer",
    "composite": "plaudit.rewardmodels.composite:Composite",
}


def scorer_class(kind: str) -> type[Scorer]:
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return resolve(KINDS[kind])


def load_scorer(path: str | Path | None, name: str | None = None, kind: str | None = None,
                **options: Any) -> Scorer:
    """Load a model folder (or `default`, or a cached hub id) as the scorer its metadata declares.

    A plain transformers checkpoint without plaudit metadata is read as `bt`. A `kind`
    given here must agree with the metadata: serving a head as the wrong kind is refused.
    Kinds without weights (execution) take no path, only their settings.
    """
    if path is None:
        if not kind:
            raise ModelLoadError(f"{name}: a model without a path needs its kind")
        return scorer_class(kind).load(LoadContext(name=name or kind, **options))
    directory = resolve_path(path)
    declared = read_metadata(directory).get("kind")
    if kind and declared and kind != declared:
        raise ModelLoadError(f"{path}: configured as kind {kind!r} but its metadata declares {declared!r}")
    chosen = kind or declared or "bt"
    return scorer_class(chosen).load(LoadContext(name=name or Path(str(path)).name, path=directory, **options))
