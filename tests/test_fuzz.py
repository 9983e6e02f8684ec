"""Schemathesis against a real BentoML server on 127.0.0.1 (issue 7, "Reliability"): whatever the
body, valid or not, the service answers 2xx or 4xx, never 5xx, and what it answers 200 with
matches its OpenAPI document.

The server serves a tiny BT, GPM and PRM and three judges (TICK, pairwise, direct) whose
LLM is a scripted OpenAI-compatible server that also gives answers a judge cannot read.
"""
from __future__ import annotations

import copy
import zlib

import httpx2
import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from plaudit.judges.registry import METHODS
from plaudit.rewardmodels.sandbox import sandbox_unavailable
from servers import FakeLLM, http_server, running_service

MODELS = ("bt", "gpm", "prm")
NO_SANDBOX = sandbox_unavailable()  # why /run_code cannot be fuzzed here, or None
JUDGES = ("rater", "checklist", "arena")
NAMES = {"/steps": ("prm",)}  # the one that can; the default model (when absent), bt, cannot


def respond(messages: list[dict]) -> str | tuple[str, dict[str, float]]:
    """Each judge prompt gets a fitting answer, except one in seven, which gets an unreadable one
    (chosen by a hash of the question, so a retry at temperature 1.0 gets the same)."""
    last = messages[-1]["content"]
    h = zlib.crc32(last.encode()) % 7
    if h == 0:
        return "I would rather not say."
    if messages[0]["role"] == "system":  # TICK's checklist request
        return "1. Is the response correct?\n2. Is it brief?"
    if last.endswith("A or B."):
        return ("A", {"A": -0.2, "B": -1.7}) if h % 2 else ("B", {"B": -0.1, "A": -2.4})
    if last.endswith("YES or NO."):
        return ("YES", {"YES": -0.3, "NO": -1.4}) if h % 2 else ("NO", {"NO": -0.5, "YES": -1.0})
    return str(h)  # direct: a rating 1..6


@pytest.fixture(scope="module")
def service_url(tiny_bt, tiny_gpm, tiny_prm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    # FakeLLM.serving() stops after 60 s; the fuzzing may take longer.
    with http_server(FakeLLM(respond)._handle, lifetime_s=900) as llm_url:
        config = tmp / "plaudit.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"bt": {"path": str(tiny_bt), "max_length": 96}, "gpm": {"path": str(tiny_gpm)},
                       "prm": {"path": str(tiny_prm), "kind": "prm", "max_length": 96},
                       **({} if NO_SANDBOX else {"sandbox": {"kind": "execution", "settings": {
                           "slots": 2, "wall_s": 4, "test_s": 2, "compile_s": 10, "memory_mb": 256}}})},
            "default_model": "bt",
            "backends": {"fake": {"url": llm_url, "timeout_s": 10, "max_retries": 0}},
            "default_backend": "fake",
            "judges": {"rater": {"method": "direct"}, "arena": {"method": "pairwise"},
                       "checklist": {"method": "tick", "checklist_dir": str(tmp / "checklists")}},
            "default_judge": "checklist",
            "limits": {"max_items": 12, "max_chars": 2000}}))
        # Bare `tick` keeps its checklists in the cache; no API keys, whatever this environment has.
        env = {"PLAUDIT_CACHE": str(tmp / "cache"), "PLAUDIT_API_KEYS": ""}
        with running_service(config, tmp, env=env) as (url, _):
            yield url


