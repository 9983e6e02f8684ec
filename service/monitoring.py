"""Online monitoring, exported as Prometheus metrics on BentoML's `/metrics`.

Per model, over fixed-size windows (memory does not grow with traffic): the reward
distribution, its correlation with response length (length bias) and its drift from a
reference window (the first rewards served); calibration against feedback (ECE, Brier,
accuracy); for judges, unscored answers, pairwise order inconsistency and where
checklists came from. Plus the serving figures: requests, items, latency, errors by
kind, forward batch sizes and queue wait.

Every scoring answer carries ids that hold the probability served, signed
(feedback_ids.py), so that `POST /feedback` to any worker or replica with the same key can
label it later, within a time limit; refused labels are counted by reason. Label values are model names from the config and fixed endpoint names: never user
text. Metric objects are made in the worker, after BentoML has set up Prometheus's
multiprocess mode, which is why `prometheus_client` is imported late.
"""
from __future__ import annotations

import bisect
import math
import statistics
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Callable

from plaudit.judges.base import Judge
from plaudit.rewardmodels import Scorer
from plaudit.schemas import FeedbackRequest, FeedbackResponse
from plaudit.training.calibration import bin_of, expected_calibration_error

from .api import Served
from .config import MonitoringConfig
from .feedback_ids import ALREADY_LABELLED, EXPIRED, REASONS, FeedbackIds

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
REWARD_BUCKETS = (-4, -3, -2, -1, -0.5, 0, 0.25, 0.5, 0.75, 1, 2, 3, 4, 6, 8, 10)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The Prometheus metrics. Gauges report the most recent value of live workers."""

    def __init__(self, registry: Any = None) -> None:
        """`registry` for tests; the service registers in the default one, which BentoML exports."""
        import prometheus_client as pc  # late: BentoML sets PROMETHEUS_MULTIPROC_DIR in the worker first

        where = {"registry": registry} if registry is not None else {}

        def counter(name: str, doc: str, labels=("model",)):
            return pc.Counter(name, doc, labels, **where)

        def histogram(name: str, doc: str, labels, buckets):
            return pc.Histogram(name, doc, labels, buckets=buckets, **where)

        def gauge(name: str, doc: str):
            return pc.Gauge(name, doc, ["model"], multiprocess_mode="livemostrecent", **where)

        # What Prometheus adds up across workers and replicas (deploy/prometheus/rules.yml turns
        # them into ECE, Brier, accuracy, drift and length bias); the gauges below are one
        # process's window, exact only where one process serves.
        by_bin = ["model", "bin"]
        self.calibration_predictions = counter("plaudit_calibration_predictions",
                                               "labelled predictions, by bin of predicted probability", by_bin)
        self.calibration_probability = counter("plaudit_calibration_probability",
                                               "sum of the labelled predictions' probabilities, by bin", by_bin)
        self.calibration_positives = counter("plaudit_calibration_positives",
                                             "labelled predictions whose label was 1, by bin", by_bin)
        self.calibration_squared_error = counter("plaudit_calibration_squared_error",
                                                 "sum of (probability - label)^2 over labelled predictions")
        self.calibration_correct = counter("plaudit_calibration_correct",
                                           "labelled predictions on the right side of 0.5")
        # Signed sums, so gauges summed over processes (a counter cannot go down): n, sum of
        # rewards r, r^2, response lengths l (characters), l^2 and r * l.
        self.reward_moments = pc.Gauge("plaudit_reward_moments", "running sums over rewards served, by moment: "
                                       "n, r, rr, l, ll, rl (r reward, l response length in characters)",
                                       ["model", "moment"], multiprocess_mode="sum", **where)

        self.requests = counter("plaudit_requests", "requests answered", ["endpoint", "model", "outcome"])
        self.latency = histogram("plaudit_request_duration_seconds", "time to answer a request",
                                 ["endpoint", "model"], LATENCY_BUCKETS)
        self.in_progress = pc.Gauge("plaudit_requests_in_progress", "scoring requests being answered or waiting, "
                                    "summed over a pod's workers (what the HorizontalPodAutoscaler scales on)",
                                    multiprocess_mode="livesum", **where)
        self.items = counter("plaudit_items", "items, pairs, responses or traces scored", ["endpoint", "model"])
        self.errors = counter("plaudit_errors", "requests that failed, by kind", ["endpoint", "kind"])
        self.batch_size = histogram("plaudit_forward_batch_size", "sequences per merged forward call", ["model"],
                                    BATCH_BUCKETS)
        self.queue_wait = histogram("plaudit_queue_wait_seconds", "time a request's sequences waited for the model",
                                    ["model"], LATENCY_BUCKETS)
        self.prefix_cache = {what: counter(f"plaudit_prefix_cache_{what}", doc) for what, doc in (
            ("hits", "prompts whose keys and values were found in the prefix cache"),
            ("misses", "prompts computed because the prefix cache did not hold them"),
            ("evictions", "prompts dropped from the prefix cache to make room"))}
        self.prefix_cache_bytes = gauge("plaudit_prefix_cache_bytes", "bytes of prompts' keys and values held")
        self.reward = histogram("plaudit_reward", "rewards served", ["model"], REWARD_BUCKETS)
        self.reward_mean = gauge("plaudit_reward_mean",
                                 "mean reward over this process's window (fleet-wide: plaudit:reward_mean:1h)")
        self.reward_std = gauge("plaudit_reward_std", "standard deviation of the reward over this process's window")
        self.length_corr = gauge("plaudit_reward_length_correlation",
                                 "Pearson correlation of reward with response length (characters) over the window")
        self.drift = gauge("plaudit_reward_drift", "Kolmogorov-Smirnov distance between the window's rewards and "
                                                   "the reference window (the first rewards served)")
        self.feedback = counter("plaudit_feedback", "labels received for served predictions", ["model", "kind"])
        self.feedback_unmatched = counter("plaudit_feedback_unmatched", "labels refused, by reason: " + ", ".join(
            REASONS) + " (feedback_ids.py)", ["reason"])
        for reason in REASONS:  # each series from the start, at 0: a loss shows as a rise, not as a new series
            self.feedback_unmatched.labels(reason)
        self.ece = gauge("plaudit_calibration_ece", "expected calibration error (10 bins) over this process's "
                                                    "feedback window (fleet-wide: plaudit:calibration_ece:1h)")
        self.brier = gauge("plaudit_calibration_brier", "Brier score over this process's feedback window")
        self.accuracy = gauge("plaudit_calibration_accuracy", "share of labelled predictions on the right side of 0.5")
        self.labelled = gauge("plaudit_calibration_window_size",
                              "labelled predictions in this process's feedback window")
        self.judge_answers = counter("plaudit_judge_answers", "questions, pair orders or ratings a judge asked")
        self.judge_unscored = counter("plaudit_judge_unscored", "judge answers that could not be read")
        self.judge_pairs = counter("plaudit_judge_pairs", "pairs a pairwise judge read in both orders")
        self.judge_inconsistent = counter("plaudit_judge_inconsistent", "pairs whose two orders disagreed")
        self.judge_backend_errors = counter("plaudit_judge_backend_errors", "responses, pairs or checklists a "
                                                                            "judge's backend failed after retries")
        self.judge_checklists = counter("plaudit_judge_checklists", "checklists by source", ["model", "source"])


@dataclass
class Window:
    """One model's recent rewards and labelled predictions."""

    size: int
    feedback_size: int
    rewards: deque = field(init=False)
    reference: list[float] = field(default_factory=list)  # sorted, the first `size` rewards
    labelled: deque = field(init=False)
    updated: float = 0.0

    def __post_init__(self):
        self.rewards = deque(maxlen=self.size)  # (reward, response length)
        self.labelled = deque(maxlen=self.feedback_size)  # (probability, label)

    def add(self, reward: float, length: int) -> None:
        self.rewards.append((reward, length))
        if len(self.reference) < self.size:
            bisect.insort(self.reference, reward)


