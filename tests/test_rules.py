"""Rule kinds (match, numeric, regex, format) and composite rewards: a composite equals the
weighted sum of its parts scored separately, its gates do what the README says, and a part
that fails an item fails it with the reason (a judge behind a scripted chat server)."""
from __future__ import annotations

import shutil

import pytest
from pydantic import ValidationError

from plaudit.rewardmodels import InputError, Item, ModelLoadError, load_scorer
from plaudit.rewardmodels.base import sigmoid
from plaudit.rewardmodels.rules import answer_of, number_in
from plaudit.schemas import GetRewardRequest, RankRequest, ScoreRequest
from plaudit.service import api
from plaudit.service.config import ModelConfig, ServiceConfig
from servers import Fail, FakeLLM

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing (make test installs it)")


def rule(kind: str, **settings):
    return load_scorer(None, name=kind, kind=kind, settings=settings)


def test_the_final_answer_is_boxed_then_an_answer_line_then_the_last_line():
    assert answer_of("so \\boxed{\\frac{1}{2}} and \\boxed{x^{2}}", "final") == "x^{2}"
    assert answer_of("Work...\nFinal Answer: **42**\nThanks", "final") == "42"
    assert answer_of("steps\n#### 1,234", "final") == "1,234"
    assert answer_of("<think>Answer: 3</think>\nIt is 4\n\n", "final") == "It is 4"
    assert answer_of("a\nb\n", "last_line") == "b" and answer_of("", "final") is None


@pytest.mark.parametrize("text, number", [("1,234.5", 1234.5), ("-3 apples", -3.0), ("x = 2.5e-3", 0.0025),
                                          ("3/4", 0.75), ("\\frac{3}{4}", 0.75), ("−7", -7.0), ("v2 has 5", 5.0),
                                          ("no digits", None), ("1/0", None)])
def test_numbers_are_read_as_written(text, number):
    assert number_in(text) == (pytest.approx(number) if number is not None else None)


def test_match_numeric_regex_and_format_rules():
    match = rule("match")
    scored = match.score([Item(prompt="q", response="So the answer is:\nAnswer: Paris.", reference="paris"),
                          Item(prompt="q", response="\\boxed{ROME}", reference=["Paris", "rome"]),
                          Item(prompt="q", response="Answer: Lyon", reference="Paris"),
                          Item(prompt="q", response="", reference="Paris")])
    assert scored.rewards == [1.0, 1.0, 0.0, 0.0]
    assert [d["reason"] for d in scored.details] == [None, None, "mismatch", "no_answer"]
    assert scored.logs["no_answer"] == [0.0, 0.0, 0.0, 1.0]
    assert rule("match", normalise=False).score([Item(prompt="q", response="Answer: Paris.",
                                                      reference="paris")]).rewards == [0.0]
    numeric = rule("numeric", rel_tol=1e-3)
    assert numeric.score([Item(prompt="q", response="#### 1,000", reference=1000),
                          Item(prompt="q", response="Answer: 0.3334", reference="1/3"),
                          Item(prompt="q", response="Answer: 0.34", reference=1 / 3),
                          Item(prompt="q", response="Answer: none", reference=1)]).rewards == [1.0, 1.0, 0.0, 0.0]
    regex = rule("regex", pattern=r"^def \w+\(", ignore_case=True)
    assert regex.score([Item(prompt="q", response="x\nDEF f(a):"), Item(prompt="q", response="f(a)")]).rewards \
        == [1.0, 0.0]
    fmt = rule("format", require=["code_block", "final_answer"], language="python")
    scored = fmt.score([Item(prompt="q", response="```python\nx=1\n```\nAnswer: 1"),
                        Item(prompt="q", response="```bash\nls\n```\nAnswer: 1")])
    assert scored.rewards == [1.0, 0.0] and scored.details[1]["reason"] == "missing: code_block"


@pytest.mark.parametrize("kind, reference, needle", [("match", None, "expected answer"),
                                                     ("numeric", "many", "needs a number"),
                                                     ("match", {"a": 1}, "string")])
def test_a_rule_without_a_usable_reference_names_the_item(kind, reference, needle):
    with pytest.raises(InputError, match=needle) as refused:
        rule(kind).score([Item(prompt="q", response="Answer: 1", reference="1"),
                          Item(prompt="q", response="Answer: 1", reference=reference)])
    assert refused.value.field == "items[1].reference"


def test_rule_settings_are_checked_at_load():
    with pytest.raises(ModelLoadError, match="pattern"):
        rule("regex")
    with pytest.raises(ModelLoadError, match="unterminated"):
        rule("regex", pattern="(")
    with pytest.raises(ModelLoadError, match="require"):
        rule("format", require=["haiku"])


# ---- composites ----

ADD = "```python\ndef add(a, b):\n    return a + b\n```"
HALF = "```python\ndef add(a, b):\n    return 3\n```"  # passes one of the two tests
TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4"
COMPOSITE = {"parts": {"tests": {"model": "exec"},
                       "preference": {"model": "tiny", "weight": 0.1, "transform": "sigmoid",
                                      "requires": {"tests": 1.0}},
                       "rating": {"model": "rate", "weight": 0.01},
                       "format": {"model": "fmt", "weight": 0.0}},
             "requires": {"format": 1.0}, "floor": -1.0}


def rating(messages):
    """The direct judge: 500 for a response saying 'broken', 8 for any other."""
    if "broken" in messages[-1]["content"]:
        raise Fail(500)
    return "Rating: 8"


