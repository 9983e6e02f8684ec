"""LLM judges through the scorer interface: a scripted chat server on 127.0.0.1 for parsing,
retries and unscored answers; the real llama.cpp server with the packaged SmolLM2 in `slow`."""
from __future__ import annotations

import math
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml
from pydantic import ValidationError

from plaudit.judges.backends import BackendUnavailable, Completion
from plaudit.judges.base import read_choice
from plaudit.schemas import JudgeRequest
from plaudit.judges.direct import parse_rating
from plaudit.judges.tick import parse_checklist
from plaudit.rewardmodels import InputError, Item, Pair
from plaudit.service import api
from plaudit.service.config import ModelConfig, ServiceConfig
from plaudit.schemas import CompareRequest, GetRewardRequest, ScoreRequest
from servers import Fail, FakeLLM

INSTRUCTION = "Write a Python function `add(a, b)` that returns the sum."
QUESTIONS = "Here you go:\n1. Does the function add a and b?\n- Is it valid Python?\n2) Does the function add a and b?"


def is_checklist_request(messages) -> bool:
    return messages[0]["role"] == "system"


def response_of(messages) -> str:
    text = messages[-1]["content"]
    return text.split("Response:\n", 1)[1].split("\n\nQuestion:", 1)[0]


def tick_llm(messages):
    """Questions for a checklist; per response: 'good' YES, 'bad' NO (by logprobs), 'half' one of
    each question readable, anything else unreadable text."""
    if is_checklist_request(messages):
        return QUESTIONS
    response, question = response_of(messages), messages[-1]["content"]
    if "good" in response:
        return "YES", {"YES": -0.1, "NO": -2.4}
    if "bad" in response:
        return "NO", {"NO": -0.05, " yes": -3.0, "Yes": -4.0}
    if "half" in response and "valid Python" in question:
        return "No."
    return "I cannot say"


def p(yes: float, no: float) -> float:
    return math.exp(yes) / (math.exp(yes) + math.exp(no))


def make_pool(url: str, tmp_path, tiny_bt, **judges) -> api.ModelPool:
    return api.ModelPool(ServiceConfig(
        models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny",
        backends={"fake": {"url": url, "timeout_s": 60, "max_retries": 1, "backoff_s": 0.01}}, default_backend="fake",
        judges={"tick-fake": {"method": "tick", "checklist_dir": str(tmp_path / "checklists")}, **judges}))


@pytest.fixture
def tick(tmp_path, tiny_bt):
    llm = FakeLLM(tick_llm)
    with llm.serving() as url:
        pool = make_pool(url, tmp_path, tiny_bt)
        yield llm, pool
        pool.close()


def test_parse_checklist():
    assert parse_checklist(QUESTIONS) == ["Does the function add a and b?", "Is it valid Python?"]
    assert parse_checklist("1. Only one?\nNot a question") is None
    assert parse_checklist("\n".join(f"{i}. Question {i}?" for i in range(12))) == [f"Question {i}?" for i in range(8)]


def test_read_choice_from_logprobs_then_text():
    def completion(text, top=None):
        return Completion(text, top, 1)

    assert read_choice(completion("YES", {"YES": -0.1, "NO": -2.4}), ("YES", "NO")) == pytest.approx(p(-0.1, -2.4))
    both_spellings = {" yes": math.log(0.3), "Yes": math.log(0.3), "NO": math.log(0.2)}
    assert read_choice(completion("Yes", both_spellings), ("YES", "NO")) == pytest.approx(0.6 / 0.8)
    assert read_choice(completion("No, it does not."), ("YES", "NO")) == 0.0
    assert read_choice(completion("**YES**"), ("YES", "NO")) == 1.0
    assert read_choice(completion("Maybe"), ("YES", "NO")) is None
    assert read_choice(completion("Answer", {"The": -0.1}), ("A", "B")) is None  # 'Answer' is not 'A'
    assert parse_rating("Rating: 7/10") == 7 and parse_rating("42") is None and parse_rating("none") is None


