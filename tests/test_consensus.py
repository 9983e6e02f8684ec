"""The consensus reward (CodeT, B4): the pass matrix of K responses x M tests, groups by pass
pattern, each method's choice on hand-checkable cases, tests read from the prompt's examples,
the no-tests case, the details' shape, /rank and /get_reward through the shared service, and
hostile programs kept in the sandbox."""
from __future__ import annotations

import math
import os
import shutil

import httpx2
import pytest

from plaudit.rewardmodels import Item, Message, ModelLoadError, load_scorer
from plaudit.rewardmodels.consensus import (Consensus, ConsensusSettings, doctest_asserts, doctest_examples,
                                            io_examples, log_beta, parse_written, prompt_tests, score_matrix)
from conftest import EXECUTION_SETTINGS
from servers import Fail, FakeLLM
from test_execution import HOSTILE

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing (make test installs it)")

# add(a, b) with three examples, the last one wrong: a plausible test, as an LLM might write
PROMPT = '''Complete the function.

```python
def add(a, b):
    """Return a + b.
    >>> add(1, 2)
    3
    >>> add(2, 2)
    4
    >>> add(0, 0)
    1
    """
```'''
RIGHT = ["```python\ndef add(a, b):\n    return a + b\n```", "```python\ndef add(a, b):\n    return b + a\n```",
         "```python\ndef add(x, y):\n    return sum([x, y])\n```"]
HACK = "```python\ndef add(a, b):\n    return a + b if a or b else 1\n```"  # fits the wrong example too
PRODUCT = "```python\ndef add(a, b):\n    return a * b\n```"  # passes add(2, 2) only


# ---- the scores, on pass matrices (no sandbox) ----

def test_codet_scores_tests_passed_times_group_size():
    # three agree on tests {0, 1}, one passes all three, one passes {1}, one passes nothing
    matrix = [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0]]
    rewards, group_of, groups = score_matrix(matrix, "codet")
    assert group_of == [0, 0, 0, 1, 2, 3]
    assert [g["score"] for g in groups] == [2 * 3, 3 * 1, 1 * 1, 0]
    # the group's score over the best group's (6), times the best group's pass rate (2/3)
    assert rewards == pytest.approx([2 / 3] * 3 + [3 / 6 * 2 / 3, 1 / 6 * 2 / 3, 0.0])
    # the released code's sqrt(size) prefers the lone all-pass response where the paper's size does not
    two = [[1, 1, 0], [1, 1, 0], [1, 1, 1]]
    assert score_matrix(two, "codet")[0] == pytest.approx([2 / 3, 2 / 3, 3 / 4 * 2 / 3])  # 2 * 2 = 4 > 3
    sqrt = score_matrix(two, "codet", codet_exponent=0.5)[0]
    assert sqrt == pytest.approx([2 * math.sqrt(2) / 3, 2 * math.sqrt(2) / 3, 1.0])  # 2 * 1.41 < 3


def test_b4_is_its_log_posterior_in_closed_form():
    """K = 2 responses, M = 1 test, one passes it: each term of B4's score by hand (lnB(x, 1) =
    -ln x, lnB(x, 2) = -ln(x (x + 1)), lnB(1, b) = -ln b, lnB(2, b) = -ln(b (b + 1)))."""
    a, b0 = 1e3, 1e4
    _, _, groups = score_matrix([[1], [0]], "b4", b4_alpha=a, b4_beta0=b0)
    passing = -math.log(a + 1) - math.log((a + 1) * (a + 2)) - math.log(2) - math.log(b0)
    failing = -math.log(a * (a + 1)) - math.log((a + 1) * (a + 2)) - math.log(b0 * (b0 + 1))
    assert [g["score"] for g in groups] == pytest.approx([passing, failing])
    assert [g["reward"] for g in groups] == [1.0, 0.0]  # a group that passes nothing scores 0
    assert log_beta(3, 1) == pytest.approx(-math.log(3))


