"""Process reward models on tiny backbones: step encoding, the read-out at each step's end,
training on TRL's PRM format, step-level AUROC, and /steps through the same API.

The learnable rule: a step is bad when it contains the word "tested". The untrained model
is checked to miss it, so a high AUROC after training means the head learned it.
"""
from __future__ import annotations

import json
import random

import pytest

from plaudit.rewardmodels import InputError, Item, Steps, UnsupportedOperation, load_scorer
from plaudit.rewardmodels.encoding import prompt_text
from plaudit.rewardmodels.prm import encode_steps, split_steps
from plaudit.service.api import ModelPool, steps as steps_endpoint
from plaudit.service.config import ModelConfig, ServiceConfig
from plaudit.schemas import StepsRequest
from plaudit.training.data import StepRecord, read_steps
from plaudit.training.evaluate import auroc, eval_steps
from plaudit.training.prm import PRMConfig, train_prm

from conftest import make_tokenizer, tiny_training
from helpers import BODY

LINES = BODY  # the same code-like lines the BT tests use


def marked_records(n: int, seed: int) -> list[StepRecord]:
    """2-5 steps each; a step is bad (False) when the word "tested" was put into it."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        steps, labels = [], []
        for _ in range(rng.randint(2, 5)):
            line = rng.choice(LINES)
            bad = rng.random() < 0.3
            if bad:
                first, _, rest = line.partition(" ")
                line = f"{first} tested {rest}"
            steps.append(line)
            labels.append(not bad)
        records.append(StepRecord(prompt=f"Task {rng.randint(0, 9)}: write it.", completions=steps, labels=labels))
    return records


def config(base, **overrides) -> PRMConfig:
    return tiny_training(PRMConfig, base, **{"num_train_epochs": 6, **overrides})


@pytest.fixture(scope="module")
def trained_prm(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("prm")
    rows: list[dict] = []
    summary = train_prm(marked_records(40, seed=1), out, config(tiny_base), on_log=rows.append, data="marked")
    return out, summary, rows


# --- splitting and encoding ------------------------------------------------------------------------

@pytest.mark.parametrize("response, steps", [
    ("a\nb\nc", ["a", "b", "c"]),
    ("a\nb\n", ["a", "b"]),  # a trailing separator ends the last step, it does not start an empty one
    ("a\n\nb", ["a", "", "b"]),  # an empty line in the middle is a step: nothing is dropped
    ("one", ["one"]),
])
def test_split_steps(response, steps):
    assert split_steps(response, "\n") == steps


def test_encode_steps_reads_each_step_at_its_last_token():
    """Positions point at the last token of step + separator, and the ids are prompt then steps."""
    tok = make_tokenizer(chat_template=True)
    steps = ["def add(a, b):", "    return a + b", "hello world"]
    ids, positions, cut = encode_steps(tok, "Write it.", steps, "\n", 512)
    assert not cut and len(positions) == 3
    head = tok(prompt_text(tok, "Write it."), add_special_tokens=False)["input_ids"]
    assert ids[:len(head)] == head
    starts = [len(head)] + [p + 1 for p in positions[:-1]]
    for step, start, end in zip(steps, starts, positions):
        assert tok.decode(ids[start:end + 1]) == step + "\n"
    assert positions[-1] == len(ids) - 1


def test_encode_steps_cuts_the_prompt_never_a_step():
    tok = make_tokenizer(chat_template=True)
    steps = ["return a + b", "hello world"]
    full, full_positions, _ = encode_steps(tok, "The quick brown fox. " * 20, steps, "\n", 4096)
    ids, positions, cut = encode_steps(tok, "The quick brown fox. " * 20, steps, "\n", 40)
    assert cut and ids == full[-40:]  # the prompt lost its start; every step is whole
    assert positions == [p - (len(full) - 40) for p in full_positions]
    with pytest.raises(InputError) as err:
        encode_steps(tok, "p", ["The quick brown fox jumps over the lazy dog."] * 10, "\n", 40)
    assert err.value.field == "steps" and "max_length 40" in str(err.value)


def test_auroc_matches_counting_pairs():
    """Mann-Whitney AUROC equals the fraction of (positive, negative) pairs ordered right, ties half."""
    rng = random.Random(3)
    scores = [rng.choice([0.1, 0.2, 0.5, 0.7, 0.9]) for _ in range(60)]
    labels = [rng.random() < 0.6 for _ in range(60)]
    pairs = [(p, n) for p, yp in zip(scores, labels) if yp for n, yn in zip(scores, labels) if not yn]
    expected = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert auroc(scores, labels) == pytest.approx(expected)
    assert auroc([0.1, 0.2], [True, True]) is None


def test_read_steps_names_line_and_field(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text(json.dumps({"prompt": "p", "completions": ["a", "b"], "labels": [True, False]}) + "\n"
                    + json.dumps({"prompt": "p", "completions": ["a", "b"], "labels": [True]}) + "\n")
    with pytest.raises(InputError) as err:
        read_steps(path)
    assert f"{path}:2" in str(err.value) and "2 completions" in str(err.value)


# --- training and scoring --------------------------------------------------------------------------

def test_prm_learns_the_step_rule(trained_prm, tiny_base, tmp_path):
    """Held-out step AUROC is high after training and near chance with lr=0."""
    out, summary, rows = trained_prm
    held_out = marked_records(30, seed=99)
    learned = eval_steps(load_scorer(out), held_out)
    train_prm(marked_records(40, seed=1), tmp_path / "untrained", config(tiny_base, num_train_epochs=1, learning_rate=0.0),
              on_log=lambda row: None)
    untrained = eval_steps(load_scorer(tmp_path / "untrained"), held_out)
    assert learned["step_auroc"] > 0.9, learned
    assert untrained["step_auroc"] < learned["step_auroc"] - 0.2, (untrained, learned)
    assert learned["steps"] == sum(len(r.labels) for r in held_out)
    assert rows[-1]["loss"] < rows[0]["loss"] and summary["examples"] == 40


def test_prm_metadata_and_kind(trained_prm):
    scorer = load_scorer(trained_prm[0])
    assert scorer.kind == "prm" and scorer.metadata["separator"] == "\n" and scorer.metadata["aggregate"] == "min"


def test_one_forward_pass_per_trace_and_batch_independence(trained_prm):
    """Step rewards of a trace do not depend on its batch neighbours; each trace is one sequence."""
    scorer = load_scorer(trained_prm[0])
    traces = [Steps(prompt=r.prompt, steps=r.completions) for r in marked_records(12, seed=5)]
    before = scorer.stats()["sequences"]
    together = scorer.score_steps(traces)
    assert scorer.stats()["sequences"] - before == len(traces)  # however many steps each has
    for trace, result in zip(traces, together):
        [alone] = scorer.score_steps([trace])
        assert len(alone.step_rewards) == len(trace.steps)
        assert alone.step_rewards == pytest.approx(result.step_rewards, abs=1e-5)
        assert all(0.0 <= r <= 1.0 for r in alone.step_rewards)


def test_a_step_is_scored_from_what_precedes_it(trained_prm):
    """Causal read-out: appending steps never changes the rewards of the earlier ones."""
    scorer = load_scorer(trained_prm[0])
    [short, long] = scorer.score_steps([Steps(prompt="p", steps=["a + b", "hello world"]),
                                        Steps(prompt="p", steps=["a + b", "hello world", "the lazy dog"])])
    assert long.step_rewards[:2] == pytest.approx(short.step_rewards, abs=1e-5)


def test_score_is_the_aggregate_of_the_split_response(trained_prm):
    scorer = load_scorer(trained_prm[0])
    item = Item(prompt="p", response="hello world\nthe tested dog\nreturn a + b\n")
    [trace] = scorer.score_steps([Steps(prompt="p", steps=["hello world", "the tested dog", "return a + b"])])
    assert scorer.score([item]).rewards[0] == pytest.approx(min(trace.step_rewards), abs=1e-5)


def test_steps_endpoint_both_forms_and_aggregates(trained_prm, tiny_bt):
    pool = ModelPool(ServiceConfig(models={"prm": ModelConfig(path=str(trained_prm[0])),
                                           "bt": ModelConfig(path=str(tiny_bt))}, default_model="prm"))
    split = steps_endpoint(pool, StepsRequest(prompt="p", steps=["a + b", "the tested dog", "hello world"]))
    joined = steps_endpoint(pool, StepsRequest(prompt="p", response="a + b;the tested dog;hello world",
                                               separator=";"))
    assert joined.steps == split.steps and joined.step_rewards == pytest.approx(split.step_rewards, abs=1e-5)
    r = split.step_rewards
    assert split.aggregates == pytest.approx({"min": min(r), "mean": sum(r) / 3, "prod": r[0] * r[1] * r[2],
                                              "last": r[2]})
    assert split.model == "prm" and len(split.id) == 32
    with pytest.raises(UnsupportedOperation) as err:
        steps_endpoint(pool, StepsRequest(model="bt", prompt="p", steps=["a"]))
    assert "prm" in str(err.value) and str(err.value).endswith("configured models that can: prm")


@pytest.mark.parametrize("body, message", [
    ({"prompt": "p"}, "either"),
    ({"prompt": "p", "steps": ["a"], "response": "a"}, "either"),
    ({"prompt": "p", "steps": ["a"], "separator": ";"}, "separator"),
    ({"prompt": "p", "steps": []}, "steps"),
])
def test_steps_request_validation(body, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as err:
        StepsRequest.model_validate(body)
    assert message in str(err.value)


def test_prm_head_refused_as_bt_and_bt_head_refused_as_prm(tiny_bt, tmp_path):
    """A 1-output sequence head is not a 2-class per-token head, and the reverse."""
    from transformers import AutoModelForTokenClassification

    from plaudit.rewardmodels import ModelLoadError

    with pytest.raises(ModelLoadError):
        load_scorer(tiny_bt, kind="prm")
    token = AutoModelForTokenClassification.from_pretrained(tiny_bt, num_labels=2, ignore_mismatched_sizes=True)
    token.save_pretrained(tmp_path / "token")
    make_tokenizer(True).save_pretrained(tmp_path / "token")
    assert load_scorer(tmp_path / "token", kind="prm").kind == "prm"
    with pytest.raises(ModelLoadError):
        load_scorer(tmp_path / "token", kind="bt")


def test_prm_over_http(trained_prm, tiny_bt, tmp_path):
    """/steps in both forms, /score as the aggregate, and 4xx answers that name the field."""
    import httpx2
    import yaml
    from servers import running_service

    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"steps": {"path": str(trained_prm[0])},
                                                 "bt": {"path": str(tiny_bt)}},
                                      "default_model": "steps", "limits": {"max_items": 8, "max_chars": 200}}))
    local = load_scorer(trained_prm[0])
    trace = ["def add(a, b):", "the tested dog", "return a + b"]
    with running_service(config, tmp_path) as (url, _):
        split = httpx2.post(f"{url}/steps", json={"prompt": "p", "steps": trace}).json()
        joined = httpx2.post(f"{url}/steps", json={"prompt": "p", "response": "\n".join(trace) + "\n"}).json()
        expected = local.score_steps([Steps(prompt="p", steps=trace)])[0].step_rewards
        assert split["step_rewards"] == pytest.approx(expected, abs=1e-5)
        assert joined["steps"] == trace and joined["step_rewards"] == pytest.approx(expected, abs=1e-5)
        assert split["aggregates"]["min"] == pytest.approx(min(expected), abs=1e-5)
        scored = httpx2.post(f"{url}/score", json={"items": [{"prompt": "p", "response": "\n".join(trace)}]}).json()
        assert scored["rewards"][0] == pytest.approx(min(expected), abs=1e-5)
        both = httpx2.post(f"{url}/steps", json={"prompt": "p", "steps": trace, "response": "x"})
        assert both.status_code == 400 and "either" in both.text
        too_many = httpx2.post(f"{url}/steps", json={"prompt": "p", "steps": ["a"] * 9})
        assert too_many.status_code == 413 and "limits.max_items" in too_many.text
        too_long = httpx2.post(f"{url}/steps", json={"prompt": "p", "steps": ["a", "b" * 201]})
        assert too_long.status_code == 413 and "steps[1]" in too_long.text
        not_prm = httpx2.post(f"{url}/steps", json={"model": "bt", "prompt": "p", "steps": trace})
        assert not_prm.status_code == 422 and "prm" in not_prm.text
        models = {m["name"]: m["kind"] for m in httpx2.get(f"{url}/models").json()["models"]}
        assert models == {"steps": "prm", "bt": "bt"}
