"""Operating limits of a real service over HTTP on 127.0.0.1: API keys, size limits,
load shedding under overload, and a short bounded load test."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import yaml

from plaudit.service.auth import ApiKeyMiddleware, presented_key
from plaudit.service.config import AuthConfig
from servers import running_service

KEY, ENV_KEY = "sk-config-0123456789", "sk-env-9876543210"
BEARER = {"Authorization": f"Bearer {KEY}"}
MAX_QUEUE, MAX_TOKENS = 6, 8000  # the tiny tokenizer: about 6.4 tokens a word


def item(i: int, words: int = 20) -> dict:
    return {"prompt": f"Question {i}?", "response": " ".join(f"word{i * 7 + j}" for j in range(words))}


@pytest.fixture(scope="module")
def guarded(tiny_bt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guarded")
    config = tmp / "plaudit.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny",
        "auth": {"api_keys": [KEY]},
        "limits": {"max_items": 64, "max_chars": 2000, "max_tokens": MAX_TOKENS, "max_queue": MAX_QUEUE}}))
    with running_service(config, tmp, env={"PLAUDIT_API_KEYS": f" {ENV_KEY} ,"}) as (url, _):
        yield url, tmp


def test_scoring_needs_a_key_and_health_and_metrics_do_not(guarded):
    url, tmp = guarded
    body = {"items": [item(0)]}
    refused = [httpx2.post(f"{url}/score", json=body, headers=h, timeout=30)
               for h in ({}, {"Authorization": "Bearer sk-wrong"}, {"Authorization": KEY}, {"X-API-Key": ""})]
    assert [r.status_code for r in refused] == [401] * 4
    assert refused[0].json()["field"] == "Authorization" and refused[0].headers["www-authenticate"].startswith("Bearer")
    assert httpx2.get(f"{url}/models", timeout=30).status_code == 401
    assert httpx2.post(f"{url}/score", json=body, headers=BEARER, timeout=30).status_code == 200
    assert httpx2.post(f"{url}/score", json=body, headers={"X-API-Key": ENV_KEY}, timeout=30).status_code == 200
    assert httpx2.get(f"{url}/models", headers={"x-api-key": KEY}, timeout=30).status_code == 200
    for open_path in ("/readyz", "/livez", "/metrics", "/docs.json", "/"):
        assert httpx2.get(f"{url}{open_path}", timeout=30).status_code == 200, open_path
    # vLLM's pooling API: the same key, limits and metrics
    classify = {"input": ["<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n"]}
    assert httpx2.post(f"{url}/classify", json=classify, timeout=30).status_code == 401
    assert httpx2.post(f"{url}/classify", json=classify, headers=BEARER, timeout=30).status_code == 200
    over = httpx2.post(f"{url}/pooling", json={"input": ["x"] * 65}, headers=BEARER, timeout=30)
    assert over.status_code == 413 and over.json()["field"] == "input"
    metrics = httpx2.get(f"{url}/metrics", timeout=30).text
    assert 'plaudit_requests_total{endpoint="classify",model="tiny",outcome="ok"} 1.0' in metrics
    assert 'plaudit_items_total{endpoint="classify",model="tiny"} 1.0' in metrics
    log = (tmp / "serve.log").read_text()
    assert KEY not in log and ENV_KEY not in log and "sk-wrong" not in log


POSTS = ("/score", "/compare", "/rank", "/steps", "/get_reward", "/classify", "/pooling", "/judge", "/feedback")
BODY = b'{"items": [{"id": "x", "label": 1}]}'


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary=", "multipart/mixed",
                                          "application/x-www-form-urlencoded", "image/png", "application/xml",
                                          ";;;", "application/json; charset"])
def test_a_body_that_cannot_be_read_is_a_4xx_naming_it(guarded, content_type):
    """A multipart type without a boundary was a 500 from BentoML's form parser on every endpoint;
    a form type read the JSON as one garbled form key. Each is now a 415 (or, for a JSON type
    with odd parameters, read as JSON), never a 5xx."""
    url, _ = guarded
    for path in POSTS:
        reply = httpx2.post(f"{url}{path}", content=BODY, headers={**BEARER, "Content-Type": content_type}, timeout=30)
        assert reply.status_code in (200, 400, 415, 422), (path, reply.status_code, reply.text)
        if not content_type.startswith("application/json"):
            assert reply.status_code == 415 and reply.json()["field"] == "Content-Type", (path, reply.text)
            assert repr(content_type) in reply.json()["error"]


def test_json_is_read_with_or_without_a_json_content_type(guarded):
    url, _ = guarded
    for headers in ({}, {"Content-Type": "application/json; charset=utf-8"}, {"Content-Type": "text/plain"},
                    {"Content-Type": "application/vnd.api+json"}):
        reply = httpx2.post(f"{url}/feedback", content=BODY, headers={**BEARER, **headers}, timeout=30)
        assert reply.status_code == 200 and reply.json()["unknown"] == ["x"], (headers, reply.text)
    for bad in (b"\xff\xfe{", b"{not json", b""):
        reply = httpx2.post(f"{url}/score", content=bad, headers={**BEARER, "Content-Type": "application/json"},
                            timeout=30)
        assert reply.status_code == 400, (bad, reply.status_code, reply.text)


def test_limits_answer_413_naming_the_limit_and_the_field(guarded):
    url, _ = guarded

    def post(body):
        return httpx2.post(f"{url}/score", json=body, headers=BEARER, timeout=60)

    too_many = post({"items": [item(i) for i in range(65)]})
    assert too_many.status_code == 413 and "limits.max_items" in too_many.json()["error"]
    too_long = post({"items": [item(0), {"prompt": "Hi", "response": "x" * 2001}]})
    assert too_long.status_code == 413 and too_long.json()["field"] == "items[1].response"
    too_many_tokens = post({"items": [item(i, words=100) for i in range(40)]})  # each item well within max_chars
    assert too_many_tokens.status_code == 413 and "limits.max_tokens" in too_many_tokens.json()["error"]
    assert post({"items": [item(i, words=100) for i in range(2)]}).status_code == 200


def test_overload_sheds_with_503_and_loses_no_accepted_request(guarded):
    url, _ = guarded
    body = {"items": [item(i, words=80) for i in range(12)]}  # about 6,100 tokens: within max_tokens
    expected = httpx2.post(f"{url}/score", json=body, headers=BEARER, timeout=60).json()["rewards"]
    with httpx2.Client(headers=BEARER, timeout=120, limits=httpx2.Limits(max_connections=64)) as client:
        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(lambda _: client.post(f"{url}/score", json=body), range(48)))
    codes = [a.status_code for a in answers]
    assert set(codes) <= {200, 503}, codes
    shed = [a for a in answers if a.status_code == 503]
    assert shed, "48 simultaneous requests against a queue of 6 must shed some"
    assert all(a.headers["retry-after"] == "1" and "limits.max_queue" in a.json()["error"] for a in shed)
    assert codes.count(200) >= MAX_QUEUE
    for accepted in (a for a in answers if a.status_code == 200):  # whole and right, never partial
        assert accepted.json()["rewards"] == pytest.approx(expected, abs=1e-4)
    assert httpx2.get(f"{url}/readyz", timeout=30).status_code == 200
    metrics = httpx2.get(f"{url}/metrics", timeout=30).text
    assert 'outcome="overloaded"' in metrics


def test_bounded_load_every_request_answered_and_consistent(guarded):
    """Four clients (under max_queue) for three seconds, at least 5 and at most 100 requests each
    (so a busy machine changes the count, not the verdict): no errors, each reward as scored alone."""
    url, _ = guarded
    items = [item(i, words=5 + 9 * (i % 9)) for i in range(24)]
    alone = httpx2.post(f"{url}/score", json={"items": items}, headers=BEARER, timeout=60).json()["rewards"]
    deadline = time.monotonic() + 3.0

    def client(c: int) -> list[tuple[int, int, float | None]]:
        seen = []
        with httpx2.Client(headers=BEARER, timeout=60) as http:
            i = c
            while len(seen) < 5 or (time.monotonic() < deadline and len(seen) < 100):
                answer = http.post(f"{url}/score", json={"items": [items[i % len(items)]]})
                reward = answer.json()["rewards"][0] if answer.status_code == 200 else None
                seen.append((answer.status_code, i % len(items), reward))
                i += 4
        return seen

    with ThreadPoolExecutor(4) as pool:
        seen = [s for per_client in pool.map(client, range(4)) for s in per_client]
    assert all(code == 200 for code, _, _ in seen), {code for code, _, _ in seen}
    for _, i, reward in seen:
        assert reward == pytest.approx(alone[i], abs=1e-4)


def test_key_check_takes_every_key_and_both_headers():
    def headers(**h):
        from starlette.datastructures import Headers
        return Headers(headers=h)
    auth = AuthConfig(api_keys=["a-key", "b-key"])
    middleware = ApiKeyMiddleware(app=None, load=lambda: auth)
    assert middleware.allows(headers(authorization="Bearer b-key"))
    assert middleware.allows(headers(authorization="bearer  a-key "))
    assert not middleware.allows(headers(authorization="Basic a-key"))
    assert not middleware.allows(headers(authorization="Bearer a-ke"))
    assert presented_key(headers(**{"x-api-key": "a-key"})) == "a-key"
    assert "a-key" not in repr(auth) and "a-key" not in auth.model_dump_json()
    closed = ApiKeyMiddleware(app=None, load=lambda: None)  # the config could not be read
    assert closed.closed and not closed.allows(headers(authorization="Bearer a-key"))
