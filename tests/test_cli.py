"""The `plaudit` command, run as a user would, on tiny models and a few real HumanEval problems."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plaudit.rewardmodels import Item, load_scorer
from servers import REPO, free_port

PLAUDIT = str(Path(sys.executable).with_name("plaudit"))


def plaudit(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([PLAUDIT, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"plaudit {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


@pytest.mark.parametrize("command", [[], ["serve"], ["score"], ["train", "bt"], ["train", "gpm"], ["train", "prm"],
                                     ["warm", "train"], ["warm", "merge"],
                                     ["data", "humaneval-pairs"], ["data", "humaneval-steps"], ["eval", "pairs"],
                                     ["eval", "steps"], ["eval", "arena"], ["eval", "winrate"], ["eval", "rewardbench"],
                                     ["eval", "judge"], ["experiment", "cyclic"], ["experiment", "warm-noise"]])
def test_help(command):
    assert "usage: plaudit" in plaudit(*command, "--help").stdout


@pytest.mark.parametrize("family, flag, default", [("bt", "--lora_layers", "16"), ("prm", "--lora_layers", "16"),
                                                   ("gpm", "--lora_layers", "8"),
                                                   ("gpm", "--adapter_learning_rate", "0.0003"),
                                                   ("prm", "--lr_scheduler_type", "cosine")])
def test_train_help_shows_each_familys_own_defaults(family, flag, default, capsys):
    from plaudit.service.cli import main

    with pytest.raises(SystemExit):
        main(["train", family, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    option = re.search(rf"{flag} [A-Z_]+, --[a-z-]+ [A-Z_]+ .*?\(default: (.*?)\)", text)
    assert option and option.group(1) == default, text


def test_score_prints_the_api_response(tiny_bt):
    out = json.loads(plaudit("score", "--model", str(tiny_bt), "--prompt", "hello", "--response", "world").stdout)
    expected = load_scorer(tiny_bt).score([Item(prompt="hello", response="world")]).rewards
    assert out["rewards"] == pytest.approx(expected, abs=1e-5)
    assert set(out) == {"model", "rewards", "truncated", "ids", "uncertainty", "unscored", "errors", "details",
                        "deadline"}
    assert out["uncertainty"] is None and out["unscored"] is None


def test_score_refuses_a_model_without_reward_head(tiny_base):
    result = plaudit("score", "--model", str(tiny_base), "--prompt", "a", "--response", "b", check=False)
    assert result.returncode != 0
    assert "no trained reward head" in result.stderr and "plaudit train bt" in result.stderr


def test_data_train_eval_chain(tiny_base, tmp_path):
    """The documented chain on a small scale: build pairs, train on them, evaluate."""
    pairs = tmp_path / "pairs.jsonl"
    stats = json.loads(plaudit("data", "humaneval-pairs", "--limit", "4", "--max-per-problem", "2",
                               "--out", str(pairs)).stdout)
    lines = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert stats["written"] == len(lines) > 0
    assert all(r["chosen"] != r["rejected"] and r["prompt"] for r in lines)
    model = tmp_path / "model"
    log = plaudit("train", "bt", "--data", str(pairs), "--out", str(model), "--base", str(tiny_base),
                  "--num-train-epochs", "1", "--lora-layers", "1").stdout.splitlines()
    assert "loss" in json.loads(log[0]) and json.loads(log[-1])["examples"] == len(lines)
    report = json.loads(plaudit("eval", "pairs", "--model", str(model), "--data", str(pairs)).stdout)
    assert report["pairs"] == len(lines) and 0.0 <= report["accuracy"] <= 1.0


def test_steps_data_train_eval_chain(tiny_base, tmp_path):
    """The PRM chain: execution-grounded step labels, `train prm`, `eval steps`."""
    steps = tmp_path / "steps.jsonl"
    stats = json.loads(plaudit("data", "humaneval-steps", "--limit", "3", "--out", str(steps)).stdout)
    records = [json.loads(line) for line in steps.read_text().splitlines()]
    assert stats["written"] == len(records) > 0 and stats["bad_labels"] > 0
    model = tmp_path / "prm"
    log = plaudit("train", "prm", "--data", str(steps), "--out", str(model), "--base", str(tiny_base),
                  "--num-train-epochs", "1", "--lora-layers", "1", "--aggregate", "mean").stdout.splitlines()
    assert json.loads(log[-1])["examples"] == len(records)
    assert load_scorer(model).metadata["aggregate"] == "mean"
    report = json.loads(plaudit("eval", "steps", "--model", str(model), "--data", str(steps)).stdout)
    assert report["steps"] == sum(len(r["labels"]) for r in records)
    assert report["bad_steps"] == stats["bad_labels"] and 0.0 <= report["step_auroc"] <= 1.0


def test_warm_train_then_merge_with_soup(tiny_base, tmp_path):
    """`warm train` leaves a merged BT model and an ensemble of members; `warm merge` re-merges
    them with a greedy soup; the ensemble serves mean and spread through `plaudit score`."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"task {i}", "chosen": "a + b", "rejected": "a - b"}) + "\n"
                             for i in range(6)))
    out = tmp_path / "warm"
    log = plaudit("warm", "train", "--data", str(pairs), "--members", "2", "--out", str(out), "--base", str(tiny_base),
                  "--num-train-epochs", "1", "--lora-layers", "1").stdout.splitlines()
    assert {json.loads(line).get("member") for line in log[:-1]} == {0, 1}
    assert json.loads(log[-1])["members"] == [str(out / "members" / f"member-{i}") for i in range(2)]
    report = json.loads(plaudit("warm", "merge", str(out / "members" / "member-0"), str(out / "members" / "member-1"),
                                "--out", str(tmp_path / "soup"), "--soup", str(pairs)).stdout)
    assert len(report["soup"]["member_accuracy"]) == 2
    scored = json.loads(plaudit("score", "--model", str(out / "members"), "--prompt", "p", "--response", "r").stdout)
    assert len(scored["uncertainty"]) == 1
    lonely = plaudit("warm", "merge", str(out), "--out", str(tmp_path / "x"), check=False)
    assert lonely.returncode != 0 and "at least 2" in lonely.stderr