def test_b4_weighs_agreement_and_the_other_programs_failures():
    # the paper's point: a big group on a wrong test loses to the group whose tests the others fail
    matrix = [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [0, 1, 0], [0, 0, 0]]
    rewards, group_of, groups = score_matrix(matrix, "b4")
    best = max(groups, key=lambda g: g["score"])
    assert best["members"] == [0, 1, 2] and rewards[:3] == pytest.approx([2 / 3] * 3)
    # the others get their posterior odds against the best group, times its pass rate 2/3
    odds = math.exp(groups[1]["score"] - groups[0]["score"])
    assert rewards[3] == pytest.approx(odds * 2 / 3) and 0.1 < odds < 0.3  # the lone all-pass response
    assert rewards[4] < 1e-12 and rewards[5] == 0.0


def test_a_lone_response_or_a_unanimous_group_gets_its_pass_rate():
    for method in ("codet", "b4"):
        assert score_matrix([[1, 0, 1, 1]], method)[0] == pytest.approx([0.75])
        assert score_matrix([[1, 0], [1, 0], [1, 0]], method)[0] == pytest.approx([0.5] * 3)
        assert score_matrix([[0, 0]], method)[0] == [0.0]
        assert score_matrix([[], []], method)[0] == [0.0, 0.0]


# ---- tests from the prompt ----

def test_doctest_examples_become_asserts():
    text = ('def f(x):\n    """Twice x.\n    >>> f(2)\n    4\n    >>> print(f(3))\n    6\n    >>> y = 5\n'
            '    >>> f(y)\n    10\n    >>> f(\n    ...     1)\n    2\n    >>> f([1])\n    [1, 1]\n'
            '    >>> f(None)\n    Traceback (most recent call last):\n    TypeError: ...\n    >>> f(0.5)\n    1.0"""\n')
    examples = doctest_examples(text)
    assert examples[:4] == [("f(2)", "4"), ("print(f(3))", "6"), ("y = 5", None), ("f(y)", "10")]
    assert examples[-1] == ("f(0.5)", "1.0")  # the docstring's closing quotes are not output
    source, shown = doctest_asserts(examples)
    assert source.splitlines()[0] == "y = 5"  # an example without output is setup
    assert "assert str(f(3)) == '6'" in source and "assert (f(1)) == (2)" in source  # continued, unparsed
    assert shown == ["f(2) -> 4", "print(f(3)) -> 6", "f(y) -> 10", "f(\n    1) -> 2", "f([1]) -> [1, 1]",
                     "f(0.5) -> 1.0"]  # the traceback is skipped
    tests, _ = prompt_tests(PROMPT)
    assert tests.style == "asserts" and tests.source.count("assert") == 3
    # HumanEval's other form: a comparison with no output line; a trailing comment is dropped
    source, shown = doctest_asserts(doctest_examples(">>> f(3) == 6\n>>> g(1)  # one\n2\n"))
    assert source == "assert f(3) == 6\nassert (g(1)) == (2)" and len(shown) == 2


def test_input_output_blocks_become_stdin_cases():
    text = ("Print the sum.\n\n-----Input-----\nThe first line contains an integer n.\n\n"
            "-----Output-----\nPrint one integer.\n\nExample 1\nInput:\n3\n1 2 3\nOutput:\n6\n\n"
            "Sample Input 2\n```\n2\n5 5\n```\nSample Output 2\n```\n10\n```\n"
            "**Input:** 1 1\n**Output:** 2\n"
            "Input: nums = [1, 2], target = 3\nOutput: [0, 1]\n"
            "Input format: one line.\nOutput the sum of the numbers.\n")
    assert io_examples(text) == [{"input": "3\n1 2 3\n", "output": "6"}, {"input": "2\n5 5\n", "output": "10"},
                                 {"input": "1 1\n", "output": "2"}]
    tests, shown = prompt_tests([Message(role="system", content="Be brief."), Message(role="user", content=text)])
    assert tests.style == "io" and len(tests.cases) == 3 and shown[0] == "input '3\\n1 2 3\\n' -> output '6'"
    assert prompt_tests("Write a function that adds two numbers.") is None
    stub = "def first(arr):\n    \"\"\"The first.\n    Input: [4, 2]\n    Output: 4\n    \"\"\"\n"
    assert io_examples(stub) == [] and len(io_examples(stub + "Read stdin.\n")) == 1  # a function's arguments


