"""`plaudit eval`: a model or judge measured. On labelled data (pairs, steps, CodePrefBench,
RewardBench, JudgeBench), and models against a baseline (arena leaderboards, win rates)
through judgments that any model or judge makes (evaluation/)."""
from __future__ import annotations

import json
import sys
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


def _scorer(args):
    from plaudit.service.api import pool_for

    pool, name = pool_for(args.model, args.config)
    return pool.get(name)


def _judgments(args, command: str) -> tuple[list, str]:
    """The judgments a leaderboard or win rate is computed from, and the baseline: read from
    --judgments files, or made now (answers judged against the baseline's by --model, into
    OUT/judgments.jsonl, resumably). With --judgments, answer files only give the answers' style."""
    from plaudit.evaluation.judgments import make_judgments, read_judgments, read_outputs

    outputs = read_outputs([Path(p) for p in args.outputs]) if args.outputs else {}
    if args.judgments:
        judgments = read_judgments([Path(p) for p in args.judgments], args.baseline)
        return _with_style(judgments, outputs), _one_baseline(judgments, args.baseline)
    if not outputs:
        sys.exit(f"plaudit eval {command}: give answer files to judge, or --judgments to read")
    if not args.baseline:
        sys.exit(f"plaudit eval {command}: --baseline is required to judge answers; models: {', '.join(outputs)}")
    scorer = _scorer(args)
    out = Path(args.out) / "judgments.jsonl"
    made = make_judgments(outputs, args.baseline, lambda pair: scorer.verdicts([pair])[0], out,
                          concurrency=args.concurrency, progress=not args.no_progress)
    print(json.dumps({k: v for k, v in made.items() if k != "errors"} | {"errors": len(made["errors"])}),
          file=sys.stderr)
    for error in made["errors"][:10]:
        print(f"plaudit eval {command}: {error}", file=sys.stderr)
    if made["errors"]:
        sys.exit(f"plaudit eval {command}: {len(made['errors'])} judgments failed; run the same command again to "
                 f"judge them (the {made['judged'] - len(made['errors'])} made are kept in {out})")
    return read_judgments([out]), args.baseline


def _with_style(judgments: list, outputs: dict) -> list:
    """Judgments read without their answers' style (Arena-Hard's) given it from the answer files."""
    from dataclasses import replace

    from plaudit.evaluation.judgments import style

    def styled(j):
        if j.model_style is not None or j.model not in outputs or j.baseline not in outputs:
            return j
        mine, theirs = outputs[j.model].get(j.question), outputs[j.baseline].get(j.question)
        if mine is None or theirs is None:
            return j
        return replace(j, model_style=style(mine.output), baseline_style=style(theirs.output))
    return [styled(j) for j in judgments]


def _one_baseline(judgments: list, given: str | None) -> str:
    baselines = sorted({j.baseline for j in judgments})
    if given:
        if given not in baselines:
            sys.exit(f"plaudit eval: --baseline {given!r} is in no judgment; the judgments' baselines: "
                     f"{', '.join(baselines)}")
        return given
    if len(baselines) != 1:
        sys.exit(f"plaudit eval: the judgments have several baselines ({', '.join(baselines)}): choose one "
                 f"with --baseline")
    return baselines[0]


def cmd_eval_arena(args) -> None:
    from plaudit.evaluation.arena import arena, table, write

    judgments, baseline = _judgments(args, "arena")
    judgments = [j for j in judgments if j.baseline == baseline]
    try:
        rows = arena(judgments, baseline, rounds=args.rounds, seed=args.seed)
    except ValueError as e:
        sys.exit(f"plaudit eval arena: {e}")
    written = write(rows, Path(args.out), png=not args.no_png)
    print(table(rows))
    print("written: " + ", ".join(map(str, written)), file=sys.stderr)


def cmd_eval_winrate(args) -> None:
    from plaudit.evaluation.winrate import win_rates
    from plaudit.files import write_atomically

    judgments, baseline = _judgments(args, "winrate")
    rows = win_rates([j for j in judgments if j.baseline == baseline])
    for row in rows:
        if row["warning"]:
            print(f"plaudit eval winrate: {row['model']}: {row['warning']}", file=sys.stderr)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    write_atomically(Path(args.out) / "winrate.json", json.dumps(rows, indent=2) + "\n")
    print(json.dumps(rows, indent=2))


