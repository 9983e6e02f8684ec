"""Commands on a trained model: `plaudit calibrate`, `export`, `convert-adapter`."""
from __future__ import annotations

import json
from pathlib import Path

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


COMMANDS = {"calibrate": ("fit a temperature on held-out pairs and store it in the model's metadata",
                          calibrate_flags),
            "export": ("a BT or PRM model as a plain transformers checkpoint (adapter merged) that transformers, "
                       "TRL and vLLM load and score as plaudit does before normalising", export_flags),
            "convert-adapter": ("rewrite model folders trained before plaudit used PEFT (adapter.safetensors) in "
                                "PEFT's format, the same weights", convert_flags)}