# ---- through the sandbox ----

@pytest.fixture(scope="module")
def codet():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap missing (make test installs it)")
    scorer = load_scorer(None, name="agree", kind="consensus", settings={"method": "codet",
                                                                          "execution": EXECUTION_SETTINGS})
    yield scorer
    scorer.close()


@needs_bwrap
def test_codet_and_b4_pick_the_agreeing_programs_over_the_one_that_fits_a_wrong_example(codet):
    b4 = Consensus("agree-b4", ConsensusSettings(method="b4", execution="unused"), codet.execution)
    responses = RIGHT + [HACK, PRODUCT]
    ranked = codet.rank(PROMPT, responses)
    # CodeT: {0, 1, 2} pass 2 tests x 3 = 6, the hack 3 x 1 = 3, the product 1 x 1 = 1; rewards
    # score / 6 x the best group's pass rate 2/3
    assert ranked.rewards == pytest.approx([2 / 3] * 3 + [1 / 3, 1 / 9])
    assert set(ranked.order[:3]) == {0, 1, 2}
    by_b4 = b4.rank(PROMPT, responses)
    assert set(by_b4.order[:3]) == {0, 1, 2} and by_b4.rewards[:3] == pytest.approx([2 / 3] * 3)
    assert by_b4.rewards[0] > by_b4.rewards[3] > by_b4.rewards[4]  # the hack, then the product
    # scored alone, each response gets its pass rate on the examples
    alone = [codet.score([Item(prompt=PROMPT, response=r)]).rewards[0] for r in (RIGHT[0], HACK, PRODUCT)]
    assert alone == pytest.approx([2 / 3, 1.0, 1 / 3])


