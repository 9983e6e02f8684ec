"""The execution reward: run the response's code against the item's tests in the sandbox;
the reward is the share of tests passed.

The code is the response's fenced blocks in one language (`languages.find_source`): the
item's (`reference.language`), else the first fence tag that names one, else Python. The
tests come with each item as its `reference` (`labels` in /get_reward), in the shapes people
have:

- assert statements (a string, or `{"tests": "..."}`): each top-level assert is a test,
  the other lines are setup;
- HumanEval: `{"tests": "def check(candidate): ...", "entry_point": "add"}` (and optionally
  its `prompt`, whose helpers the tests then take from the task, not from the response);
- function calls (APPS/TACO `fn_name`): `{"fn_name": "f", "inputs": [...], "outputs": [...]}`,
  each input a list of arguments or a string of one JSON value per line (verl's form);
- stdin/stdout cases, in every language: `{"cases": [{"input": ..., "output": ...}]}`, the
  list itself, or verl's `{"inputs": [...], "outputs": [...]}`: the program runs once per case
  and its output is compared (`compare`: tokens, lines or exact; `float_tolerance`).

Python tests of the first three shapes run in a judge of their own, in another sandbox: the
program is only called, and only plain data comes back (see exec_judge.py). A reference may
also arrive as that JSON in a string (verl's ground truth, OpenRLHF's labels). A run that
cannot finish gets reward 0 and a reason: `timeout`, `memory`, `output_limit`,
`compile_error`, `error` (the program or the tests failed to load, or the run died),
`no_code`, `wrong_language` (Python tests, another language's code) or
`language_unavailable` (the response's language has no toolchain here).

Each run's CPU time (user + system of its processes) and peak memory are measured from
outside the sandbox (sandbox.py) and reported in `details`: per case for stdin/stdout
tests, for the program's whole run when Python tests are judged outside it (a per-call
figure would come from the program's own process, which the program controls). The
`efficiency` setting turns them into a reward for fast correct code (EfficiencySettings).
"""
from __future__ import annotations

import json
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .base import InputError, Item, LoadContext, Scorer, Scores
from .languages import DEFAULT_LANGUAGE, LANGUAGES, Language, availability, by_name, find_source
from .programs import Programs
from .sandbox import Job, Run, Sandbox, SandboxLimits

IN_SANDBOX = {name: (Path(__file__).parent / f"{name}.py").read_text()
              for name in ("exec_program", "exec_judge", "plain_data")}
Comparison = Literal["tokens", "lines", "exact"]


class EfficiencySettings(BaseModel):
    """Pay correct code more when it is also fast (ACECode's shape): a response that passes
    every test earns 1 + weight x min(1, t_ref / t), in (1, 1 + weight], where t is its CPU
    time (user + system of its processes, the least of `repeats` runs, less what an empty
    program costs in the same harness, the interpreter's start, measured once; at least
    `resolution_s`, so that noise is not paid) and t_ref the
    reference solution's (`reference.solution`, measured the same way and cached) or, against
    `group` or without a solution, the fastest passing response to the same prompt."""

    model_config = ConfigDict(extra="forbid")
    weight: float = Field(0.5, gt=0, description="the most a passing response earns above 1, when it is as fast as "
                                                 "the reference or faster")
    against: Literal["reference", "group"] = Field("reference", description=(
        "reference: the item's `solution` (the group when it has none); group: the fastest passing response to "
        "the same prompt"))
    repeats: int = Field(3, ge=1, le=20, description="runs of each passing response and of the reference; the least "
                                                     "CPU time counts (noise only ever adds time)")
    resolution_s: float = Field(0.01, gt=0, description=(
        "CPU times below this (after the empty program's is taken off) count as this: differences within the "
        "measurement's noise (some ms a run) earn nothing"))