def fuzzable(doc: dict) -> dict:
    """The served document (made exact by service/openapi.py), narrowed to what is worth fuzzing.

    Valid model and judge names are the configured ones, or nearly every request would stop at
    the 404 for an unknown model. /steps, /classify and /pooling get the either/or of their model
    validators, or hardly a valid body would be generated. Only plaudit's endpoints are kept (not BentoML's health ones)."""
    doc = copy.deepcopy(doc)
    schemas = doc["components"]["schemas"]
    paths = {}
    for path, methods in doc["paths"].items():
        if "post" not in methods:
            continue
        request = schemas[methods["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
                          .rsplit("/", 1)[1]]
        for field in ("model", "judge"):
            if field in request["properties"]:  # other names: negative mode sends them
                request["properties"][field] = {"enum": list(NAMES.get(path, (*MODELS, *JUDGES, *METHODS, None)))}
        paths[path] = methods
    # /steps takes `steps` or `response` (with `separator`): a model validator, not in the JSON schema.
    steps = schemas["StepsRequestIODescriptor"]
    fields = steps.pop("properties")
    del steps["required"], steps["additionalProperties"]
    fields["steps"], fields["response"] = fields["steps"]["anyOf"][0], fields["response"]["anyOf"][0]  # not null
    steps["oneOf"] = [{"type": "object", "required": ["prompt", trace], "additionalProperties": False,
                       "properties": {name: fields[name] for name in ("model", "prompt", trace, *extra)}}
                      for trace, extra in (("steps", ()), ("response", ("separator",)))]
    # /classify and /pooling take `input` or `messages` (vLLM's two forms): a model validator too.
    for name in ("ClassifyRequestIODescriptor", "PoolingRequestIODescriptor"):
        pooled = schemas[name]
        fields = pooled.pop("properties")
        pooled.pop("required", None), pooled.pop("additionalProperties", None)
        for form in ("input", "messages"):
            fields[form] = {**fields[form], "anyOf": [a for a in fields[form]["anyOf"] if a != {"type": "null"}]}
        common = [field for field in fields if field not in ("input", "messages")]
        pooled["oneOf"] = [{"type": "object", "required": [form], "additionalProperties": False,
                            "properties": {field: fields[field] for field in (*common, form)}}
                           for form in ("input", "messages")]
    paths["/models"] = doc["paths"]["/models"]
    return {**doc, "paths": paths}


def test_the_served_document_is_exact(service_url):
    """BentoML alone documents `model: str | None` as a string and a chat prompt as a string,
    and leaves GET /models out; the served document keeps the unions and lists it."""
    doc = httpx2.get(f"{service_url}/docs.json").json()
    score = doc["paths"]["/score"]["post"]
    assert score["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ScoreRequestIODescriptor"}
    schemas = doc["components"]["schemas"]
    assert {"type": "null"} in schemas["ScoreRequestIODescriptor"]["properties"]["model"]["anyOf"]
    assert len(schemas["Item"]["properties"]["prompt"]["anyOf"]) == 2  # text or a conversation
    assert {"401", "413", "503"} <= set(score["responses"]) and "/models" in doc["paths"]


@pytest.fixture(scope="module")
def api_schema(service_url):
    schema = schemathesis.openapi.from_dict(fuzzable(httpx2.get(f"{service_url}/docs.json").json()))
    schema.config.update(base_url=service_url)
    return schema


POSTS = ("/score", "/compare", "/rank", "/steps", "/get_reward", "/classify", "/pooling", "/judge", "/feedback",
         "/run_code")
# Schema-valid bodies everywhere; schema-invalid ones where there is a body to break.
OPERATIONS = ([("POST", path, GenerationMode.POSITIVE) for path in POSTS]
              + [("POST", path, GenerationMode.NEGATIVE) for path in POSTS]
              + [("GET", "/models", GenerationMode.POSITIVE)])


def test_every_documented_endpoint_is_fuzzed(api_schema):
    """An endpoint added to the API is added to OPERATIONS too, or this fails."""
    documented = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert documented == {(method, path) for method, path, _ in OPERATIONS}


# schemathesis.pytest.from_fixture cannot be used: with pytest 9 it fails on the removed
# `Node._nodeid`. Each operation's strategy runs under @given instead.
@pytest.mark.parametrize("method, path, mode", OPERATIONS, ids=[f"{m} {p} {g.value}" for m, p, g in OPERATIONS])
def test_no_request_makes_a_server_error(api_schema, method, path, mode):
    """Any body, schema-valid or not: never a 5xx, and a 200 answer matches the document."""
    if path == "/run_code" and NO_SANDBOX:
        pytest.skip(f"no sandbox for /run_code: {NO_SANDBOX}")
    statuses = []

    @given(case=api_schema[path][method].as_strategy(mode))
    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    def fuzz(case):
        response = case.call(timeout=60)
        statuses.append(response.status_code)
        # Only answers are checked against the document: BentoML's own 400 body does not match the
        # error schema it documents (its `detail` is a list, documented as a string).
        checks = [not_a_server_error] + ([response_schema_conformance] if response.status_code == 200 else [])
        case.validate_response(response, checks=checks)

    fuzz()
    if mode is GenerationMode.POSITIVE:  # valid bodies got past validation into plaudit's own code
        assert any(s < 300 or s in (413, 422) for s in statuses), statuses


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
CONTENT_TYPES = st.one_of(
    st.sampled_from(["multipart/form-data", "multipart/form-data; boundary=", "application/x-www-form-urlencoded",
                     "application/json", "application/json; charset=utf-16", "text/plain", "text/html", ""]),
    st.builds("{}/{}; {}".format, HEADER_TEXT, HEADER_TEXT, HEADER_TEXT), HEADER_TEXT,
).map(str.strip)  # an HTTP client will not send a header value with white space around it
BODIES = st.one_of(st.binary(max_size=200), st.sampled_from([b'{"items": [{"id": "x", "label": 1}]}',
                                                             b'{"items": [{"prompt": "p", "response": "r"}]}']))


@pytest.mark.parametrize("path", POSTS)
def test_no_content_type_or_body_makes_a_server_error(service_url, path):
    """Whatever the Content-Type header and the bytes: a 4xx naming the problem, or an answer."""

    @given(content_type=CONTENT_TYPES, body=BODIES)
    @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    def send(content_type, body):
        reply = httpx2.post(f"{service_url}{path}", content=body, headers={"Content-Type": content_type}, timeout=60)
        assert reply.status_code < 500, (content_type, body, reply.status_code, reply.text)
        if reply.status_code >= 400:
            assert set(reply.json()) & {"error", "detail"}, reply.text

    send()
