"""Training commands: `plaudit train FAMILY`, `plaudit warm`, `plaudit experiment`."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields

# family: (module with its config class and trainer, config class, trainer, data reader, help)
TRAINERS = {
    "bt": ("plaudit.training.bt", "BTConfig", "train_bt", "read_pairs",
           "Bradley-Terry model on TRL preference pairs (prompt, chosen, rejected)"),
    "gpm": ("plaudit.training.gpm", "GPMConfig", "train_gpm", "read_pairs",
            "general preference representation model on the same pairs"),
    "prm": ("plaudit.training.prm", "PRMConfig", "train_prm", "read_steps",
            "process reward model on TRL step labels (prompt, completions, labels)"),
    "codepref": ("plaudit.training.codepref", "CodePrefConfig", "train_codepref", "read_codepref",
                 "code preference model (CodeFavor): A or B from the LM's logits; classification records "
                 "(instruction, code_a, code_b, criterion, answer) or TRL pairs, both orders"),
}


def _trainer(family: str):
    """(config class, trainer, data reader) of a family, imported now."""
    import importlib

    from plaudit.training import data

    module, config_class, trainer, reader, _ = TRAINERS[family]
    loaded = importlib.import_module(module)
    return getattr(loaded, config_class), getattr(loaded, trainer), getattr(data, reader)


def _config(config_class, args):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def config_flags(config_class) -> argparse.ArgumentParser:
    """A trainer config's fields as flags (transformers' HfArgumentParser: TrainingArguments'
    names, `--learning-rate` or `--learning_rate`), to add to a command as a parent parser."""
    from transformers import HfArgumentParser

    return HfArgumentParser(config_class, add_help=False)


def cmd_train(args) -> None:
    config_class, trainer, read = _trainer(args.family)
    config = _config(config_class, args)
    from plaudit.training.loop import leave_process_group

    summary = trainer(read(args.data), args.out, config, on_log=lambda row: print(json.dumps(row), flush=True),
                      data=str(args.data), heldout=read(config.eval_data) if config.eval_data else ())
    leave_process_group()
    print(json.dumps(summary))


def cmd_warm_train(args) -> None:
    from plaudit.training.data import read_pairs
    from plaudit.training.warm import WarmConfig, train_warm

    from plaudit.training.loop import leave_process_group

    report = train_warm(read_pairs(args.data), args.out, _config(WarmConfig, args), args.members,
                        on_log=lambda row: print(json.dumps(row), flush=True), data=str(args.data))
    leave_process_group()
    print(json.dumps(report))


def cmd_warm_merge(args) -> None:
    from plaudit.training.data import read_pairs
    from plaudit.training.warm import merge

    print(json.dumps(merge(args.members, args.out, soup=read_pairs(args.soup) if args.soup else None), indent=2))


def cmd_experiment_cyclic(args) -> None:
    from plaudit.training.experiments import cyclic

    flags = {k: getattr(args, k) for k in ("num_train_epochs", "learning_rate", "adapter_learning_rate",
                                           "lora_layers", "dims", "adapter_start", "tau", "centring",
                                           "orthogonality") if getattr(args, k) is not None}
    print(f"{'set':14} {'pairs':>5} {'BT ceiling':>10} " + " ".join(f"{f:>8}" for f in args.families),
          file=sys.stderr, flush=True)

    def show(row: dict) -> None:  # each set's line as it ends: the whole family takes a while
        print(f"{row['set']:14} {row['pairs']:>5} {row['bt_ceiling']:>10.3f} "
              + " ".join(f"{row[f]['accuracy']:>8.3f}" for f in args.families), file=sys.stderr, flush=True)

    report = cyclic(args.out, base=args.base, sets=tuple(args.set or ()), families=tuple(args.families),
                    prompts=args.prompts, seed=args.seed, on_set=show, **flags)
    print(json.dumps(report, indent=2))


def cmd_experiment_warm_noise(args) -> None:
    from plaudit.training.experiments import warm_noise

    print(json.dumps(warm_noise(args.out, args.train, args.test, members=args.members, flip=args.flip,
                                limit=args.limit, test_limit=args.test_limit, epochs=args.epochs, lr=args.lr,
                                lora_layers=args.lora_layers, base=args.base, seed=args.seed,
                                on_log=lambda row: print(json.dumps(row), file=sys.stderr, flush=True)), indent=2))


def train_flags(p) -> None:
    train = p.add_subparsers(dest="family", required=True)
    for family, (*_, help_text) in TRAINERS.items():
        p = train.add_parser(family, help=help_text, parents=[config_flags(_trainer(family)[0])],
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # families' defaults differ
        p.add_argument("--data", required=True, help="JSONL training records")
        p.add_argument("--out", required=True, help="model directory to write")
        p.set_defaults(run=cmd_train)


def warm_flags(p) -> None:
    from plaudit.training.warm import WarmConfig

    warm = p.add_subparsers(dest="step", required=True)
    p = warm.add_parser("train", help="train M BT members from one init, serve them as an ensemble, merge them",
                        parents=[config_flags(WarmConfig)], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="JSONL preference pairs")
    p.add_argument("--members", type=int, default=3, help="M, the number of fine-tunes to average")
    p.add_argument("--out", required=True, help="the merged model; the members go to OUT/members/")
    p.set_defaults(run=cmd_warm_train)
    p = warm.add_parser("merge", help="average BT models fine-tuned from one init into one BT model")
    p.add_argument("members", nargs="+", help="model directories (plaudit adapters or full checkpoints)")
    p.add_argument("--out", required=True)
    p.add_argument("--soup", help="held-out JSONL pairs: greedy soup (keep a member only if accuracy holds)")
    p.set_defaults(run=cmd_warm_merge)


def experiment_flags(p) -> None:
    experiment = p.add_subparsers(dest="name", required=True)
    from plaudit.training.cycles import SETS

    p = experiment.add_parser("cyclic", help="BT vs GPM on a family of generated preference cycles, a cycle of its "
                                             "own under every prompt; what each fits, set by set")
    p.add_argument("--out", default="runs/cyclic", help="where the trained models go (OUT/<set>/<family>)")
    p.add_argument("--base", default="default")
    p.add_argument("--set", action="append", choices=list(SETS), help="only this set (repeatable; default: all)")
    p.add_argument("--families", nargs="+", choices=["bt", "gpm"], default=["bt", "gpm"])
    p.add_argument("--prompts", type=int, help="instead of each set's number of prompts")
    p.add_argument("--num-train-epochs", type=int, help="instead of each trainer's default")
    p.add_argument("--learning-rate", type=float, help="instead of each trainer's default")
    p.add_argument("--adapter-learning-rate", type=float, help="instead of the GPM's default")
    p.add_argument("--lora-layers", type=int, help="instead of each trainer's default")
    p.add_argument("--dims", type=int, help="instead of the GPM's embedding dimension")
    p.add_argument("--adapter-start", type=float, help="instead of each trainer's default")
    p.add_argument("--tau", type=float, help="instead of the GPM's temperature")
    p.add_argument("--centring", choices=["fixed", "batch", "shift"],
                   help="instead of the GPM's centring while training (see plaudit train gpm --help)")
    p.add_argument("--orthogonality", type=float, help="instead of the GPM's cos^2 penalty weight")
    p.add_argument("--seed", type=int, help="instead of each set's seed")
    p.set_defaults(run=cmd_experiment_cyclic)
    p = experiment.add_parser("warm-noise", help="members vs ensemble vs WARM average with flipped training labels")
    p.add_argument("--train", required=True, help="clean JSONL pairs to train on (labels get flipped)")
    p.add_argument("--test", required=True, help="clean held-out JSONL pairs")
    p.add_argument("--out", default="runs/warm-noise")
    p.add_argument("--members", type=int, default=3)
    p.add_argument("--flip", type=float, default=0.25, help="fraction of training labels flipped")
    p.add_argument("--limit", type=int, help="first N training pairs")
    p.add_argument("--test-limit", type=int, help="first N held-out pairs")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lora-layers", type=int, default=8)
    p.add_argument("--base", default="default")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_experiment_warm_noise)


COMMANDS = {"train": ("train a reward model", train_flags),
            "warm": ("weight-averaged reward models (WARM)", warm_flags),
            "experiment": ("documented experiments", experiment_flags)}
