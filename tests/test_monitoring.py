"""Online monitoring: windows and feedback in-process; /feedback and /metrics over a real BentoML
server; the Prometheus deploy files with promtool; and, in `slow`, a real Prometheus scraping a
running plaudit: every dashboard panel returns data, and an alert fires on bad calibration."""
from __future__ import annotations

import base64
import contextlib
from concurrent.futures import ThreadPoolExecutor
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx2
import pytest
import yaml
from prometheus_client import CollectorRegistry

from plaudit.service.config import MonitoringConfig
from plaudit.service.feedback_ids import (ALREADY_LABELLED, ENV_KEY, EXPIRED, FORGED, OTHER_KEY, REASONS,
                                          SERVER_ENV_KEY, _started, share_with_workers)
from plaudit.service.monitoring import Metrics, Monitor, calibration, ks_distance
from plaudit.schemas import FeedbackRequest
from servers import REPO, FakeLLM, free_port, launched, running_service

DEPLOY = REPO / "deploy"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None,
                                    reason="promtool missing (make test installs Debian's prometheus)")


def monitor(**config) -> Monitor:
    return Monitor(MonitoringConfig(**{"update_interval_s": 0, **config}), Metrics(CollectorRegistry()))


def test_ks_distance_and_calibration():
    assert ks_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_distance([1, 2, 3], [4, 5, 6]) == 1.0
    first, second = random.Random(0), random.Random(1)
    same = ks_distance(sorted(first.gauss(0, 1) for _ in range(2000)), sorted(second.gauss(0, 1) for _ in range(2000)))
    shifted = ks_distance(sorted(first.gauss(0, 1) for _ in range(2000)),
                          sorted(second.gauss(1, 1) for _ in range(2000)))
    assert same < 0.06 and 0.3 < shifted < 0.45  # N(0,1) vs N(1,1): 2 * Phi(0.5) - 1 = 0.38
    perfect = calibration([(0.9, 1)] * 9 + [(0.9, 0)])
    assert perfect["ece"] == pytest.approx(0.0) and perfect["accuracy"] == 0.9
    assert calibration([(0.9, 0)] * 10)["ece"] == pytest.approx(0.9)


def test_windows_and_labelled_ids_stay_bounded():
    m = monitor(reward_window=50, feedback_window=20, max_pending=100)
    for i in range(1000):
        m._rewards("tiny", [float(i)], [i])
    window = m.window("tiny")
    assert len(window.rewards) == 50 and len(window.reference) == 50
    assert window.reference[-1] == 49.0  # the reference is the first rewards, not the latest
    ids = m._mint("tiny", "item", [0.7] * 300)
    assert m.feedback(FeedbackRequest(items=[{"id": i, "label": 1} for i in ids])).accepted == 300
    assert len(m._labelled) == 100 and len(window.labelled) == 20
    again = m.feedback(FeedbackRequest(items=[{"id": ids[-1], "label": 0}]))
    assert again.unknown == [ids[-1]]  # labelled once


