"""Calibration of a preference model's probabilities: temperature scaling on held-out pairs.

P(a beats b) = sigmoid(margin / T). One scalar T is fitted by minimising the negative
log-likelihood of held-out labelled pairs, each read in both orders (chosen first: label
1; rejected first: label 0), and stored in the model's metadata; the service then serves
calibrated probabilities. Reported before and after: expected calibration error (10
equal-width bins), Brier score, log loss and accuracy (T never changes the accuracy).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from plaudit.rewardmodels.base import InputError, Pair, Scorer, sigmoid
from plaudit.rewardmodels.loading import read_metadata, write_metadata

from .data import PreferencePair

BINS = 10


def labelled_margins(scorer: Scorer, pairs: Sequence[PreferencePair]) -> tuple[list[float], list[int]]:
    """The model's margin for every pair in both orders, and whether `a` was the chosen one."""
    asked = [Pair(prompt=p.prompt, a=a, b=b) for p in pairs for a, b in ((p.chosen, p.rejected), (p.rejected, p.chosen))]
    margins = scorer.compare(asked).margins
    if any(m is None for m in margins):
        raise InputError("model", f"{scorer.name!r} returned unscored comparisons: calibrate a model, not a judge")
    return [float(m) for m in margins], [1, 0] * len(pairs)


def metrics(probabilities: Sequence[float], labels: Sequence[int]) -> dict[str, float]:
    n = len(labels)
    eps = 1e-12
    return {"ece": round(expected_calibration_error(probabilities, labels), 4),
            "brier": round(sum((p - y) ** 2 for p, y in zip(probabilities, labels)) / n, 4),
            "log_loss": round(-sum(math.log(max(p if y else 1 - p, eps)) for p, y in zip(probabilities, labels)) / n, 4),
            "accuracy": round(sum((p > 0.5) == bool(y) for p, y in zip(probabilities, labels)) / n, 4)}


def bin_of(probability: float) -> int:
    """The equal-width bin (of BINS) a predicted probability falls in; 1.0 in the last."""
    return min(int(probability * BINS), BINS - 1)


def reliability(probabilities: Sequence[float], labels: Sequence[int]) -> list[dict[str, float]]:
    """Per equal-width bin of predicted probability: count, mean prediction, observed frequency."""
    bins: list[list[tuple[float, int]]] = [[] for _ in range(BINS)]
    for p, y in zip(probabilities, labels):
        bins[bin_of(p)].append((p, y))
    return [{"low": i / BINS, "count": len(b), "predicted": sum(p for p, _ in b) / len(b) if b else None,
             "observed": sum(y for _, y in b) / len(b) if b else None} for i, b in enumerate(bins)]


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int]) -> float:
    """Sum over bins of |sum of predictions - sum of labels| / n: the one ECE of plaudit (offline
    calibration, the online window, and Prometheus's recording rule over per-bin counters)."""
    n = len(labels)
    return sum(b["count"] / n * abs(b["predicted"] - b["observed"]) for b in reliability(probabilities, labels)
               if b["count"])


def fit_temperature(margins: Sequence[float], labels: Sequence[int]) -> float:
    """The T minimising the log loss of sigmoid(margin / T): golden-section search on log T."""
    def loss(log_t: float) -> float:
        t = math.exp(log_t)
        return -sum(math.log(max(sigmoid(m / t) if y else 1 - sigmoid(m / t), 1e-12)) for m, y in zip(margins, labels))

    low, high = math.log(1e-2), math.log(1e2)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(80):
        a, b = high - ratio * (high - low), low + ratio * (high - low)
        if loss(a) < loss(b):
            high = b
        else:
            low = a
    return math.exp((low + high) / 2)


def calibrate(scorer: Scorer, directory: Path, pairs: Sequence[PreferencePair], data: str = "",
              png: Path | None = None, write: bool = True) -> dict[str, Any]:
    """Fit T on `pairs`, report before and after, store T in the model folder's metadata."""
    margins, labels = labelled_margins(scorer, pairs)
    before_t = scorer.temperature
    before = [sigmoid(m / before_t) for m in margins]
    temperature = fit_temperature(margins, labels)
    after = [sigmoid(m / temperature) for m in margins]
    report = {"model": scorer.name, "data": data, "pairs": len(pairs), "comparisons": len(labels),
              "temperature": round(temperature, 4), "previous_temperature": before_t,
              "before": metrics(before, labels), "after": metrics(after, labels),
              "reliability_after": reliability(after, labels)}
    if png:
        draw_reliability(png, reliability(before, labels), reliability(after, labels), scorer.name, temperature)
        report["png"] = str(png)
    if write:
        metadata = read_metadata(directory)
        metadata["calibration"] = {k: report[k] for k in ("temperature", "data", "pairs", "before", "after")}
        write_metadata(directory, metadata)
        report["written_to"] = str(directory)
    return report


def draw_reliability(path: Path, before: list[dict], after: list[dict], name: str, temperature: float) -> None:
    """A reliability diagram: observed frequency against predicted probability per bin, before
    (grey) and after (blue) temperature scaling, and the diagonal of perfect calibration."""
    from PIL import Image, ImageDraw

    size, margin = 480, 50
    image = Image.new("RGB", (size + 2 * margin, size + 2 * margin), "white")
    draw = ImageDraw.Draw(image)

    def at(x: float, y: float) -> tuple[float, float]:
        return margin + x * size, margin + (1 - y) * size

    draw.rectangle([at(0, 1), at(1, 0)], outline="black")
    draw.line([at(0, 0), at(1, 1)], fill="black", width=1)
    for i in range(1, BINS):
        draw.line([at(i / BINS, 0), at(i / BINS, -0.015)], fill="black")
    for curve, colour, offset in ((before, (150, 150, 150), 0.2), (after, (40, 90, 200), 0.55)):
        for b in curve:
            if b["count"]:
                x0 = b["low"] + offset / BINS
                draw.rectangle([at(x0, b["observed"]), at(x0 + 0.25 / BINS, 0)], fill=colour)
        points = [at(b["predicted"], b["observed"]) for b in curve if b["count"]]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
    draw.text((margin, 12), f"{name}: reliability, before (grey) and after (blue) T = {temperature:.2f}", fill="black")
    draw.text((margin, size + margin + 12), "predicted P(a beats b), 10 bins; bar height: observed frequency",
              fill="black")
    image.save(path)
