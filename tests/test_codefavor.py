"""CodeFavor's chain on a small scale: mine a real git repository made here, synthesise with a
scripted LLM on 127.0.0.1 (and with the real local SmolLM2 in `slow`), resume, export both
forms, train a code preference model on them and evaluate it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from servers import REPO, Fail, FakeLLM
from plaudit.training.codefavor import code_of, mine_commits
from plaudit.training.data import read_codepref

PLAUDIT = str(Path(sys.executable).with_name("plaudit"))
POSITIVE = "def is_positive(x):\n    return x >= 0\n"


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
                   check=True, capture_output=True)


def commit(repo: Path, message: str, files: dict[str, str]) -> None:
    for name, text in files.items():
        (repo / name).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-m", message)


@pytest.fixture
def repo(tmp_path) -> Path:
    """Five commits: the first, a focused fix, a two-file change, a cosmetic edit, a fix that
    the scripted LLM fails on at first."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    filler = "".join(f"\n\ndef helper_{i}(v):\n    return v + {i}\n" for i in range(6))
    commit(repo, "add is_positive", {"checks.py": POSITIVE + filler})
    commit(repo, "fix: zero is not positive", {"checks.py": POSITIVE.replace(">=", ">") + filler})
    commit(repo, "add docs and a helper", {"README.md": "checks\n", "more.py": "X = 1\n"})
    commit(repo, "cosmetic: rename argument", {"checks.py": POSITIVE.replace(">=", ">").replace("x", "value")
                                               + filler})
    commit(repo, "flaky: helper_5 adds 6", {"checks.py": POSITIVE.replace(">=", ">").replace("x", "value")
                                            + filler.replace("v + 5", "v + 6")})
    return repo


def scripted(fail_on: set[str]):
    def respond(messages):
        text = messages[-1]["content"]
        if any(word in text for word in fail_on):
            raise Fail(500)
        if "Explain in two or three sentences" in text:
            return "It changes a comparison." if "cosmetic" not in text else "It renames a variable."
        if "clearly better" in text:
            return ("NO", {"NO": -0.1, "YES": -2.5}) if "renames" in text else ("YES", {"YES": -0.1, "NO": -2.5})
        if "one instruction sentence" in text:
            return "Write a function that tells whether a number is positive."
        if "Write one short question" in text:
            return "Which code handles zero correctly?"
        if "Rewrite this code" in text:
            return f"```python\n{text.split('```python', 1)[1].split('```', 1)[0].strip()}\n# rewritten\n```"
        if "Answer with the Python code only" in text and "reviewer" not in text:
            return f"```python\n{POSITIVE}```"
        if "have a flaw" in text:
            return "YES", {"YES": -0.2, "NO": -1.8}
        return f"```python\n{POSITIVE.replace('>=', '>')}```"
    return respond


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "plaudit.yaml"
    path.write_text(yaml.safe_dump({"models": {"unused": {"path": "unused"}}, "default_model": "unused",
                                    "backends": {"scripted": {"url": url, "max_retries": 0}},
                                    "default_backend": "scripted"}))
    return path