def test_any_process_with_the_key_accepts_a_label_and_nobody_forges_one(monkeypatch):
    """Two workers (two Monitors) with one key: each accepts ids the other served, with the
    probability that was served; an id altered, signed with another key, or unscored is unknown."""
    registry = CollectorRegistry()
    served_by = Monitor(MonitoringConfig(feedback_key="shared"), Metrics(CollectorRegistry()))
    labelled_by = Monitor(MonitoringConfig(feedback_key="shared"), Metrics(registry))
    stranger = Monitor(MonitoringConfig(feedback_key="another"), Metrics(CollectorRegistry()))
    ids = served_by._mint("tiny", "pair", [0.9, 0.2, None])
    assert "." not in ids[2]  # unscored: no signed id
    signature = ids[0].partition(".")[2]
    tampered = stranger._mint("tiny", "pair", [0.9])[0].partition(".")[0] + "." + signature
    answer = labelled_by.feedback(FeedbackRequest(items=[{"id": i, "label": 1} for i in [*ids, tampered, "junk"]]))
    assert answer.accepted == 2 and answer.unknown == [ids[2], tampered, "junk"]
    assert list(labelled_by.window("tiny").labelled) == [(0.9, 1), (0.2, 1)]
    assert registry.get_sample_value("plaudit_feedback_total", {"model": "tiny", "kind": "pair"}) == 2
    assert stranger.feedback(FeedbackRequest(items=[{"id": ids[1], "label": 1}])).unknown == [ids[1]]
    monkeypatch.setenv("PLAUDIT_FEEDBACK_KEY", "shared")  # the key from the environment
    from_env = Monitor(MonitoringConfig(), Metrics(CollectorRegistry()))
    assert from_env.ids.shared and from_env.feedback(FeedbackRequest(items=[{"id": ids[1], "label": 0}])).accepted == 1