def ks_distance(a: list[float], b: list[float]) -> float:
    """The largest gap between the empirical distribution functions of two sorted samples."""
    i = j = 0
    gap = 0.0
    while i < len(a) and j < len(b):
        x = min(a[i], b[j])
        while i < len(a) and a[i] <= x:
            i += 1
        while j < len(b) and b[j] <= x:
            j += 1
        gap = max(gap, abs(i / len(a) - j / len(b)))
    return gap


def pearson(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3 or statistics.pstdev(xs) == 0 or statistics.pstdev(ys) == 0:
        return 0.0
    return statistics.correlation(xs, ys)


def calibration(labelled: list[tuple[float, int]]) -> dict[str, float]:
    n = len(labelled)
    return {"ece": expected_calibration_error([p for p, _ in labelled], [y for _, y in labelled]),
            "brier": sum((p - y) ** 2 for p, y in labelled) / n,
            "accuracy": sum((p > 0.5) == bool(y) for p, y in labelled) / n}


class Monitor:
    """What the service tells about each answer, turned into windows and metrics."""

    def __init__(self, config: MonitoringConfig, metrics: Metrics | None = None):
        self.config = config
        self.metrics = metrics or Metrics()
        self._windows: dict[str, Window] = {}
        self.ids = FeedbackIds(config.feedback_key)
        self._labelled: OrderedDict[str, None] = OrderedDict()  # ids accepted, so a second label is refused
        self._judge_seen: dict[str, dict[str, int]] = {}
        self._lock = threading.Lock()

    def window(self, model: str) -> Window:
        if model not in self._windows:
            self._windows[model] = Window(self.config.reward_window, self.config.feedback_window)
        return self._windows[model]

    # ---- serving ----

    def request(self, endpoint: str, model: str, outcome: str, seconds: float) -> None:
        self.metrics.requests.labels(endpoint, model, outcome).inc()
        self.metrics.latency.labels(endpoint, model).observe(seconds)

    def error(self, endpoint: str, kind: str) -> None:
        self.metrics.errors.labels(endpoint, kind).inc()

    def watch(self, scorer: Scorer) -> None:
        """Observe every forward call of the scorer's batchers (its ensemble members' too)."""
        for batcher in scorer.batchers():
            batcher.observers.append(self.batch_observer(batcher.name, batcher.prefix_stats))

    def batch_observer(self, model: str, prefix_stats: Callable[[], dict[str, int]] | None = None
                       ) -> Callable[[int, list[float]], None]:
        """Told of each forward call (on the model's worker thread); `prefix_stats` reads the
        model's prefix cache counters, exported as they grow."""
        seen = {what: 0 for what in self.metrics.prefix_cache}

        def observe(sequences: int, waits: list[float]) -> None:
            self.metrics.batch_size.labels(model).observe(sequences)
            for wait in waits:
                self.metrics.queue_wait.labels(model).observe(wait)
            if prefix_stats is not None:
                stats = prefix_stats()
                for what, counter in self.metrics.prefix_cache.items():
                    counter.labels(model).inc(stats[what] - seen[what])
                    seen[what] = stats[what]
                self.metrics.prefix_cache_bytes.labels(model).set(stats["bytes"])
        return observe

    # ---- what was served ----

    def served(self, served: Served) -> list[str]:
        """Record what an answer served (its rewards, its items, a judge's counters) and give
        the signed ids it carries."""
        model = served.scorer.name
        if served.rewards is not None:
            self._rewards(model, served.rewards, served.lengths)
        if served.predictions:
            self.metrics.items.labels(served.endpoint, model).inc(len(served.predictions))
        if isinstance(served.scorer, Judge):
            self._judge(model, served.scorer.stats())
        return self._mint(model, served.kind, served.predictions)

    def _rewards(self, model: str, rewards: list[float | None], lengths: list[int]) -> None:
        with self._lock:
            window = self.window(model)
            for reward, length in zip(rewards, lengths):
                if reward is not None and math.isfinite(reward):
                    self.metrics.reward.labels(model).observe(reward)
                    window.add(reward, length)
                    for moment, value in (("n", 1.0), ("r", reward), ("rr", reward * reward), ("l", length),
                                          ("ll", length * length), ("rl", reward * length)):
                        self.metrics.reward_moments.labels(model, moment).inc(value)
            # A window of unscored answers only (a judge that read nothing yet) has no statistics.
            if window.rewards and time.monotonic() - window.updated >= self.config.update_interval_s:
                window.updated = time.monotonic()
                self._reward_gauges(model, window)

    def _reward_gauges(self, model: str, window: Window) -> None:
        rewards = [r for r, _ in window.rewards]
        m = self.metrics
        m.reward_mean.labels(model).set(statistics.fmean(rewards))
        m.reward_std.labels(model).set(statistics.pstdev(rewards))
        m.length_corr.labels(model).set(pearson(rewards, [float(n) for _, n in window.rewards]))
        m.drift.labels(model).set(ks_distance(sorted(rewards), window.reference))

    def _mint(self, model: str, kind: str, probabilities: list[float | None]) -> list[str]:
        """Signed ids that carry each prediction (feedback_ids.py); an unscored answer gets a
        plain id, which no feedback matches."""
        now = time.time()
        return [uuid.uuid4().hex if p is None else self.ids.mint(model, kind, p, now) for p in probabilities]

    def _judge(self, model: str, stats: dict[str, Any]) -> None:
        """A judge's own counters, as increments since the last look."""
        now = {"answers": stats.get("answers", 0), "unscored": stats.get("unscored", 0),
               "pairs": stats.get("pairs", 0), "inconsistent": stats.get("inconsistent", 0),
               "backend_errors": stats.get("backend_errors", 0),
               **{f"checklist:{k}": v for k, v in stats.get("checklists", {}).items()}}
        with self._lock:
            seen = self._judge_seen.setdefault(model, {})
            deltas = {k: v - seen.get(k, 0) for k, v in now.items()}
            seen.update(now)
        m = self.metrics
        for key, counter in (("answers", m.judge_answers), ("unscored", m.judge_unscored),
                             ("pairs", m.judge_pairs), ("inconsistent", m.judge_inconsistent),
                             ("backend_errors", m.judge_backend_errors)):
            if deltas[key] > 0:
                counter.labels(model).inc(deltas[key])
        for key, delta in deltas.items():
            if key.startswith("checklist:") and delta > 0:
                m.judge_checklists.labels(model, key.partition(":")[2]).inc(delta)

    # ---- feedback ----

    def _count_labelled(self, model: str, p: float, y: int) -> None:
        m, where = self.metrics, (model, str(bin_of(p)))
        m.calibration_predictions.labels(*where).inc()
        m.calibration_probability.labels(*where).inc(p)
        m.calibration_positives.labels(*where).inc(y)  # also 0: the series exists for the rules' arithmetic
        m.calibration_squared_error.labels(model).inc((p - y) ** 2)
        m.calibration_correct.labels(model).inc(int((p > 0.5) == bool(y)))

    def feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """Labels for ids any process served with the same key; forged, expired or already
        labelled ids (this process remembers the last `max_pending` it accepted), or ids
        signed by another key, are listed with the reason and counted by it."""
        now = time.time()
        unknown, reasons, touched = [], [], set()
        with self._lock:
            for entry in request.items:
                served = self.ids.read(entry.id)
                reason = (self.ids.refusal(entry.id) if served is None
                          else EXPIRED if now - served.served_at > self.config.pending_ttl_s
                          else ALREADY_LABELLED if entry.id in self._labelled else None)
                if reason is not None:
                    unknown.append(entry.id)
                    reasons.append(reason)
                    continue
                self._labelled[entry.id] = None
                while len(self._labelled) > self.config.max_pending:
                    self._labelled.popitem(last=False)
                self.window(served.model).labelled.append((served.probability, entry.label))
                self.metrics.feedback.labels(served.model, served.kind).inc()
                self._count_labelled(served.model, served.probability, entry.label)
                touched.add(served.model)
            for model in touched:
                labelled = list(self._windows[model].labelled)
                result = calibration(labelled)
                self.metrics.ece.labels(model).set(result["ece"])
                self.metrics.brier.labels(model).set(result["brier"])
                self.metrics.accuracy.labels(model).set(result["accuracy"])
                self.metrics.labelled.labels(model).set(len(labelled))
        for reason, n in Counter(reasons).items():
            self.metrics.feedback_unmatched.labels(reason).inc(n)
        return FeedbackResponse(accepted=len(request.items) - len(unknown), unknown=unknown, reasons=reasons)