class ExecutionSettings(BaseModel):
    """The `settings:` of an execution model in the config."""

    model_config = ConfigDict(extra="forbid")
    sandbox: Literal["bwrap", "none"] = Field("bwrap", description="none: no isolation at all (trusted code only)")
    warm: bool = Field(True, description=(
        "start Python runs as forks of an interpreter already running in the slot's sandbox (a fork server), "
        "each in namespaces, files and limits of its own; false: a fresh sandbox and interpreter per run"))
    slots: int = Field(4, ge=1, description="programs running at once")
    max_waiting: int = Field(256, ge=0, description="programs waiting for a slot; past it a 503")
    wall_s: float = Field(10.0, gt=0, description="the whole run of one response, its tests included")
    test_s: float = Field(5.0, gt=0, description="one test (one assert, one stdin/stdout case)")
    memory_mb: int = Field(1024, ge=64)
    processes: int = Field(32, ge=2)
    output_kb: int = Field(1024, ge=1)
    compile_s: float = Field(20.0, gt=0, description="one compile, in the sandbox (once per distinct program)")
    build_cache: int = Field(256, ge=1, description="compiled programs kept for repeated responses")
    language: str = Field(DEFAULT_LANGUAGE, description="the language of code whose fences and item name none")
    compare: Comparison = Field("tokens", description="how stdout is compared: tokens (whitespace-split), lines "
                                                      "(each stripped), exact (after trailing newlines)")
    float_tolerance: float | None = Field(None, ge=0, description="numbers in the output (and in function-call "
                                                                  "results) equal within this, absolute or relative")
    efficiency: EfficiencySettings | None = Field(None, description=(
        "also pay passing responses for speed, a reward in (1, 1 + weight]; off by default"))


@dataclass
class Outcome:
    """One response's run: the reward, and what a person debugging a training run needs."""

    reward: float
    passed: int
    total: int
    all_passed: bool
    reason: str | None = None  # why the reward is 0 when the run could not finish
    message: str | None = None
    tests: list[dict[str, Any]] = field(default_factory=list)
    cpu_s: float | None = None  # user + system seconds of the program's processes, every test's run together
    peak_memory_mb: float | None = None  # the largest resident set among them
    efficiency: dict[str, Any] | None = None  # with the efficiency setting: the times the reward came from



@dataclass
class Tests:
    """An item's tests, read from its reference (see `read_tests`)."""

    style: Literal["asserts", "check", "calls", "io"]
    source: str = ""  # asserts, or a module with check(candidate)
    entry_point: str | None = None
    context: str | None = None  # the task's own code (HumanEval's prompt)
    fn_name: str | None = None
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"args": [...], "output": value}
    cases: list[dict[str, str]] = field(default_factory=list)  # {"input": str, "output": str}
    language: str | None = None
    compare: Comparison | None = None
    float_tolerance: float | None = None
    solution: str | None = None  # a reference solution, for efficiency

    @property
    def count(self) -> int:
        return len(self.cases) if self.style == "io" else len(self.calls) if self.style == "calls" else 0


def _arguments(case: Any, field_name: str) -> list:
    """A function-call case's arguments: a list of them, or one JSON value per line (verl)."""
    if isinstance(case, list):
        return case
    if isinstance(case, str):
        try:
            return [json.loads(line) for line in case.split("\n") if line.strip()]
        except json.JSONDecodeError as e:
            raise InputError(field_name, f"each line of a function-call input is a JSON value ({e})") from None
    raise InputError(field_name, "a function-call input is a list of arguments or JSON lines")


