"""The execution reward: tests of the shapes people have, HumanEval's canonical solutions and
failing mutants, and hostile programs against a real server: each scores 0 with its reason,
the service keeps answering, nothing leaks and no process survives its run."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest
import yaml

from plaudit.rewardmodels import InputError, Item, load_scorer
from plaudit.rewardmodels.execution import _case
from plaudit.rewardmodels.languages import find_source
from plaudit.rewardmodels.sandbox import BASE_UID, UID_BLOCK, UID_BLOCKS, Run
from conftest import EXECUTION_SETTINGS
from servers import running_service

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing (make test installs it)")

ADD = "def add(a, b):\n    return a + b\n"
SETTINGS = EXECUTION_SETTINGS


@pytest.fixture(scope="module")
def execution():
    return load_scorer(None, name="tests", kind="execution", settings=SETTINGS)


def test_code_is_one_languages_fences_or_the_whole_response():
    python = find_source("Here:\n```python\nx = 1\n```\nand\n```\ny = 2\n```\n```cpp\nint x;\n```")
    assert (python.code, python.language.name) == ("x = 1\n\ny = 2\n", "python")
    assert (find_source("x = 1").code, find_source("x = 1").language.name) == ("x = 1", "python")
    assert find_source("```bash\nls\n```").language.name == "bash"
    cpp = find_source("```\nint x;\n```\n```C++\nint main() {}\n```")  # the first tag names it
    assert (cpp.code, cpp.language.name) == ("int x;\n\nint main() {}\n", "cpp")
    assert find_source("```py\nx = 1\n```", language="java").code == ""  # the item's language rules
    assert find_source("```kotlin\nfun main() {}\n```").language is None


def test_every_test_shape_gives_the_share_passed(execution):
    check = {"tests": "def check(candidate):\n    assert candidate(1, 2) == 3\n    for x in range(3):\n"
                      "        assert candidate(x, 0) == x\n    assert candidate(2, 2) == 5\n", "entry_point": "add"}
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "2 2", "output": "5"}]
    asserts = "assert add(1, 2) == 3\nassert add(0, 0) == 0"
    items = [Item(prompt="p", response=f"```python\n{ADD}```", reference=asserts),
             Item(prompt="p", response=ADD, reference=check),
             Item(prompt="p", response=ADD, reference='{"tests": "assert add(2, 2) == 5"}'),  # JSON in a string
             Item(prompt="p", response="print(sum(map(int, input().split())))", reference=cases),
             Item(prompt="p", response="```bash\nls\n```", reference="assert True"),
             Item(prompt="p", response="def add(a, b) return", reference="assert add(1, 1) == 2")]
    scored = execution.score(items)
    assert scored.rewards == pytest.approx([1.0, 2 / 3, 0.0, 0.5, 0.0, 0.0])
    assert [d["reason"] for d in scored.details] == [None, None, None, None, "wrong_language", "error"]
    assert scored.details[0]["all_passed"] and not scored.details[1]["all_passed"]
    assert [t["passed"] for t in scored.details[1]["tests"]] == [True, True, False]
    assert "SyntaxError" in scored.details[5]["message"]
    for bad in (None, "", {"cases": [{"input": 1}]}, {"entry_point": "add"}):
        with pytest.raises(InputError) as refused:
            execution.score([Item(prompt="p", response=ADD), Item(prompt="p", response=ADD, reference=bad)])
        assert refused.value.field in ("items[0].reference", "items[1].reference")


@pytest.mark.slow
def test_humaneval_canonical_solutions_pass_and_failing_mutants_do_not(execution):
    """Every problem's canonical solution passes its tests (the data builder's labels come
    from the execution kind: none is skipped), and scored through `score` with the reference
    as a user sends it, a sample of canonical solutions scores 1.0 and their mutants below."""
    from plaudit.training.humaneval import build_pairs, load_problems

    problems = {p["task_id"]: p for p in load_problems()}
    pairs, stats = build_pairs(max_mutants_per_problem=1)
    assert stats["problems_skipped"] == 0 and len(pairs) >= 150
    sample = pairs[::8]
    tests = {r["task_id"]: {"tests": problems[r["task_id"]]["test"], "entry_point": problems[r["task_id"]]["entry_point"]}
             for r in sample}
    items = [Item(prompt="p", response=r["chosen"], reference=tests[r["task_id"]]) for r in sample]
    items += [Item(prompt="p", response=r["rejected"], reference=tests[r["task_id"]]) for r in sample]
    rewards = execution.score(items).rewards
    n = len(sample)
    assert [r["task_id"] for r, s in zip(sample, rewards[:n]) if s != 1.0] == []
    assert [r["task_id"] for r, s in zip(sample, rewards[n:]) if s >= 1.0] == []


HOSTILE = {
    "infinite loop": ("while True:\n    pass\n", "timeout"),
    "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  "timeout"),
    "memory bomb": ("x = bytearray(1 << 34)\n", "memory"),
    "printing gigabytes": ("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n", "output_limit"),
    "daemon left behind": ("import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
                           "        time.sleep(60)\n        open('{marker}', 'w').write('alive')\n    os._exit(0)\n"
                           "assert False, 'the daemon is the point'\n", None),
}
# compiled languages, run as stdin/stdout programs: (fenced code, reason)
HOSTILE_COMPILED = {
    "C fork bomb": ("```c\n#include <unistd.h>\nint main(void) { for (;;) fork(); }\n```", "timeout"),
    "C memory bomb": ("```c\n#include <stdlib.h>\n#include <string.h>\nint main(void) { for (;;) { char *p = "
                      "malloc(1 << 26); if (p) memset(p, 1, 1 << 26); } }\n```", "timeout"),
    "Go endless output": ("```go\npackage main\nimport \"fmt\"\nfunc main() { for { fmt.Println(\"spam spam\") } }\n```",
                          "output_limit"),
    "Java ignoring its limits": ("```java\nimport java.util.*;\npublic class Main { public static void main(String[] a) "
                                 "{ List<long[]> hog = new ArrayList<>(); for (;;) { try { hog.add(new long[1 << 20]); "
                                 "new Thread(() -> { for (;;) {} }).start(); } catch (Throwable t) { hog.clear(); } "
                                 "} } }\n```", ("timeout", "output_limit")),  # the JVM's own warnings may fill the output first
    "host file at compile time": ("```c\n#include \"/etc/shadow\"\nint main(void) { return 0; }\n```",
                                  "compile_error"),
    "a compile that never ends": ("```cpp\ntemplate <int N, int K> struct Tree { static constexpr long value = "
                                  "Tree<N - 1, 2 * K>::value + Tree<N - 1, 2 * K + 1>::value; };\n"
                                  "template <int K> struct Tree<0, K> { static constexpr long value = K; };\n"
                                  "int main() { return Tree<40, 1>::value != 0; }\n```", "compile_error"),
}


def _leaks(config_path: str, port: int, marker: str) -> dict[str, tuple[str, str | None]]:
    """Programs whose one test passes only if they got out: each must score 0."""
    return {
        "reading the environment": ("import os\nfound = os.environ.get('PLAUDIT_API_KEYS')\n", "assert found"),
        "reading the config": (f"found = open({config_path!r}).read()\n", "assert found"),
        "writing outside /work": (f"open({marker!r}, 'w').write('pwned')\nok = True\n", "assert ok"),
        "connecting to the service": (f"import socket\ns = socket.socket()\ns.settimeout(2)\n"
                                      f"ok = s.connect_ex(('127.0.0.1', {port})) == 0\n", "assert ok"),
        "signalling the parent": ("import os, signal\nfor pid in (1, os.getppid(), -1):\n    try:\n"
                                  "        os.kill(pid, signal.SIGKILL)\n    except OSError:\n"
                                  "        pass\nok = False\n", "assert ok"),
    }


def _sandbox_processes() -> list[str]:
    """Live processes of the sandbox uids (any process's block), but for the warm sandboxes while they wait:
    each one's bwrap and its fork server's two processes (the server and its PID 1, Z). A run's
    processes are forks of Z and carry the server's command line: a third python of one
    sandbox, a child of Z, is a run's left behind. (A finished run's bwrap may linger a moment
    as a zombie, dead, until the host's init reaps it: not a process that runs.)"""
    listing = subprocess.run(["ps", "-ww", "-eo", "uid=,pid=,ppid=,stat=,args="], capture_output=True,
                             text=True).stdout
    live = [line for line in listing.splitlines()
            if BASE_UID <= int(line.split()[0]) < BASE_UID + UID_BLOCKS * UID_BLOCK and not line.split()[3].startswith("Z")]
    server = {line.split()[1]: line.split()[2] for line in live
              if "/server/exec_forkserver.py" in line and line.split()[4] != "bwrap"}  # pid: parent

    def depth(pid: str) -> int:  # the server 0, Z 1, a run's processes 2 and more
        return 0 if server.get(pid) not in server else 1 + depth(server[pid])

    return [line for line in live if "/server/exec_forkserver.py" not in line
            or (line.split()[1] in server and depth(line.split()[1]) > 1)]


@pytest.mark.parametrize("returncode, cpu_s, message", [
    (137, 3.92, "timeout: over 4 s of CPU time"),  # the account may fall short of the limit the kernel saw
    (-9, 4.01, "timeout: over 4 s of CPU time"),
    (152, 3.97, "timeout: over 4 s of CPU time"),  # SIGXCPU, through bwrap
    (137, 1.20, "exit 137: "),  # killed long before its CPU limit: not a timeout
    (1, 3.99, "exit 1: boom"),  # ran long, then failed on its own: its own error
])
def test_a_run_killed_at_its_cpu_limit_is_a_timeout(returncode, cpu_s, message):
    run = Run(returncode, b"", b"boom" if returncode == 1 else b"", b"", cpu_s=cpu_s)
    assert _case(run, "done", "exact", None, 3.0)["message"] == message


@pytest.mark.skipif(os.geteuid() != 0, reason="per-slot uids and process limits need root")
def test_hostile_programs_score_zero_while_the_service_answers(tiny_bt, tmp_path):
    marker = str(tmp_path / "escaped")
    config = tmp_path / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": {"tiny": {"path": str(tiny_bt)},
                                                 "tests": {"kind": "execution", "settings": SETTINGS}},
                                      "default_model": "tiny"}))
    with running_service(config, tmp_path, env={"PLAUDIT_API_KEYS": "sk-secret"}) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        programs = {name: (code.replace("{marker}", marker), "assert True", reason)
                    for name, (code, reason) in HOSTILE.items()}
        programs.update({name: (code, [{"input": "", "output": "done"}], reason)
                         for name, (code, reason) in HOSTILE_COMPILED.items()})
        programs.update({name: (code, test, None) for name, (code, test) in _leaks(str(config), port, marker).items()})
        headers = {"Authorization": "Bearer sk-secret"}

        def hostile() -> httpx2.Response:
            items = [{"prompt": name, "response": code, "reference": test}
                     for name, (code, test, _) in programs.items()]
            return httpx2.post(f"{url}/score", json={"model": "tests", "items": items, "test_outcomes": True},
                               headers=headers, timeout=120)

        def ordinary(i: int) -> int:
            return httpx2.post(f"{url}/score", json={"items": [{"prompt": f"q{i}", "response": "a"}]},
                               headers=headers, timeout=60).status_code

        with ThreadPoolExecutor(4) as pool:
            attack = pool.submit(hostile)
            statuses = [pool.submit(ordinary, i) for i in range(12)]
            answer = attack.result()
            assert [s.result() for s in statuses] == [200] * 12  # the service kept answering
        assert answer.status_code == 200, answer.text
        body = answer.json()
        for (name, (_, _, reason)), reward, detail in zip(programs.items(), body["rewards"], body["details"]):
            assert reward == 0.0, (name, detail)
            if reason:
                assert detail["reason"] in ((reason,) if isinstance(reason, str) else reason), (name, detail)
        assert not os.path.exists(marker)
        assert "root:" not in str(body["details"])  # nothing of the host's files came back
        time.sleep(1)
        assert _sandbox_processes() == []  # every run's processes are gone, the daemon too
        assert httpx2.get(f"{url}/readyz", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def served(tiny_service):
    """The run's shared service: `tests` (this kind), `code` (tests, then the tiny BT model)."""
    return tiny_service


GOOD, BAD = f"```python\n{ADD}```", "```python\ndef add(a, b):\n    return a - b\n```"
TESTS = "assert add(1, 2) == 3\nassert add(0, 0) == 0"


def test_the_trainer_paths_carry_the_tests(served):
    """OpenRLHF's labels, TRL's dataset column and verl's ground truth each reach the execution kind."""
    import asyncio

    from plaudit.integrations.trl import reward_function
    from plaudit.integrations.verl import compute_score

    prompt = "<|im_start|>user\nWrite add(a, b).<|im_end|>\n<|im_start|>assistant\n"
    answer = httpx2.post(f"{served}/get_reward", json={"model": "tests",
                                                        "query": [prompt + GOOD + "<|im_end|>", prompt + BAD],
                                                        "prompts": [prompt, prompt], "labels": [TESTS, TESTS]},
                         timeout=60).json()
    assert answer["rewards"] == [1.0, 0.5] and answer["extra_logs"]["all_passed"] == [1.0, 0.0]
    reward = reward_function(served, "tests", reference_column="tests")
    assert reward(["Write add."] * 2, [GOOD, BAD], tests=[TESTS, TESTS]) == [1.0, 0.5]
    verl = asyncio.run(compute_score(data_source="humaneval", solution_str=GOOD, ground_truth=TESTS,
                                     extra_info={"prompt": "Write add."}, url=served, model="tests"))
    assert verl["score"] == 1.0
    ranked = httpx2.post(f"{served}/rank", json={"model": "code", "prompt": "Write add.", "responses": [BAD, GOOD],
                                                 "reference": TESTS}, timeout=60).json()
    assert ranked["order"] == [1, 0] and 1.0 < ranked["rewards"][1] < 1.1 and ranked["rewards"][0] == 0.5
    logs = httpx2.post(f"{served}/get_reward", json={"model": "code", "query": [prompt + GOOD, prompt + BAD],
                                                      "prompts": [prompt, prompt], "labels": [TESTS, TESTS]},
                       timeout=60).json()["extra_logs"]
    assert logs["part/tests"] == [1.0, 0.5] and logs["error"] == [0.0, 0.0]
    missing = httpx2.post(f"{served}/score", json={"model": "tests", "items": [{"prompt": "p", "response": GOOD}]},
                          timeout=60)
    assert missing.status_code in (400, 422) and missing.json()["field"] == "items[0].reference"


def test_without_bubblewrap_the_kind_refuses_unless_told_none(monkeypatch, caplog):
    from plaudit.rewardmodels import ModelLoadError
    from plaudit.rewardmodels import sandbox

    real = shutil.which
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None if name == "bwrap" else real(name))
    with pytest.raises(ModelLoadError, match="bubblewrap.*sandbox: none"):
        load_scorer(None, name="tests", kind="execution")
    unsafe = load_scorer(None, name="tests", kind="execution", settings={"sandbox": "none", "wall_s": 5})
    assert "UNSANDBOXED" in caplog.text
    cases = [{"input": "1 2", "output": "3"}]
    scored = unsafe.score([Item(prompt="p", response=ADD, reference="assert add(1, 2) == 3"),
                           Item(prompt="p", response="print(sum(map(int, input().split())))", reference=cases)])
    assert scored.rewards == [1.0, 1.0]