def test_tick_asks_every_question_and_generates_one_checklist(tick):
    llm, pool = tick
    judge = pool.judge("tick-fake")
    request = JudgeRequest(judge="tick-fake", instruction=INSTRUCTION, responses=["good", "bad"])
    with ThreadPoolExecutor(4) as threads:  # four callers at once share one generation
        answers = list(threads.map(lambda _: judge.run(request), range(4)))
    assert sum(is_checklist_request(b["messages"]) for b in llm.bodies) == 1
    first = answers[0]
    assert first.checklist == ["Does the function add a and b?", "Is it valid Python?"]
    assert sorted(a.checklist_source for a in answers) == ["cache"] * 3 + ["generated"]
    good, bad = first.results
    assert [a.p_yes for a in good.answers] == pytest.approx([p(-0.1, -2.4)] * 2)
    assert good.pass_rate == 1.0 and good.reward == pytest.approx(p(-0.1, -2.4))
    assert [a.answer for a in bad.answers] == ["NO", "NO"] and bad.pass_rate == 0.0
    assert bad.reward == pytest.approx((math.exp(-3.0) + math.exp(-4.0)) / (math.exp(-3.0) + math.exp(-4.0) + math.exp(-0.05)))
    assert all(b["logprobs"] for b in llm.bodies if not is_checklist_request(b["messages"]))


def test_unreadable_answers_are_unscored_never_no(tick):
    llm, pool = tick
    result = pool.judge("tick-fake").run(JudgeRequest(instruction=INSTRUCTION, responses=["meh", "half"]))
    meh, half = result.results
    assert meh.reward is None and meh.unscored == 2 and [a.answer for a in meh.answers] == [None, None]
    assert meh.pass_rate is None  # not 0: nothing was read
    # 'half': the first question unreadable, the second read as NO from the text
    assert half.unscored == 1 and half.pass_rate == 0.0 and half.reward == 0.0
    # every unreadable question was asked 1 + parse_retries (2) times, the retries at temperature 1
    meh_bodies = [b for b in llm.bodies if not is_checklist_request(b["messages"]) and response_of(b["messages"]) == "meh"]
    assert len(meh_bodies) == 6 and sorted(b["temperature"] for b in meh_bodies) == [0.0] * 2 + [1.0] * 4
    stats = pool.judge("tick-fake").stats()
    assert (stats["answers"], stats["unscored"], stats["parse_retries"]) == (4, 3, 6)


def test_checklists_are_kept_on_disk_and_callers_may_bring_their_own(tmp_path, tiny_bt):
    llm = FakeLLM(tick_llm)
    with llm.serving() as url:
        for expected in ("generated", "cache"):  # the second pool stands for a restart
            pool = make_pool(url, tmp_path, tiny_bt)
            result = pool.judge("tick-fake").run(JudgeRequest(instruction=INSTRUCTION, responses=["good"]))
            assert result.checklist_source == expected
            pool.close()
        assert sum(is_checklist_request(b["messages"]) for b in llm.bodies) == 1
        pool = make_pool(url, tmp_path, tiny_bt)
        mine = pool.judge("tick-fake").run(JudgeRequest(instruction="Something new.", responses=["good"],
                                                        checklist=["Is it short?"]))
        assert mine.checklist == ["Is it short?"] and mine.checklist_source == "caller"
        assert sum(is_checklist_request(b["messages"]) for b in llm.bodies) == 1
        pool.close()


def test_a_checklist_that_cannot_be_generated_leaves_responses_unscored_and_is_not_stored(tmp_path, tiny_bt):
    llm = FakeLLM(lambda messages: "I will just answer the instruction." if is_checklist_request(messages) else "YES")
    with llm.serving() as url:
        pool = make_pool(url, tmp_path, tiny_bt)
        for _ in range(2):
            result = pool.judge("tick-fake").run(JudgeRequest(instruction=INSTRUCTION, responses=["good"]))
            assert result.checklist == [] and result.results[0].reward is None
        assert sum(is_checklist_request(b["messages"]) for b in llm.bodies) == 6  # 3 tries, each call
        pool.close()