def plaudit(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([PLAUDIT, *args], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert not check or result.returncode == 0, result.stderr[-3000:]
    return result


def test_mining_keeps_small_single_file_changes_and_says_why_others_go(repo):
    mined = {c.message: c for c in mine_commits(repo)}
    fix = mined["fix: zero is not positive"]
    assert fix.dropped is None and fix.path == "checks.py"
    assert "x >= 0" in fix.old_code and "x > 0" in fix.new_code and "x >= 0" not in fix.new_code
    assert mined["add is_positive"].dropped == "the first commit: nothing to compare with"
    assert "2 files" in mined["add docs and a helper"].dropped
    assert len(mine_commits(repo, limit=2)) == 2


def test_commit_instruct_is_resumable_and_exports_both_forms(repo, tmp_path):
    out = tmp_path / "commits.jsonl"
    fail_on = {"flaky"}
    llm = FakeLLM(scripted(fail_on))
    with llm.serving() as url:
        args = ["codefavor", "commits", "--repo", str(repo), "--out", str(out), "--no-progress",
                "--config", str(config(tmp_path, url))]
        first = plaudit(*args, check=False)
        assert first.returncode != 0 and "1 records failed" in first.stderr
        report = json.loads(first.stdout)
        assert (report["processed"], report["errors"], report["kept"]) == (5, 1, 1)
        assert report["dropped"] == {"the first commit: nothing to compare with": 1,
                                     "changes N files (N Python); one Python file wanted": 1,
                                     "not a clear improvement (P(YES) = N)": 1}
        fail_on.clear()
        asked = len(llm.bodies)
        second = json.loads(plaudit(*args).stdout)
    assert (second["skipped"], second["processed"], second["errors"], second["kept"]) == (4, 1, 0, 2)
    assert len(llm.bodies) - asked == 4  # only the failed commit again: explain, decide, instruction, criterion
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted({r["id"] for r in records})  # each commit once
    kept = [r["result"] for r in records if r["result"]["kept"]]
    assert all(r["model"].endswith(url) for r in kept) and all(r["p_improvement"] > 0.5 for r in kept)
    pairwise = read_codepref(out.with_name("commits.pairwise.jsonl"))
    assert len(pairwise) == 4 and {r.answer for r in pairwise} == {"A", "B"}
    trl = [json.loads(line) for line in out.with_name("commits.trl.jsonl").read_text().splitlines()]
    assert {t["criterion"] for t in trl} == {"Which code handles zero correctly?"}
    assert all("x > 0" in t["chosen"] or "value > 0" in t["chosen"] for t in trl[:1])


def test_commit_instruct_can_have_the_llm_rewrite_the_code(repo, tmp_path):
    out = tmp_path / "commits.jsonl"
    with FakeLLM(scripted(set())).serving() as url:
        report = json.loads(plaudit("codefavor", "commits", "--repo", str(repo), "--out", str(out), "--llm-code",
                                    "--no-progress", "--config", str(config(tmp_path, url))).stdout)
    assert report["kept"] == 2
    kept = [r["result"] for r in map(json.loads, out.read_text().splitlines()) if r["result"]["kept"]]
    assert all(r["code_source"] == "llm" and r["naive_code"].endswith("# rewritten") for r in kept)
    assert all(r["old_code"] != r["naive_code"] for r in kept)  # the commit's own code is kept beside


def test_critic_evol_then_train_and_evaluate(tiny_base, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task_id": f"t{i}", "instruction": f"Write is_positive, variant {i}."})
                             + "\n" for i in range(3)))
    out = tmp_path / "critic.jsonl"
    with FakeLLM(scripted(set())).serving() as url:
        report = json.loads(plaudit("codefavor", "critic", "--tasks", str(tasks), "--out", str(out), "--no-progress",
                                    "--config", str(config(tmp_path, url))).stdout)
    assert report["kept"] == 3 and report["pairwise_records"] == 6
    record = json.loads(out.read_text().splitlines()[0])["result"]
    assert record["naive_code"] == POSITIVE.strip() and "x > 0" in record["improved_code"]
    assert set(record["models"]) == {"weak", "critic"}
    model = tmp_path / "codepref"
    plaudit("train", "codepref", "--data", str(out.with_name("critic.pairwise.jsonl")), "--out", str(model),
            "--base", str(tiny_base), "--num-train-epochs", "1", "--lora-layers", "1", "--max-length", "256")
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"task_id": "b1", "instruction": "Write is_positive.", "criteria": "correctness",
                                 "choices": [POSITIVE.replace(">=", ">"), POSITIVE], "gt_choice": 0}) + "\n")
    result = json.loads(plaudit("eval", "codepref", "--tasks", str(bench), "--model", str(model)).stdout)
    assert result["by_criteria"]["correctness"]["comparisons"] == 2


def test_code_of_takes_the_fenced_block():
    assert code_of("Here:\n```python\nx = 1\n```\nDone.") == "x = 1"
    assert code_of("x = 2") == "x = 2"


@pytest.mark.slow
def test_commit_instruct_with_the_real_local_model(repo, tmp_path):
    out = tmp_path / "commits.jsonl"
    report = json.loads(plaudit("codefavor", "commits", "--repo", str(repo), "--out", str(out),
                                "--no-progress").stdout)
    assert report["processed"] == 5 and report["errors"] == 0
    for line in out.read_text().splitlines():
        record = json.loads(line)["result"]
        assert record["model"] == "llama.cpp:SmolLM2-135M-Instruct.Q4_1.gguf"
        if record["kept"]:
            assert record["instruction"] and record["criterion"].endswith("?")
        elif "explanation" in record:  # reached the LLM: its answers are kept, whatever it decided
            assert record["explanation"] and (record["p_improvement"] is None or 0 <= record["p_improvement"] <= 1)


def test_eval_codepref_takes_a_judge_by_method_name(tmp_path):
    """A judge whose answers cannot be read leaves both orders undecided: 0.5 each, counted."""
    bench = tmp_path / "bench.jsonl"
    bench.write_text(json.dumps({"task_id": "b1", "instruction": "Write is_positive.", "criteria": "correctness",
                                 "choices": [POSITIVE.replace(">=", ">"), POSITIVE], "gt_choice": 0}) + "\n")
    with FakeLLM(scripted(set())).serving() as url:
        result = json.loads(plaudit("eval", "codepref", "--tasks", str(bench), "--model", "pairwise",
                                    "--config", str(config(tmp_path, url))).stdout)
    assert result["model"] == "pairwise" and result["by_criteria"]["correctness"] == {
        "accuracy": 0.5, "comparisons": 2, "undecided": 2}