def cmd_eval_rewardbench(args) -> None:
    from plaudit.evaluation import rewardbench
    from plaudit.files import read_jsonl, write_atomically, write_jsonl

    if args.export:
        if args.tasks:
            tasks = read_jsonl(args.tasks)
        else:
            from plaudit.training.codeprefbench import build_tasks

            tasks, stats = build_tasks(workers=args.workers)
            print(json.dumps(stats), file=sys.stderr)
        rows = rewardbench.export_rows(tasks)
        write_jsonl(rows, args.export)
        print(json.dumps({"written": len(rows), "out": args.export}))
        return
    if not args.file:
        sys.exit("plaudit eval rewardbench: give a RewardBench FILE to evaluate, or --export OUT.jsonl")
    from plaudit.evaluation.judgments import read_rows

    try:
        report = rewardbench.evaluate(_scorer(args), read_rows(Path(args.file)))
    except ValueError as e:
        sys.exit(f"plaudit eval rewardbench: {args.file}: {e}")
    if args.out:
        write_atomically(args.out, json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


def cmd_eval_judge(args) -> None:
    from pydantic import ValidationError

    from plaudit.evaluation.judgebench import JudgePair, evaluate
    from plaudit.evaluation.judgments import read_rows

    pairs = []
    for number, row in enumerate(read_rows(Path(args.file)), 1):
        try:
            pairs.append(JudgePair.model_validate(row))
        except ValidationError as e:
            first = e.errors()[0]
            sys.exit(f"plaudit eval judge: {args.file}: row {number}: {'.'.join(map(str, first['loc']))}: "
                     f"{first['msg']}")
    print(json.dumps(evaluate(_scorer(args), pairs[:args.limit]), indent=2))


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
    p = evaluate.add_parser("arena", help="a leaderboard against a baseline, Arena-Hard's way: Bradley-Terry scores "
                                          "and win rates with bootstrap intervals, with and without style control")
    _against_baseline(p)
    p.add_argument("--rounds", type=int, default=100, help="bootstrap rounds")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's seed")
    p.add_argument("--no-png", action="store_true", help="no leaderboard.png (it needs matplotlib)")
    p.set_defaults(run=cmd_eval_arena)
    p = evaluate.add_parser("winrate", help="win rates against a baseline, AlpacaEval 2's way: raw with its "
                                            "standard error, and length-controlled")
    _against_baseline(p)
    p.set_defaults(run=cmd_eval_winrate)
    p = evaluate.add_parser("rewardbench", help="RewardBench v1 or v2 accuracy per subset and section, by "
                                                "RewardBench's rules")
    p.add_argument("file", nargs="?", help="RewardBench rows (JSONL or JSON): v1 prompt/chosen/rejected/subset, "
                                           "or v2 with chosen and rejected lists")
    p.add_argument("--model", help="a configured model or judge, or a model directory (default: the default model)")
    p.add_argument("--out", help="the report as JSON: each subset's accuracy and each section's score by name")
    p.add_argument("--export", metavar="OUT", help="instead, write plaudit's CodePrefBench tasks (HumanEval "
                                                   "correctness held out, security, efficiency) as v1 rows")
    p.add_argument("--tasks", help="with --export: CodePrefBench tasks from `plaudit data codeprefbench` "
                                   "(default: build them now, a few minutes)")
    p.add_argument("--workers", type=int, default=2, help="with --export: sandboxes building the tasks")
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_rewardbench)
    p = evaluate.add_parser("judge", help="a judge on JudgeBench-format pairs in both orders: JudgeBench's and "
                                          "CodeJudgeBench's accuracy, consistency, unscored, per source")
    p.add_argument("file", help="JSONL or JSON: question, response_A, response_B, label (A>B or B>A), source")
    p.add_argument("--model", help="a configured judge or model (default: the default model)")
    p.add_argument("--limit", type=int, help="only the first N pairs")
    p.add_argument("--config")
    p.set_defaults(run=cmd_eval_judge)


def _against_baseline(p) -> None:
    p.add_argument("outputs", nargs="*", help="answers to judge: one JSONL/JSON file per model (named by its "
                                              "`model`/`generator` field or the file), or one with a model column")
    p.add_argument("--baseline", help="the model every other is judged against (default with --judgments: theirs)")
    p.add_argument("--model", help="the judge: a configured judge or reward model, or a model directory "
                                   "(default: the default model)")
    p.add_argument("--judgments", nargs="+", help="read these judgments instead of judging: Arena-Hard's "
                                                  "judgment JSONL, AlpacaEval's annotations.json, or plaudit's")
    p.add_argument("--out", required=True, help="folder for the results (and judgments.jsonl, when judging; a "
                                                "re-run judges only what is missing)")
    p.add_argument("--concurrency", type=int, default=4, help="judgments in flight")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config")


COMMANDS = {"eval": ("evaluate a model or judge: on labelled data, or models against a baseline", eval_flags)}
