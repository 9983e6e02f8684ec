"""/get_reward as RL trainers call it: OpenRLHF decodes prompt + generated tokens with the
special tokens kept, so a query ends with eos, with nothing (cut at max_tokens) or with
pads. Every served kind must give the reward /score gives the same conversation."""
from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import httpx2
import pytest
import yaml

from conftest import tiny_training
from plaudit.rewardmodels import InputError, Item, load_scorer
from plaudit.rewardmodels.loading import write_metadata
from plaudit.rewardmodels.queries import parse_chat, score_queries, strip_end
from servers import FakeLLM, running_service

TOL = 1e-4
CONVERSATIONS = [
    ([{"role": "user", "content": "Write a function that adds two numbers."}], "def add(a, b):\n    return a + b\n"),
    ([{"role": "user", "content": "Write a function that adds two numbers."}], "def add(a, b):\n    return a - b"),
    ([{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "hello world"}],
     "if x < y and not z: return None"),
    ([{"role": "system", "content": "Answer with code."}, {"role": "user", "content": "hello world"}],
     "for i in range(n): total += i * 2 - 1"),
]
ENDINGS = ("eos", "cut", "pads")


def ids_of(encoded) -> list[int]:
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


def trainer_query(tokenizer, messages, response: str, ending: str) -> tuple[str, str, str]:
    """(query, prompt, response text) as OpenRLHF builds them from token ids: the prompt's
    generation-prompt rendering, the policy's response tokens, then eos / nothing / eos + pads."""
    prompt_ids = ids_of(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    end = {"eos": [tokenizer.eos_token_id], "cut": [],
           "pads": [tokenizer.eos_token_id] + [tokenizer.pad_token_id] * 3}[ending]
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=False)  # noqa: E731
    return decode(prompt_ids + response_ids + end), decode(prompt_ids), decode(response_ids)


def shaped(tokenizer, ending: str) -> tuple[list[str], list[str], list[Item]]:
    built = [trainer_query(tokenizer, m, r, ending) for m, r in CONVERSATIONS]
    items = [Item(prompt=m, response=text) for (m, _), (_, _, text) in zip(CONVERSATIONS, built)]
    return [q for q, _, _ in built], [p for _, p, _ in built], items


def test_end_markers_and_chat_renderings_are_read_back():
    assert strip_end("x<|im_end|><pad><pad>", ["<|im_end|>", "<pad>"]) == ("x", True)
    assert strip_end("x<|im_end|>\n", ["<|im_end|>\n", "<|im_end|>"]) == ("x", True)
    assert strip_end("cut mid-senten", ["<|im_end|>"]) == ("cut mid-senten", False)
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"
    assert parse_chat(chatml) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    llama = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n2+2?<|eot_id|>"
             "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert parse_chat(llama) == [{"role": "user", "content": "2+2?"}]
    assert parse_chat("just text") is None and parse_chat(chatml[:-3]) is None


@pytest.fixture(scope="module")
def models(tiny_bt, tiny_bt_plain, tiny_base, tiny_gpm, tiny_prm, tmp_path_factory) -> dict[str, Path]:
    """One served model of every tokenised kind /get_reward accepts."""
    from plaudit.training.codepref import CodePrefConfig, train_codepref
    from helpers import records

    tmp = tmp_path_factory.mktemp("get-reward")
    ensemble = tmp / "ensemble"
    for member in ("m0", "m1"):
        shutil.copytree(tiny_bt, ensemble / member)
    write_metadata(ensemble, {"kind": "ensemble", "members": ["m0", "m1"]})
    train_codepref(records(4), tmp / "codepref", tiny_training(CodePrefConfig, tiny_base, num_train_epochs=1),
                   on_log=lambda row: None)
    return {"bt": tiny_bt, "bt-plain": tiny_bt_plain, "gpm": tiny_gpm, "prm": tiny_prm, "ensemble": ensemble,
            "codepref": tmp / "codepref"}