@pytest.fixture(scope="module")
def pool(tiny_bt, tmp_path_factory):
    with FakeLLM(rating).serving(lifetime_s=1800) as url:  # the module's tests share it
        config = ServiceConfig(
            models={"tiny": ModelConfig(path=str(tiny_bt)),
                    "exec": ModelConfig(kind="execution", settings={"slots": 2, "wall_s": 6}),
                    "fmt": ModelConfig(kind="format", settings={"require": ["code_block"]}),
                    "combo": ModelConfig(kind="composite", settings=COMPOSITE)},
            default_model="tiny", judges={"rate": {"method": "direct"}},
            backends={"fake": {"url": url, "timeout_s": 60, "max_retries": 0}}, default_backend="fake")
        pool = api.ModelPool(config)
        pool.load_all()
        yield pool
        pool.close()


@needs_bwrap
def test_a_composite_is_the_weighted_sum_of_its_parts_behind_its_gates(pool):
    responses = [ADD, HALF, ADD + "\n# broken", "def add(a, b): return a + b  # broken, no fence"]
    items = [Item(prompt="Write add.", response=r, reference=TESTS) for r in responses]
    parts = {name: api.score(pool, ScoreRequest(model=name, items=items)).rewards
             for name in ("exec", "tiny", "fmt")}
    parts["rate"] = [8.0, 8.0, None, None]
    combo = api.score(pool, ScoreRequest(model="combo", items=items))
    assert parts["exec"] == [1.0, 0.5, 1.0, 1.0] and parts["fmt"] == [1.0, 1.0, 1.0, 0.0]
    # passing: tests + 0.1 sigmoid(BT) + 0.01 rating; half passing: no preference; no fence: the floor
    assert combo.rewards[0] == pytest.approx(1.0 + 0.1 * sigmoid(parts["tiny"][0]) + 0.08, abs=1e-9)
    assert combo.rewards[1] == pytest.approx(0.5 + 0.08, abs=1e-9)
    assert combo.rewards[2] is None and combo.errors[2].startswith("part rating (rate): ")
    assert "HTTP 500" in combo.errors[2]
    assert combo.rewards[3] == -1.0 and combo.errors[3] is None  # the gate is shut: the failed judge is moot
    assert combo.details[0]["counted"] == ["tests", "preference", "rating", "format"]
    assert combo.details[1]["counted"] == ["tests", "rating", "format"] and combo.details[3]["counted"] == []
    assert combo.details[0]["parts"]["preference"] == pytest.approx(sigmoid(parts["tiny"][0]))
    assert combo.details[1]["part_details"]["tests"]["passed"] == 1 and "tests" not in \
        combo.details[1]["part_details"]["tests"]
    with_tests = api.score(pool, ScoreRequest(model="combo", items=items[:1], test_outcomes=True))
    assert len(with_tests.details[0]["part_details"]["tests"]["tests"]) == 2

    ranked = api.rank(pool, RankRequest(model="combo", prompt="Write add.", responses=[HALF, ADD], reference=TESTS))
    assert ranked.order == [1, 0] and ranked.rewards == pytest.approx(combo.rewards[1::-1])

    rewarded = api.get_reward(pool, GetRewardRequest(model="combo", query=["Write add." + r for r in responses],
                                                     prompts=["Write add."] * 4, labels=[TESTS] * 4))
    # (the BT part reads an untemplated query differently from /score's chat-templated prompt)
    assert rewarded.rewards[0] > 1.08 and rewarded.rewards[1] == pytest.approx(0.58) and rewarded.rewards[3] == -1.0
    neutral = pool.get("combo").neutral_reward
    assert rewarded.rewards[2] == neutral and rewarded.extra_logs["error"] == [0.0, 0.0, 1.0, 0.0]
    assert rewarded.extra_logs["part/tests"] == [1.0, 0.5, 1.0, 1.0]
    assert rewarded.extra_logs["part/format"] == [1.0, 1.0, 1.0, 0.0]


@needs_bwrap
def test_a_part_refusing_the_request_refuses_it(pool):
    with pytest.raises(InputError) as refused:
        api.score(pool, ScoreRequest(model="combo", items=[Item(prompt="p", response=ADD)]))
    assert refused.value.field == "items[0].reference"


def test_a_kind_s_settings_are_checked_with_the_config():
    """Each kind without weights declares its Settings; the config checks them at start-up, by name."""
    with pytest.raises(ValidationError, match=r"models\.m[\s\S]*math: settings\.timeout_s: Input should be greater"):
        ServiceConfig(models={"m": {"kind": "math", "settings": {"timeout_s": 0}}}, default_model="m")
    with pytest.raises(ValidationError, match="the bt kind loads a model folder"):
        ServiceConfig(models={"m": {"kind": "bt"}}, default_model="m")
    with pytest.raises(ValidationError, match="settings are for kinds without weights"):
        ServiceConfig(models={"m": {"path": "/models/x", "settings": {"slots": 2}}}, default_model="m")


@pytest.mark.parametrize("models, needle", [
    ({"c": {"kind": "composite", "settings": {"parts": {"x": {"model": "nowhere"}}}}}, "parts.x.model"),
    ({"c": {"kind": "composite", "settings": {"parts": {"x": {"model": "c"}}}}}, "contains itself"),
    ({"c": {"kind": "composite", "settings": {"parts": {"x": {"model": "m"}}, "requires": {"y": 1}}}}, "not parts"),
    ({"c": {"kind": "composite", "settings": {"parts": {}}}}, "settings.parts"),
])
def test_composite_config_errors_name_the_problem(models, needle):
    """Settings are checked with the config (a ValidationError), the parts they name at load."""
    with pytest.raises((ModelLoadError, ValidationError), match=needle):
        api.ModelPool(ServiceConfig(models={"m": {"kind": "match"}, **models}, default_model="m")).load_all()