def _expected(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def read_tests(reference: Any, field_name: str) -> Tests:
    """The tests a reference holds, or an InputError naming the field."""
    if isinstance(reference, str) and reference.lstrip()[:1] in ("{", "["):
        try:
            reference = json.loads(reference)
        except json.JSONDecodeError:
            pass  # Python that starts with a bracket
    if isinstance(reference, list):
        reference = {"cases": reference}
    if isinstance(reference, str) and reference.strip():
        return Tests("asserts", reference)
    if not isinstance(reference, dict):
        raise InputError(field_name, _NEEDS)
    options = _item_options(reference, field_name)
    if isinstance(reference.get("inputs"), list) and isinstance(reference.get("outputs"), list):
        inputs, outputs = reference["inputs"], reference["outputs"]
        if len(inputs) != len(outputs) or not inputs:
            raise InputError(f"{field_name}.outputs", "as many outputs as inputs, at least one")
        if reference.get("fn_name"):
            calls = [{"args": _arguments(i, f"{field_name}.inputs[{n}]"), "output": _expected(o)}
                     for n, (i, o) in enumerate(zip(inputs, outputs))]
            return Tests("calls", fn_name=str(reference["fn_name"]), calls=calls, **options)
        reference = {**reference, "cases": [{"input": i, "output": o} for i, o in zip(inputs, outputs)]}
    if isinstance(reference.get("cases"), list) and reference["cases"]:
        cases = reference["cases"]
        if all(isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
               for c in cases):
            return Tests("io", cases=cases, **options)
        raise InputError(field_name, "each case is {\"input\": str, \"output\": str}")
    if isinstance(reference.get("tests"), str) and reference["tests"].strip():
        entry = reference.get("entry_point")
        context = reference.get("prompt") if entry and isinstance(reference.get("prompt"), str) else None
        return Tests("check" if entry else "asserts", reference["tests"], entry, context, **options)
    raise InputError(field_name, _NEEDS)


_NEEDS = ("the execution kind needs tests: assert statements, {\"tests\", \"entry_point\"} with a "
          "check(candidate), {\"fn_name\", \"inputs\", \"outputs\"}, or {\"cases\": [{\"input\", \"output\"}]}")


def _item_options(reference: dict, field_name: str) -> dict[str, Any]:
    """The item's own language and comparison, checked here so that a bad one is the caller's 4xx."""
    options: dict[str, Any] = {}
    if reference.get("language") is not None:
        language = by_name(str(reference["language"]))
        if language is None:
            raise InputError(f"{field_name}.language", f"plaudit runs {', '.join(LANGUAGES)}; not "
                                                       f"{reference['language']!r}")
        if language.missing:
            raise InputError(f"{field_name}.language", f"{language.name} is not available here: "
                                                       f"{', '.join(language.missing)} missing ({language.install})")
        options["language"] = language.name
    if reference.get("compare") is not None:
        if reference["compare"] not in ("tokens", "lines", "exact"):
            raise InputError(f"{field_name}.compare", "tokens, lines or exact")
        options["compare"] = reference["compare"]
    if reference.get("solution") is not None:
        if not isinstance(reference["solution"], str) or not reference["solution"].strip():
            raise InputError(f"{field_name}.solution", "the reference solution's code, a non-empty string")
        options["solution"] = reference["solution"]
    if reference.get("float_tolerance") is not None:
        tolerance = reference["float_tolerance"]
        if not isinstance(tolerance, (int, float)) or isinstance(tolerance, bool) or not tolerance >= 0:
            raise InputError(f"{field_name}.float_tolerance", "a number >= 0")
        options["float_tolerance"] = float(tolerance)
    return options


def same_output(got: str, expected: str, compare: Comparison, tolerance: float | None) -> bool:
    """stdout against the expected output: tokens (whitespace-split), lines (each stripped,
    outer blank lines dropped: LiveCodeBench, SandboxFusion), exact (after trailing newlines:
    verl); with a tolerance, numbers match within it, absolute or relative."""
    if compare == "exact":
        return got.rstrip("\n") == expected.rstrip("\n")
    if compare == "lines":
        got_lines, expected_lines = got.strip().splitlines(), expected.strip().splitlines()
        return len(got_lines) == len(expected_lines) and all(
            _same_tokens(g.strip().split(), e.strip().split(), tolerance) if tolerance is not None
            else g.strip() == e.strip() for g, e in zip(got_lines, expected_lines))
    return _same_tokens(got.split(), expected.split(), tolerance)


def _same_tokens(got: list[str], expected: list[str], tolerance: float | None) -> bool:
    if tolerance is None or len(got) != len(expected):
        return got == expected
    return all(g == e or _close(g, e, tolerance) for g, e in zip(got, expected))


def _close(got: str, expected: str, tolerance: float) -> bool:
    try:
        a, b = float(got), float(expected)
    except ValueError:
        return False
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance)


