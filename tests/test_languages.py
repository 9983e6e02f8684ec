"""Every language through the execution kind: a correct, a wrong, a non-compiling, a crashing
and a never-ending program each get the reward and reason they earn; the language comes from
the fence tag or from the item; compiles are cached; toolchains that are missing are named."""
from __future__ import annotations

import shutil

import pytest

from languages import COMPILED, INPUT, OUTCOMES, OUTPUT, PROGRAMS
from plaudit.rewardmodels import InputError, Item, load_scorer
from plaudit.rewardmodels.execution import same_output
from plaudit.rewardmodels.languages import LANGUAGES, availability

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing (make test installs it)")
FENCE = {"nodejs": "javascript", "cpp": "c++", "rust": "rs"}  # a tag other than the name, where there is one
CASES = {"cases": [{"input": INPUT, "output": OUTPUT}, {"input": "-5 5\n", "output": "0\n"}]}


@pytest.fixture(scope="module")
def execution():
    return load_scorer(None, name="languages", kind="execution",
                       settings={"wall_s": 12, "test_s": 2, "slots": 2, "memory_mb": 256, "compile_s": 60})


@pytest.mark.parametrize("language", list(PROGRAMS))
def test_each_language_earns_what_each_program_deserves(execution, language):
    if LANGUAGES[language].missing:
        pytest.skip(f"{language}: {LANGUAGES[language].install} (make installs it)")
    programs = PROGRAMS[language]
    items = [Item(prompt="sum", response=f"Here:\n```{FENCE.get(language, language)}\n{programs[o]}```",
                  reference=CASES) for o in OUTCOMES]
    scored = execution.score(items)
    details = dict(zip(OUTCOMES, scored.details))
    assert dict(zip(OUTCOMES, scored.rewards)) == {"correct": 1.0, "wrong": 0.0, "compile_error": 0.0,
                                                   "runtime_error": 0.0, "timeout": 0.0}, details
    if language in COMPILED:
        assert details["compile_error"]["reason"] == "compile_error" and details["compile_error"]["message"]
    else:  # it fails when it runs
        assert details["compile_error"]["tests"][0]["message"].startswith("exit ")
    assert details["runtime_error"]["tests"][0]["message"].startswith("exit ")
    assert details["timeout"]["reason"] == "timeout"
    assert "expected '42\\n'" in details["wrong"]["tests"][0]["message"]


def test_the_items_language_rules_and_an_unknown_or_missing_one_is_a_clear_error(execution):
    correct = PROGRAMS["cpp"]["correct"]
    by_item = execution.score([Item(prompt="p", response=correct, reference={**CASES, "language": "cpp"})])
    assert by_item.rewards == [1.0]  # no fence: the item says C++
    for bad in ("cobol", 3):
        with pytest.raises(InputError) as refused:
            execution.score([Item(prompt="p", response=correct, reference={**CASES, "language": bad})])
        assert refused.value.field == "items[0].reference.language" and "python" in str(refused.value)
    unknown = execution.score([Item(prompt="p", response="```kotlin\nfun main() {}\n```", reference=CASES)])
    assert unknown.details[0]["reason"] == "no_code" and "kotlin" in unknown.details[0]["message"]
    wrong_kind = execution.score([Item(prompt="p", response=f"```cpp\n{correct}```", reference="assert True")])
    assert wrong_kind.details[0]["reason"] == "wrong_language"
    missing = [name for name, state in availability().items() if not state["available"]]
    for name in missing:  # typescript where tsc is absent: named, with what adds it
        with pytest.raises(InputError, match=LANGUAGES[name].install):
            execution.score([Item(prompt="p", response="x", reference={**CASES, "language": name})])
        assert execution.score([Item(prompt="p", response=f"```{name}\nx\n```", reference=CASES)]) \
            .details[0]["reason"] == "language_unavailable"


def test_a_repeated_program_compiles_once(execution):
    code = PROGRAMS["c"]["correct"].replace("a + b", "b + a")  # not compiled by another test
    items = [Item(prompt="p", response=f"```c\n{code}```", reference=CASES)] * 6
    before = len(execution.programs._builds)
    assert execution.score(items).rewards == [1.0] * 6
    assert len(execution.programs._builds) == before + 1


@pytest.mark.parametrize("compare, got, expected, same", [
    ("tokens", "1  2\n3\n", "1 2 3", True),
    ("lines", "1  2\n3\n", "1 2 3", False),
    ("lines", "  1 2 \n3\n\n", "1 2\n3", True),
    ("exact", "1 2\n\n", "1 2", True),
    ("exact", "1 2 \n", "1 2", False),
])
def test_output_comparisons(compare, got, expected, same):
    assert same_output(got, expected, compare, None) is same


def test_a_float_tolerance_per_model_and_per_item(execution):
    program = "print(1 / 3)\n"
    cases = [{"input": "", "output": "0.333333\n"}]
    assert execution.score([Item(prompt="p", response=program, reference=cases)]).rewards == [0.0]
    assert execution.score([Item(prompt="p", response=program, reference={"cases": cases, "float_tolerance": 1e-5})]
                           ).rewards == [1.0]
    tolerant = load_scorer(None, name="tolerant", kind="execution", settings={"float_tolerance": 1e-5, "slots": 1})
    assert tolerant.score([Item(prompt="p", response=program, reference=cases)]).rewards == [1.0]


def test_function_call_cases_as_apps_and_verl_write_them(execution):
    """APPS/TACO `fn_name` cases: arguments as a list (APPS) or one JSON value per line (verl);
    LeetCode's `class Solution` is called through an instance."""
    solution = "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n" \
               "        for i, n in enumerate(nums):\n            if target - n in seen:\n" \
               "                return [seen[target - n], i]\n            seen[n] = i\n"
    apps = {"fn_name": "twoSum", "inputs": [[[2, 7, 11, 15], 9], [[3, 2, 4], 6]], "outputs": [[[0, 1]], [[1, 2]]]}
    verl = {"fn_name": "twoSum", "inputs": ["[2, 7, 11, 15]\n9", "[3, 2, 4]\n6"], "outputs": ["[0, 1]", "[1, 2]"]}
    wrong = solution.replace("[seen[target - n], i]", "[i, seen[target - n]]")
    scored = execution.score([Item(prompt="p", response=solution, reference=apps),
                              Item(prompt="p", response=solution, reference=verl),
                              Item(prompt="p", response=wrong, reference=verl)])
    assert scored.rewards == [1.0, 1.0, 0.0]
    assert "expected [0, 1], got [1, 0]" in scored.details[2]["tests"][0]["message"]