@pytest.mark.parametrize("output_format", ["openrlhf", "verl", "trl"])
def test_humaneval_rl_data_reads_as_each_trainer_reads_it(execution, tmp_path, output_format, capsys):
    """`plaudit data humaneval-rl`: the file loads the way the trainer loads it (datasets' json or
    parquet reader), and its labels are tests the execution kind runs: each canonical solution
    scores 1.0, a body that returns None does not."""
    from datasets import load_dataset

    from plaudit.service.cli import main
    from plaudit.training.humaneval import load_problems, solution_source

    out = tmp_path / ("prompts.parquet" if output_format == "verl" else "prompts.jsonl")
    main(["data", "humaneval-rl", "--format", output_format, "--out", str(out), "--limit", "6"])
    assert '"written": 6' in capsys.readouterr().out
    rows = list(load_dataset("parquet" if output_format == "verl" else "json", data_files=str(out), split="train"))
    label = {"openrlhf": lambda r: r["label"], "trl": lambda r: r["tests"],
             "verl": lambda r: r["reward_model"]["ground_truth"]}[output_format]
    assert all(r["prompt"][0]["role"] == "user" and "```python" in r["prompt"][0]["content"] for r in rows)
    if output_format == "verl":
        assert {r["data_source"] for r in rows} == {"plaudit/humaneval"} and rows[2]["extra_info"]["index"] == 2
        assert rows[0]["extra_info"]["prompt"] == rows[0]["prompt"]
    problems = load_problems()[:6]
    solved = [Item(prompt="p", response=f"```python\n{solution_source(p)}\n```", reference=label(r))
              for p, r in zip(problems, rows)]
    broken = [Item(prompt="p", response=f"def {p['entry_point']}(*args):\n    return None", reference=label(r))
              for p, r in zip(problems, rows)]
    rewards = execution.score(solved + broken).rewards
    assert rewards[:6] == [1.0] * 6 and max(rewards[6:]) < 1.0