def test_each_refused_label_has_its_reason_in_the_answer_and_the_metric():
    """Forged or altered, signed by another key, expired, already labelled: each listed with its
    reason and counted by it, never an error; the four series exist at 0 before any label."""
    registry = CollectorRegistry()
    m = Monitor(MonitoringConfig(feedback_key="ours", pending_ttl_s=60), Metrics(registry))
    count = lambda reason: registry.get_sample_value("plaudit_feedback_unmatched_total", {"reason": reason})
    assert [count(r) for r in REASONS] == [0.0] * 4
    fresh, labelled = m._mint("tiny", "pair", [0.9, 0.4])
    old = m.ids.mint("tiny", "pair", 0.7, now=time.time() - 61)
    payload, _, signature = fresh.partition(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=="))
    altered = base64.urlsafe_b64encode(json.dumps([fields[0], fields[1], 0.1, *fields[3:]],
                                                  separators=(",", ":")).encode()).decode().rstrip("=")
    altered += "." + signature  # the probability changed, our fingerprint kept
    [theirs] = Monitor(MonitoringConfig(feedback_key="theirs"), Metrics(CollectorRegistry()))._mint("tiny", "pair", [0.9])
    assert m.feedback(FeedbackRequest(items=[{"id": labelled, "label": 0}])).accepted == 1
    sent = [altered, "junk", uuid.uuid4().hex, theirs, old, labelled, fresh]
    answer = m.feedback(FeedbackRequest(items=[{"id": i, "label": 1} for i in sent]))
    assert answer.accepted == 1 and answer.unknown == sent[:-1]
    assert answer.reasons == [FORGED, FORGED, FORGED, OTHER_KEY, EXPIRED, ALREADY_LABELLED]
    assert {r: count(r) for r in REASONS} == {FORGED: 3, OTHER_KEY: 1, EXPIRED: 1, ALREADY_LABELLED: 1}
    legacy = base64.urlsafe_b64encode(json.dumps(fields[:5], separators=(",", ":")).encode()).decode().rstrip("=")
    legacy += "." + m.ids._sign(legacy)  # an id from before the fingerprint, signed with a configured key
    assert m.feedback(FeedbackRequest(items=[{"id": legacy, "label": 1}])).accepted == 1


def test_the_workers_of_one_server_share_its_key_and_a_configured_key_comes_first(monkeypatch):
    """`plaudit serve` without a configured key makes one per start for the workers it spawns:
    they accept each other's ids; the next start's key refuses them as another key's. A
    configured key is used as before, whatever the server made."""
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(SERVER_ENV_KEY, raising=False)
    assert not share_with_workers(None)
    first, second = monitor(), monitor()  # two workers of one start
    assert not first.ids.shared and first.ids.fingerprint == second.ids.fingerprint
    ids = first._mint("tiny", "item", [0.3, 0.6])
    assert second.feedback(FeedbackRequest(items=[{"id": i, "label": 1} for i in ids])).accepted == 2
    assert not share_with_workers(None)  # a restart: a new key
    answer = monitor().feedback(FeedbackRequest(items=[{"id": i, "label": 0} for i in ids]))
    assert answer.accepted == 0 and answer.reasons == [OTHER_KEY, OTHER_KEY]
    assert share_with_workers("configured") and SERVER_ENV_KEY not in os.environ
    monkeypatch.setenv(SERVER_ENV_KEY, "made by a server")
    configured = monitor(feedback_key="configured")
    assert configured.ids.shared and configured.ids.fingerprint != monitor().ids.fingerprint
    [served] = configured._mint("tiny", "item", [0.5])
    monkeypatch.delenv(SERVER_ENV_KEY)  # another replica, with the same configured key
    assert monitor(feedback_key="configured").feedback(FeedbackRequest(items=[{"id": served, "label": 1}])).accepted == 1


def test_a_model_whose_first_answers_are_all_unscored_is_monitored():
    """A judge that could read none of its first answers left an empty reward window, and the
    window's statistics were a 500 (found by fuzzing: a TICK judge on an unreadable LLM)."""
    registry = CollectorRegistry()
    m = Monitor(MonitoringConfig(update_interval_s=0), Metrics(registry))
    m._rewards("judge", [None, None], [3, 4])
    assert registry.get_sample_value("plaudit_reward_mean", {"model": "judge"}) is None
    m._rewards("judge", [0.25, None, 0.75], [3, 4, 5])
    assert registry.get_sample_value("plaudit_reward_mean", {"model": "judge"}) == 0.5


def test_judge_counters_export_increments_since_the_last_look():
    registry = CollectorRegistry()
    m = Monitor(MonitoringConfig(update_interval_s=0), Metrics(registry))
    m._judge("j", {"answers": 10, "unscored": 2, "backend_errors": 3, "checklists": {"generated": 1}})
    m._judge("j", {"answers": 15, "unscored": 2, "backend_errors": 5, "checklists": {"generated": 1, "cache": 4}})
    sample = registry.get_sample_value
    assert sample("plaudit_judge_backend_errors_total", {"model": "j"}) == 5
    assert sample("plaudit_judge_answers_total", {"model": "j"}) == 15
    assert sample("plaudit_judge_unscored_total", {"model": "j"}) == 2
    assert sample("plaudit_judge_checklists_total", {"model": "j", "source": "cache"}) == 4


def ece_from_counters(registry: CollectorRegistry, model: str) -> tuple[float, float]:
    """ECE as deploy/prometheus/rules.yml records it, from the per-bin counters; and the count."""
    sample = registry.get_sample_value
    gaps = n = 0.0
    for b in range(10):
        where = {"model": model, "bin": str(b)}
        gaps += abs((sample("plaudit_calibration_probability_total", where) or 0.0)
                    - (sample("plaudit_calibration_positives_total", where) or 0.0))
        n += sample("plaudit_calibration_predictions_total", where) or 0.0
    return gaps / n, n


def test_calibration_counters_give_the_one_ece():
    """What Prometheus adds up across processes gives the ECE, Brier and accuracy that the
    offline calibration (training/calibration.py) computes from the same labels."""
    from plaudit.training.calibration import metrics

    registry = CollectorRegistry()
    m = Monitor(MonitoringConfig(update_interval_s=0), Metrics(registry))
    rng = random.Random(3)
    probabilities = [rng.random() for _ in range(500)]
    labels = [int(rng.random() < p ** 2) for p in probabilities]  # overconfident: ECE well above 0
    ids = m._mint("tiny", "item", probabilities)
    m.feedback(FeedbackRequest(items=[{"id": i, "label": y} for i, y in zip(ids, labels)]))
    offline = metrics(probabilities, labels)
    ece, n = ece_from_counters(registry, "tiny")
    assert n == 500 and offline["ece"] > 0.1 and ece == pytest.approx(offline["ece"], abs=1e-4)
    sample = registry.get_sample_value
    assert sample("plaudit_calibration_squared_error_total", {"model": "tiny"}) / n == pytest.approx(offline["brier"],
                                                                                                      abs=1e-4)
    assert sample("plaudit_calibration_correct_total", {"model": "tiny"}) / n == pytest.approx(offline["accuracy"],
                                                                                                abs=1e-4)


def test_expired_ids_are_reported_not_fatal():
    m = monitor(pending_ttl_s=0.05)
    [served] = m._mint("tiny", "pair", [0.8])
    time.sleep(0.1)
    assert m.feedback(FeedbackRequest(items=[{"id": served, "label": 1}])).unknown == [served]


@needs_promtool
def test_deploy_files_pass_promtool():
    for args in (["check", "config", "prometheus/prometheus.yml"], ["check", "rules", "prometheus/alerts.yml"],
                 ["check", "rules", "prometheus/rules.yml"], ["test", "rules", "prometheus/alerts.test.yml"],
                 ["test", "rules", "prometheus/rules.test.yml"]):
        run = subprocess.run(["promtool", *args], cwd=DEPLOY, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_panels_each_have_a_query():
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "plaudit.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) == len(dashboard["panels"]) >= 15 and all("plaudit_" in e or "plaudit:" in e for e in exprs)
    recorded = set(re.findall(r"record: (\S+)", (DEPLOY / "prometheus" / "rules.yml").read_text()))
    assert {e for e in exprs if e.startswith("plaudit:")} <= recorded


# ---- over HTTP ----

def judge_llm(messages):
    """TICK questions (one of them never answered readably) and a pairwise judge biased to A."""
    text = messages[-1]["content"]
    if messages[0]["role"] == "system":
        return "1. Is it short?\n2. Is it polite?"
    if "Response A:" in text:
        return "A", {"A": -0.1, "B": -2.5}
    if "polite" in text:
        return "Perhaps."
    return "YES", {"YES": -0.2, "NO": -1.7}


@pytest.fixture(scope="module")
def monitored(tiny_bt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitored")
    with FakeLLM(judge_llm).serving(lifetime_s=1800) as llm_url:  # the module's tests share it: minutes
        config = tmp / "plaudit.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny",
            "backends": {"fake": {"url": llm_url, "max_retries": 0}}, "default_backend": "fake",
            "judges": {"checklist": {"method": "tick", "checklist_dir": str(tmp / "checklists"), "parse_retries": 0},
                       "arena": {"method": "pairwise"}},
            "monitoring": {"update_interval_s": 0}}))
        with running_service(config, tmp) as (url, _):
            with httpx2.Client(base_url=url, timeout=60) as client:
                yield client


