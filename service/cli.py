"""The `plaudit` command: the same functions and schemas as the HTTP API, from a shell."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from rewardmodels import InputError, ModelLoadError

from training.bt import BTConfig, train_bt

from .config import REPO, ModelConfig, ServiceConfig, load_config


def _pool(model: str | None, config: str | None):
    """Configured models by name; a model given as a directory is served alone."""
    from .api import ModelPool

    cfg = load_config(config)
    if model and model not in cfg.models:
        cfg = ServiceConfig(models={"cli": ModelConfig(path=model)}, default_model="cli")
        model = None
    return ModelPool(cfg), model


def cmd_serve(args) -> None:
    if args.config:
        os.environ["PLAUDIT_CONFIG"] = str(Path(args.config).resolve())
    load_config()  # fail on a bad config here, before BentoML starts
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    bentoml = Path(sys.executable).with_name("bentoml")
    with tempfile.TemporaryDirectory() as tmp:
        error_file = Path(tmp) / "startup-error"
        os.environ["PLAUDIT_STARTUP_ERROR_FILE"] = str(error_file)
        server = subprocess.Popen([str(bentoml), "serve", "service.app:Plaudit", "--working-dir", str(REPO),
                                   "--host", args.host, "--port", str(args.port)])
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        while (code := _wait(server)) is None:
            pass  # Ctrl-C reached the server too (same process group); it is shutting down
        if error_file.exists():
            raise ModelLoadError(error_file.read_text())
    sys.exit(code)


def _wait(process: subprocess.Popen) -> int | None:
    try:
        return process.wait()
    except KeyboardInterrupt:
        return None


def cmd_score(args) -> None:
    from .api import score_one

    pool, model = _pool(args.model, args.config)
    prompt = json.loads(args.prompt) if args.prompt.lstrip().startswith("[") else args.prompt
    print(score_one(pool, model, prompt, args.response).model_dump_json(indent=2))


def cmd_train_bt(args) -> None:
    from training.data import read_pairs

    config = BTConfig(base=args.base, epochs=args.epochs, lr=args.lr, batch_pairs=args.batch_pairs,
                      lora_layers=args.lora_layers, lora_rank=args.lora_rank, max_length=args.max_length,
                      seed=args.seed, device=args.device)
    summary = train_bt(read_pairs(args.data), args.out, config, on_log=lambda row: print(json.dumps(row), flush=True))
    summary["data"] = str(args.data)
    print(json.dumps(summary))


def cmd_data_humaneval_pairs(args) -> None:
    from training.humaneval import build_pairs, write_jsonl

    records, stats = build_pairs(max_mutants_per_problem=args.max_mutants, seed=args.seed,
                                 workers=args.workers, limit=args.limit)
    chosen = [r for r in records if args.split == "all" or r["split"] == args.split]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(chosen, args.out)
    print(json.dumps({**stats, "written": len(chosen), "split": args.split, "out": str(args.out)}))


def cmd_eval_pairs(args) -> None:
    from training.data import read_pairs
    from training.evaluate import eval_pairs

    pool, model = _pool(args.model, args.config)
    print(json.dumps(eval_pairs(pool.get(model), read_pairs(args.data)), indent=2))


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="plaudit", description="Reward models and judges behind one scoring API.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the HTTP scoring service (BentoML)")
    p.add_argument("--config", help="YAML config naming the models (default: the embedded default model)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("score", help="score one response, as POST /score would")
    p.add_argument("--prompt", required=True, help="a string, or chat messages as a JSON list")
    p.add_argument("--response", required=True)
    p.add_argument("--model", help="a configured model name or a model directory (default: the default model)")
    p.add_argument("--config")
    p.set_defaults(run=cmd_score)

    train = sub.add_parser("train", help="train a reward model").add_subparsers(dest="family", required=True)
    p = train.add_parser("bt", help="Bradley-Terry model on TRL preference pairs (prompt, chosen, rejected)")
    p.add_argument("--data", required=True, help="JSONL preference pairs")
    p.add_argument("--out", required=True, help="model directory to write")
    defaults = BTConfig()
    p.add_argument("--base", default=defaults.base, help="backbone directory, or 'default' for packaged SmolLM2-135M")
    p.add_argument("--epochs", type=int, default=defaults.epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--batch-pairs", type=int, default=defaults.batch_pairs)
    p.add_argument("--lora-layers", type=int, default=defaults.lora_layers, help="adapt the last N transformer blocks")
    p.add_argument("--lora-rank", type=int, default=defaults.lora_rank)
    p.add_argument("--max-length", type=int, default=defaults.max_length)
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--device", default=defaults.device)
    p.set_defaults(run=cmd_train_bt)

    data = sub.add_parser("data", help="build training data").add_subparsers(dest="builder", required=True)
    p = data.add_parser("humaneval-pairs", help="execution-grounded code pairs: passing solution vs failing mutant")
    p.add_argument("--out", required=True)
    p.add_argument("--split", choices=["all", "train", "test"], default="all", help="problems to keep (split by problem)")
    p.add_argument("--max-mutants", type=int, default=4, help="failing mutants per problem")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.set_defaults(run=cmd_data_humaneval_pairs)

    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
    p = evaluate.add_parser("pairs", help="accuracy and mean margin on preference pairs")
    p.add_argument("--model", help="a configured model name or a model directory (default: the default model)")
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_pairs)
    return top


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (InputError, ModelLoadError) as e:
        sys.exit(f"plaudit: error: {e}")