class Execution(Scorer):
    kind = "execution"
    Settings = ExecutionSettings
    neutral_reward = 0.5

    def __init__(self, name: str, settings: ExecutionSettings):
        super().__init__(name, {"kind": self.kind, **settings.model_dump(), "languages": availability()})
        self.settings = settings
        limits = SandboxLimits(wall_s=settings.wall_s, cpu_s=int(settings.wall_s) + 1, memory_mb=settings.memory_mb,
                               processes=settings.processes, output_bytes=settings.output_kb << 10)
        self.sandbox = Sandbox(settings.sandbox, limits, settings.slots, settings.max_waiting, warm=settings.warm)
        self.programs = Programs(self.sandbox, settings.compile_s, settings.build_cache)
        self.default_language = by_name(settings.language) or LANGUAGES[DEFAULT_LANGUAGE]
        self.pool = ThreadPoolExecutor(max_workers=settings.slots + min(settings.max_waiting, 64),
                                       thread_name_prefix=f"exec-{name}")
        self._reference_times: dict[str, float | None] = {}  # efficiency: reference solutions' CPU times
        self._empty_times: dict[str, float] = {}  # efficiency: an empty program's, per harness
        self._reference_lock = threading.RLock()  # a reference's measure takes the empty program's

    @classmethod
    def load(cls, context: LoadContext) -> "Execution":
        return cls(context.name or cls.kind, cls.settings_from(context))

    def close(self) -> None:
        """End the warm sandboxes' fork servers (each also ends when this process does)."""
        self.sandbox.close()

    def p_good(self, reward: float | None) -> float | None:
        """The share of tests passed is already on the scale of a probability (efficiency's
        bonus above 1 is not a probability of anything: a passing response is good)."""
        return None if reward is None else min(reward, 1.0)

    def score(self, items: Sequence[Item]) -> Scores:
        tests = [read_tests(it.reference, f"items[{i}].reference") for i, it in enumerate(items)]
        outcomes = list(self.pool.map(self.run, [it.response for it in items], tests))
        if self.settings.efficiency is not None:
            self._pay_for_speed(items, tests, outcomes, self.settings.efficiency)
        return Scores([o.reward for o in outcomes], [False] * len(items), details=[asdict(o) for o in outcomes],
                      logs={"all_passed": [float(o.all_passed) for o in outcomes],
                            "failed_to_run": [float(o.reason is not None) for o in outcomes]})

    def run(self, response: str, tests: Tests) -> Outcome:
        source = find_source(response, tests.language)
        if source.language is None:
            return Outcome(0.0, 0, tests.count, False, "no_code",
                           f"no code in a language plaudit runs (fences: {', '.join(source.tags)})")
        if not tests.language and not source.tags:  # neither the item nor a fence names it
            source.language = self.default_language
        language = source.language
        if not source.code.strip():
            return Outcome(0.0, 0, tests.count, False, "no_code", f"the response has no {language.name} code")
        if language.missing:
            return Outcome(0.0, 0, tests.count, False, "language_unavailable",
                           f"{language.name} is not available here ({language.install})")
        if tests.style != "io":
            if language.name != "python":
                return Outcome(0.0, 0, tests.count, False, "wrong_language",
                               f"these tests ({tests.style}) call Python; the response is {language.name}")
            return self._judged(source.code, tests)
        return self._cases(language, source.code, tests)

    def least_cpu(self, response: str, tests: Tests, runs: int, first: Outcome | None = None,
                  resolution_s: float = 0.01) -> float | None:
        """The least CPU time of `runs` runs that pass every test (`first`: one already made),
        less an empty program's in the same harness (at least `resolution_s`); None when a run
        fails."""
        times = [first.cpu_s] if first is not None else []
        for _ in range(runs - len(times)):
            again = self.run(response, tests)
            if not again.all_passed:
                return None
            times.append(again.cpu_s)
        if not times or None in times:
            return None
        return max(min(times) - self._empty_cpu(tests, response), resolution_s)

    def _empty_cpu(self, tests: Tests, response: str) -> float:
        """What running nothing costs in the harness these tests use (the interpreter's or the
        binary's start, the judge's calls aside): the least of five runs, once per process."""
        language = find_source(response, tests.language).language or self.default_language
        key = f"{tests.style == 'io'}:{language.name}"
        with self._reference_lock:
            if key not in self._empty_times:
                if tests.style == "io":
                    empty = Tests("io", cases=[{"input": "", "output": ""}], language=language.name)
                    code = f"```{language.name}\n{language.empty_program}\n```"
                else:  # loaded and called once, as the judge calls a program
                    empty = Tests("asserts", "assert empty() is None", language="python")
                    code = "```python\ndef empty():\n    return None\n```"
                times = [self.run(code, empty).cpu_s for _ in range(5)]
                self._empty_times[key] = min((t for t in times if t is not None), default=0.0)
            return self._empty_times[key]

    def _reference_cpu(self, tests: Tests, efficiency: EfficiencySettings) -> float | None:
        """The reference solution's least CPU time on these tests, measured once per process."""
        key = json.dumps([asdict(tests), efficiency.model_dump()], sort_keys=True, default=str)
        with self._reference_lock:
            if key not in self._reference_times:
                self._reference_times[key] = self.least_cpu(f"```{tests.language or self.default_language.name}\n"
                                                            f"{tests.solution}\n```", tests, efficiency.repeats,
                                                            resolution_s=efficiency.resolution_s)
            return self._reference_times[key]

    def _pay_for_speed(self, items: Sequence[Item], tests: list[Tests], outcomes: list[Outcome],
                       efficiency: EfficiencySettings) -> None:
        """Passing responses' rewards raised to 1 + weight x min(1, t_ref / t) (EfficiencySettings)."""
        passing = [i for i, o in enumerate(outcomes) if o.all_passed]
        times = dict(zip(passing, self.pool.map(
            lambda i: self.least_cpu(items[i].response, tests[i], efficiency.repeats, outcomes[i],
                                     efficiency.resolution_s), passing)))
        def group(i: int) -> str:  # the same prompt and the same tests
            return json.dumps([items[i].model_dump(mode="json")["prompt"], asdict(tests[i])], default=str)

        fastest: dict[str, float] = {}
        for i, t in times.items():
            if t is not None:
                fastest[group(i)] = min(t, fastest.get(group(i), t))
        for i, t in times.items():
            against, t_ref = "group", None
            if efficiency.against == "reference" and tests[i].solution:
                against, t_ref = "reference", self._reference_cpu(tests[i], efficiency)
            if t_ref is None:
                against, t_ref = "group", fastest.get(group(i))
            outcome = outcomes[i]
            outcome.efficiency = {"cpu_s": t, "against": against, "reference_cpu_s": t_ref, "runs": efficiency.repeats}
            if t is None or t_ref is None:  # a repeat failed: paid as correct, not as fast
                outcome.efficiency["reason"] = "a repeated run did not pass" if t is None else "no reference time"
                continue
            outcome.reward = 1.0 + efficiency.weight * min(1.0, t_ref / max(t, 1e-9))

    def _judged(self, code: str, tests: Tests) -> Outcome:
        """Python tests that call the program: the judge in one sandbox, the program in another."""
        s = self.settings
        job = {"style": tests.style, "tests": tests.source, "entry_point": tests.entry_point,
               "context": tests.context, "fn_name": tests.fn_name, "calls": tests.calls, "test_s": s.test_s,
               "float_tolerance": tests.float_tolerance if tests.float_tolerance is not None else s.float_tolerance}
        python = self.sandbox.python
        verdict, answers = self.sandbox.run_pair(
            Job((python, "-I", "-B", "/code/exec_program.py", "{calls_fd}", "{answers_fd}", str(s.test_s)),
                None, limits=self.sandbox.limits,
                files={"main.py": code, "exec_program.py": IN_SANDBOX["exec_program"],
                       "plain_data.py": IN_SANDBOX["plain_data"]}),
            Job((python, "-I", "-S", "-B", "/code/exec_judge.py", "{result_fd}", "{calls_fd}", "{answers_fd}"),
                None, json.dumps(job).encode(), limits=self.sandbox.limits,
                files={"exec_judge.py": IN_SANDBOX["exec_judge"], "plain_data.py": IN_SANDBOX["plain_data"]}))
        return outcome(verdict, answers)

    def _cases(self, language: Language, code: str, tests: Tests) -> Outcome:
        """stdin/stdout cases: build once, run once per case, compare here (the program never
        holds an expected output)."""
        s = self.settings
        compare = tests.compare or s.compare
        tolerance = tests.float_tolerance if tests.float_tolerance is not None else s.float_tolerance
        with self.programs.built(language, code) as build:
            if not build.ok:
                return Outcome(0.0, 0, len(tests.cases), False, "compile_error", build.compile_message)
            results, deadline = [], time.monotonic() + s.wall_s
            for i, case in enumerate(tests.cases):
                left = deadline - time.monotonic()
                if left <= 0:
                    results.append({"name": f"case #{i + 1}", "passed": False,
                                    "message": f"timeout: the run's {s.wall_s:g} s are spent"})
                    continue
                run = self.programs.run(build, case["input"].encode(),
                                        self.programs.limits(language, min(s.test_s, left)))
                results.append({"name": f"case #{i + 1}", **_case(run, case["output"], compare, tolerance,
                                                                   min(s.test_s, left)),
                                "cpu_s": run.cpu_s, "peak_memory_mb": run.peak_memory_mb})
        passed = sum(r["passed"] for r in results)
        reason = _shared_reason(results) if passed == 0 else None
        cpu = [r["cpu_s"] for r in results if r.get("cpu_s") is not None]
        peaks = [r["peak_memory_mb"] for r in results if r.get("peak_memory_mb") is not None]
        return Outcome(passed / len(results), passed, len(results), passed == len(results), reason,
                       results[0]["message"] if reason else None, results,
                       sum(cpu) if cpu else None, max(peaks) if peaks else None)