def traffic(client: httpx2.Client, pairs: int = 60) -> list[dict]:
    """A bit of everything; returns the /compare answers' (id, probability)."""
    items = [{"prompt": "Say hi.", "response": "hi" * (1 + i % 7)} for i in range(16)]
    assert client.post("/score", json={"items": items}).status_code == 200
    assert client.post("/rank", json={"prompt": "Say hi.", "responses": ["hi", "hello there"]}).status_code == 200
    assert client.post("/get_reward", json={"query": ["Say hi. hi", "Say hi. hello"]}).status_code == 200
    assert client.post("/steps", json={"prompt": "x", "steps": ["a"]}).status_code == 422  # a BT model has no steps
    for _ in range(2):  # generated, then from the cache
        assert client.post("/judge", json={"judge": "checklist", "instruction": "Greet me.",
                                           "responses": ["hi", "hello"]}).status_code == 200
    assert client.post("/judge", json={"judge": "arena", "instruction": "Greet me.",
                                       "responses": ["hi", "hello"]}).status_code == 200
    compared = client.post("/compare", json={"pairs": [{"prompt": "Say hi.", "a": "hi" * (1 + i % 5), "b": "yo"}
                                                       for i in range(pairs)]}).json()
    return list(zip(compared["ids"], compared["probabilities"]))


