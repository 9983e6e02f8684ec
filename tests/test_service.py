"""The HTTP API over a real BentoML server on 127.0.0.1, serving tiny models."""
from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import yaml

from plaudit.rewardmodels.encoding import encode_item
from plaudit.rewardmodels import Item, load_scorer
from servers import running_service

ITEMS = [{"prompt": "Write a function that adds two numbers.", "response": "def add(a, b):\n    return a + b\n"},
         {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}],
          "response": "hello world"},
         {"prompt": "The quick brown fox " * 30, "response": "jumps over the lazy dog"}]


@pytest.fixture(scope="module")
def service(tiny_bt, tiny_bt_plain, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    config = tmp / "plaudit.yaml"
    config.write_text(yaml.safe_dump({
        "models": {"tiny": {"path": str(tiny_bt), "max_length": 64},
                   "plain": {"path": str(tiny_bt_plain), "kind": "bt"}},
        "default_model": "tiny",
        "limits": {"max_items": 40, "max_chars": 2000}}))
    with running_service(config, tmp) as (url, _):
        with httpx2.Client(base_url=url, timeout=60) as client:
            yield client


@pytest.fixture(scope="module")
def local(tiny_bt):
    """The same model in-process: the API must answer exactly what the library computes."""
    return load_scorer(tiny_bt, max_length=64)


def test_score_matches_library(service, local):
    body = service.post("/score", json={"items": ITEMS}).json()
    expected = local.score([Item.model_validate(i) for i in ITEMS])
    assert body["model"] == "tiny"
    assert body["rewards"] == pytest.approx(expected.rewards, abs=1e-5)
    assert body["truncated"] == [False, False, True]  # the 600-character prompt does not fit 64 tokens
    assert len(set(body["ids"])) == 3


def test_compare_and_rank_agree_with_score(service):
    a, b = ITEMS[0]["response"], "def add(a, b):\n    return a - b\n"
    prompt = ITEMS[0]["prompt"]
    rewards = service.post("/score", json={"items": [{"prompt": prompt, "response": a},
                                                     {"prompt": prompt, "response": b}]}).json()["rewards"]
    pair = service.post("/compare", json={"pairs": [{"prompt": prompt, "a": a, "b": b}]}).json()
    assert pair["margins"][0] == pytest.approx(rewards[0] - rewards[1], abs=1e-5)
    assert pair["probabilities"][0] == pytest.approx(1 / (1 + math.exp(-(rewards[0] - rewards[1]))), abs=1e-5)
    ranked = service.post("/rank", json={"prompt": prompt, "responses": [b, a, "pass"]}).json()
    assert ranked["order"] == sorted(range(3), key=lambda i: -ranked["rewards"][i])
    assert ranked["rewards"][:2] == pytest.approx([rewards[1], rewards[0]], abs=1e-5)


def test_get_reward_openrlhf_contract(service, local):
    user = [{"role": "user", "content": ITEMS[0]["prompt"]}]
    text = local.tokenizer.apply_chat_template(user + [{"role": "assistant", "content": ITEMS[0]["response"]}],
                                               tokenize=False)
    prompt = local.tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    body = service.post("/get_reward", json={"query": [text], "prompts": [prompt], "labels": ["x"]}).json()
    assert set(body) == {"rewards", "scores", "extra_logs", "ids"} and len(body["ids"]) == 1  # ids: for /feedback
    # already templated: read back into (prompt, response), so it equals /score on the same item
    assert body["rewards"][0] == pytest.approx(local.score([Item.model_validate(ITEMS[0])]).rewards[0], abs=1e-5)


def test_model_choice_and_models_listing(service):
    plain = service.post("/score", json={"model": "plain", "items": ITEMS[:1]}).json()
    assert plain["model"] == "plain"
    models = {m["name"]: m for m in service.get("/models").json()["models"]}
    assert set(models) == {"tiny", "plain"} and models["tiny"]["default"] and not models["plain"]["default"]
    assert models["tiny"]["kind"] == "bt"
    assert models["tiny"]["metadata"]["normalization"] == {"mean": 0.0, "std": 1.0, "stored": False}
    assert models["tiny"]["metadata"]["max_length"] == 64


def test_concurrent_single_item_requests_are_batched(service, local):
    """OpenRLHF sends one sample per request: the server must merge them into batches."""
    before = {m["name"]: m["stats"] for m in service.get("/models").json()["models"]}["tiny"]
    items = [{"prompt": f"question {i} " * (1 + i % 7), "response": f"answer {i}"} for i in range(64)]
    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(lambda it: service.post("/score", json={"items": [it]}), items))
    assert all(r.status_code == 200 for r in replies)
    got = [r.json()["rewards"][0] for r in replies]
    assert got == pytest.approx(local.score([Item.model_validate(i) for i in items]).rewards, abs=1e-4)
    after = {m["name"]: m["stats"] for m in service.get("/models").json()["models"]}["tiny"]
    calls, seqs = after["forward_calls"] - before["forward_calls"], after["sequences"] - before["sequences"]
    assert seqs == 64
    assert calls < 64, f"no request merging: {calls} forward calls for 64 single-item requests"


