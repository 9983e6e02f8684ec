"""CPU time and memory of sandboxed runs, measured from outside the sandbox, and the
execution kind's `efficiency` setting: correct code paid more when it is also fast, in
(1, 1 + weight], by a measure the program cannot reach."""
from __future__ import annotations

import pytest

from plaudit.rewardmodels.base import InputError, Item, ModelLoadError, validated_settings
from plaudit.rewardmodels.execution import Execution, ExecutionSettings, read_tests
from plaudit.rewardmodels.sandbox import sandbox_unavailable

pytestmark = pytest.mark.skipif(sandbox_unavailable() is not None, reason="no bubblewrap sandbox here")

# 0.4 s of the process's own CPU whatever the machine's speed (a fixed loop was 0.1 s on a fast one)
BURN = "    import time\n    end = time.process_time() + 0.4\n    while time.process_time() < end:\n        pass\n"
FIB_FAST = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n"
FIB_SLOW = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
FIB_TESTS = "assert fib(29) == 514229\nassert fib(1) == 1"


def python(code: str) -> str:
    return f"```python\n{code}```"


@pytest.fixture(scope="module")
def plain():
    return Execution("plain", ExecutionSettings(slots=2))


def run(scorer: Execution, response: str, reference) -> dict:
    return scorer.score([Item(prompt="p", response=response, reference=reference)]).details[0]


def test_cpu_time_is_the_processes_cpu_not_the_wall_clock(plain):
    busy = run(plain, python(f"def f():\n{BURN}    return 1\n"), "assert f() == 1")
    asleep = run(plain, python("import time\ndef f():\n    time.sleep(0.6)\n    return 1\n"), "assert f() == 1")
    assert busy["all_passed"] and asleep["all_passed"]
    assert busy["cpu_s"] > asleep["cpu_s"] + 0.1  # the loop is 0.4 s of CPU; sleeping is none
    assert asleep["cpu_s"] < 0.5  # 0.6 s asleep, not counted
    cases = run(plain, python("x = int(input())\nprint(x * 2)\n"), [{"input": "3", "output": "6"},
                                                                     {"input": "4", "output": "8"}])
    assert [t["passed"] for t in cases["tests"]] == [True, True]
    assert all(0 < t["cpu_s"] < 1 and t["peak_memory_mb"] > 1 for t in cases["tests"])
    assert cases["cpu_s"] == pytest.approx(sum(t["cpu_s"] for t in cases["tests"]))


def test_peak_memory_is_the_largest_process(plain):
    big = run(plain, python("def f():\n    block = bytearray(300 << 20)\n    return len(block) > 0\n"),
              "assert f()")
    small = run(plain, python("def f():\n    return True\n"), "assert f()")
    assert big["peak_memory_mb"] > small["peak_memory_mb"] + 200


def test_work_done_in_a_child_process_is_counted(plain):
    """Forging speed by working in a process the program does not wait for: still counted."""
    orphan = python("import os\ndef f():\n    r, w = os.pipe()\n    if os.fork() == 0:\n"
                    + BURN.replace("    ", "        ") + "        os.write(w, b'1')\n        os._exit(0)\n"
                    "    return int(os.read(r, 1))\n")
    idle = run(plain, python("def f():\n    return 1\n"), "assert f() == 1")
    forked = run(plain, orphan, "assert f() == 1")
    assert forked["all_passed"] and forked["cpu_s"] > idle["cpu_s"] + 0.1


@pytest.fixture(scope="module")
def efficient():
    return Execution("efficient", ExecutionSettings(slots=2, efficiency={"weight": 0.5, "repeats": 2}))


def test_the_faster_correct_program_earns_more_and_a_wrong_one_nothing(efficient):
    responses = [python(FIB_FAST), python(FIB_SLOW), python("def fib(n):\n    return n\n")]
    scored = efficient.score([Item(prompt="fib", response=r, reference=FIB_TESTS) for r in responses])
    fast, slow, wrong = scored.rewards
    assert fast == pytest.approx(1.5)  # the fastest of the group: the whole bonus
    assert 1.0 < slow < fast - 0.1  # fib(29) recursive: some 0.15 s of CPU; the loop none
    assert wrong == 0.5 and scored.details[2]["efficiency"] is None  # fib(1) only: no bonus without every test
    detail = scored.details[1]["efficiency"]
    assert detail["against"] == "group" and detail["runs"] == 2
    assert detail["reference_cpu_s"] == scored.details[0]["efficiency"]["cpu_s"] < detail["cpu_s"]
    assert efficient.p_good(slow) == 1.0  # a passing response is good; the bonus is not a probability


def test_against_the_reference_solution(efficient):
    reference = {"tests": FIB_TESTS, "solution": FIB_FAST}
    [slow] = efficient.score([Item(prompt="fib", response=python(FIB_SLOW), reference=reference)]).details
    assert slow["efficiency"]["against"] == "reference"
    assert 1.0 < slow["reward"] < 1.45
    [same] = efficient.score([Item(prompt="fib", response=python(FIB_FAST), reference=reference)]).details
    assert same["reward"] > slow["reward"]


def test_a_program_that_fakes_its_clocks_is_still_timed(efficient):
    """Patching the process's own clocks changes nothing: the time is taken outside it."""
    faking = python("import os, resource, time\n"
                    "resource.getrusage = lambda *a: resource.struct_rusage((0.0,) * 16)\n"
                    "time.process_time = lambda: 0.0\nos.times = lambda: os.times_result((0.0,) * 5)\n" + FIB_SLOW)
    scored = efficient.score([Item(prompt="fib", response=r, reference=FIB_TESTS)
                              for r in (python(FIB_FAST), faking)])
    assert scored.rewards[0] == pytest.approx(1.5) and scored.rewards[1] < 1.4


def test_efficiency_settings_are_checked():
    with pytest.raises(ModelLoadError, match="efficiency.weight"):
        validated_settings(ExecutionSettings, {"efficiency": {"weight": 0}}, "code")
    with pytest.raises(ModelLoadError, match="efficiency.against"):
        validated_settings(ExecutionSettings, {"efficiency": {"against": "nobody"}}, "code")
    with pytest.raises(InputError, match=r"reference.solution"):
        read_tests({"tests": "assert True", "solution": ""}, "reference")
