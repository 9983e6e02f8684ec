"""Evaluation on top of the models and judges: win rates with length control (AlpacaEval's
GLM), RewardBench's sections and its v2 rules, JudgeBench's and CodeJudgeBench's counts,
the judgment files of other evaluators, and arena runs end to end: judged by the packaged
reward model (killed midway and resumed) and by the local SmolLM2 judge."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plaudit.evaluation import rewardbench
from plaudit.evaluation.judgebench import JudgePair, tally
from plaudit.evaluation.judgments import Judgment, Reading, make_judgments, read_judgments, read_outputs
from plaudit.evaluation.winrate import extreme_change, win_rates
from plaudit.schemas import PairVerdict
from plaudit.training.codeprefbench import LongerWins


def judged(model: str, question: int, p: float, model_words: float, baseline_words: float) -> Judgment:
    return Judgment(model, "base", str(question), (Reading(p, True), Reading(p, False)),
                    (model_words, 0, 0, 0), (baseline_words, 0, 0, 0))


def test_a_model_that_wins_by_length_alone_is_even_after_length_control():
    """`long` and `varied` write as well as the baseline; the judge pays for length only."""
    rng = random.Random(0)
    judgments = []
    for model, extra in (("long", (0, 300)), ("varied", (-300, 300)), ("better", (-5, 5))):
        for q in range(300):
            words = rng.uniform(*extra)
            logit = 3.0 * words / 300 + (1.0 if model == "better" else 0.0)
            won = rng.random() < 1 / (1 + math.exp(-logit))
            judgments.append(judged(model, q, float(won), 400 + words, 400))
    rows = {r["model"]: r for r in win_rates(judgments)}
    assert rows["long"]["win_rate"] > 70
    assert rows["long"]["lc_win_rate"] == pytest.approx(50, abs=8)
    assert rows["long"]["warning"].startswith("Length controlled win rate is very different from the raw one")
    assert rows["better"]["lc_win_rate"] == pytest.approx(rows["better"]["win_rate"], abs=5)
    assert rows["better"]["warning"] is None and rows["better"]["lc_terms"] == "length + difficulty"
    se = rows["long"]["standard_error"]
    p = rows["long"]["win_rate"] / 100
    assert se == pytest.approx(100 * math.sqrt(p * (1 - p) / 299), rel=0.01)  # a 0/1 preference's sample error


def test_alpacaeval_warning_thresholds():
    # below: min(raw - raw/4, raw - 10); above: max(raw + (100 - raw)/4, raw + 10)
    assert extreme_change(75, 56) and not extreme_change(75, 57) and not extreme_change(75, 85)
    assert extreme_change(20, 41) and not extreme_change(20, 39) and extreme_change(20, 9)


def v1_rows() -> list[dict]:
    """LongerWins prefers the longer answer: a row is right when `chosen` is longer."""
    def row(subset: str, right: bool | None) -> dict:
        chosen, rejected = ("long answer", "short") if right else ("short", "long answer")
        if right is None:
            chosen, rejected = "same", "same"
        return {"prompt": "q", "chosen": chosen, "rejected": rejected, "subset": subset}
    return [row("alpacaeval-easy", True), row("alpacaeval-easy", False), row("mt-bench-easy", True),
            row("math-prm", True), row("hep-python", False), row("hep-python", None),
            row("refusals-dangerous", True), row("codeprefbench-security", True)]


def test_rewardbench_v1_sections_are_the_example_count_weighted_means():
    report = rewardbench.evaluate(LongerWins(), v1_rows())
    assert report["alpacaeval-easy"] == 0.5 and report["mt-bench-easy"] == 1.0
    assert report["hep-python"] == 0.0  # a tie is wrong, as RewardBench counts it
    assert report["Chat"] == pytest.approx((0.5 * 100 + 1.0 * 28) / 128)
    assert report["Reasoning"] == pytest.approx(984 / (984 + 164))
    assert report["Safety"] == 1.0 and "Chat Hard" not in report
    assert report["overall"] == pytest.approx((report["Chat"] + report["Reasoning"] + 1.0) / 3)
    assert report["unmapped_subsets"] == ["codeprefbench-security"] and report["codeprefbench-security"] == 1.0


def test_rewardbench_v2_best_of_n_shares_ties_at_the_maximum():
    assert rewardbench.best_of_n([3, 3, 1, 1], 1) == 0.5
    assert rewardbench.best_of_n([3, 3, 3, 1], 1) == pytest.approx(1 / 3)
    assert rewardbench.best_of_n([2, 3, 1, 1], 1) == 0.0 and rewardbench.best_of_n([4, 3, 1, 1], 1) == 1.0
    assert rewardbench.best_of_n([None, None, None, None], 1) == 0.25
    rows = [{"prompt": "q", "chosen": ["aaaa"], "rejected": ["aaaa", "a", "aa"], "subset": "Math"},
            {"prompt": "q", "chosen": ["aaaaa"], "rejected": ["a", "aa", "aaa"], "subset": "Math"},
            {"prompt": "q", "chosen": ["a"], "rejected": ["aa", "aaa", "aaaa"], "subset": "Focus"}]
    report = rewardbench.evaluate(LongerWins(), rows)
    assert report["version"] == 2 and report["Math"] == 0.75 and report["Focus"] == 0.0


def test_rewardbench_v2_ties_subset_by_its_formula():
    """Lengths as scores: correct answers 10 and 8 long, incorrect 3 and 2 (ref: one correct)."""
    rows = [{"prompt": "q", "chosen": ["x" * 10], "rejected": ["x" * 3, "x" * 2], "subset": "Ties", "id": "ref:0"},
            {"prompt": "q", "chosen": ["x" * 10, "x" * 8], "rejected": ["x" * 3, "x" * 2], "subset": "Ties",
             "id": "tied:0"}]
    detail = rewardbench.evaluate(LongerWins(), rows)["ties_detail"]
    # ref margin 10-3 = 7, tied margin 8-3 = 5, spread among correct 10-8 = 2
    assert detail["ref_accuracy"] == 1.0 and detail["tied_accuracy"] == 1.0
    assert detail["correctness_preferred"] == 1.0 and detail["correctness_preferred_hard"] == 1.0
    assert detail["correctness_margin_score"] == pytest.approx(math.tanh(5 / 2 - 1))
    assert detail["score"] == pytest.approx(0.3 + 0.3 + 0.2 + 0.2 + 0.01 * math.tanh(1.5))


def test_rewardbench_names_a_bad_row():
    with pytest.raises(ValueError, match="row 2: rejected"):
        rewardbench.evaluate(LongerWins(), [{"prompt": "q", "chosen": "a", "rejected": "b", "subset": "s"},
                                            {"prompt": "q", "chosen": "a", "subset": "s"}])


def test_judgebench_nets_the_two_orders_and_codejudgebench_counts_each():
    pair = JudgePair(question="q", response_A="a", response_B="b", label="A>B", source="math")
    cases = [(1.0, 1.0), (1.0, 0.0), (1.0, 0.5), (None, None), (0.0, 0.0)]
    verdicts = [PairVerdict(probability=None, orders=list(o), consistent=None if None in o else (o[0] - .5) * (o[1] - .5) > 0)
                for o in cases]
    report = tally([pair] * len(cases), verdicts)["math"]
    assert report["pairs"] == 5
    assert report["judgebench_accuracy"] == 40.0  # right-right and right-tie net positive
    assert report["codejudgebench_accuracy"] == 40.0  # 4 of 10 readings right
    assert report["unscored"] == 2 and report["ties"] == 1
    assert report["position_consistency"] == pytest.approx(100 * 2 / 4)  # right-right and wrong-wrong agree


def test_judgments_from_arena_hard_alpacaeval_and_plaudit_judge(tmp_path):
    arena_hard = tmp_path / "arena.jsonl"
    arena_hard.write_text(json.dumps({"uid": "q1", "model": "m", "baseline": "base", "judge": "j",
                                      "games": [{"score": "B>>A"}, {"score": "A>B"}]}) + "\n"
                          + json.dumps({"uid": "q2", "model": "m", "baseline": "base",
                                        "games": [{"score": None}, {"score": "B>A"}]}) + "\n")
    alpaca = tmp_path / "annotations.json"
    alpaca.write_text(json.dumps([{"instruction": "say hi", "output_1": "hi", "output_2": "hello there",
                                   "generator_1": "base", "generator_2": "m", "preference": 1.75}]))
    plaudit_judge = tmp_path / "judged.jsonl"
    plaudit_judge.write_text(json.dumps({"id": 7, "models": ["m", "base"], "result": {
        "judge": "pairwise", "method": "pairwise", "results": [], "comparison": {
            "probability": 0.8, "orders": [0.9, 0.7], "consistent": True}}}) + "\n")
    q1, q2 = read_judgments([arena_hard])
    # game 1 shows the baseline as A: B>>A is the model's strong win; game 2 the model as A
    assert q1.readings == (Reading(1.0, False, 3), Reading(1.0, True, 1)) and q1.consistent
    assert q2.readings[0].p is None and q2.readings[1].p == 0.0 and q2.consistent is None
    [a] = read_judgments([alpaca])
    assert (a.model, a.baseline, a.preference, a.readings[0].model_first) == ("m", "base", 0.75, None)
    [p] = read_judgments([plaudit_judge])
    assert (p.model, p.baseline, p.question, p.preference) == ("m", "base", "7", pytest.approx(0.8))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"uid": "q"}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl: row 1: not a judgment"):
        read_judgments([bad])


def test_answer_files_name_the_bad_row(tmp_path):
    answers = tmp_path / "m.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "instruction": "q", "output": "a"}) + "\n"
                       + json.dumps({"question_id": 2, "instruction": "q"}) + "\n")
    with pytest.raises(ValueError, match="m.jsonl: row 2: output"):
        read_outputs([answers])


def run_plaudit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "plaudit", *args], capture_output=True, text=True, timeout=300)


def test_the_eval_commands_on_other_evaluators_files(tmp_path, tiny_bt):
    """RewardBench rows, JudgeBench pairs, AlpacaEval annotations and Arena-Hard judgments
    (with the answers for style) through the commands, as a user runs them; bad rows named."""
    rows = tmp_path / "rewardbench.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in v1_rows()))
    report_path = tmp_path / "report.json"
    done = run_plaudit("eval", "rewardbench", str(rows), "--model", str(tiny_bt), "--out", str(report_path))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(report_path.read_text())
    assert report["counts"] == {"alpacaeval-easy": 2, "mt-bench-easy": 1, "math-prm": 1, "hep-python": 2,
                                "refusals-dangerous": 1, "codeprefbench-security": 1}
    assert {"Chat", "Safety", "Reasoning", "overall"} <= set(report) and 0 <= report["Chat"] <= 1

    pairs = tmp_path / "judgebench.jsonl"
    pairs.write_text("".join(json.dumps({"pair_id": i, "source": "mmlu-pro" if i % 2 else "livecodebench",
                                         "question": "Add two numbers.", "response_A": "def add(a, b): return a + b",
                                         "response_B": "def add(a, b): return a - b",
                                         "label": "A>B" if i % 3 else "B>A"}) + "\n" for i in range(6)))
    done = run_plaudit("eval", "judge", str(pairs), "--model", str(tiny_bt))
    assert done.returncode == 0, done.stderr[-2000:]
    by_source = json.loads(done.stdout)["by_source"]
    assert by_source["overall"]["pairs"] == 6 and by_source["mmlu-pro"]["pairs"] == 3
    assert by_source["overall"]["position_consistency"] in (0.0, 100.0)  # a BT model reads each answer alone

    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([{"instruction": f"q{i}", "output_1": "short", "output_2": "a longer answer " * i,
                                        "generator_1": "base", "generator_2": "m", "preference": 1 + (i % 3) / 2}
                                       for i in range(12)]))
    done = run_plaudit("eval", "winrate", "--judgments", str(annotations), "--out", str(tmp_path / "winrate"))
    assert done.returncode == 0, done.stderr[-2000:]
    [row] = json.loads((tmp_path / "winrate" / "winrate.json").read_text())
    assert (row["model"], row["questions"], row["win_rate"]) == ("m", 12, 50.0)
    assert row["lc_win_rate"] is not None and row["lc_terms"] == "length only"

    answers = write_answers(tmp_path / "answers", 4)
    judgments = tmp_path / "arena-hard.jsonl"
    judgments.write_text("".join(json.dumps({"uid": str(q), "model": model, "baseline": "base", "games": [
        {"score": "A>B" if model == "wrong" else "B>A"}, {"score": "B>A" if model == "wrong" else "A>>B"}]}) + "\n"
        for q in range(4) for model in ("renamed", "wrong")))
    done = run_plaudit("eval", "arena", *map(str, answers), "--judgments", str(judgments), "--out",
                       str(tmp_path / "arena"), "--rounds", "10", "--no-png")
    assert done.returncode == 0, done.stderr[-2000:]
    board = {r["model"]: r for r in json.loads((tmp_path / "arena" / "leaderboard.json").read_text())}
    assert board["renamed"]["win_rate"] > 50 > board["wrong"]["win_rate"]
    assert board["renamed"]["style_controlled_win_rate"] is not None  # the answers gave the style
    assert board["renamed"]["position_consistency"] == 100.0 and not (tmp_path / "arena" / "judgments.jsonl").exists()

    rows.write_text(rows.read_text() + json.dumps({"prompt": "q", "chosen": "a", "subset": "s"}) + "\n")
    done = run_plaudit("eval", "rewardbench", str(rows), "--model", str(tiny_bt))
    assert done.returncode != 0 and "row 9: rejected: Field required" in done.stderr


def write_answers(folder: Path, questions: int) -> list[Path]:
    """Three models' answers to coding questions: the baseline's correct, one renamed, one wrong."""
    folder.mkdir(parents=True, exist_ok=True)
    right = "def f(n):\n    return sum(i * i for i in range(n + 1))\n"
    texts = {"base": right, "renamed": right.replace("(n)", "(count)").replace("n + 1", "count + 1"),
             "wrong": "def f(n):\n    return n * n\n"}
    paths = []
    for model, text in texts.items():
        path = folder / f"{model}.jsonl"
        path.write_text("".join(json.dumps({"question_id": q, "model": model, "output": text,
                                            "instruction": f"Return the sum of the squares 0..{q} in Python."})
                                + "\n" for q in range(questions)))
        paths.append(path)
    return paths


@pytest.mark.slow
def test_an_arena_run_with_the_default_reward_model_killed_midway_resumes_judging_each_once(tmp_path):
    paths = write_answers(tmp_path / "answers", 12)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "plaudit", "eval", "arena", *map(str, paths), "--baseline", "base",
               "--out", str(out), "--concurrency", "1", "--rounds", "20", "--no-progress"]
    judgments = out / "judgments.jsonl"
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        if judgments.exists() and judgments.read_text().count("\n") >= 5:
            break
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    made_first = judgments.read_text().count("\n")
    assert 5 <= made_first < 24, made_first
    second = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(next(line for line in second.stderr.splitlines() if line.startswith('{"judgments"')))
    assert summary == {"judgments": 24, "skipped": made_first, "judged": 24 - made_first,
                       "questions_without_baseline": {}, "errors": 0}
    ids = [json.loads(line)["id"] for line in judgments.read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 24
    rows = {r["model"]: r for r in json.loads((out / "leaderboard.json").read_text())}
    assert set(rows) == {"base", "renamed", "wrong"} and rows["base"]["win_rate"] == 50.0
    assert rows["renamed"]["win_rate"] > rows["wrong"]["win_rate"]  # the packaged model tells a wrong answer
    assert all(rows[m]["lower"] <= rows[m]["win_rate"] <= rows[m]["upper"] for m in rows)
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "win rate" in second.stdout and "renamed" in second.stdout
    csv_head = (out / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert csv_head[:4] == ["model", "win_rate", "lower", "upper"]


@pytest.mark.slow
def test_an_arena_run_with_the_local_judge_interrupted_and_resumed(tmp_path):
    """The pairwise judge on llama.cpp's server (SmolLM2): an interruption after three
    judgments, then a re-run that judges only the rest; every judgment made exactly once."""
    from plaudit.evaluation.arena import arena
    from plaudit.service import api
    from plaudit.service.config import load_config

    pool = api.ModelPool(load_config(None))
    judge = pool.get("pairwise")
    outputs = read_outputs(write_answers(tmp_path / "answers", 3))
    made: list[str] = []

    def interrupted_after(n: int):
        def verdicts(pair):
            if len(made) >= n:
                raise KeyboardInterrupt
            made.append(pair.a)
            return judge.verdicts([pair])[0]
        return verdicts

    out = tmp_path / "judgments.jsonl"
    try:
        with pytest.raises(KeyboardInterrupt):
            make_judgments(outputs, "base", interrupted_after(3), out, concurrency=1, progress=False)
        assert out.read_text().count("\n") == 3
        summary = make_judgments(outputs, "base", interrupted_after(10**6), out, concurrency=1, progress=False)
    finally:
        pool.close()
    assert summary["skipped"] == 3 and summary["judged"] == 3 and not summary["errors"]
    assert len(made) == 6  # each of the 2 models x 3 questions judged once
    judgments = read_judgments([out])
    assert {(j.model, j.question) for j in judgments} == {(m, str(q)) for m in ("renamed", "wrong") for q in range(3)}
    rows = arena(judgments, "base", rounds=10)
    assert {r["model"] for r in rows} == {"base", "renamed", "wrong"}
    assert all(r["unscored"] is not None for r in rows if r["model"] != "base")