def pairwise_llm(biased: bool):
    def respond(messages):
        text = messages[-1]["content"]
        first = text.split("Response A:\n", 1)[1].split("\n\nResponse B:", 1)[0]
        says_a = biased or "good" in first
        return ("A", {"A": -0.2, "B": -1.8}) if says_a else ("B", {"A": -1.8, "B": -0.2})
    return respond


def test_pairwise_judges_both_orders(tmp_path, tiny_bt):
    for biased in (True, False):
        llm = FakeLLM(pairwise_llm(biased))
        with llm.serving() as url:
            pool = make_pool(url, tmp_path, tiny_bt)
            result = api.judge(pool, JudgeRequest(judge="pairwise", instruction=INSTRUCTION,
                                                  responses=["good code", "poor code"]))
            assert len(llm.bodies) == 2
            verdict = result.comparison
            if biased:  # position bias: each order prefers whichever came first, so a tie
                assert verdict.consistent is False and verdict.probability == 0.5
                assert verdict.orders == pytest.approx([p(-0.2, -1.8), 1 - p(-0.2, -1.8)])
            else:
                assert verdict.consistent is True and verdict.probability == pytest.approx(p(-0.2, -1.8))
                assert [r.reward for r in result.results] == pytest.approx([p(-0.2, -1.8), 1 - p(-0.2, -1.8)])
                compared = pool.get("pairwise").compare([Pair(prompt=INSTRUCTION, a="poor", b="good")])
                assert compared.probabilities == pytest.approx([1 - p(-0.2, -1.8)])
                ranked = pool.get("pairwise").rank(INSTRUCTION, ["poor", "good", "also poor"])
                assert ranked.order[0] == 1
            pool.close()


def test_direct_rating_out_of_range_is_unscored(tmp_path, tiny_bt):
    llm = FakeLLM(lambda m: "8" if "good" in m[-1]["content"] else "Rating: 11")
    with llm.serving() as url:
        pool = make_pool(url, tmp_path, tiny_bt)
        result = api.judge(pool, JudgeRequest(judge="direct", instruction=INSTRUCTION, responses=["good", "odd"]))
        assert [(r.rating, r.reward, r.unscored) for r in result.results] == [(8, 8, 0), (None, None, 1)]
        pool.close()


def test_judges_answer_the_scorer_api(tick):
    llm, pool = tick
    items = [Item(prompt=INSTRUCTION, response="good"), Item(prompt="Other.", response="bad"),
             Item(prompt=INSTRUCTION, response="meh")]
    scored = api.score(pool, api.ScoreRequest(model="tick-fake", items=items))
    assert scored.rewards[0] == pytest.approx(p(-0.1, -2.4)) and scored.rewards[1] < 0.1
    assert scored.rewards[2] is None and scored.unscored == [0, 0, 2]
    ranked = api.rank(pool, api.RankRequest(model="tick-fake", prompt=INSTRUCTION, responses=["meh", "bad", "good"],
                                            matrix=True))
    assert ranked.order == [2, 1, 0] and ranked.matrix[2][1] == 1.0 and ranked.matrix[0][1] is None
    with pytest.raises(InputError, match="prompts"):
        api.get_reward(pool, GetRewardRequest(model="tick-fake", query=[INSTRUCTION + "good"]))
    rewarded = api.get_reward(pool, GetRewardRequest(model="tick-fake", query=[INSTRUCTION + "good", INSTRUCTION + "meh"],
                                                     prompts=[INSTRUCTION, INSTRUCTION]))
    assert rewarded.rewards[1] == 0.5 and rewarded.extra_logs["unscored"] == [0.0, 1.0]
    with pytest.raises(InputError, match="reward model"):
        pool.judge("tiny")


