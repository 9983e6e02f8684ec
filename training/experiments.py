"""Small experiments that show what a model family can do, each one documented command.

cyclic: GPM's headline result at small scale. Responses to a prompt form rock-paper-scissors
cycles (b beats a, c beats b, a beats c). A scalar reward cannot order a cycle: BT gets at
most 2 of every 3 pairs right and its margins around a cycle sum to zero; a GPM's
skew-symmetric preference can represent the cycle and fits it.
"""
from __future__ import annotations

import random
import time
from pathlib import Path

from rewardmodels import load_scorer

from .bt import BTConfig, train_bt
from .data import PreferencePair
from .evaluate import eval_pairs
from .gpm import GPMConfig, train_gpm

WORDS = ("apple river stone cloud tiger piano window garden silver rocket maple ocean lantern violet "
         "engine forest candle marble falcon copper").split()


def cyclic_pairs(prompts: int, seed: int = 0) -> list[PreferencePair]:
    """Per prompt three short responses a, b, c with b > a, c > b, a > c."""
    rng = random.Random(seed)
    pairs = []
    for p in range(prompts):
        prompt = f"Pick the better answer for round {p}: " + " ".join(rng.sample(WORDS, 3))
        answers = [" ".join(rng.sample(WORDS, 2)) for _ in range(3)]
        pairs += [PreferencePair(prompt=prompt, chosen=answers[(i + 1) % 3], rejected=answers[i]) for i in range(3)]
    return pairs


def cyclic(out: str | Path, base: str = "default", prompts: int = 8, epochs: int = 20, lr: float = 5e-3,
           lora_layers: int = 4, seed: int = 0) -> dict:
    """Train BT and GPM on the same cyclic pairs; accuracy on those pairs is the test of
    expressiveness (what each can fit), not of generalisation."""
    pairs = cyclic_pairs(prompts, seed)
    report = {"pairs": len(pairs), "prompts": prompts, "base": base, "epochs": epochs, "bt_ceiling": 2 / 3}
    common = dict(base=base, epochs=epochs, lr=lr, lora_layers=lora_layers, seed=seed, batch_pairs=3)
    for family, trainer, config in (("bt", train_bt, BTConfig(**common)), ("gpm", train_gpm, GPMConfig(**common))):
        start = time.time()
        trainer(pairs, Path(out) / family, config, on_log=lambda row: None)
        result = eval_pairs(load_scorer(Path(out) / family), pairs)
        report[family] = {"accuracy": round(result["accuracy"], 4), "mean_margin": round(result["mean_margin"], 4),
                          "seconds": round(time.time() - start, 1)}
    return report