def test_only_what_serves_runs_adopts_orphans(tmp_path):
    """The default config probes bubblewrap; that probe must leave the reading process as it was.
    Loading the execution kind makes its process adopt (and reap) the sandboxes' orphans."""
    import subprocess
    import sys

    check = ("import ctypes, sys\n"
             "from plaudit.service.config import default_config\n"
             "from plaudit.rewardmodels import load_scorer\n"
             "def adopting():\n"
             "    value = ctypes.c_int()\n"
             "    ctypes.CDLL(None).prctl(37, ctypes.byref(value), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER\n"
             "    return value.value\n"
             "assert 'execution' in default_config().models\n"
             "before = adopting()\n"
             "load_scorer(None, name='x', kind='execution')\n"
             "print(before, adopting())\n")
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.stdout.split() == ["0", "1"], run.stderr[-1000:]


def _verl_sandbox_client():
    """verl's own SandboxFusion client module (verl/utils/reward_score/sandbox_fusion/utils.py),
    loaded by path: it needs only requests, where verl's package would import Ray and torch."""
    import importlib.util
    from pathlib import Path

    root = importlib.util.find_spec("verl").submodule_search_locations[0]
    spec = importlib.util.spec_from_file_location(
        "verl_sandbox_fusion", Path(root) / "utils" / "reward_score" / "sandbox_fusion" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_code_answers_verl_as_sandbox_fusion_would(served):
    """verl's check_correctness against plaudit's /run_code, per language and outcome: True,
    False, -4 (compile error), -2 (runtime error), -3 (timeout), as it reads SandboxFusion."""
    from languages import COMPILED, INPUT, OUTCOMES, OUTPUT, PROGRAMS
    from plaudit.rewardmodels.languages import LANGUAGES

    verl = _verl_sandbox_client()
    expected = {"correct": True, "wrong": False, "runtime_error": -2, "timeout": -3}
    runs = [(language, outcome) for language in PROGRAMS for outcome in OUTCOMES
            if language in verl.SUPPORTED_LANGUAGES and not LANGUAGES[language].missing]

    def check(run):
        language, outcome = run
        results, _ = verl.check_correctness(f"{served}/run_code", {"inputs": [INPUT], "outputs": [OUTPUT]},
                                            PROGRAMS[language][outcome], timeout=6, language=language)
        return results[0]

    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(runs, pool.map(check, runs)))
    want = {(language, outcome): expected.get(outcome, -4 if language in COMPILED else -2)
            for language, outcome in runs}
    assert got == want
    assert {language for language, _ in runs} >= {"python", "cpp", "java", "nodejs", "go", "rust", "bash"}