@needs_bwrap
def test_details_carry_the_matrix_the_groups_and_each_responses_group(codet):
    other = "Write mul(a, b).\n>>> mul(2, 3)\n6"
    items = [Item(prompt=PROMPT, response=r) for r in (RIGHT[0], PRODUCT, RIGHT[0])]
    items.append(Item(prompt=other, response="def mul(a, b):\n    return a * b"))
    items.append(Item(prompt="Write anything.", response="x = 1"))
    items.append(Item(prompt=PROMPT, response=PRODUCT, reference="assert add(2, 2) == 4"))
    runs = codet.stats()["runs"]
    scored = codet.score(items)
    assert codet.stats()["runs"] - runs <= 4  # the repeated response ran once (or was kept from before)
    assert scored.rewards == pytest.approx([2 / 3, 1 / 4 * 2 / 3, 2 / 3, 1.0, 0.5, 1.0])  # 4 and 1, over 4
    first = scored.details[0]
    assert first["members"] == [0, 1, 2] and first["matrix"] == [[1, 1, 0], [0, 1, 0], [1, 1, 0]]
    assert first["tests_from"] == "examples" and first["test_count"] == 3 and len(first["examples"]) == 3
    assert [(g["members"], g["passes"], g["size"], g["score"]) for g in first["groups"]] == [
        ([0, 2], [1, 1, 0], 2, 4), ([1], [0, 1, 0], 1, 1)]
    assert [d["group"] for d in scored.details[:3]] == [0, 1, 0]
    assert [t["passed"] for t in first["tests"]] == [True, True, False]
    assert scored.details[3]["members"] == [3] and scored.details[3]["pass_rate"] == 1.0  # a lone response
    assert scored.details[4]["reason"] == "no_tests" and scored.rewards[4] == codet.neutral_reward
    assert scored.details[5]["tests_from"] == "reference" and scored.details[5]["members"] == [5]
    assert scored.logs["no_tests"] == [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert scored.logs["group_size"][:3] == [2.0, 1.0, 2.0] and scored.logs["in_best_group"][:3] == [1.0, 0.0, 1.0]


@needs_bwrap
def test_hostile_programs_stay_in_the_sandbox(codet, tmp_path):
    marker = str(tmp_path / "escaped")
    hostile = [HOSTILE[name][0] for name in ("infinite loop", "fork bomb", "memory bomb")]
    hostile.append(f"try:\n    open({marker!r}, 'w').write('out')\nexcept OSError:\n    pass\n"
                   "def add(a, b):\n    return a + b\n")
    scored = codet.score([Item(prompt=PROMPT, response=r) for r in [RIGHT[0], *hostile]])
    # the right one and the writer agree (2 tests x 2); the others pass nothing and score 0
    assert scored.rewards == pytest.approx([2 / 3, 0.0, 0.0, 0.0, 2 / 3])
    assert {d["reason"] for d in scored.details[1:4]} <= {"timeout", "memory", "error"}
    assert not os.path.exists(marker)  # its write stayed in the sandbox, if it was allowed at all


def test_configured_execution_must_be_an_execution_model():
    with pytest.raises(ModelLoadError, match="settings.execution"):
        load_scorer(None, name="agree", kind="consensus", settings={"execution": "tests"})
    with pytest.raises(ModelLoadError, match="settings.method"):
        load_scorer(None, name="agree", kind="consensus", settings={"method": "majority"})


@needs_bwrap
def test_default_consensus_runs_in_executions_sandbox():
    from plaudit.service.api import ModelPool
    from plaudit.service.config import default_config

    pool = ModelPool(default_config())
    scorer = pool.get("default-consensus")
    assert scorer.kind == "consensus" and scorer.execution is pool.get("execution")
    assert scorer.settings.method == "b4"


# ---- tests written by a judge ----

WRITTEN = ("Here are the tests:\n```python\nassert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(1, 2) == 3\n"
           "print(add(1, 1))\nassert add(1, 1) == 2; import os\n```")


def test_written_asserts_are_read_one_a_line():
    assert parse_written(WRITTEN, 8) == ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    assert parse_written(WRITTEN, 1) == ["assert add(1, 2) == 3"] and parse_written("No tests.", 8) is None
    tests, shown = prompt_tests(PROMPT, ["assert add(5, 5) == 10"])  # after the prompt's own examples
    assert tests.source.endswith("assert add(5, 5) == 10") and len(shown) == 4


@needs_bwrap
def test_a_judge_writes_tests_once_per_prompt_and_a_failed_one_leaves_the_neutral_reward(tmp_path):
    from plaudit.service.api import ModelPool
    from plaudit.service.config import ModelConfig, ServiceConfig

    def respond(messages):
        if "broken" in messages[-1]["content"]:
            raise Fail(503)
        return WRITTEN

    llm = FakeLLM(respond)
    with llm.serving() as url:
        pool = ModelPool(ServiceConfig(
            models={"tests": ModelConfig(kind="execution", settings=EXECUTION_SETTINGS),
                    "agree": ModelConfig(kind="consensus", settings={"execution": "tests", "judge": "writer",
                                                                     "tests_dir": str(tmp_path)})},
            default_model="agree", judges={"writer": {"method": "direct"}}, default_backend="fake",
            backends={"fake": {"url": url, "timeout_s": 60, "max_retries": 1, "backoff_s": 0.01}}))
        try:
            agree = pool.get("agree")
            task = "Write add(a, b), which returns the sum of a and b."
            first = agree.score([Item(prompt=task, response=r) for r in (RIGHT[0], PRODUCT, RIGHT[1])])
            assert first.rewards == [1.0, 0.0, 1.0]  # 1 * 2 = 2 and -1 * 1 = -1: the product fails both
            assert first.details[0]["tests_from"] == "judge" and first.details[0]["judge"] == "generated"
            again = agree.rank(task, [PRODUCT, RIGHT[2]])
            assert again.order == [1, 0] and llm.asked("Write add(a, b), which") == 1  # written once, kept
            assert len(list(tmp_path.glob("*.json"))) == 1
            both = agree.score([Item(prompt=PROMPT, response=RIGHT[0])])  # its 3 examples, then the 2 written
            assert both.details[0]["tests_from"] == "examples+judge" and both.details[0]["test_count"] == 5
            assert both.rewards == [pytest.approx(4 / 5)]
            failed = agree.score([Item(prompt="Write the broken thing.", response=RIGHT[0])])
            assert failed.rewards == [0.5] and failed.details[0]["reason"] == "no_tests"
            assert failed.details[0]["judge"].startswith("error")
        finally:
            pool.close()



@needs_bwrap
@pytest.mark.slow
def test_the_packaged_model_writes_tests_through_the_local_judge(tmp_path):
    """The judge-written path end to end on llama.cpp's server with SmolLM2: what it writes is
    read (asserts) or reported (none), run against every response alike, and kept for the next call."""
    from plaudit.service.api import ModelPool
    from plaudit.service.config import ModelConfig, ServiceConfig

    pool = ModelPool(ServiceConfig(
        models={"tests": ModelConfig(kind="execution", settings=EXECUTION_SETTINGS),
                "agree": ModelConfig(kind="consensus", settings={"execution": "tests", "judge": "writer",
                                                                 "tests_dir": str(tmp_path)})},
        default_model="agree", judges={"writer": {"method": "direct"}}))
    try:
        agree = pool.get("agree")
        task = "Write a Python function add(a, b) that returns the sum of a and b."
        first = agree.score([Item(prompt=task, response=r) for r in (RIGHT[0], PRODUCT, RIGHT[1])])
        shown = first.details[0]
        assert shown["judge"] == "generated", shown
        if shown["reason"] == "no_tests":  # nothing assert-shaped in the answer: the neutral reward
            assert first.rewards == [0.5] * 3
        else:
            written = shown["judge_tests"]
            assert shown["tests_from"] == "judge" and 1 <= len(written) <= 8
            assert all(line.startswith("assert ") for line in written)
            assert len(first.details[0]["matrix"][0]) == len(written)  # every response ran every written test
            assert all(0.0 <= r <= 1.0 for r in first.rewards)
            assert first.rewards[0] == first.rewards[2]  # a + b and b + a pass the same tests
        again = agree.score([Item(prompt=task, response=RIGHT[0])])
        if shown["reason"] == "no_tests":  # nothing kept: the next call asks again
            assert again.details[0]["judge"] == "generated"
        else:
            assert again.details[0]["judge"] == "cache" and again.details[0]["judge_tests"] == written
            assert len(list(tmp_path.glob("*.json"))) == 1
    finally:
        pool.close()


# ---- through the service ----

@needs_bwrap
def test_rank_and_get_reward_through_the_service(tiny_service):
    ranked = httpx2.post(f"{tiny_service}/rank", json={"model": "agree", "prompt": PROMPT,
                                                       "responses": [PRODUCT, RIGHT[0], HACK, RIGHT[1]]}, timeout=60)
    assert ranked.status_code == 200, ranked.text
    assert ranked.json()["rewards"] == pytest.approx([1 / 6, 2 / 3, 1 / 2, 2 / 3])  # 1, 4, 3, 4 over 4, x 2/3
    assert set(ranked.json()["order"][:2]) == {1, 3}
    prompt = f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    answer = httpx2.post(f"{tiny_service}/get_reward", json={
        "model": "agree", "query": [prompt + r + "<|im_end|>" for r in (RIGHT[0], PRODUCT, RIGHT[2])],
        "prompts": [prompt] * 3}, timeout=60).json()
    assert answer["rewards"] == pytest.approx([2 / 3, 1 / 6, 2 / 3])
    assert answer["extra_logs"]["group_size"] == [2.0, 1.0, 2.0]
    scored = httpx2.post(f"{tiny_service}/score", json={"model": "agree", "items": [
        {"prompt": PROMPT, "response": RIGHT[0]}, {"prompt": PROMPT, "response": PRODUCT}]}, timeout=60).json()
    assert "tests" not in scored["details"][0] and scored["details"][0]["matrix"] == [[1, 1, 0], [0, 1, 0]]