def test_backend_failure_is_an_error_not_a_score(tmp_path, tiny_bt):
    def down(messages):
        raise Fail(500)
    with FakeLLM(down).serving() as url:
        pool = make_pool(url, tmp_path, tiny_bt)
        with pytest.raises(BackendUnavailable, match="HTTP 500"):
            api.judge(pool, JudgeRequest(judge="direct", instruction=INSTRUCTION, responses=["good"]))
        pool.close()


def failing_on_broken(messages):
    """HTTP 500 for any question that shows a response saying 'broken'; pairwise questions
    otherwise unread; the rest as tick_llm."""
    if is_checklist_request(messages):
        return tick_llm(messages)
    if "broken" in messages[-1]["content"]:
        raise Fail(500)
    return tick_llm(messages) if "Response:\n" in messages[-1]["content"] else "I cannot say"


def test_a_backend_failure_fails_its_item_and_the_others_are_answered(tmp_path, tiny_bt):
    with FakeLLM(failing_on_broken).serving() as url:
        pool = make_pool(url, tmp_path, tiny_bt)
        judged = api.judge(pool, JudgeRequest(judge="tick-fake", instruction=INSTRUCTION,
                                              responses=["good", "broken", "bad"]))
        good, broken, bad = judged.results
        assert good.reward > 0.8 and bad.reward < 0.2 and good.error is None and bad.error is None
        assert broken.reward is None and broken.unscored == 0 and "HTTP 500" in broken.error
        scored = api.score(pool, ScoreRequest(model="tick-fake", items=[
            Item(prompt=INSTRUCTION, response="broken"), Item(prompt="Say hi.", response="good")]))
        assert scored.rewards[0] is None and "HTTP 500" in scored.errors[0]
        assert scored.rewards[1] > 0.8 and scored.errors[1] is None
        reward = api.get_reward(pool, GetRewardRequest(model="tick-fake", query=["Qbroken", "Qgood"],
                                                       prompts=["Q", "Q"]))
        assert reward.extra_logs["error"] == [1.0, 0.0] and reward.extra_logs["unscored"] == [0.0, 0.0]
        assert reward.rewards[0] == 0.5 and reward.rewards[1] > 0.8
        compared = api.compare(pool, CompareRequest(model="pairwise", pairs=[
            Pair(prompt=INSTRUCTION, a="broken", b="good"), Pair(prompt=INSTRUCTION, a="good", b="bad")]))
        assert compared.probabilities[0] is None and "HTTP 500" in compared.errors[0]
        assert compared.errors[1] is None
        with pytest.raises(BackendUnavailable, match="every item"):
            api.score(pool, ScoreRequest(model="tick-fake", items=[Item(prompt=INSTRUCTION, response="broken")]))
        assert pool.get("tick-fake").counts["backend_errors"] >= 3
        pool.close()


@pytest.mark.parametrize("judges, message", [
    ({"tiny": {"method": "tick"}}, "taken"),
    ({"j": {"method": "vibes"}}, "unknown judge method"),
    ({"j": {"method": "tick", "backend": "nowhere"}}, "nowhere"),
    ({"j": {"method": "direct", "checklist_dir": "/tmp"}}, "checklist_dir is for tick"),
])
def test_judge_config_errors_name_the_problem(judges, message):
    with pytest.raises(ValidationError, match=message):
        ServiceConfig(models={"tiny": ModelConfig(path="x")}, default_model="tiny", judges=judges)


# ---- the real local judge: llama.cpp's server on the packaged SmolLM2 ----

@pytest.fixture(scope="module")
def real_pool(tmp_path_factory):
    pool = api.ModelPool(ServiceConfig(
        models={"unused": ModelConfig(path="unused")}, default_model="unused",
        backends={"local": {"local": True, "parallel": 4, "context_per_slot": 1024}},
        judges={"local": {"method": "tick", "checklist_dir": str(tmp_path_factory.mktemp("checklists"))}}))
    yield pool
    pool.close()