def test_run_code_with_sandbox_fusions_own_client(served):
    from sandbox_fusion import RunCodeRequest, run_code

    from languages import INPUT, PROGRAMS

    port = int(served.rsplit(":", 1)[1])
    for language in ("python", "cpp", "java", "go"):
        answer = run_code(RunCodeRequest(code=PROGRAMS[language]["correct"], language=language, stdin=INPUT),
                          endpoint=served, max_attempts=1, client_timeout=60)
        assert (answer.status, answer.run_result.stdout) == ("Success", "42\n"), (language, answer)
    broken = run_code(RunCodeRequest(code=PROGRAMS["cpp"]["compile_error"], language="cpp"), endpoint=served,
                      max_attempts=1, client_timeout=60)
    assert broken.status == "Failed" and broken.compile_result.return_code != 0 and broken.run_result is None
    assert "error" in broken.compile_result.stderr
    # no network in the sandbox, not even to the service on loopback
    probe = ("import socket\ns = socket.socket()\ns.settimeout(2)\n"
             f"print('reached' if s.connect_ex(('127.0.0.1', {port})) == 0 else 'blocked')\n")
    assert run_code(RunCodeRequest(code=probe, language="python"), endpoint=served, max_attempts=1,
                    client_timeout=60).run_result.stdout == "blocked\n"


