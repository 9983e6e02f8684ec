"""Offline calibration: temperature scaling fitted on held-out pairs, stored, and served."""
from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from plaudit.rewardmodels import Pair, load_scorer
from plaudit.rewardmodels.base import sigmoid
from plaudit.training.calibration import expected_calibration_error, fit_temperature, metrics

REPO = Path(__file__).resolve().parent.parent
PLAUDIT = str(Path(sys.executable).with_name("plaudit"))


def synthetic(true_t: float, n: int = 4000, seed: int = 0) -> tuple[list[float], list[int]]:
    """Margins whose labels follow sigmoid(margin / true_t): an overconfident model when true_t > 1."""
    rng = random.Random(seed)
    margins = [rng.uniform(-6, 6) for _ in range(n)]
    return margins, [int(rng.random() < sigmoid(m / true_t)) for m in margins]


def test_fit_recovers_the_temperature_and_lowers_ece():
    margins, labels = synthetic(true_t=3.0)
    t = fit_temperature(margins, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    raw = metrics([sigmoid(m) for m in margins], labels)
    fitted = metrics([sigmoid(m / t) for m in margins], labels)
    assert fitted["ece"] < raw["ece"] / 3 and fitted["log_loss"] < raw["log_loss"]
    assert fitted["accuracy"] == raw["accuracy"]  # a temperature never reorders


def test_ece_of_perfect_and_of_confidently_wrong_predictions():
    assert expected_calibration_error([0.0, 1.0, 0.0, 1.0], [0, 1, 0, 1]) == 0.0
    assert expected_calibration_error([0.95] * 4, [0] * 4) == pytest.approx(0.95)
    assert math.isclose(metrics([0.5] * 2, [1, 0])["brier"], 0.25)


def test_calibrate_cli_stores_the_temperature_and_the_model_serves_it(tiny_bt, tmp_path):
    model = tmp_path / "model"
    subprocess.run(["cp", "-r", str(tiny_bt), str(model)], check=True)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Say {i}.", "chosen": f"{i}" * (1 + i % 5),
                                         "rejected": "no"}) + "\n" for i in range(40)))
    before = load_scorer(model).compare([Pair(prompt="Say 3.", a="3333", b="no")])
    png = tmp_path / "reliability.png"
    run = subprocess.run([PLAUDIT, "calibrate", "--model", str(model), "--data", str(pairs), "--png", str(png)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["comparisons"] == 80 and report["after"]["log_loss"] <= report["before"]["log_loss"]
    assert report["after"]["accuracy"] == report["before"]["accuracy"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stored = json.loads((model / "plaudit.json").read_text())["calibration"]
    assert stored["temperature"] == report["temperature"] and stored["pairs"] == 40
    after = load_scorer(model).compare([Pair(prompt="Say 3.", a="3333", b="no")])
    assert after.margins == pytest.approx(before.margins, abs=1e-5)  # the model is the same
    assert after.probabilities[0] == pytest.approx(sigmoid(before.margins[0] / report["temperature"]), abs=1e-6)