@pytest.mark.parametrize("kind", ["bt", "gpm", "prm", "ensemble", "codepref"])
@pytest.mark.parametrize("ending", ENDINGS)
def test_trainer_queries_get_the_score_of_their_conversation(models, kind, ending):
    scorer = load_scorer(models[kind], kind="prm" if kind == "prm" else None)
    tokenizer = (scorer.members[0] if kind == "ensemble" else scorer).tokenizer
    queries, prompts, items = shaped(tokenizer, ending)
    expected = scorer.score(items).rewards
    got, ended = score_queries(scorer, queries, prompts)
    assert got.rewards == pytest.approx(expected, abs=TOL)
    assert ended == [ending != "cut"] * len(items)
    if kind in ("bt", "ensemble"):  # without prompts the whole text is read, ended as the template ends a turn
        assert score_queries(scorer, queries, None)[0].rewards == pytest.approx(expected, abs=TOL)


def test_a_model_without_a_chat_template_reads_the_pair_as_score_does(models):
    """No template: the trainer's prompt is plain text and the response ends with the tokenizer's eos."""
    scorer = load_scorer(models["bt-plain"])
    eos = scorer.tokenizer.eos_token
    prompts = ["Write a function that adds two numbers.", "hello world"]
    responses = ["def add(a, b): return a + b", "if x < y and not z: return None"]
    expected = scorer.score([Item(prompt=p, response=r) for p, r in zip(prompts, responses)]).rewards
    for tail in (eos, "", eos + "<pad><pad>"):
        got, _ = score_queries(scorer, [p + r + tail for p, r in zip(prompts, responses)], prompts)
        assert got.rewards == pytest.approx(expected, abs=TOL), tail


def test_a_query_that_does_not_start_with_its_prompt_is_refused_by_name(models):
    scorer = load_scorer(models["bt"])
    with pytest.raises(InputError) as refused:
        score_queries(scorer, ["<|im_start|>user\nhi<|im_end|>\nreply", "other"], ["<|im_start|>user\nhi", "x"])
    assert refused.value.field == "query[1]"
    left_padded = score_queries(scorer, ["<pad><pad>" + "hi there<|im_end|>"], ["hi "])[0].rewards
    assert left_padded == pytest.approx(scorer.score([Item.model_construct(prompt=_templated("hi "),
                                                                             response="there")]).rewards, abs=TOL)


def _templated(text: str):
    from plaudit.rewardmodels.base import Templated
    return Templated(text)


def tick_llm(messages: list[dict]) -> str | tuple[str, dict[str, float]]:
    """A deterministic judge: two questions; YES for a correct `add`, NO otherwise."""
    if messages[0]["role"] == "system":
        return "1. Does it add?\n2. Is it valid Python?"
    good = "a + b" in messages[-1]["content"]
    return ("YES", {"YES": -0.2, "NO": -1.9}) if good else ("NO", {"NO": -0.3, "YES": -1.5})