def test_samples_of_a_prompt_sent_one_per_request_share_its_pass(service, local):
    """GRPO-shaped load as OpenRLHF sends it: 4 prompts x 8 samples, one per request, from 16
    clients, prompts interleaved. Later samples find their prompt in the prefix cache; the
    rewards are the in-process ones, and /models and /metrics count the same hits."""
    prompts = [f"task {p}: explain the steps of the function that adds" for p in range(4)]  # 40-odd tokens
    items = [{"prompt": prompts[i % 4], "response": f"ok {i}"} for i in range(32)]
    stats = lambda: {m["name"]: m["stats"] for m in service.get("/models").json()["models"]}["tiny"]["prefix_cache"]
    before = stats()
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda it: service.post("/score", json={"items": [it]}), items))
    got = [r.json()["rewards"][0] for r in replies]
    assert got == pytest.approx(local.score([Item.model_validate(i) for i in items]).rewards, abs=1e-4)
    after = stats()
    hits, misses = after["hits"] - before["hits"], after["misses"] - before["misses"]
    computed = {tuple(s[:s.prefix]) for s in (encode_item(local.tokenizer, Item.model_validate(i), 64)[0]
                                              for i in items)}
    assert misses == len(computed) == 4 and hits >= 4, (hits, misses)  # each prompt computed once
    metrics = service.get("/metrics").text
    for name, key in (("plaudit_prefix_cache_hits_total", "hits"), ("plaudit_prefix_cache_bytes", "bytes")):
        sample = re.search(rf'^{name}{{model="tiny"}} (\S+)$', metrics, re.M)
        assert sample and float(sample[1]) == after[key], (name, sample and sample[0], after)


@pytest.mark.parametrize("body, status, names", [
    ({"items": []}, 400, "items"),
    ({"items": [{"prompt": "a"}]}, 400, "response"),
    ({"items": [{"prompt": "a", "response": 3}]}, 400, "response"),
    ({"itemz": [{"prompt": "a", "response": "b"}]}, 400, "items"),
    ({"items": [{"prompt": [{"role": "user"}], "response": "b"}]}, 400, "content"),
    ({"model": "nope", "items": [{"prompt": "a", "response": "b"}]}, 404, "model"),
    ({"items": [{"prompt": "a", "response": "b" * 2001}]}, 413, "items[0].response"),
    ({"items": [{"prompt": [{"role": "user", "content": "a" * 2001}], "response": "b"}]}, 413,
     "items[0].prompt[0].content"),
    ({"items": [{"prompt": "a", "response": "b"}] * 41}, 413, "limits.max_items"),
])
def test_bad_input_gets_4xx_naming_the_field(service, body, status, names):
    reply = service.post("/score", json=body)
    assert reply.status_code == status, reply.text
    assert names in reply.text


def test_bad_input_on_other_endpoints(service):
    assert service.post("/compare", json={"pairs": []}).status_code == 400
    assert service.post("/rank", json={"prompt": "p", "responses": []}).status_code == 400
    empty = service.post("/get_reward", json={"query": []})  # the empty shard of a trainer's second URL
    assert empty.status_code == 200 and empty.json()["rewards"] == []
    reply = service.post("/get_reward", json={"query": ["x" * 2001]})
    assert reply.status_code == 413 and "query[0]" in reply.text
    reply = service.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert reply.status_code == 400


def test_openapi_document_has_the_schemas(service):
    spec = service.get("/docs.json").json()
    assert {"/score", "/compare", "/rank", "/get_reward"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert "Item" in schemas and "Pair" in schemas
    assert "items" in schemas["ScoreRequestIODescriptor"]["properties"]
    assert spec["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ScoreRequestIODescriptor")


def test_a_query_apart_from_its_prompt_is_a_4xx_naming_the_entry(service):
    reply = service.post("/get_reward", json={"query": ["p: ok", "other"], "prompts": ["p: ", "p: "]})
    assert reply.status_code == 422 and reply.json()["field"] == "query[1]"
