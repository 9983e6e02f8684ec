"""`plaudit score` and `plaudit judge`: a JSONL file through the resumable runner, in this
process, on running services (`--endpoint`) or on Ray (`--ray`)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from plaudit.client import API_KEY_ENV  # the key --endpoint services get, as every plaudit client sends it



def _prompt(text: str):
    """Chat messages when the text is a JSON list, else the text itself."""
    from pydantic import TypeAdapter

    from plaudit.schemas import Prompt

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return TypeAdapter(Prompt).validate_python(value) if isinstance(value, list) else text


def cmd_score(args) -> None:
    from plaudit.jobs import Endpoints
    from plaudit.service import api, batch_score

    if args.input is None:
        if args.prompt is None or args.response is None or args.out:
            sys.exit("plaudit score: give IN.jsonl -o OUT.jsonl, or --prompt and --response for one item")
        pool, model = api.pool_for(args.model, args.config)
        print(api.score_one(pool, model, _prompt(args.prompt), args.response).model_dump_json(indent=2))
        return
    if not args.out:
        sys.exit("plaudit score: -o/--out is required with an input file")
    if args.ray:
        return _run_batch("score", lambda: _on_ray("score", args, args.model), args.out, lambda: None)
    if args.endpoint:
        endpoints = Endpoints(batch_score.SCORE, args.endpoint, api_key=os.environ.get(API_KEY_ENV))
        score, model, close = endpoints, args.model, endpoints.close
    else:
        pool, model = api.pool_for(args.model, args.config)
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
    from plaudit.jobs import Endpoints
    from plaudit.judges import batch
    from plaudit.service import api
    from plaudit.service.config import load_config

    if args.ray:
        return _run_batch("judge", lambda: _on_ray("judge", args, args.judge), args.out, lambda: None)
    if args.endpoint:
        judge = Endpoints(batch.JUDGE, args.endpoint, api_key=os.environ.get(API_KEY_ENV))
        close = judge.close
    else:
        pool = api.ModelPool(load_config(args.config))
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


def _ray_flags(p: argparse.ArgumentParser) -> None:
    ray = p.add_argument_group("Ray (the [ray] extra): a dataset larger than one machine")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="run on a Ray cluster (ADDRESS, e.g. ray://head:10001 or auto), or a local Ray without one")
    ray.add_argument("--num-workers", type=int, default=2, help="actors, each holding the models (or a client)")
    ray.add_argument("--cpus-per-worker", type=float, default=1)
    ray.add_argument("--gpus-per-worker", type=float, default=0)
    ray.add_argument("--shard-lines", type=int, default=256, help="lines per shard: the unit a re-run skips")


def score_flags(p: argparse.ArgumentParser) -> None:
    from plaudit.service.batch_score import PAIRS

    p.add_argument("input", nargs="?", help='JSONL, one prompt a line: {"id", "prompt", "response"} or '
                                            '"responses": [...]')
    p.add_argument("-o", "--out", help="JSONL rewards, one line per input line; re-running continues where it "
                                       "stopped")
    p.add_argument("--prompt", help="one item: a string, or chat messages as a JSON list")
    p.add_argument("--response", help="one item: the response")
    p.add_argument("--model", help="a configured model name or a model directory (default: the default model)")
    p.add_argument("--endpoint", action="append", help="a running plaudit service's URL, instead of scoring in "
                                                       "this process; repeat to shard lines across several "
                                                       f"(an API key, if they need one, from ${API_KEY_ENV})")
    p.add_argument("--pairs", choices=PAIRS, help="also write TRL preference pairs to OUT.pairs.jsonl: "
                                                  "best-worst = each prompt's best and worst response")
    p.add_argument("--concurrency", type=int, default=4, help="lines in flight")
    p.set_defaults(run=cmd_score)
    _common_flags(p)


def judge_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help='JSONL, one item a line: {"id", "instruction", "response"} or "responses": '
                                 '[a, b]')
    p.add_argument("-o", "--out", required=True, help="JSONL results; re-running continues where it stopped")
    p.add_argument("--judge", help="a configured judge or a method: tick, pairwise, direct (default: the default "
                                   "judge)")
    p.add_argument("--endpoint", action="append", help="a running plaudit service's URL, instead of judging in "
                                                       "this process; repeat to shard items across several "
                                                       f"(an API key, if they need one, from ${API_KEY_ENV})")
    p.add_argument("--concurrency", type=int, default=8, help="items in flight")
    p.set_defaults(run=cmd_judge)
    _common_flags(p)


def _common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--config")
    _ray_flags(p)


COMMANDS = {"score": ("score a JSONL file of prompts and responses (resumable), or one response with --prompt and "
                      "--response, as POST /score would", score_flags),
            "judge": ("judge a JSONL file of items (resumable): one result line per item", judge_flags)}