@pytest.fixture(scope="module")
def served(models, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("get-reward-service")
    with FakeLLM(tick_llm).serving(lifetime_s=1800) as llm_url:  # the module's tests share it
        config = tmp / "plaudit.yaml"
        config.write_text(yaml.safe_dump({
            "models": {"bt": {"path": str(models["bt"])}, "gpm": {"path": str(models["gpm"])},
                       "prm": {"path": str(models["prm"]), "kind": "prm"},
                       "ensemble": {"path": str(models["ensemble"])}, "codepref": {"path": str(models["codepref"])},
                       "math": {"kind": "math", "settings": {"workers": 1}},
                       "boxed": {"kind": "format", "settings": {"require": ["final_answer"]}},
                       "math-and-format": {"kind": "composite", "settings": MATH_AND_FORMAT}},
            "default_model": "bt",
            "backends": {"fake": {"url": llm_url, "timeout_s": 10}}, "default_backend": "fake",
            "judges": {"checklist": {"method": "tick", "checklist_dir": str(tmp / "checklists")}}}))
        with running_service(config, tmp, env={"PLAUDIT_API_KEYS": ""}) as (url, _):
            yield url


MATH_AND_FORMAT = {"parts": {"correct": {"model": "math"}, "boxed": {"model": "boxed", "weight": 0.1}}}


def post(url: str, path: str, body: dict) -> dict:
    reply = httpx2.post(f"{url}{path}", json=body, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.parametrize("model", ["bt", "gpm", "prm", "ensemble", "codepref", "checklist"])
def test_openrlhf_shapes_over_http_match_score(served, models, model):
    """One sample per request as OpenRLHF sends it, a whole batch, and the empty shard a second
    reward URL receives; eos, cut and padded endings: all equal /score on the same conversations."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(models["bt"])  # the policy's tokenizer (the same ChatML template)
    empty = post(served, "/get_reward", {"model": model, "query": [], "prompts": [], "labels": []})
    assert empty["rewards"] == [] and empty["scores"] == []
    for ending in ENDINGS:
        queries, prompts, items = shaped(tokenizer, ending)
        expected = post(served, "/score", {"model": model, "items": [i.model_dump() for i in items]})["rewards"]
        batch = post(served, "/get_reward", {"model": model, "query": queries, "prompts": prompts,
                                             "labels": [None] * len(queries)})
        assert batch["rewards"] == pytest.approx(expected, abs=TOL), ending
        assert batch["extra_logs"]["unfinished"] == [float(ending == "cut")] * len(queries)
        if model in ("bt", "prm", "ensemble", "checklist"):  # kinds with an absolute reward per sample
            one_by_one = [post(served, "/get_reward", {"model": model, "query": [q], "prompts": [p]})["rewards"][0]
                          for q, p in zip(queries, prompts)]
            assert one_by_one == pytest.approx(expected, abs=TOL), ending


@pytest.mark.slow
@pytest.mark.parametrize("name", ["default", "default-gpm", "default-prm"])
def test_the_packaged_defaults_read_smollm2_queries_as_score_does(name):
    """SmolLM2's own template (it adds a default system message) and tokenizer, as OpenRLHF
    would decode a SmolLM2 policy's samples."""
    from plaudit.service.config import DEFAULT_MODELS

    scorer = load_scorer(DEFAULT_MODELS[name])
    for ending in ENDINGS:
        queries, prompts, items = shaped(scorer.tokenizer, ending)
        got, ended = score_queries(scorer, queries, prompts)
        assert got.rewards == pytest.approx(scorer.score(items).rewards, abs=TOL), ending
        assert ended == [ending != "cut"] * len(items)


def test_a_judge_can_be_the_default_model_openrlhf_scores_with(tiny_bt, tmp_path):
    """OpenRLHF names no model: the server's default_model may be a judge."""
    from transformers import AutoTokenizer

    from plaudit.schemas import GetRewardRequest, ScoreRequest
    from plaudit.service import api
    from plaudit.service.config import ModelConfig, ServiceConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_bt)
    queries, prompts, items = shaped(tokenizer, "eos")
    with FakeLLM(tick_llm).serving() as url:
        pool = api.ModelPool(ServiceConfig(
            models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="checklist",
            backends={"fake": {"url": url}}, default_backend="fake",
            judges={"checklist": {"method": "tick", "checklist_dir": str(tmp_path)}}))
        try:
            answer = api.get_reward(pool, GetRewardRequest(query=queries, prompts=prompts))
            expected = api.score(pool, ScoreRequest(items=items, model="checklist")).rewards
        finally:
            pool.close()
    assert answer.rewards == pytest.approx(expected, abs=TOL) and len(set(answer.rewards)) == 2


def test_math_answers_reach_the_math_kind_through_every_trainer_path(served):
    """OpenRLHF's labels, verl's ground_truth, TRL's reference column and a composite: the
    reference reaches the math kind, and other forms of the right answer are paid."""
    import asyncio

    from plaudit.integrations.trl import reward_function
    from plaudit.integrations.verl import compute_score

    prompt = "<|im_start|>user\nWhat is 3/6?<|im_end|>\n<|im_start|>assistant\n"
    responses = ["<think>Halve it.</think> \\boxed{0.5}", "So it is $\\frac{1}{2}$.\nAnswer: 1/2", "\\boxed{2}"]
    labels = ["\\frac{1}{2}"] * 3
    answer = post(served, "/get_reward", {"model": "math", "query": [prompt + r + "<|im_end|>" for r in responses],
                                          "prompts": [prompt] * 3, "labels": labels})
    assert answer["rewards"] == [1.0, 1.0, 0.0] and answer["extra_logs"]["no_answer"] == [0.0, 0.0, 0.0]
    reward = reward_function(served, "math", reference_column="solution")
    assert reward(["What is 3/6?"] * 3, responses, solution=labels) == [1.0, 1.0, 0.0]
    verl = [asyncio.run(compute_score(data_source="math", solution_str=r, ground_truth=0.5,
                                      extra_info={"prompt": "What is 3/6?"}, url=served, model="math"))["score"]
            for r in responses]
    assert verl == [1.0, 1.0, 0.0]
    combined = post(served, "/score", {"model": "math-and-format", "items": [
        {"prompt": "What is 3/6?", "response": r, "reference": "1/2"} for r in responses]})
    assert combined["rewards"] == pytest.approx([1.1, 1.1, 0.1])
    assert combined["details"][0]["part_details"]["correct"]["path"] == "symbolic"
    missing = httpx2.post(f"{served}/score", json={"model": "math", "items": [{"prompt": "p", "response": "1"}]},
                          timeout=60)
    assert missing.status_code == 422 and missing.json()["field"] == "items[0].reference"


# ---- vLLM's pooling API: /classify and /pooling, as verl's reward loop and vLLM scripts call them ----

def verl_input(tokenizer, messages: list[dict], response: str) -> str:
    """What verl's reward loop posts as `input`: the whole conversation rendered by the reward
    model's template, no generation prompt, a leading BOS string removed."""
    text = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": response}],
                                         add_generation_prompt=False, tokenize=False)
    bos = tokenizer.bos_token
    return text[len(bos):] if bos and text.startswith(bos) else text


