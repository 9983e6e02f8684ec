"""Small experiments that show what a model family can do, each one documented command.

warm_noise: WARM's robustness claim at small scale. A quarter of the training pairs have
their labels flipped; each member, the prediction ensemble (mean reward) and the WARM
weight average are scored on clean held-out pairs.

cyclic: GPM's headline result at small scale, over a family of generated cycle sets
(training/cycles.py): each prompt has its own cycle of responses (b beats a, c beats b, a
beats c), over different words for different prompts, worded differently from set to set.
A scalar reward cannot order a cycle: BT gets at most L-1 of a cycle's L pairs right and its
margins around a cycle sum to zero; a GPM's skew-symmetric preference can represent every
cycle, and its default flags should fit them in every set.
"""
from __future__ import annotations

import random
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable

from plaudit.rewardmodels import load_scorer
from plaudit.rewardmodels.base import Pair

from .bt import BTConfig, train_bt
from .cycles import SETS, CycleSet
from .data import PreferencePair, read_pairs
from .evaluate import eval_pairs
from .gpm import GPMConfig, train_gpm
from .warm import MEMBERS, WarmConfig, train_warm

def cyclic_pairs(prompts: int, seed: int = 0) -> list[PreferencePair]:
    """The family's first set ("words": bare words, one 3-cycle a prompt) at any size."""
    return replace(SETS["words"], prompts=prompts, seed=seed).pairs()


def fit_cycles(out: str | Path, cycles: CycleSet, base: str = "default", families: tuple[str, ...] = ("bt", "gpm"),
               **flags) -> dict:
    """Train BT and GPM on one set's pairs with the trainers' default flags (or `flags`,
    TrainConfig's names); accuracy on those pairs is the test of expressiveness (what each can
    fit), not of generalisation: over all pairs, the cyclic prompts' and the transitive ones'."""
    unknown = set(flags) - {f.name for f in fields(GPMConfig)} - {f.name for f in fields(BTConfig)}
    if unknown:
        raise TypeError(f"not a trainer flag: {sorted(unknown)}")
    pairs = cycles.pairs()
    ordered = cycles.transitive_pairs()
    report = {"set": cycles.name, "pairs": len(pairs), "prompts": cycles.prompts, "cycle": cycles.cycle,
              "transitive_pairs": ordered, "base": base, "flags": flags,
              "bt_ceiling": round(((len(pairs) - ordered) * (cycles.cycle - 1) / cycles.cycle + ordered) / len(pairs),
                                  4)}
    for family, trainer, config_class in (("bt", train_bt, BTConfig), ("gpm", train_gpm, GPMConfig)):
        if family not in families:
            continue
        names = {f.name for f in fields(config_class)}  # e.g. dims is the GPM's alone
        config = config_class(base=base, seed=cycles.seed, **{k: v for k, v in flags.items() if k in names})
        start = time.time()
        trainer(pairs, Path(out) / family, config, on_log=lambda row: None)
        scorer = load_scorer(Path(out) / family)
        result = eval_pairs(scorer, pairs)
        row = {"accuracy": round(result["accuracy"], 4), "mean_margin": round(result["mean_margin"], 4),
               "seconds": round(time.time() - start, 1)}
        if ordered:
            row["cyclic_accuracy"] = round(eval_pairs(scorer, pairs[ordered:])["accuracy"], 4)
            row["transitive_accuracy"] = round(eval_pairs(scorer, pairs[:ordered])["accuracy"], 4)
        report[family] = row
    return report


def cyclic(out: str | Path, base: str = "default", sets: tuple[str, ...] = (), families: tuple[str, ...] = ("bt", "gpm"),
           prompts: int | None = None, seed: int | None = None, on_set: Callable[[dict], None] = lambda report: None,
           **flags) -> dict:
    """`fit_cycles` over the family's sets (training/cycles.py; `sets` names some, default all),
    each into OUT/<set>/ and handed to `on_set` as it ends; `prompts` and `seed` override every
    set's. The lowest GPM accuracy is the number defaults are judged by."""
    unknown = [name for name in sets if name not in SETS]
    if unknown:
        raise ValueError(f"unknown cycle sets {unknown}; the family: {', '.join(SETS)}")
    overrides = {k: v for k, v in (("prompts", prompts), ("seed", seed)) if v is not None}
    reports = []
    for name in sets or tuple(SETS):
        reports.append(fit_cycles(Path(out) / name, replace(SETS[name], **overrides), base, families, **flags))
        on_set(reports[-1])
    summary = {"sets": {r["set"]: r for r in reports}, "flags": flags, "base": base}
    for family in families:
        summary[f"{family}_lowest"] = min(r[family]["accuracy"] for r in reports)
    return summary


def flip_labels(pairs: list[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], int]:
    """A copy with chosen and rejected swapped on round(fraction * n) pairs chosen at random."""
    picked = set(random.Random(seed).sample(range(len(pairs)), round(fraction * len(pairs))))
    return [p.model_copy(update={"chosen": p.rejected, "rejected": p.chosen}) if i in picked else p
            for i, p in enumerate(pairs)], len(picked)


def warm_noise(out: str | Path, train: str | Path, test: str | Path, members: int = 3, flip: float = 0.25,
               limit: int | None = None, test_limit: int | None = None, epochs: int = 1, lr: float = 1e-3,
               lora_layers: int = 8, base: str = "default", seed: int = 0,
               on_log: Callable[[dict], None] = lambda row: None) -> dict:
    """Train WARM members on label-noisy pairs; clean held-out accuracy of each member, of the
    prediction ensemble and of the weight average. The ensemble's margin on a pair is the mean
    of its members' margins (what the ensemble kind serves), so it reuses their forward passes."""
    start = time.time()
    clean = read_pairs(train)[:limit]
    noisy, flipped = flip_labels(clean, flip, seed)
    held_out = read_pairs(test)[:test_limit]
    # a constant rate, as when its numbers in docs/model-families.md were measured (BT now defaults to cosine)
    config = WarmConfig(base=base, num_train_epochs=epochs, learning_rate=lr, lora_layers=lora_layers, seed=seed,
                        lr_scheduler_type="constant", warmup_steps=0.0)
    warm = train_warm(noisy, out, config, members, on_log=on_log, data=f"{train} ({flipped} flipped)")
    pairs = [Pair(prompt=p.prompt, a=p.chosen, b=p.rejected) for p in held_out]
    names = [Path(m).name for m in warm["members"]]
    margins = {name: load_scorer(Path(out) / MEMBERS / name).compare(pairs).margins for name in names}
    margins["ensemble"] = [sum(column) / len(names) for column in zip(*(margins[n] for n in names))]
    margins["warm"] = load_scorer(out).compare(pairs).margins

    def accuracy(ms: list[float]) -> float:
        return round(sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in ms) / len(ms), 4)

    return {"train_pairs": len(clean), "flipped": flipped, "test_pairs": len(held_out), "members": members,
            "epochs": epochs, "accuracy": {name: accuracy(ms) for name, ms in margins.items()},
            "member_lrs": [t["learning_rate"] for t in warm["training"]], "seconds": round(time.time() - start, 1)}
