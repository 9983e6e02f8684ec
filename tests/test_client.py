"""plaudit.client against scripted servers on 127.0.0.1 (failures and delays on cue) and a
real one: retries and Retry-After, refusals raised at once, deadlines that fall back to the
model's neutral reward, flagged and counted."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from plaudit.client import AsyncClient, Client, PlauditError
from servers import free_port, http_server, send_json

SCORED = {"model": "rm", "rewards": [1.5], "truncated": [False], "ids": ["id-0"]}
REWARDED = {"rewards": [1.5], "scores": [1.5], "ids": ["id-0"], "extra_logs": {}}
MODELS = {"models": [{"name": "rm", "kind": "judge", "default": True, "metadata": {"neutral_reward": 0.5},
                      "stats": {}}]}
ITEM = {"prompt": "2+2?", "response": "4"}


class Script:
    """Answers POST /score and /get_reward with the next scripted (status, headers, delay) and then 200; GET /models
    with MODELS. Keeps what it was sent."""

    def __init__(self, *steps: tuple[int, dict[str, str], float]):
        self.steps, self.seen, self.times, self._lock = list(steps), [], [], threading.Lock()

    def __call__(self, request: BaseHTTPRequestHandler) -> None:
        if request.command == "GET":
            return send_json(request, 200, MODELS)
        body = json.loads(request.rfile.read(int(request.headers["content-length"])))
        with self._lock:
            self.seen.append((dict(request.headers), body))
            self.times.append(time.monotonic())
            status, headers, delay = self.steps.pop(0) if self.steps else (200, {}, 0.0)
        time.sleep(delay)
        answer = SCORED if request.path == "/score" else REWARDED
        send_json(request, status, answer if status == 200 else {"error": f"scripted {status}", "field": "items"},
                  headers)


def test_retries_honour_retry_after_then_answer():
    script = Script((503, {"Retry-After": "1.0"}, 0), (429, {"Retry-After": "0.6"}, 0), (502, {}, 0))
    with http_server(script) as url, Client(url, api_key="sk-test", backoff_s=0.01) as client:
        answer = client.score([ITEM])
    assert answer.rewards == [1.5] and client.counts["attempts"] == 4 and client.counts["retries"] == 3
    gaps = [b - a for a, b in zip(script.times, script.times[1:])]
    # Retry-After, then the short backoff (0.01 s; the bound leaves room for a busy machine)
    assert gaps[0] >= 1.0 and gaps[1] >= 0.6 and gaps[2] < 0.6
    headers, body = script.seen[0]
    assert headers["Authorization"] == "Bearer sk-test" and body == {"items": [ITEM]}


def test_a_refusal_is_raised_at_once_naming_the_field():
    script = Script((400, {}, 0))
    with http_server(script) as url, Client(url, backoff_s=0.01) as client:
        with pytest.raises(PlauditError) as refused:
            client.score([ITEM])
    assert refused.value.status == 400 and refused.value.field == "items" and len(script.seen) == 1


def test_retries_are_bounded_and_the_last_failure_is_reported(monkeypatch):
    monkeypatch.setenv("PLAUDIT_API_KEY", "sk-env")
    with http_server(Script(*[(500, {}, 0)] * 10)) as url, Client(url, max_retries=2, backoff_s=0.01) as client:
        with pytest.raises(PlauditError, match="after 3 attempts") as failed:
            client.score([ITEM])
        assert failed.value.status == 500 and client.counts["attempts"] == 3
        assert client.headers["Authorization"] == "Bearer sk-env"
    with Client(f"http://127.0.0.1:{free_port()}", max_retries=1, backoff_s=0.01) as nobody:
        with pytest.raises(PlauditError, match="could not be reached after 2 attempts"):
            nobody.score([ITEM])


def test_a_deadline_gives_the_neutral_reward_flagged_and_counted():
    """A judge that answers in 3 s must not stall a training step given 0.5 s."""
    with http_server(Script((200, {}, 3.0), (200, {}, 3.0))) as url, Client(url) as client:
        start = time.monotonic()
        answer = client.score([ITEM, ITEM], deadline_s=0.5)
        took = time.monotonic() - start
        assert took < 2.5, took  # the server answers after 3 s; the bound leaves room for a busy machine
        assert answer.rewards == [0.5, 0.5]  # the judge's neutral value, from GET /models
        assert answer.deadline == [True, True] and all(e.startswith("deadline") for e in answer.errors)
        assert client.counts["deadline_items"] == 2
        reward = client.get_reward(["q"], deadline_s=0.2)
        assert reward.rewards == [0.5] and reward.extra_logs["deadline"] == [1.0]
        in_time = client.score([ITEM], deadline_s=5)
        assert in_time.rewards == [1.5] and in_time.deadline is None  # the real answer
    with http_server(Script(*[(503, {}, 0)] * 10)) as url, Client(url, max_retries=1, backoff_s=0.01) as client:
        down = client.score([ITEM], deadline_s=30)  # still failing after the retries: no exception in training
        assert down.rewards == [0.5] and "503" in down.errors[0] and down.deadline == [True]
        assert client.counts["deadline_items"] == 1
        with pytest.raises(PlauditError):
            client.score([ITEM])  # without a deadline the failure is raised


def test_the_async_client_retries_and_keeps_deadlines():
    async def run(url):
        async with AsyncClient(url, backoff_s=0.01) as client:
            first = await client.score([ITEM])
            slow = await client.score([ITEM], deadline_s=0.3)
            return first, slow, client.counts

    with http_server(Script((503, {"Retry-After": "0"}, 0), (200, {}, 0), (200, {}, 2.0))) as url:
        first, slow, counts = asyncio.run(run(url))
    assert first.rewards == [1.5] and counts["retries"] == 1
    assert slow.rewards == [0.5] and slow.deadline == [True]