def test_feedback_and_metrics_over_http(monitored):
    served = traffic(monitored, pairs=4)
    labels = [{"id": i, "label": int(p > 0.5)} for i, p in served] + [{"id": "never-served", "label": 1}]
    answer = monitored.post("/feedback", json={"items": labels}).json()
    assert answer == {"accepted": 4, "unknown": ["never-served"], "reasons": ["forged"]}
    assert monitored.post("/feedback", json={"items": [{"id": "x", "label": 3}]}).status_code == 400
    text = monitored.get("/metrics").text
    for name in ("plaudit_requests_total", "plaudit_calibration_ece", "plaudit_reward_drift",
                 "plaudit_forward_batch_size_bucket", "plaudit_judge_unscored_total", "plaudit_judge_checklists_total",
                 "plaudit_requests_in_progress", "plaudit_calibration_predictions_total", "plaudit_reward_moments"):
        assert name in text, name
    assert 'plaudit_errors_total{endpoint="steps",kind="UnsupportedOperation"}' in text
    if shutil.which("promtool"):
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr


def server_keys(process) -> set[str]:
    """The feedback key `plaudit serve` gave its processes (the supervisor, BentoML's arbiter, the workers)."""
    keys = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if os.getpgid(int(pid)) == process.pid:
                for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    if entry.startswith(f"{SERVER_ENV_KEY}=".encode()):
                        keys.add(entry.partition(b"=")[2].decode())
    return keys


WARNING = "feedback ids are signed with a key made for this start"


def without_keys() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in (ENV_KEY, SERVER_ENV_KEY)}


def serve_then_label(url: str) -> tuple[list[tuple[str, float]], list[int], list[dict]]:
    """160 predictions served over 40 fresh connections (so every worker serves some), then
    labelled in 40 requests on fresh connections: (ids and probabilities, labels, answers)."""
    rng = random.Random(7)

    def compare(i: int) -> list[tuple[str, float]]:
        pairs = [{"prompt": f"Say hi {i}.", "a": "hi" * (1 + (i + j) % 5), "b": "yo" * (1 + j)} for j in range(4)]
        with httpx2.Client(base_url=url, timeout=60) as fresh:  # a new connection: either worker may answer
            body = fresh.post("/compare", json={"pairs": pairs}).json()
        return list(zip(body["ids"], body["probabilities"]))

    def label(items: list[dict]) -> dict:
        with httpx2.Client(base_url=url, timeout=60) as fresh:
            return fresh.post("/feedback", json={"items": items}).json()

    with ThreadPoolExecutor(8) as pool:
        served = [s for answer in pool.map(compare, range(40)) for s in answer]
        labels = [int(rng.random() < p) for _, p in served]
        chunks = [[{"id": i, "label": y} for (i, _), y in zip(served[k:k + 4], labels[k:k + 4])]
                  for k in range(0, len(served), 4)]
        return served, labels, list(pool.map(label, chunks))