@pytest.mark.parametrize("model", ["bt", "prm", "ensemble", "checklist"])
def test_vllm_pooling_requests_get_the_reward_of_score(served, models, model):
    """verl's exact request (by the model's path where it has one), a batch of inputs, token
    ids, `messages`, and /pooling: each equals /score on the same conversation; activation on
    gives P(good), as vLLM's sigmoid does for a one-label classifier."""
    from transformers import AutoTokenizer

    from plaudit.rewardmodels.base import sigmoid

    tokenizer = AutoTokenizer.from_pretrained(models["bt"])
    items = [{"prompt": m, "response": r} for m, r in CONVERSATIONS]
    expected = post(served, "/score", {"model": model, "items": items})["rewards"]
    texts = [verl_input(tokenizer, m, r) for m, r in CONVERSATIONS]
    name = str(models[model]) if model in models else model
    for i, text in enumerate(texts):  # one sample per request, as verl sends them; verl 0.9's and older spelling
        for flag in ("use_activation", "activation"):
            answer = post(served, "/classify", {"model": name, "input": text, flag: False})
            assert answer["data"][-1]["probs"][-1] == pytest.approx(expected[i], abs=TOL), (i, flag)
    batch = post(served, "/classify", {"model": model, "input": texts})
    assert batch["object"] == "list" and batch["id"].startswith("classify-") and batch["model"] == model
    assert [d["index"] for d in batch["data"]] == [0, 1, 2, 3] and {d["num_classes"] for d in batch["data"]} == {1}
    p_good = [sigmoid(r) for r in expected] if model in ("bt", "ensemble") else expected
    assert [d["probs"][0] for d in batch["data"]] == pytest.approx(p_good, abs=TOL)
    tokens = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    read = 0 if model == "checklist" else sum(map(len, tokens))  # a judge reads no tokens of its own
    assert batch["usage"]["prompt_tokens"] == batch["usage"]["total_tokens"] == read
    assert len(batch["ids"]) == 4
    if model != "checklist":  # a judge reads text, not tokens
        by_ids = post(served, "/classify", {"model": model, "input": tokens, "use_activation": False})
        assert [d["probs"][0] for d in by_ids["data"]] == pytest.approx(expected, abs=TOL)
    chat = post(served, "/classify", {"model": model, "use_activation": False, "messages": [
        *CONVERSATIONS[0][0], {"role": "assistant", "content": CONVERSATIONS[0][1]}]})
    assert chat["data"][0]["probs"] == pytest.approx([expected[0]], abs=TOL)
    pooled = post(served, "/pooling", {"model": model, "input": texts, "use_activation": False, "task": "classify"})
    assert pooled["id"].startswith("pooling-") and [d["object"] for d in pooled["data"]] == ["pooling"] * 4
    assert [d["data"][0] for d in pooled["data"]] == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("path, body, status, field, needle", [
    ("/classify", {"model": "gpm", "input": "x"}, 422, "model", "not one number per sequence"),
    ("/classify", {"model": "math", "input": "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n\\boxed{1}"},
     422, "model", "reference"),
    ("/classify", {"model": "nowhere", "input": "x"}, 404, "model", "unknown model"),
    ("/classify", {"model": "math", "input": [1, 2]}, 422, "input", "token ids need a model that reads tokens"),
    ("/classify", {"model": "bt", "input": [[1, 2], [10 ** 9]]}, 422, "input[1]", "outside the model's vocabulary"),
    ("/classify", {"model": "prm", "input": ["no template here"]}, 422, "input", "assistant's turn"),
    ("/classify", {"model": "bt", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]},
     422, "messages[1].role", "assistant"),
    ("/pooling", {"model": "bt", "input": "x", "task": "embed"}, 400, None, "task"),
    ("/classify", {"model": "bt", "input": "x", "messages": [{"role": "user", "content": "a"}] * 2}, 400, None,
     "not both"),
    ("/classify", {"model": "bt", "input": "x", "use_activaton": False}, 400, None, "use_activaton"),
])
def test_vllm_pooling_requests_that_cannot_be_answered_name_why(served, path, body, status, field, needle):
    reply = httpx2.post(f"{served}{path}", json=body, timeout=60)
    assert reply.status_code == status, reply.text
    assert needle in reply.text
    if field is not None:
        assert reply.json()["field"] == field


@pytest.mark.slow
def test_verl_classify_request_on_the_packaged_default_gets_score_s_reward():
    """The packaged default BT with SmolLM2's own template, named by its path as verl names it."""
    from plaudit.schemas import ClassifyRequest, ScoreRequest
    from plaudit.service import api
    from plaudit.service.config import DEFAULT_MODEL_DIR, ModelConfig, ServiceConfig

    pool = api.ModelPool(ServiceConfig(models={"default": ModelConfig(path=str(DEFAULT_MODEL_DIR))}))
    scorer = pool.get("default")
    items = [Item(prompt=m, response=r) for m, r in CONVERSATIONS]
    expected = api.score(pool, ScoreRequest(items=items)).rewards
    for (messages, response), reward in zip(CONVERSATIONS, expected):
        request = ClassifyRequest(model=str(DEFAULT_MODEL_DIR), input=verl_input(scorer.tokenizer, messages, response),
                                  use_activation=False)
        answer = api.classify(pool, request)
        assert answer.data[-1].probs[-1] == pytest.approx(reward, abs=TOL)
