"""Small experiments that show what a model family can do, each one documented command.

warm_noise: WARM's robustness claim at small scale. A quarter of the training pairs have
their labels flipped; each member, the prediction ensemble (mean reward) and the WARM
weight average are scored on clean held-out pairs.

cyclic: GPM's headline result at small scale. Each prompt has its own cycle of three short
responses (b beats a, c beats b, a beats c), over different words for different prompts. A
scalar reward cannot order a cycle: BT gets at most 2 of every 3 pairs right and its margins
around a cycle sum to zero; a GPM's skew-symmetric preference can represent every cycle, and
with the trainer's default flags it fits them.
"""
from __future__ import annotations

import random
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable

from plaudit.rewardmodels import load_scorer
from plaudit.rewardmodels.base import Pair

from .bt import BTConfig, train_bt
from .data import PreferencePair, read_pairs
from .evaluate import eval_pairs
from .gpm import GPMConfig, train_gpm
from .warm import MEMBERS, WarmConfig, train_warm

WORDS = tuple("""river stone cloud maple fern moss pebble breeze meadow brook willow thunder frost ember dune
    canyon glacier lichen orchid pine reef tide valley aurora cedar delta marsh summit tundra grove lantern anchor
    compass harbor violin candle ladder mirror basket feather garden island jacket kettle lemon magnet needle
    orange pepper quilt rocket saddle tiger umbrella wagon yogurt zebra acorn bamboo cactus dolphin eagle falcon
    gravel honey iris jungle koala lizard mango nectar olive parrot quartz raven salmon tulip unicorn vapor walnut
    beacon cobalt dagger emerald fossil goblet hammock igloo jasmine kayak""".split())  # 90: every prompt its own three


def cyclic_pairs(prompts: int, seed: int = 0) -> list[PreferencePair]:
    """Under every prompt, three words of its own (none shared with another prompt while the
    90 words last) form a cycle: b > a, c > b, a > c. Every cycle is different, so no single
    ordering, nor one direction in embedding space, fits them all."""
    rng = random.Random(seed)
    words = rng.sample(WORDS, len(WORDS))
    pairs = []
    for p in range(prompts):
        a, b, c = (words[(3 * p + i) % len(words)] for i in range(3))
        prompt = f"Question {p}: pick the best word for the topic {rng.choice(WORDS)}."
        cycle = [(b, a), (c, b), (a, c)]
        rng.shuffle(cycle)  # the pairs of a prompt come in a random order
        pairs += [PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected) for chosen, rejected in cycle]
    return pairs


def cyclic(out: str | Path, base: str = "default", prompts: int = 30, seed: int = 0,
           families: tuple[str, ...] = ("bt", "gpm"), **flags) -> dict:
    """Train BT and GPM on the same cyclic pairs with the trainers' default flags (or `flags`,
    TrainConfig's names); accuracy on those pairs is the test of expressiveness (what each can
    fit), not of generalisation."""
    unknown = set(flags) - {f.name for f in fields(GPMConfig)} - {f.name for f in fields(BTConfig)}
    if unknown:
        raise TypeError(f"not a trainer flag: {sorted(unknown)}")
    pairs = cyclic_pairs(prompts, seed)
    report = {"pairs": len(pairs), "prompts": prompts, "base": base, "flags": flags, "bt_ceiling": 2 / 3}
    for family, trainer, config_class in (("bt", train_bt, BTConfig), ("gpm", train_gpm, GPMConfig)):
        if family not in families:
            continue
        names = {f.name for f in fields(config_class)}  # e.g. dims is the GPM's alone
        config = config_class(base=base, seed=seed, **{k: v for k, v in flags.items() if k in names})
        start = time.time()
        trainer(pairs, Path(out) / family, config, on_log=lambda row: None)
        result = eval_pairs(load_scorer(Path(out) / family), pairs)
        report[family] = {"accuracy": round(result["accuracy"], 4), "mean_margin": round(result["mean_margin"], 4),
                          "seconds": round(time.time() - start, 1)}
    return report


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
