"""Data commands: `plaudit data BUILDER` and `plaudit codefavor` (synthetic code preference data)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# data builder: (its function in plaudit.training.humaneval, its cap's keyword, help)
BUILDERS = {
    "humaneval-pairs": ("build_pairs", "max_mutants_per_problem",
                        "execution-grounded code pairs: passing solution vs failing mutant (TRL preference format)"),
    "humaneval-steps": ("build_steps", "max_records_per_problem",
                        "execution-grounded step labels, one line a step (TRL PRM format: completions, labels)"),
}


def cmd_data(args) -> None:
    from plaudit.files import write_jsonl
    from plaudit.training import humaneval

    build, cap, _ = BUILDERS[args.builder]
    records, stats = getattr(humaneval, build)(**{cap: args.max_per_problem}, seed=args.seed, workers=args.workers,
                                               limit=args.limit)
    chosen = [r for r in records if args.split == "all" or r["split"] == args.split]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(chosen, args.out)
    print(json.dumps({**stats, "written": len(chosen), "split": args.split, "out": str(args.out)}))


def cmd_humaneval_rl(args) -> None:
    from plaudit.files import write_jsonl
    from plaudit.training.humaneval import RL_FORMATS, rl_prompts, write_parquet

    suffix = RL_FORMATS[args.format][1]
    if not args.out.endswith(f".{suffix}"):
        raise SystemExit(f"--out: the {args.format} format is written as .{suffix}, got {args.out!r}")
    records = rl_prompts(args.format, args.split, args.limit)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    (write_parquet if suffix == "parquet" else write_jsonl)(records, args.out)
    print(json.dumps({"written": len(records), "format": args.format, "split": args.split, "out": args.out}))


def cmd_data_codeprefbench(args) -> None:
    from plaudit.files import write_jsonl
    from plaudit.training.codeprefbench import build_tasks

    tasks, stats = build_tasks(limit=args.limit, workers=args.workers)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(tasks, args.out)
    print(json.dumps({**stats, "out": str(args.out)}, indent=2))


def _synthesise(args, make_work) -> None:
    from plaudit.judges.hub import BackendHub
    from plaudit.service.config import load_config
    from plaudit.training import codefavor

    cfg = load_config(args.config)
    hub = BackendHub(cfg.backends)
    try:
        work = make_work(hub, cfg.default_backend)
        report = codefavor.run_stage(work, Path(args.out), args.concurrency, not args.no_progress)
    except KeyboardInterrupt:
        print(f"\nplaudit codefavor: interrupted; run the same command again to continue {args.out}", file=sys.stderr)
        os._exit(130)
    hub.close()
    print(json.dumps(report, indent=2))
    if report["errors"]:
        sys.exit(f"plaudit codefavor: {report['errors']} records failed (backend errors); a re-run retries them")


def cmd_codefavor_commits(args) -> None:
    from plaudit.training import codefavor

    def work(hub, default: str):
        name = args.backend or default
        backend, model = hub.backend(name), hub.identity(name)
        return [(json.dumps(c.sha), lambda c=c: hub.run(codefavor.commit_instruct(backend, model, c, args.llm_code)))
                for c in codefavor.mine_commits(args.repo, args.limit, args.max_changed_lines)]
    _synthesise(args, work)


def cmd_codefavor_critic(args) -> None:
    from plaudit.files import read_jsonl
    from plaudit.training import codefavor
    from plaudit.training.humaneval import load_problems

    if args.tasks == "humaneval":
        tasks = [{"task_id": p["task_id"], "instruction": f"Complete this Python function:\n{p['prompt']}"}
                 for p in load_problems()]
    else:
        tasks = read_jsonl(args.tasks)
    tasks = tasks[:args.limit]

    def work(hub, default: str):
        weak, critic = args.weak or default, args.critic or default
        models = {"weak": hub.identity(weak), "critic": hub.identity(critic)}
        pair = hub.backend(weak), hub.backend(critic)
        return [(json.dumps(t["task_id"]), lambda t=t: hub.run(codefavor.critic_evol(*pair, models, t))) for t in tasks]
    _synthesise(args, work)


def data_flags(p) -> None:
    from plaudit.training.humaneval import RL_FORMATS

    data = p.add_subparsers(dest="builder", required=True)
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


def codefavor_flags(p) -> None:
    stages = p.add_subparsers(dest="stage", required=True)
    p = stages.add_parser("commits", help="Commit-Instruct: pairs from the commits of a local git repository")
    p.add_argument("--repo", required=True, help="a git repository on disk")
    p.add_argument("--limit", type=int, help="only the newest N commits")
    p.add_argument("--max-changed-lines", type=int, default=30, help="larger diffs are not focused enough")
    p.add_argument("--backend", help="the LLM (a backend of the config; default: the default backend, local)")
    p.add_argument("--llm-code", action="store_true", help="the LLM rewrites the before and after code as "
                                                             "self-contained solutions (default: the commit's own)")
    p.set_defaults(run=cmd_codefavor_commits)
    p = stages.add_parser("critic", help="Critic-Evol: a weak model attempts, a critic improves")
    p.add_argument("--tasks", required=True, help='JSONL of {"task_id", "instruction"}, or "humaneval"')
    p.add_argument("--limit", type=int, help="only the first N tasks")
    p.add_argument("--weak", help="backend of the weak model (default: the default backend)")
    p.add_argument("--critic", help="backend of the critic (default: the default backend)")
    p.set_defaults(run=cmd_codefavor_critic)
    for p in stages.choices.values():
        p.add_argument("--out", required=True, help="JSONL records; OUT.pairwise.jsonl and OUT.trl.jsonl beside it")
        p.add_argument("--concurrency", type=int, default=4, help="records in flight")
        p.add_argument("--no-progress", action="store_true")
        p.add_argument("--config", help="YAML naming the backends (default: the local llama.cpp server)")


COMMANDS = {"data": ("build training data", data_flags),
            "codefavor": ("synthetic code preference data (CodeFavor), resumable", codefavor_flags)}