def _case(run: Run, expected: str, compare: Comparison, tolerance: float | None, seconds: float) -> dict:
    if run.output_exceeded:
        return {"passed": False, "message": "output_limit: the program wrote more than the output limit"}
    if run.timed_out:
        return {"passed": False, "message": f"timeout: over {seconds:g} s"}
    cpu_limit = int(seconds) + 1  # as Programs.limits sets it
    if _killed_at_cpu_limit(run, cpu_limit):
        return {"passed": False, "message": f"timeout: over {cpu_limit} s of CPU time"}
    stderr = run.stderr.decode(errors="replace")
    if run.returncode != 0:
        kind = "memory: " if "MemoryError" in stderr or "OutOfMemory" in stderr or "bad_alloc" in stderr else ""
        return {"passed": False, "message": f"{kind}exit {run.returncode}: {stderr[-200:]}"}
    got = run.stdout.decode(errors="replace")
    if same_output(got, expected, compare, tolerance):
        return {"passed": True, "message": None}
    return {"passed": False, "message": f"expected {expected[:80]!r}, got {got[:80]!r}"}


KILL_SIGNALS = (9, 24)  # SIGKILL (RLIMIT_CPU's hard limit), SIGXCPU (its soft one)


def _killed_at_cpu_limit(run: Run, cpu_limit: int) -> bool:
    """Whether the kernel ended the run at its CPU time limit: threads on several cores spend it
    faster than the wall. The account, measured after the kill, may fall short of the limit by
    a few tens of ms (3.953 s of 4 seen), so a tenth of slack; a kill signal is required, so
    a program that merely ran long and then failed keeps its own error."""
    killed = run.returncode in {-s for s in KILL_SIGNALS} | {128 + s for s in KILL_SIGNALS}
    return killed and run.cpu_s is not None and run.cpu_s >= 0.9 * cpu_limit


