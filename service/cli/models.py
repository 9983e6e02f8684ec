"""Commands on a trained model: `plaudit eval`, `calibrate`, `export`, `convert-adapter`."""
from __future__ import annotations

import json
from pathlib import Path

def cmd_eval_pairs(args) -> None:
    from plaudit.service.api import pool_for
    from plaudit.training.data import read_pairs
    from plaudit.training.evaluate import eval_pairs

    pool, model = pool_for(args.model, args.config)
    print(json.dumps(eval_pairs(pool.get(model), read_pairs(args.data)), indent=2))


def cmd_eval_steps(args) -> None:
    from plaudit.service.api import pool_for
    from plaudit.training.data import read_steps
    from plaudit.training.evaluate import eval_steps

    pool, model = pool_for(args.model, args.config)
    print(json.dumps(eval_steps(pool.get(model), read_steps(args.data)), indent=2))


def cmd_eval_codepref(args) -> None:
    from plaudit.files import read_jsonl
    from plaudit.service.api import pool_for
    from plaudit.training.codeprefbench import LongerWins, eval_codepref

    tasks = read_jsonl(args.tasks)
    tasks = [t for t in tasks if not args.criteria or t["criteria"] in args.criteria][:args.limit]
    if args.model == "longer-wins":
        scorer = LongerWins()
    else:
        pool, model = pool_for(args.model, args.config)
        scorer = pool.get(model)
    print(json.dumps(eval_codepref(scorer, tasks), indent=2))


def cmd_calibrate(args) -> None:
    from plaudit.rewardmodels import load_scorer
    from plaudit.rewardmodels.loading import resolve_path
    from plaudit.service.config import load_config
    from plaudit.training.calibration import calibrate
    from plaudit.training.data import read_pairs

    cfg = load_config(args.config)
    directory = resolve_path(cfg.models[args.model].path if args.model in cfg.models else args.model)
    report = calibrate(load_scorer(directory), directory, read_pairs(args.data), data=str(args.data),
                       png=Path(args.png) if args.png else None, write=not args.dry_run)
    print(json.dumps(report, indent=2))


def cmd_export(args) -> None:
    from plaudit.service.config import load_config
    from plaudit.training.export import export

    configured = load_config(args.config).models.get(args.model)
    path = configured.path if configured is not None else args.model
    if path is None:
        raise SystemExit(f"--model: {args.model!r} has no weights to export (kind {configured.kind})")
    print(json.dumps(export(path, args.out)))


def cmd_convert_adapter(args) -> None:
    """Model folders from before plaudit's adapters were PEFT's, rewritten in PEFT's format."""
    from transformers import AutoConfig

    from plaudit.rewardmodels.loading import read_metadata, resolve_path
    from plaudit.rewardmodels.lora import convert_legacy

    for folder in args.folders:
        directory = resolve_path(folder)
        base = AutoConfig.from_pretrained(resolve_path(read_metadata(directory)["base"]))
        print(json.dumps({"folder": str(directory), "written": convert_legacy(directory, base)}))


def eval_flags(p) -> None:
    evaluate = p.add_subparsers(dest="what", required=True)
    p = evaluate.add_parser("pairs", help="accuracy and mean margin on preference pairs")
    p.add_argument("--model", help="a configured model name or a model directory (default: the default model)")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_pairs)
    p = evaluate.add_parser("steps", help="step-level AUROC of a process reward model on TRL step labels")
    p.add_argument("--model", help="a configured model name or a model directory")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_steps)
    p = evaluate.add_parser("codepref", help="accuracy per criterion on CodePrefBench-format tasks, both orders")
    p.add_argument("--tasks", required=True, help="JSONL: task_id, instruction, choices[2], gt_choice, criteria")
    p.add_argument("--model", help="a configured model or judge, a model directory, or the baseline longer-wins")
    p.add_argument("--criteria", action="append", help="only tasks of this criterion (repeatable)")
    p.add_argument("--limit", type=int, help="only the first N tasks (after --criteria)")
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_codepref)


def calibrate_flags(p) -> None:
    p.add_argument("--model", required=True, help="a model directory, or a configured model's name")
    p.add_argument("--data", required=True, help="held-out TRL preference pairs (prompt, chosen, rejected)")
    p.add_argument("--png", help="write a reliability diagram (before and after) to this PNG file")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the model's metadata as it is")
    p.add_argument("--config")
    p.set_defaults(run=cmd_calibrate)


def export_flags(p) -> None:
    p.add_argument("--model", required=True, help="a configured model's name, or a model folder")
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="the service config that names the models (default: the packaged ones)")
    p.set_defaults(run=cmd_export)


def convert_flags(p) -> None:
    p.add_argument("folders", nargs="+")
    p.set_defaults(run=cmd_convert_adapter)


COMMANDS = {"eval": ("evaluate a model", eval_flags),
            "calibrate": ("fit a temperature on held-out pairs and store it in the model's metadata",
                          calibrate_flags),
            "export": ("a BT or PRM model as a plain transformers checkpoint (adapter merged) that transformers, "
                       "TRL and vLLM load and score as plaudit does before normalising", export_flags),
            "convert-adapter": ("rewrite model folders trained before plaudit used PEFT (adapter.safetensors) in "
                                "PEFT's format, the same weights", convert_flags)}