def test_two_workers_without_a_key_accept_every_label_and_agree_on_calibration(tiny_bt, tmp_path):
    """`workers: 2` and no feedback key: two BentoML worker processes, each with its own model,
    and the one key `plaudit serve` made for them. Every label is accepted whichever worker
    served its id and whichever takes the label (with a key per worker 88 of 160 were), and
    the ECE that Prometheus records from the summed counters equals the ECE of all the labels.
    The key is in no log and no answer; the log says once that ids will not outlive a restart."""
    from plaudit.training.calibration import expected_calibration_error

    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny",
                                      "workers": 2}))
    with running_service(config, tmp_path, env=without_keys()) as (url, process):
        served, labels, answers = serve_then_label(url)
        assert sum(a["accepted"] for a in answers) == len(served) == 160
        assert all(a["unknown"] == [] for a in answers)
        text = httpx2.get(f"{url}/metrics", timeout=30).text
        [key] = server_keys(process)
        assert key not in httpx2.get(f"{url}/models", timeout=30).text
    log = (tmp_path / "serve.log").read_text()
    assert log.count(WARNING) == 1 and "monitoring.feedback_key" in log and key not in log + config.read_text()
    assert 'plaudit_feedback_unmatched_total{reason="other_key"} 0.0' in text
    counters: dict[tuple[str, str], float] = {}
    for name, b, value in re.findall(r'^(plaudit_calibration_\w+_total)\{bin="(\d)",model="tiny"\} (\S+)$', text, re.M):
        counters[name, b] = counters.get((name, b), 0.0) + float(value)
    n = sum(v for (name, _), v in counters.items() if name == "plaudit_calibration_predictions_total")
    gaps = sum(abs(counters.get(("plaudit_calibration_probability_total", b), 0.0)
                   - counters.get(("plaudit_calibration_positives_total", b), 0.0)) for b in "0123456789")
    expected = expected_calibration_error([p for _, p in served], labels)
    assert n == 160 and gaps / n == pytest.approx(expected, abs=1e-5)


def fingerprint_in_a_child(*wrapper: str) -> str:
    code = "from plaudit.service.feedback_ids import FeedbackIds; print(FeedbackIds().fingerprint)"
    python = shlex.join([sys.executable, "-c", code])
    command = [*wrapper, f"{python} && true"] if wrapper else [sys.executable, "-c", code]  # && : no exec
    return subprocess.run(command, env=without_keys(), capture_output=True, text=True, check=True).stdout.strip()


def test_without_a_key_the_children_of_one_parent_share_one():
    """What lets `bentoml serve`'s workers (children of its arbiter) accept each other's ids:
    two children of this process get one key, a child of another parent (a shell) another;
    the key is in a file only this user can read, and a parent's file goes once it has ended."""
    folder = Path(tempfile.gettempdir()) / f"plaudit-feedback-keys-{os.getuid()}"
    first, second = fingerprint_in_a_child(), fingerprint_in_a_child()
    assert first == second
    mine = folder / f"{os.getpid()}-{_started(os.getpid())}"
    assert mine.stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    before = {p.name for p in folder.iterdir()}
    assert fingerprint_in_a_child("sh", "-c") != first
    [shell] = {p.name for p in folder.iterdir()} - before  # that shell's key, the shell now ended
    fingerprint_in_a_child("sh", "-c")  # the next key made sweeps it
    assert shell not in {p.name for p in folder.iterdir()}


def test_bentoml_serve_run_directly_shares_one_key_among_its_workers(tiny_bt, tmp_path):
    """`bentoml serve` without `plaudit serve` (a container's entry point), `workers: 2`, no
    key: every label is accepted whichever worker served its id and whichever takes it."""
    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny",
                                      "workers": 2}))
    port = free_port()
    env = {**without_keys(), "PLAUDIT_CONFIG": str(config), "BENTOML_HOME": str(tmp_path / "bentoml"),
           "BENTOML_DO_NOT_TRACK": "True"}
    args = [str(Path(sys.executable).with_name("bentoml")), "serve", "plaudit.service.app:Plaudit",
            "--host", "127.0.0.1", "--port", str(port)]
    with launched(args, port, tmp_path / "serve.log", env, 240, cwd=tmp_path) as service:
        served, _, answers = serve_then_label(service.url)
        text = httpx2.get(f"{service.url}/metrics", timeout=30).text
    assert sum(a["accepted"] for a in answers) == len(served) == 160, answers
    assert 'plaudit_feedback_unmatched_total{reason="other_key"} 0.0' in text