def _shared_reason(results: list[dict]) -> str | None:
    """When no case passed for one cause (every case timed out, or ran out of memory), that cause."""
    causes = {(r["message"] or "").split(":", 1)[0] for r in results}
    return causes.pop() if len(causes) == 1 and causes <= {"timeout", "memory", "output_limit"} else None


def outcome(verdict: Run, program: Run) -> Outcome:
    """The reward and the reason, from what the judge reported and what the sandboxes saw
    (the program's CPU time and memory: its whole run, loading and every call)."""
    measured = _outcome(verdict, program)
    measured.cpu_s, measured.peak_memory_mb = program.cpu_s, program.peak_memory_mb
    return measured


def _outcome(verdict: Run, program: Run) -> Outcome:
    if verdict.output_exceeded:
        return Outcome(0.0, 0, 0, False, "output_limit", "the program wrote more than the output limit")
    if verdict.timed_out:
        return Outcome(0.0, 0, 0, False, "timeout", "the run did not finish within its wall time")
    try:
        report = json.loads(verdict.result)
    except (json.JSONDecodeError, UnicodeDecodeError):
        stderr = verdict.stderr.decode(errors="replace")
        return Outcome(0.0, 0, 0, False, "error", f"the judge ended without a report (exit {verdict.returncode}): "
                                                  f"{stderr[-300:]}")
    tests = report.get("tests") or []
    program_said = program.stderr.decode(errors="replace")
    if report.get("error") or not tests:
        message = report.get("error") or "no test ran"
        reason = "timeout" if "timeout:" in message else "memory" if "MemoryError" in message + program_said[-300:] \
            else "error"
        return Outcome(0.0, 0, len(tests), False, reason, message, tests)
    passed = sum(bool(t["passed"]) for t in tests)
    return Outcome(passed / len(tests), passed, len(tests), passed == len(tests), None, None, tests)