def test_bad_data_line_is_named(tiny_base, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n{"prompt": "p", "chosen": "a"}\n')
    result = plaudit("train", "bt", "--data", str(data), "--out", str(tmp_path / "m"), "--base", str(tiny_base),
                     check=False)
    assert result.returncode != 0 and f"{data}:2" in result.stderr and "rejected" in result.stderr


def test_serve_stops_with_a_clear_error_on_an_unservable_model(tiny_base, tmp_path):
    """BentoML would respawn a failing worker forever; plaudit stops and says why."""
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"models": {"default": {"path": str(tiny_base)}}}))
    result = plaudit("serve", "--config", str(config), "--port", str(free_port()), check=False, timeout=120)
    assert result.returncode != 0
    assert "no trained reward head" in result.stderr


def test_serve_rejects_a_bad_config(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"models": {"a": {"path": "x"}}, "default_model": "b"}))
    result = plaudit("serve", "--config", str(config), check=False, timeout=60)
    assert result.returncode != 0 and "default_model" in result.stderr


def test_data_humaneval_steps_writes_trl_prm_records(tmp_path):
    out = tmp_path / "steps.jsonl"
    stats = json.loads(plaudit("data", "humaneval-steps", "--limit", "3", "--split", "train", "--out", str(out)).stdout)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats["written"] == len(records) > 0 and all(r["split"] == "train" for r in records)
    assert all(len(r["completions"]) == len(r["labels"]) and r["prompt"] for r in records)
    assert any(r["labels"][-1] is False for r in records) and any(all(r["labels"]) for r in records)


def test_experiment_cyclic_reports_each_set_as_it_ends(tiny_base, tmp_path, capsys):
    """Two sets of the family on the tiny model: a line per set on stderr, the report on stdout."""
    from plaudit.service.cli import main

    main(["experiment", "cyclic", "--base", str(tiny_base), "--out", str(tmp_path), "--set", "words",
          "--set", "four-cycles", "--prompts", "2", "--families", "bt", "gpm", "--num-train-epochs", "1",
          "--lora-layers", "1", "--centring", "shift", "--orthogonality", "0.5"])
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    trained = json.loads((tmp_path / "words" / "gpm" / "plaudit.json").read_text())["training"]["config"]
    assert (trained["centring"], trained["orthogonality"]) == ("shift", 0.5)
    assert list(report["sets"]) == ["words", "four-cycles"]
    assert report["sets"]["four-cycles"]["pairs"] == 8 and report["sets"]["words"]["pairs"] == 6  # L pairs a cycle
    lines = [line.split() for line in captured.err.splitlines() if line.split()[:1] in (["words"], ["four-cycles"])]
    assert [(line[0], float(line[3]), float(line[4])) for line in lines] == [
        (name, round(report["sets"][name]["bt"]["accuracy"], 3), round(report["sets"][name]["gpm"]["accuracy"], 3))
        for name in ("words", "four-cycles")]
    assert report["gpm_lowest"] == min(row["gpm"]["accuracy"] for row in report["sets"].values())
