"""The `plaudit` command: the same functions and schemas as the HTTP API, from a shell."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import fields
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from plaudit.rewardmodels import InputError, ModelLoadError, load_scorer
from plaudit.rewardmodels.loading import read_metadata, resolve_path
from plaudit.rewardmodels.base import Prompt
from plaudit.training.bt import BTConfig, train_bt
from plaudit.training.calibration import calibrate
from plaudit.training.codepref import CodePrefConfig, train_codepref
from plaudit.training.codeprefbench import LongerWins, build_tasks, eval_codepref
from plaudit.training.data import read_codepref, read_pairs, read_steps
from plaudit.training.evaluate import eval_pairs, eval_steps
from plaudit.training.experiments import cyclic, warm_noise
from plaudit.training.gpm import GPMConfig, train_gpm
from plaudit.training.humaneval import (RL_FORMATS, build_pairs, build_steps, load_problems, rl_prompts, write_jsonl,
                                        write_parquet)
from plaudit.training.prm import PRMConfig, train_prm
from plaudit.training.warm import WarmConfig, merge, train_warm

from plaudit.judges import batch
from plaudit.judges.hub import BackendHub
from plaudit.training import codefavor

from . import api, batch_score
from .api import ModelPool, pool_for, score_one
from .config import API_KEY_ENV, load_config


def cmd_serve(args) -> None:
    if args.config:
        os.environ["PLAUDIT_CONFIG"] = str(Path(args.config).resolve())
    load_config()  # fail on a bad config here, before BentoML starts
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # Become the small supervisor: this process has torch loaded, which waiting does not need.
    os.execv(sys.executable, [sys.executable, "-m", "plaudit.service.supervise", args.host, str(args.port)])


def _prompt(text: str) -> Prompt:
    """Chat messages when the text is a JSON list, else the text itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return TypeAdapter(Prompt).validate_python(value) if isinstance(value, list) else text


def cmd_score(args) -> None:
    if args.input is None:
        if args.prompt is None or args.response is None or args.out:
            sys.exit("plaudit score: give IN.jsonl -o OUT.jsonl, or --prompt and --response for one item")
        pool, model = pool_for(args.model, args.config)
        print(score_one(pool, model, _prompt(args.prompt), args.response).model_dump_json(indent=2))
        return
    if not args.out:
        sys.exit("plaudit score: -o/--out is required with an input file")
    if args.ray:
        return _run_batch("score", lambda: _on_ray("score", args, args.model), args.out, lambda: None)
    if args.endpoint:
        endpoints = batch_score.Endpoints(args.endpoint, api_key=os.environ.get(API_KEY_ENV))
        score, model, close = endpoints, args.model, endpoints.close
    else:
        pool, model = pool_for(args.model, args.config)
        pool.get(model)  # an unknown model fails here, and the model loads before the clock
        score, close = (lambda request, index: api.score(pool, request)), pool.close
    _run_batch("score", lambda: batch_score.run(Path(args.input), Path(args.out), score, model=model,
                                                concurrency=args.concurrency, progress=not args.no_progress,
                                                pairs=args.pairs), args.out, close)


def _on_ray(kind: str, args, name: str | None) -> dict:
    from plaudit import ray as on_ray  # the [ray] extra

    endpoint = args.endpoint[0] if args.endpoint else None
    if args.endpoint and len(args.endpoint) > 1:
        sys.exit(f"plaudit {kind}: with --ray, give one --endpoint (a load balancer) or none")
    return on_ray.run_job(kind, Path(args.input), Path(args.out), model=name, config=args.config, endpoint=endpoint,
                          address=None if args.ray == "local" else args.ray, num_workers=args.num_workers,
                          cpus_per_worker=args.cpus_per_worker, gpus_per_worker=args.gpus_per_worker,
                          shard_lines=args.shard_lines)


def cmd_judge(args) -> None:
    if args.ray:
        return _run_batch("judge", lambda: _on_ray("judge", args, args.judge), args.out, lambda: None)
    if args.endpoint:
        judge = batch.Endpoints(args.endpoint, api_key=os.environ.get(API_KEY_ENV))
        close = judge.close
    else:
        pool = ModelPool(load_config(args.config))
        pool.judge(args.judge)  # an unknown judge fails here, and the backend starts before the clock
        judge, close = (lambda request, index: api.judge(pool, request)), pool.close
    _run_batch("judge", lambda: batch.run(Path(args.input), Path(args.out), judge, judge_name=args.judge,
                                          concurrency=args.concurrency, progress=not args.no_progress), args.out, close)