@pytest.mark.slow
def test_real_tick_on_smollm2(real_pool):
    answer = api.judge(real_pool, JudgeRequest(judge="local", instruction=INSTRUCTION, responses=[
        "def add(a, b):\n    return a + b", "I like turtles."]))
    assert 2 <= len(answer.checklist) <= 8 and all(q.endswith("?") for q in answer.checklist)
    for verdict in answer.results:
        read = [a for a in verdict.answers if a.p_yes is not None]
        assert read and all(0.0 < a.p_yes < 1.0 for a in read)  # from logprobs, not from a parsed word
    correct, unrelated = answer.results
    assert correct.reward > unrelated.reward  # measured: 0.73 vs 0.56
    again = api.judge(real_pool, JudgeRequest(judge="local", instruction=INSTRUCTION, responses=["def add(a, b): pass"]))
    assert again.checklist_source == "cache" and again.checklist == answer.checklist


@pytest.mark.slow
def test_real_pairwise_and_direct_on_smollm2(real_pool):
    pair = api.judge(real_pool, JudgeRequest(judge="pairwise", instruction=INSTRUCTION, responses=[
        "def add(a, b):\n    return a + b", "I like turtles."]))
    first, second = pair.comparison.orders
    assert 0.0 < first < 1.0 and 0.0 < second < 1.0
    assert pair.comparison.consistent == ((first - 0.5) * (second - 0.5) > 0)  # both orders read, compared
    assert pair.comparison.probability == pytest.approx((first + second) / 2 if pair.comparison.consistent else 0.5)
    rated = api.judge(real_pool, JudgeRequest(judge="direct", instruction=INSTRUCTION, responses=[
        "def add(a, b):\n    return a + b"]))
    verdict = rated.results[0]
    if verdict.rating is None:  # SmolLM2 may write no rating: unscored and counted, never the worst
        assert verdict.reward is None and verdict.unscored >= 1
    else:
        assert 1 <= verdict.rating <= 10 and verdict.reward == verdict.rating
    assert real_pool.judge("direct").backend.stats()["max_in_flight"] <= 4


def test_the_documented_backend_example_is_a_valid_config():
    page = (Path(__file__).resolve().parent.parent / "docs" / "judges.md").read_text()
    block = page.split("Judge with a real model behind", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    config = ServiceConfig.model_validate(yaml.safe_load(block))
    assert config.judge_name(None) == "checklist" and config.backends["tgi"].concurrency == 32
    assert set(config.backends) == {"local", "tgi"}


def test_checklists_in_memory_are_bounded_and_the_disk_keeps_them_all(tmp_path):
    """TICK as an RL reward meets ever-new prompts: memory holds the most recently used few,
    an evicted checklist comes back from disk without a new generation."""
    import asyncio

    from plaudit.judges.checklists import ChecklistStore

    store = ChecklistStore(tmp_path, memory_entries=3)
    generated: list[str] = []

    async def ask(instruction: str) -> tuple[list[str] | None, str]:
        async def generate() -> list[str]:
            generated.append(instruction)
            return [f"Does it do {instruction}?", "Is it valid?"]
        return await store.get("judge", instruction, generate)

    async def run() -> list[str]:
        sources = [(await ask(f"task {i}"))[1] for i in range(10)]
        sources.append((await ask("task 9"))[1])  # in memory
        sources.append((await ask("task 0"))[1])  # evicted long ago: read back from disk
        return sources

    sources = asyncio.run(run())
    assert sources == ["generated"] * 10 + ["cache", "cache"]
    assert generated == [f"task {i}" for i in range(10)]
    assert store.memory_size() == 3 and store.counts["evicted"] == 8
    assert len(list(tmp_path.glob("*.json"))) == 10


def test_checklist_memory_is_for_tick_judges():
    from plaudit.judges.registry import JudgeConfig

    assert JudgeConfig(method="tick", checklist_memory=10).checklist_memory == 10
    with pytest.raises(ValidationError, match="checklist_memory is for tick judges"):
        JudgeConfig(method="direct", checklist_memory=10)