def test_after_a_restart_without_a_key_old_ids_are_another_keys_not_an_error(tiny_bt, tmp_path):
    """No feedback key: the ids one start served are refused by the next, as signed by another
    key, in the answer and in /metrics; a configured key would have kept them."""
    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny"}))
    environment = without_keys()
    pairs = [{"prompt": "Say hi.", "a": "hi" * (1 + j), "b": "yo"} for j in range(4)]
    with running_service(config, tmp_path, env=environment) as (url, _):
        before = httpx2.post(f"{url}/compare", json={"pairs": pairs}, timeout=60).json()["ids"]
    with running_service(config, tmp_path, env=environment) as (url, _):
        after = httpx2.post(f"{url}/compare", json={"pairs": pairs[:1]}, timeout=60).json()["ids"]
        reply = httpx2.post(f"{url}/feedback", json={"items": [{"id": i, "label": 1} for i in before + after]},
                            timeout=60)
        text = httpx2.get(f"{url}/metrics", timeout=30).text
    assert reply.status_code == 200
    assert reply.json() == {"accepted": 1, "unknown": before, "reasons": ["other_key"] * 4}
    assert 'plaudit_feedback_unmatched_total{reason="other_key"} 4.0' in text
    assert 'plaudit_feedback_unmatched_total{reason="forged"} 0.0' in text


# ---- a real Prometheus ----

@contextlib.contextmanager
def prometheus(tmp: Path, target: str, rules: list[Path]):
    port = free_port()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(r) for r in rules],
        "scrape_configs": [{"job_name": "plaudit", "static_configs": [{"targets": [target]}]}]}))
    log = open(tmp / "prometheus.log", "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx2.HTTPError):
                if httpx2.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            raise RuntimeError((tmp / "prometheus.log").read_text()[-2000:])
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def query(url: str, expr: str) -> list:
    answer = httpx2.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("prometheus") is None, reason="prometheus missing (make test installs it)")
def test_real_prometheus_sees_every_panel_and_fires_on_bad_calibration(monitored, tmp_path):
    rules = tmp_path / "alerts.yml"  # the real rules, their `for:` shortened so the test need not wait minutes
    rules.write_text((DEPLOY / "prometheus" / "alerts.yml").read_text().replace("for: 10m", "for: 0s")
                     .replace("for: 15m", "for: 0s").replace("for: 5m", "for: 0s"))
    target = str(monitored.base_url).removeprefix("http://").rstrip("/")
    with prometheus(tmp_path, target, [DEPLOY / "prometheus" / "rules.yml", rules]) as url:
        deadline = time.monotonic() + 60  # Prometheus's service discovery takes ~5 s before the first scrape
        while not query(url, 'up{job="plaudit"} == 1') and time.monotonic() < deadline:
            time.sleep(0.5)
        served = traffic(monitored)
        time.sleep(3)
        served += traffic(monitored)
        # Calibration made bad on purpose: every label contradicts the prediction.
        labels = [{"id": i, "label": int(p < 0.5)} for i, p in served]
        assert monitored.post("/feedback", json={"items": labels}).json()["accepted"] == len(served)
        dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "plaudit.json").read_text())
        deadline = time.monotonic() + 60  # scrapes (1 s) and recording rules lag behind; more on a loaded machine
        while True:
            empty = [p["title"] for p in dashboard["panels"] for t in p["targets"]
                     if not any(r["value"][1] != "NaN" for r in query(url, t["expr"]))]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert not empty, f"panels without data: {empty}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            firing = {a["labels"]["alertname"] for a in
                      httpx2.get(f"{url}/api/v1/alerts", timeout=10).json()["data"]["alerts"] if a["state"] == "firing"}
            if {"PlauditCalibrationDegraded", "PlauditJudgeUnscoredRateHigh"} <= firing:
                break
            time.sleep(1)
        assert "PlauditCalibrationDegraded" in firing, firing
        assert "PlauditJudgeUnscoredRateHigh" in firing  # half the checklist's answers are never readable