def _run_batch(command: str, run, out: str, close) -> None:
    """A resumable job (plaudit/jobs.py): its summary, and a failing exit status when items
    failed or input lines were bad."""
    try:
        summary = run()
    except KeyboardInterrupt:
        # Every line in OUT is whole; leave now rather than wait for the requests in flight.
        print(f"\nplaudit {command}: interrupted; run the same command again to continue {out}", file=sys.stderr)
        os._exit(130)
    close()
    print(json.dumps(summary, indent=2))
    if summary["errors"] or summary["bad_lines"]:
        sys.exit(f"plaudit {command}: {summary['errors']} items failed and {summary['bad_lines']} input lines were bad "
                 f"(see above); a re-run does the failed items again")


def _backends(config: str | None) -> tuple[BackendHub, str]:
    cfg = load_config(config)
    return BackendHub(cfg.backends), cfg.default_backend


def _synthesise(args, make_work) -> None:
    hub, default = _backends(args.config)
    try:
        work = make_work(hub, default)
        report = codefavor.run_stage(work, Path(args.out), args.concurrency, not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nplaudit codefavor: interrupted; run the same command again to continue {args.out}", file=sys.stderr)
        os._exit(130)
    hub.close()
    print(json.dumps(report, indent=2))
    if report["errors"]:
        sys.exit(f"plaudit codefavor: {report['errors']} records failed (backend errors); a re-run retries them")


def cmd_codefavor_commits(args) -> None:
    def work(hub: BackendHub, default: str):
        name = args.backend or default
        backend, model = hub.backend(name), hub.identity(name)
        return [(json.dumps(c.sha), lambda c=c: hub.run(codefavor.commit_instruct(backend, model, c, args.llm_code)))
                for c in codefavor.mine_commits(args.repo, args.limit, args.max_changed_lines)]
    _synthesise(args, work)


def cmd_codefavor_critic(args) -> None:
    if args.tasks == "humaneval":
        tasks = [{"task_id": p["task_id"], "instruction": f"Complete this Python function:\n{p['prompt']}"}
                 for p in load_problems()]
    else:
        tasks = [json.loads(line) for line in Path(args.tasks).read_text().splitlines() if line.strip()]
    tasks = tasks[:args.limit]

    def work(hub: BackendHub, default: str):
        weak, critic = args.weak or default, args.critic or default
        models = {"weak": hub.identity(weak), "critic": hub.identity(critic)}
        pair = hub.backend(weak), hub.backend(critic)
        return [(json.dumps(t["task_id"]), lambda t=t: hub.run(codefavor.critic_evol(*pair, models, t))) for t in tasks]
    _synthesise(args, work)


TRAINERS = {  # family: (config class, trainer, data reader, help)
    "bt": (BTConfig, train_bt, read_pairs,
           "Bradley-Terry model on TRL preference pairs (prompt, chosen, rejected)"),
    "gpm": (GPMConfig, train_gpm, read_pairs, "general preference representation model on the same pairs"),
    "prm": (PRMConfig, train_prm, read_steps,
            "process reward model on TRL step labels (prompt, completions, labels)"),
    "codepref": (CodePrefConfig, train_codepref, read_codepref,
                 "code preference model (CodeFavor): A or B from the LM's logits; classification records "
                 "(instruction, code_a, code_b, criterion, answer) or TRL pairs, both orders"),
}


def cmd_train(args) -> None:
    config_class, trainer, read, _ = TRAINERS[args.family]
    config = _config(config_class, args)
    summary = trainer(read(args.data), args.out, config, on_log=lambda row: print(json.dumps(row), flush=True),
                      data=str(args.data), heldout=read(config.eval_data) if config.eval_data else ())
    print(json.dumps(summary))


def config_flags(config_class) -> argparse.ArgumentParser:
    """A trainer config's fields as flags (transformers' HfArgumentParser: TrainingArguments'
    names, `--learning-rate` or `--learning_rate`), to add to a command as a parent parser."""
    from transformers import HfArgumentParser

    return HfArgumentParser(config_class, add_help=False)


BUILDERS = {  # data builder: (function, its cap's keyword, help)
    "humaneval-pairs": (build_pairs, "max_mutants_per_problem",
                        "execution-grounded code pairs: passing solution vs failing mutant (TRL preference format)"),
    "humaneval-steps": (build_steps, "max_records_per_problem",
                        "execution-grounded step labels, one line a step (TRL PRM format: completions, labels)"),
}


def _config(config_class, args):
    return config_class(**{f.name: getattr(args, f.name) for f in fields(config_class)})


def cmd_warm_train(args) -> None:
    report = train_warm(read_pairs(args.data), args.out, _config(WarmConfig, args), args.members,
                        on_log=lambda row: print(json.dumps(row), flush=True), data=str(args.data))
    print(json.dumps(report))


def cmd_warm_merge(args) -> None:
    print(json.dumps(merge(args.members, args.out, soup=read_pairs(args.soup) if args.soup else None), indent=2))


def cmd_humaneval_rl(args) -> None:
    suffix = RL_FORMATS[args.format][1]
    if not args.out.endswith(f".{suffix}"):
        raise SystemExit(f"--out: the {args.format} format is written as .{suffix}, got {args.out!r}")
    records = rl_prompts(args.format, args.split, args.limit)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    (write_parquet if suffix == "parquet" else write_jsonl)(records, args.out)
    print(json.dumps({"written": len(records), "format": args.format, "split": args.split, "out": args.out}))


def cmd_data(args) -> None:
    build, cap, _ = BUILDERS[args.builder]
    records, stats = build(**{cap: args.max_per_problem}, seed=args.seed, workers=args.workers, limit=args.limit)
    chosen = [r for r in records if args.split == "all" or r["split"] == args.split]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(chosen, args.out)
    print(json.dumps({**stats, "written": len(chosen), "split": args.split, "out": str(args.out)}))


def cmd_eval_pairs(args) -> None:
    pool, model = pool_for(args.model, args.config)
    print(json.dumps(eval_pairs(pool.get(model), read_pairs(args.data)), indent=2))


def cmd_eval_steps(args) -> None:
    pool, model = pool_for(args.model, args.config)
    print(json.dumps(eval_steps(pool.get(model), read_steps(args.data)), indent=2))


def cmd_data_codeprefbench(args) -> None:
    tasks, stats = build_tasks(limit=args.limit, workers=args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(tasks, args.out)
    print(json.dumps({**stats, "out": str(args.out)}, indent=2))


def cmd_eval_codepref(args) -> None:
    tasks = [json.loads(line) for line in Path(args.tasks).read_text().splitlines() if line.strip()]
    tasks = [t for t in tasks if not args.criteria or t["criteria"] in args.criteria][:args.limit]
    if args.model == "longer-wins":
        scorer = LongerWins()
    else:
        pool, model = pool_for(args.model, args.config)
        scorer = pool.get(model)
    print(json.dumps(eval_codepref(scorer, tasks), indent=2))


def cmd_export(args) -> None:
    from plaudit.training.export import export

    configured = load_config(args.config).models.get(args.model)
    path = configured.path if configured is not None else args.model
    if path is None:
        raise SystemExit(f"--model: {args.model!r} has no weights to export (kind {configured.kind})")
    print(json.dumps(export(path, args.out)))


def cmd_convert_adapter(args) -> None:
    """Model folders from before plaudit's adapters were PEFT's, rewritten in PEFT's format."""
    from transformers import AutoConfig

    from plaudit.rewardmodels.lora import convert_legacy

    for folder in args.folders:
        directory = resolve_path(folder)
        base = AutoConfig.from_pretrained(resolve_path(read_metadata(directory)["base"]))
        print(json.dumps({"folder": str(directory), "written": convert_legacy(directory, base)}))


def cmd_calibrate(args) -> None:
    cfg = load_config(args.config)
    directory = resolve_path(cfg.models[args.model].path if args.model in cfg.models else args.model)
    report = calibrate(load_scorer(directory), directory, read_pairs(args.data), data=str(args.data),
                       png=Path(args.png) if args.png else None, write=not args.dry_run)
    print(json.dumps(report, indent=2))


def cmd_experiment_cyclic(args) -> None:
    flags = {k: getattr(args, k) for k in ("num_train_epochs", "learning_rate", "lora_layers")
             if getattr(args, k) is not None}
    print(json.dumps(cyclic(args.out, base=args.base, prompts=args.prompts, seed=args.seed, **flags), indent=2))


def cmd_experiment_warm_noise(args) -> None:
    print(json.dumps(warm_noise(args.out, args.train, args.test, members=args.members, flip=args.flip,
                                limit=args.limit, test_limit=args.test_limit, epochs=args.epochs, lr=args.lr,
                                lora_layers=args.lora_layers, base=args.base, seed=args.seed,
                                on_log=lambda row: print(json.dumps(row), file=sys.stderr, flush=True)), indent=2))


def ray_flags(p: argparse.ArgumentParser) -> None:
    ray = p.add_argument_group("Ray (the [ray] extra): a dataset larger than one machine")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run on a Ray cluster (ADDRESS, e.g. ray://head:10001 or auto), or a local Ray without one")
    ray.add_argument("--num-workers", type=int, default=2, help="actors, each holding the models (or a client)")
    ray.add_argument("--cpus-per-worker", type=float, default=1)
    ray.add_argument("--gpus-per-worker", type=float, default=0)
    ray.add_argument("--shard-lines", type=int, default=256, help="lines per shard: the unit a re-run skips")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="plaudit", description="Reward models and judges behind one scoring API.")
    sub = top.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="start the HTTP scoring service (BentoML)")
    p.add_argument("--config", help="YAML config naming the models (default: the embedded default model)")
    p.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("score", help="score a JSONL file of prompts and responses (resumable), or one response "
                                     "with --prompt and --response, as POST /score would")
    p.add_argument("input", nargs="?", help='JSONL, one prompt a line: {"id", "prompt", "response"} or '
                                            '"responses": [...]')
    p.add_argument("-o", "--out", help="JSONL rewards, one line per input line; re-running continues where it stopped")
    p.add_argument("--prompt", help="one item: a string, or chat messages as a JSON list")
    p.add_argument("--response", help="one item: the response")
    p.add_argument("--model", help="a configured model name or a model directory (default: the default model)")
    p.add_argument("--endpoint", action="append", help="a running plaudit service's URL, instead of scoring in this "
                                                       "process; repeat to shard lines across several "
                                                       f"(an API key, if they need one, from ${API_KEY_ENV})")
    p.add_argument("--pairs", choices=batch_score.PAIRS, help="also write TRL preference pairs to OUT.pairs.jsonl: "
                                                              "best-worst = each prompt's best and worst response")
    p.add_argument("--concurrency", type=int, default=4, help="lines in flight")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config")
    ray_flags(p)
    p.set_defaults(run=cmd_score)

    p = sub.add_parser("judge", help="judge a JSONL file of items (resumable): one result line per item")
    p.add_argument("input", help='JSONL, one item a line: {"id", "instruction", "response"} or "responses": [a, b]')
    p.add_argument("-o", "--out", required=True, help="JSONL results; re-running continues where it stopped")
    p.add_argument("--judge", help="a configured judge or a method: tick, pairwise, direct (default: the default "
                                   "judge)")
    p.add_argument("--endpoint", action="append", help="a running plaudit service's URL, instead of judging in "
                                                       "this process; repeat to shard items across several "
                                                       f"(an API key, if they need one, from ${API_KEY_ENV})")
    p.add_argument("--concurrency", type=int, default=8, help="items in flight")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config")
    ray_flags(p)
    p.set_defaults(run=cmd_judge)

    p = sub.add_parser("export", help="a BT or PRM model as a plain transformers checkpoint (adapter merged) that "
                                      "transformers, TRL and vLLM load and score as plaudit does before normalising")
    p.add_argument("--model", required=True, help="a configured model's name, or a model folder")
    p.add_argument("--out", required=True)
    p.add_argument("--config", help="the service config that names the models (default: the packaged ones)")
    p.set_defaults(run=cmd_export)

    p = sub.add_parser("convert-adapter", help="rewrite model folders trained before plaudit used PEFT "
                                              "(adapter.safetensors) in PEFT's format, the same weights")
    p.add_argument("folders", nargs="+")
    p.set_defaults(run=cmd_convert_adapter)

    p = sub.add_parser("calibrate", help="fit a temperature on held-out pairs and store it in the model's metadata")
    p.add_argument("--model", required=True, help="a model directory, or a configured model's name")
    p.add_argument("--data", required=True, help="held-out TRL preference pairs (prompt, chosen, rejected)")
    p.add_argument("--png", help="write a reliability diagram (before and after) to this PNG file")
    p.add_argument("--dry-run", action="store_true", help="report only; leave the model's metadata as it is")
    p.add_argument("--config")
    p.set_defaults(run=cmd_calibrate)

    codefavor_cmd = sub.add_parser("codefavor", help="synthetic code preference data (CodeFavor), resumable"
                                   ).add_subparsers(dest="stage", required=True)
    p = codefavor_cmd.add_parser("commits", help="Commit-Instruct: pairs from the commits of a local git repository")
    p.add_argument("--repo", required=True, help="a git repository on disk")
    p.add_argument("--limit", type=int, help="only the newest N commits")
    p.add_argument("--max-changed-lines", type=int, default=30, help="larger diffs are not focused enough")
    p.add_argument("--backend", help="the LLM (a backend of the config; default: the default backend, local)")
    p.add_argument("--llm-code", action="store_true", help="the LLM rewrites the before and after code as "
                                                             "self-contained solutions (default: the commit's own)")
    p.set_defaults(run=cmd_codefavor_commits)
    p = codefavor_cmd.add_parser("critic", help="Critic-Evol: a weak model attempts, a critic improves")
    p.add_argument("--tasks", required=True, help='JSONL of {"task_id", "instruction"}, or "humaneval"')
    p.add_argument("--limit", type=int, help="only the first N tasks")
    p.add_argument("--weak", help="backend of the weak model (default: the default backend)")
    p.add_argument("--critic", help="backend of the critic (default: the default backend)")
    p.set_defaults(run=cmd_codefavor_critic)
    for p in codefavor_cmd.choices.values():
        p.add_argument("--out", required=True, help="JSONL records; OUT.pairwise.jsonl and OUT.trl.jsonl beside it")
        p.add_argument("--concurrency", type=int, default=4, help="records in flight")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--config", help="YAML naming the backends (default: the local llama.cpp server)")

    train = sub.add_parser("train", help="train a reward model").add_subparsers(dest="family", required=True)
    for family, (config_class, _, _, help_text) in TRAINERS.items():
        p = train.add_parser(family, help=help_text, parents=[config_flags(config_class)],
                             formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # families' defaults differ
        p.add_argument("--data", required=True, help="JSONL training records")
        p.add_argument("--out", required=True, help="model directory to write")
        p.set_defaults(run=cmd_train)

    warm = sub.add_parser("warm", help="weight-averaged reward models (WARM)").add_subparsers(dest="step", required=True)
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

    data = sub.add_parser("data", help="build training data").add_subparsers(dest="builder", required=True)
    for builder, (_, _, help_text) in BUILDERS.items():
        p = data.add_parser(builder, help=help_text)
        p.add_argument("--out", required=True)
        p.add_argument("--split", choices=["all", "train", "test"], default="all",
                       help="problems to keep (split by problem)")
        p.add_argument("--max-per-problem", type=int, default=4, help="failing mutants (records) per problem")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=2)
        p.add_argument("--limit", type=int, help="only the first N problems")
        p.set_defaults(run=cmd_data)

    p = data.add_parser("humaneval-rl", help="HumanEval prompts with their tests as the label, for RL on the "
                                             "execution reward (OpenRLHF, verl or TRL)")
    p.add_argument("--out", required=True, help="a .jsonl file (openrlhf, trl) or a .parquet file (verl)")
    p.add_argument("--format", required=True, choices=list(RL_FORMATS),
                   help="; ".join(f"{name}: {what}" for name, (what, _) in RL_FORMATS.items()))
    p.add_argument("--split", choices=["all", "train", "test"], default="all", help="problems to keep")
    p.add_argument("--limit", type=int, help="only the first N problems")
    p.set_defaults(run=cmd_humaneval_rl)

    p = data.add_parser("codeprefbench", help="CodePrefBench-style tasks with verified ground truth: correctness "
                                              "(HumanEval mutants), efficiency (timed), security (bandit)")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, help="only the first N HumanEval problems for correctness tasks")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(run=cmd_data_codeprefbench)

    evaluate = sub.add_parser("eval", help="evaluate a model").add_subparsers(dest="what", required=True)
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
    experiment = sub.add_parser("experiment", help="documented experiments").add_subparsers(dest="name", required=True)
    p = experiment.add_parser("cyclic", help="BT vs GPM on a different 3-cycle of responses under every prompt")
    p.add_argument("--out", default="runs/cyclic", help="where the two trained models go")
    p.add_argument("--base", default="default")
    p.add_argument("--prompts", type=int, default=30, help="cycles of three responses (each its own words)")
    p.add_argument("--num-train-epochs", type=int, help="instead of each trainer's default")
    p.add_argument("--learning-rate", type=float, help="instead of each trainer's default")
    p.add_argument("--lora-layers", type=int, help="instead of each trainer's default")
    p.add_argument("--seed", type=int, default=0)
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
    return top


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx2",):  # one line per request would bury the progress bar
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except (InputError, ModelLoadError) as e:
        sys.exit(f"plaudit: error: {e}")
    except ValidationError as e:
        sys.exit(f"plaudit: error: {e}")
