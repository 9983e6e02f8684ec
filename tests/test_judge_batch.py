"""`plaudit judge` over JSONL: resumable after errors, torn lines and kill -9; sharded across
services; and `POST /judge` on a real BentoML server whose judges talk to a scripted LLM."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2
import pytest

from plaudit.jobs import Endpoints, summary_path
from plaudit.judges import batch
from plaudit.service import api
from plaudit.service.config import ModelConfig, ServiceConfig
from helpers import config_yaml, rating_llm, write_items
from servers import REPO, FakeLLM, http_server, running_service, send_json

PLAUDIT = str(Path(sys.executable).with_name("plaudit"))


def ids_in(out: Path) -> Counter:
    return Counter(json.loads(line)["id"] for line in out.read_text().splitlines())


def in_process(pool: api.ModelPool):
    return lambda request, index: api.judge(pool, request)


def test_errors_are_retried_by_the_next_run_and_every_item_lands_once(tmp_path, tiny_bt):
    items = write_items(tmp_path / "in.jsonl", 12, bad=True)
    out = tmp_path / "out.jsonl"
    fail_on = {"xxx"}  # items 2 and 11
    llm = FakeLLM(rating_llm(fail_on))
    with llm.serving() as url:
        pool = api.ModelPool(ServiceConfig(models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny",
                                           backends={"fake": {"url": url, "max_retries": 0}}, default_backend="fake"))
        first = batch.run(items, out, in_process(pool), judge_name="direct", concurrency=4, progress=False)
        assert (first["judged"], first["errors"], first["bad_lines"]) == (12, 2, 2)
        assert first["bad_line_examples"][0].startswith("line 3:")
        assert "line 4: " in first["bad_line_examples"][1] and "response" in first["bad_line_examples"][1]
        assert sum(1 for line in out.read_text().splitlines() if "error" in json.loads(line)) == 2
        fail_on.clear()
        asked = len(llm.bodies)
        second = batch.run(items, out, in_process(pool), judge_name="direct", concurrency=4, progress=False)
        pool.close()
    assert len(llm.bodies) - asked == 2  # only the two failed items again
    assert (second["skipped"], second["judged"], second["errors"]) == (10, 2, 0)
    assert ids_in(out) == Counter({f"item-{i}": 1 for i in range(12)})
    assert second["results"] == 12 and second["reward"]["max"] == 9
    assert json.loads(summary_path(out).read_text()) == second


def test_a_partly_failed_item_is_an_error_and_judged_whole_next_run(tmp_path, tiny_bt):
    items = tmp_path / "in.jsonl"
    items.write_text(json.dumps({"id": "pair", "instruction": "Say hi.", "responses": ["xxx", "yy"]}) + "\n")
    out = tmp_path / "out.jsonl"
    fail_on = {"xxx"}
    with FakeLLM(rating_llm(fail_on)).serving() as url:
        pool = api.ModelPool(ServiceConfig(models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny",
                                           backends={"fake": {"url": url, "max_retries": 0}}, default_backend="fake"))
        first = batch.run(items, out, in_process(pool), judge_name="direct", progress=False)
        fail_on.clear()
        second = batch.run(items, out, in_process(pool), judge_name="direct", progress=False)
        pool.close()
    assert first["errors"] == 1 and "1 of 2 responses failed" in first["error_examples"][0]
    assert (second["judged"], second["errors"], second["reward"]["max"]) == (1, 0, 3)
    assert ids_in(out) == Counter({"pair": 1})


def test_a_torn_last_line_is_dropped_and_judged_again(tmp_path, tiny_bt):
    items = write_items(tmp_path / "in.jsonl", 4)
    out = tmp_path / "out.jsonl"
    with FakeLLM(rating_llm(set())).serving() as url:
        pool = api.ModelPool(ServiceConfig(models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny",
                                           backends={"fake": {"url": url}}, default_backend="fake"))
        batch.run(items, out, in_process(pool), judge_name="direct", progress=False)
        lines = out.read_text().splitlines(keepends=True)
        out.write_text("".join(lines[:3]) + lines[3][:25])  # killed in the middle of the last write
        again = batch.run(items, out, in_process(pool), judge_name="direct", progress=False)
        pool.close()
    assert again["judged"] == 1 and ids_in(out) == Counter({f"item-{i}": 1 for i in range(4)})


def test_kill_9_mid_run_then_rerun_yields_every_item_exactly_once(tmp_path, tiny_bt):
    items = write_items(tmp_path / "in.jsonl", 30)
    out = tmp_path / "out.jsonl"
    llm = FakeLLM(rating_llm(set()), delay_s=0.15)
    with llm.serving() as url:
        args = [PLAUDIT, "judge", str(items), "-o", str(out), "--judge", "rater", "--concurrency", "2",
                "--no-progress", "--config", str(config_yaml(tmp_path, tiny_bt, url))]
        run = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
            time.sleep(0.05)
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        written = len(out.read_text().splitlines())
        assert 5 <= written < 30, "the kill must land mid-run"
        done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["skipped"] + summary["judged"] == 30 and summary["skipped"] >= 5
    assert ids_in(out) == Counter({f"item-{i}": 1 for i in range(30)})


def test_items_are_sharded_across_endpoints(tmp_path):
    seen: dict[int, int] = {0: 0, 1: 0}

    def stand_in(shard: int, status: int):
        def handle(request):
            body = json.loads(request.rfile.read(int(request.headers["content-length"])))
            seen[shard] += 1
            verdict = {"judge": body.get("judge") or "tick", "method": "direct",
                       "results": [{"reward": 5.0, "rating": 5.0} for _ in body["responses"]]}
            send_json(request, status, verdict if status == 200 else {"error": "overloaded"})
        return handle

    items = write_items(tmp_path / "in.jsonl", 10)
    out = tmp_path / "out.jsonl"
    with http_server(stand_in(0, 200)) as a, http_server(stand_in(1, 200)) as b:
        endpoints = Endpoints(batch.JUDGE, [a, b])
        summary = batch.run(items, out, endpoints, judge_name="direct", progress=False)
        endpoints.close()
    assert seen == {0: 5, 1: 5} and summary["errors"] == 0 and summary["reward"]["mean"] == 5.0
    with http_server(stand_in(0, 503)) as a:
        endpoints = Endpoints(batch.JUDGE, [a], max_retries=1, backoff_s=0.01)
        summary = batch.run(write_items(tmp_path / "more.jsonl", 3), tmp_path / "more-out.jsonl", endpoints,
                            judge_name="direct", progress=False)
        endpoints.close()
    assert summary["errors"] == 3 and "answered 503: overloaded" in summary["error_examples"][0]
    assert seen[0] == 5 + 3 * 2  # plaudit.client's retries: each of the 3 items tried twice (max_retries=1)


@pytest.fixture(scope="module")
def judge_service(tiny_bt, tmp_path_factory):
    """A real BentoML server whose judges ask a scripted LLM (which fails on cue)."""
    tmp = tmp_path_factory.mktemp("judge-service")
    fail_on: set[str] = set()
    with FakeLLM(rating_llm(fail_on)).serving() as url:
        with running_service(config_yaml(tmp, tiny_bt, url), tmp) as (service_url, _):
            yield service_url, fail_on, tmp


def test_judge_endpoint_and_judges_as_models_over_http(judge_service):
    url, _, _ = judge_service
    body = {"judge": "rater", "instruction": "Say hi.", "responses": ["hi", "hello there"]}
    answer = httpx2.post(f"{url}/judge", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    assert [r["rating"] for r in answer.json()["results"]] == [2, 10]
    scored = httpx2.post(f"{url}/score", json={"model": "rater", "items": [
        {"prompt": "Say hi.", "response": "hey"}]}, timeout=60).json()
    assert scored["rewards"] == [3.0] and scored["unscored"] == [0]
    models = {m["name"]: m for m in httpx2.get(f"{url}/models").json()["models"]}
    assert models["rater"]["kind"] == "judge" and models["rater"]["metadata"]["method"] == "direct"
    unknown = httpx2.post(f"{url}/judge", json={**body, "judge": "nobody"}, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["field"] == "judge"
    not_a_judge = httpx2.post(f"{url}/judge", json={**body, "judge": "tiny"}, timeout=60)
    assert not_a_judge.status_code == 422 and "not a judge" in not_a_judge.json()["error"]
    empty = httpx2.post(f"{url}/judge", json={**body, "responses": []}, timeout=60)
    assert empty.status_code == 400 and "responses" in empty.text


def test_backend_failure_fails_its_items_and_a_503_when_all_failed(judge_service):
    url, fail_on, _ = judge_service
    fail_on.add("boom")
    try:
        body = {"judge": "rater", "instruction": "Say hi.", "responses": ["boom", "hello there"]}
        partly = httpx2.post(f"{url}/judge", json=body, timeout=60)
        scored = httpx2.post(f"{url}/score", json={"model": "rater", "items": [
            {"prompt": "Say hi.", "response": "hey"}, {"prompt": "Say hi.", "response": "boom"}]}, timeout=60)
        answer = httpx2.post(f"{url}/judge", json={**body, "responses": ["boom"]}, timeout=60)
    finally:
        fail_on.clear()
    assert partly.status_code == 200, partly.text
    failed, judged = partly.json()["results"]
    assert failed["reward"] is None and "HTTP 500" in failed["error"] and judged["rating"] == 10
    assert scored.status_code == 200 and scored.json()["rewards"] == [3.0, None]
    assert scored.json()["errors"][0] is None and "HTTP 500" in scored.json()["errors"][1]
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "HTTP 500" in answer.json()["error"]


def test_batch_cli_against_a_running_service(judge_service, tmp_path):
    url, _, _ = judge_service
    items = write_items(tmp_path / "in.jsonl", 6)
    out = tmp_path / "out.jsonl"
    done = subprocess.run([PLAUDIT, "judge", str(items), "-o", str(out), "--judge", "rater", "--endpoint", url,
                           "--no-progress"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert ids_in(out) == Counter({f"item-{i}": 1 for i in range(6)})
    assert json.loads(done.stdout)["reward"]["max"] == 6


def test_an_interrupt_keeps_the_items_that_finished_beside_it(tmp_path, monkeypatch):
    """Two items finish together, one of them with Ctrl-C: the other's line is written,
    whichever of the two the runner looks at first, and the re-run does only the interrupted one."""
    import concurrent.futures

    from plaudit import jobs

    def both_finished_interrupt_first(futures, return_when):  # what a loaded machine can hand the runner
        concurrent.futures.wait(futures, return_when=concurrent.futures.ALL_COMPLETED)
        return sorted(futures, key=lambda f: f.exception() is None), set()

    def interrupted() -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "wait", both_finished_interrupt_first)
    out = tmp_path / "out.jsonl"
    with pytest.raises(KeyboardInterrupt):
        jobs.run_resumable([('"done"', lambda: {"reward": 1.0}), ('"stopped"', interrupted)], out,
                           concurrency=2, progress=False)
    assert [json.loads(line) for line in out.read_text().splitlines()] == [{"id": "done", "reward": 1.0}]
    ran = []
    skipped, errors = jobs.run_resumable([('"done"', lambda: ran.append("done") or {"reward": 1.0}),
                                          ('"stopped"', lambda: ran.append("stopped") or {"reward": 0.0})],
                                         out, concurrency=2, progress=False)
    assert (skipped, errors, ran) == (1, [], ["stopped"])
