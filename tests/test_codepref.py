"""Code preference: the pairwise model (train, load, both orders, served), the CodePrefBench-style
task set with verified ground truth, and evaluating any scorer on it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest
import yaml

from conftest import tiny_training
from helpers import ADD, BAD, GOOD, records
from plaudit.rewardmodels import InputError, Item, Pair, load_scorer
from servers import running_service
from plaudit.training.codepref import CodePrefConfig, train_codepref
from plaudit.training.codeprefbench import LongerWins, efficiency_tasks, eval_codepref, security_tasks
from plaudit.training.data import read_codepref

REPO = Path(__file__).resolve().parent.parent
PLAUDIT = str(Path(sys.executable).with_name("plaudit"))


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("codepref")
    summary = train_codepref(records(8), out,
                             tiny_training(CodePrefConfig, tiny_base, num_train_epochs=30, learning_rate=1e-2),
                             on_log=lambda row: None)
    return out, summary


def test_trains_to_prefer_the_better_program_in_either_position(trained):
    out, summary = trained
    assert summary["final_epoch"]["accuracy"] == 1.0
    model = load_scorer(out)
    assert model.kind == "codepref" and model.metadata["labels"] == ["A", "B"]
    forward, backward = model.compare([Pair(prompt=ADD, a=GOOD, b=BAD), Pair(prompt=ADD, a=BAD, b=GOOD)]).probabilities
    assert forward > 0.5 and forward + backward == pytest.approx(1.0, abs=1e-6)  # both orders, so exactly symmetric


def test_rank_and_score_come_from_comparisons(trained):
    model = load_scorer(trained[0])
    ranked = model.rank(ADD, [BAD, GOOD, BAD + "# same\n"])
    assert ranked.order[0] == 1
    assert all(ranked.matrix[i][j] + ranked.matrix[j][i] == pytest.approx(1.0) for i in range(3) for j in range(3)
               if i != j)
    scored = model.score([Item(prompt=ADD, response=GOOD), Item(prompt=ADD, response=BAD)])
    assert scored.rewards[0] > 0.5 > scored.rewards[1]
    before = model.stats()["sequences"]
    model.rank(ADD, [GOOD, BAD, BAD, GOOD])
    assert model.stats()["sequences"] - before == 12  # K(K-1) passes: each pair in both orders
    with pytest.raises(InputError, match="two or more"):
        model.score([Item(prompt=ADD, response=GOOD)])


def test_trl_pairs_are_read_in_both_orders(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": ADD, "chosen": GOOD, "rejected": BAD, "criterion": "correct?"}) + "\n")
    first, second = read_codepref(path)
    assert (first.code_a, first.answer, second.code_a, second.answer) == (GOOD, "A", BAD, "B")
    assert first.criterion == "correct?"


def task(task_id, better, worse, gt, criteria="correctness"):
    return {"task_id": task_id, "instruction": ADD, "choices": [better, worse] if gt == 0 else [worse, better],
            "gt_choice": gt, "criteria": criteria}


def test_eval_counts_both_orders_and_undecided_as_half():
    tasks = [task("long-wins", "x" * 10, "x", 0), task("long-wins-2", "x" * 10, "x", 1),
             task("short-wins", "x", "x" * 10, 1, "efficiency"), task("tie", "ab", "cd", 0, "efficiency")]
    report = eval_codepref(LongerWins(), tasks)
    assert report["by_criteria"]["correctness"] == {"accuracy": 1.0, "comparisons": 4, "undecided": 0}
    assert report["by_criteria"]["efficiency"] == {"accuracy": 0.25, "comparisons": 4, "undecided": 2}
    assert report["accuracy"] == pytest.approx(5 / 8) and report["undecided"] == 2


def test_security_tasks_are_confirmed_by_bandit():
    tasks, stats = security_tasks()
    assert stats["security_kept"] == len(tasks) >= 12 and not stats["security_dropped"]
    unsafe = {t["task_id"]: t["choices"][1 - t["gt_choice"]] for t in tasks}
    assert "shell=True" in unsafe["security/list-directory"] and "pickle.load" in unsafe["security/load-cache"]
    assert {t["gt_choice"] for t in tasks} == {0, 1}  # the better code is not always in one position


@pytest.mark.slow
def test_efficiency_tasks_are_timed():
    tasks, stats = efficiency_tasks()
    assert stats["efficiency_kept"] == len(tasks) >= 10
    assert min(stats["efficiency_slowdown"].values()) >= 3.0


def test_cli_builds_tasks_and_evaluates_a_trained_model(trained, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    built = subprocess.run([PLAUDIT, "data", "codeprefbench", "--limit", "12", "--out", str(tasks)], cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    stats = json.loads(built.stdout)
    lines = [json.loads(line) for line in tasks.read_text().splitlines()]
    assert len(lines) == stats["tasks"] and {t["criteria"] for t in lines} == {"correctness", "security", "efficiency"}
    for model in ("longer-wins", str(trained[0])):
        report = subprocess.run([PLAUDIT, "eval", "codepref", "--tasks", str(tasks), "--model", model,
                                 "--criteria", "security"], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert report.returncode == 0, report.stderr[-2000:]
        result = json.loads(report.stdout)
        assert list(result["by_criteria"]) == ["security"] and result["tasks"] == stats["security_kept"]


def test_served_over_http_with_a_criterion(trained, tmp_path):
    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"prefer": {"path": str(trained[0])}}, "default_model": "prefer"}))
    local = load_scorer(trained[0])
    with running_service(config, tmp_path) as (url, _):
        pair = {"prompt": ADD, "a": GOOD, "b": BAD, "criterion": "Which code adds?"}
        compared = httpx2.post(f"{url}/compare", json={"pairs": [pair]}, timeout=60).json()
        assert compared["probabilities"] == pytest.approx(local.compare([Pair(**pair)]).probabilities, abs=1e-5)
        ranked = httpx2.post(f"{url}/rank", json={"prompt": ADD, "responses": [BAD, GOOD], "matrix": True},
                            timeout=60).json()
        assert ranked["order"] == [1, 0] and ranked["matrix"][0][1] == pytest.approx(1 - ranked["matrix"][1][0])
        alone = httpx2.post(f"{url}/score", json={"items": [{"prompt": ADD, "response": GOOD}]}, timeout=60)
        assert alone.status_code == 422 and "two or more" in alone.json()["error"]
