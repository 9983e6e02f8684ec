"""Small experiments that show what a model family can do, each one documented command.

warm_noise: WARM's robustness claim at small scale. A quarter of the training pairs have
their labels flipped; each member, the prediction ensemble (mean reward) and the WARM
weight average are scored on clean held-out pairs.

cyclic: GPM's headline result at small scale. Responses form rock-paper-scissors cycles
(paper beats rock, scissors beat paper, rock beats scissors). A scalar reward cannot order a cycle: BT gets at
most 2 of every 3 pairs right and its margins around a cycle sum to zero; a GPM's
skew-symmetric preference can represent the cycle and fits it.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Callable

from plaudit.rewardmodels import load_scorer
from plaudit.rewardmodels.base import Pair

from .bt import BTConfig, train_bt
from .data import PreferencePair, read_pairs
from .evaluate import eval_pairs
from .gpm import GPMConfig, train_gpm
from .warm import MEMBERS, WarmConfig, train_warm

HANDS = ("rock", "paper", "scissors")  # each beats the one before it, and rock beats scissors
TOPICS = ("a game", "a contest", "a coin toss", "a quarrel", "a tie-break", "a bet", "a duel", "a choice",
          "a draw", "a match", "a round", "a dispute")


def cyclic_pairs(prompts: int, seed: int = 0) -> list[PreferencePair]:
    """Rock-paper-scissors over responses: under every prompt, paper > rock, scissors > paper,
    rock > scissors. The prompts vary; the cycle does not."""
    rng = random.Random(seed)
    pairs = []
    for p in range(prompts):
        prompt = f"Settle {TOPICS[p % len(TOPICS)]} (#{p}): answer with one hand."
        hands = [f"I play {h}." for h in HANDS]
        order = list(range(3))
        rng.shuffle(order)  # the pairs of a prompt come in a random order
        pairs += [PreferencePair(prompt=prompt, chosen=hands[(i + 1) % 3], rejected=hands[i]) for i in order]
    return pairs


def cyclic(out: str | Path, base: str = "default", prompts: int = 8, epochs: int = 30, lr: float = 5e-3,
           lora_layers: int = 4, seed: int = 0, families: tuple[str, ...] = ("bt", "gpm")) -> dict:
    """Train BT and GPM on the same cyclic pairs; accuracy on those pairs is the test of
    expressiveness (what each can fit), not of generalisation.

    Every step sees all pairs (full batch), so each cycle is whole in every gradient. With
    small shuffled batches a step may hold, say, two "paper > rock" pairs and no other side
    of that cycle; that unbalanced, BT-like pull drove the GPM into the collapsed solution
    (all preferences 0) on SmolLM2 in our runs, while full batches reached 100%."""
    pairs = cyclic_pairs(prompts, seed)
    report = {"pairs": len(pairs), "prompts": prompts, "base": base, "epochs": epochs, "bt_ceiling": 2 / 3}
    common = dict(base=base, num_train_epochs=epochs, learning_rate=lr, lora_layers=lora_layers, seed=seed,
                  per_device_train_batch_size=len(pairs))
    for family, trainer, config in (("bt", train_bt, BTConfig(**common)), ("gpm", train_gpm, GPMConfig(**common))):
        if family not in families:
            continue
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
    config = WarmConfig(base=base, num_train_epochs=epochs, learning_rate=lr, lora_layers=lora_layers, seed=seed)
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
