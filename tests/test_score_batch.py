"""`plaudit score IN.jsonl -o OUT.jsonl`: a dataset's rewards in process and against a running
service, resumable after kill -9 (the runner `plaudit judge` shares), and best-worst pairs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from helpers import write_lines
from plaudit.rewardmodels import Item, load_scorer
from plaudit.service import api, batch_score
from plaudit.service.config import ModelConfig, ServiceConfig

PLAUDIT = str(Path(sys.executable).with_name("plaudit"))
def expected_rewards(scorer, line: dict) -> list[float]:
    responses = line.get("responses") or [line["response"]]
    return scorer.score([Item(prompt=line["prompt"], response=r) for r in responses]).rewards


def test_a_dataset_scored_in_process_with_best_worst_pairs(tiny_bt, tmp_path):
    lines = write_lines(tmp_path / "in.jsonl", 12)
    with open(tmp_path / "in.jsonl", "a") as f:  # bad lines are reported by number and skipped
        f.write('{"id": "no-response", "prompt": "hi"}\n{not json\n')
    pool = api.ModelPool(ServiceConfig(models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny"))
    out = tmp_path / "out.jsonl"
    summary = batch_score.run(tmp_path / "in.jsonl", out, lambda request, i: api.score(pool, request), model=None,
                              progress=False, pairs="best-worst")
    local = load_scorer(tiny_bt)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(records) == {line["id"] for line in lines}
    for line in lines:
        assert records[line["id"]]["rewards"] == pytest.approx(expected_rewards(local, line), abs=1e-5)
        assert records[line["id"]]["model"] == "tiny"
    assert summary["scored"] == 12 and summary["bad_lines"] == 2 and summary["errors"] == 0
    assert summary["responses"] == sum(len(r["rewards"]) for r in records.values()) == 30
    assert summary["bad_line_examples"][0].startswith("line 13: ")
    pairs = [json.loads(x) for x in batch_score.pairs_path(out).read_text().splitlines()]
    assert summary["pairs"] == {"written": len(pairs), "tied": 0, "too_few_scored": 3} and len(pairs) == 9
    for pair in pairs:
        line = next(x for x in lines if x["id"] == pair["id"])
        rewards = records[pair["id"]]["rewards"]
        chosen = pair["chosen"][0]["content"] if isinstance(line["prompt"], list) else pair["chosen"]
        assert chosen == line["responses"][rewards.index(max(rewards))]
        assert pair["margin"] == pytest.approx(max(rewards) - min(rewards)) and pair["margin"] > 0
        assert pair["prompt"] == line["prompt"]  # conversational pairs keep the messages (TRL's format)


def test_kill_9_then_resume_scores_every_line_once(tiny_bt, tmp_path):
    """The CLI killed mid-run; the same command again finishes the rest, each line exactly once,
    with the rewards of an uninterrupted run."""
    lines = write_lines(tmp_path / "in.jsonl", 1500)
    out = tmp_path / "out.jsonl"
    command = [PLAUDIT, "score", str(tmp_path / "in.jsonl"), "-o", str(out), "--model", str(tiny_bt),
               "--no-progress", "--concurrency", "2"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 20):
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    at_kill = out.read_text().count("\n")
    assert 20 <= at_kill < len(lines), at_kill
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads(again.stdout)
    assert summary["skipped"] >= at_kill - 1 and summary["skipped"] + summary["scored"] == len(lines)
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert Counter(r["id"] for r in records) == Counter(line["id"] for line in lines)
    local = load_scorer(tiny_bt)
    for record in records[:: 97]:
        line = next(x for x in lines if x["id"] == record["id"])
        assert record["rewards"] == pytest.approx(expected_rewards(local, line), abs=1e-5)


def test_scored_against_a_running_service_equals_in_process(tiny_bt, tiny_service, tmp_path):
    lines = write_lines(tmp_path / "in.jsonl", 8)
    served = subprocess.run([PLAUDIT, "score", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
                             "--endpoint", tiny_service, "--no-progress"], capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-2000:]
    local = load_scorer(tiny_bt)
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert len(records) == 8
    for line in lines:
        assert records[line["id"]]["rewards"] == pytest.approx(expected_rewards(local, line), abs=1e-4)


def test_one_item_form_and_wrong_use():
    usage = subprocess.run([PLAUDIT, "score", "in.jsonl"], capture_output=True, text=True, timeout=120)
    assert usage.returncode != 0 and "-o/--out is required" in usage.stderr
    usage = subprocess.run([PLAUDIT, "score", "--prompt", "p"], capture_output=True, text=True, timeout=120)
    assert usage.returncode != 0 and "--prompt and --response" in usage.stderr