def test_run_code_limits_files_and_errors(served):
    import base64

    from languages import PROGRAMS

    assert httpx2.get(f"{served}/v1/ping", timeout=10).json() == "pong"
    post = lambda body: httpx2.post(f"{served}/run_code", json=body, timeout=60)  # noqa: E731
    hog = post({"code": "x = bytearray(600 << 20)\nprint('allocated')", "language": "python", "memory_limit_MB": 256})
    assert hog.status_code == 200 and hog.json()["status"] == "Failed" and "MemoryError" in \
        hog.json()["run_result"]["stderr"]
    files = post({"code": "print(open('data/in.txt').read())\nopen('out.txt', 'w').write('made')", "language": "py",
                  "files": {"data/in.txt": base64.b64encode(b"sent").decode()}, "fetch_files": ["out.txt", "gone"]})
    assert files.json()["run_result"]["stdout"] == "sent\n"
    assert files.json()["files"] == {"out.txt": base64.b64encode(b"made").decode()}
    c = post({"code": PROGRAMS["c"]["correct"], "language": "c", "stdin": "2 40"})  # plaudit's, not SandboxFusion's
    assert (c.json()["status"], c.json()["run_result"]["stdout"]) == ("Success", "42\n")
    for body, field in (({"code": "x", "language": "cobol"}, "language"),
                        ({"code": "x", "language": "python", "files": {"../up": "eA=="}}, "files['../up']"),
                        ({"code": "x", "language": "python", "files": {"a": "not base64!"}}, "files['a']")):
        refused = post(body)
        assert refused.status_code == 422 and refused.json()["field"] == field, refused.text
        assert refused.json()["detail"][0]["msg"]
    assert "'python'" in post({"code": "x", "language": "cobol"}).json()["error"]

