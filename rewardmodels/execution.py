"""The execution reward: run the response's code against the item's tests in the sandbox;
the reward is the share of tests passed.

The code is the response's fenced code blocks marked python, py or unmarked, joined in
order; a response without any fence is taken whole as code; one whose fences are all in
other languages has no code (`no_code`). The tests come with each item as its
`reference` (`labels` in /get_reward), in the shapes people have:

- assert statements (a string, or `{"tests": "..."}`): each top-level assert is a test,
  the other lines are setup;
- HumanEval: `{"tests": "def check(candidate): ...", "entry_point": "add"}`: each assert in
  check's body is a test, with `candidate` bound to the program's `add`;
- stdin/stdout cases (APPS, CodeContests): `{"cases": [{"input": "...", "output": "..."}]}`
  or the list itself: the program runs once per case, its output compared token by token.

A reference may also arrive as that JSON in a string (verl's ground truth, OpenRLHF's
labels). A run that cannot finish gets reward 0 and a reason: `timeout`, `memory`,
`output_limit`, `error` (the program or the tests failed to load, or the run died) or
`no_code`.
"""
from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .base import InputError, Item, Scorer, Scores
from .sandbox import Run, Sandbox, SandboxLimits

HARNESS = (Path(__file__).parent / "exec_harness.py").read_text()
FENCE = re.compile(r"```([^\n`]*)\n(.*?)```", re.S)
PYTHON_FENCES = {"", "python", "py", "python3"}


class ExecutionSettings(BaseModel):
    """The `settings:` of an execution model in the config."""

    model_config = ConfigDict(extra="forbid")
    sandbox: Literal["bwrap", "none"] = Field("bwrap", description="none: no isolation at all (trusted code only)")
    slots: int = Field(4, ge=1, description="programs running at once")
    max_waiting: int = Field(256, ge=0, description="programs waiting for a slot; past it a 503")
    wall_s: float = Field(10.0, gt=0, description="the whole run of one response, its tests included")
    test_s: float = Field(5.0, gt=0, description="one test (one assert, one stdin/stdout case)")
    memory_mb: int = Field(1024, ge=64)
    processes: int = Field(32, ge=2)
    output_kb: int = Field(1024, ge=1)


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


def extract_code(response: str) -> str:
    fences = FENCE.findall(response)
    if not fences:
        return response
    return "\n".join(code for lang, code in fences if lang.strip().lower() in PYTHON_FENCES)


def read_tests(reference: Any, field_name: str) -> dict[str, Any]:
    """The harness's job description for a reference, or an InputError naming the field."""
    if isinstance(reference, str) and reference.lstrip()[:1] in ("{", "["):
        try:
            reference = json.loads(reference)
        except json.JSONDecodeError:
            pass  # Python that starts with a bracket
    if isinstance(reference, list):
        reference = {"cases": reference}
    if isinstance(reference, str) and reference.strip():
        return {"style": "asserts", "tests": reference, "entry_point": None, "cases": []}
    if isinstance(reference, dict):
        if isinstance(reference.get("cases"), list) and reference["cases"]:
            cases = reference["cases"]
            if all(isinstance(c, dict) and isinstance(c.get("input"), str) and isinstance(c.get("output"), str)
                   for c in cases):
                return {"style": "io", "tests": "", "entry_point": None, "cases": cases}
            raise InputError(field_name, "each case is {\"input\": str, \"output\": str}")
        if isinstance(reference.get("tests"), str) and reference["tests"].strip():
            entry = reference.get("entry_point")
            return {"style": "check" if entry else "asserts", "tests": reference["tests"], "entry_point": entry,
                    "cases": []}
    raise InputError(field_name, "the execution kind needs tests: assert statements, {\"tests\", \"entry_point\"} "
                                 "with a check(candidate), or {\"cases\": [{\"input\", \"output\"}]}")


class Execution(Scorer):
    kind = "execution"
    neutral_reward = 0.5

    def __init__(self, name: str, settings: ExecutionSettings):
        super().__init__(name, {"kind": self.kind, **settings.model_dump()})
        self.settings = settings
        limits = SandboxLimits(wall_s=settings.wall_s, cpu_s=int(settings.wall_s) + 1, memory_mb=settings.memory_mb,
                               processes=settings.processes, output_bytes=settings.output_kb << 10)
        self.sandbox = Sandbox(settings.sandbox, limits, settings.slots, settings.max_waiting)
        self.pool = ThreadPoolExecutor(max_workers=settings.slots + min(settings.max_waiting, 64),
                                       thread_name_prefix=f"exec-{name}")

    @classmethod
    def load(cls, path: str | Path | None = None, name: str | None = None, settings: dict | None = None,
             **ignored: Any) -> "Execution":
        return cls(name or "execution", ExecutionSettings.model_validate(settings or {}))

    def score(self, items: Sequence[Item]) -> Scores:
        jobs = [read_tests(it.reference, f"items[{i}].reference") for i, it in enumerate(items)]
        outcomes = list(self.pool.map(self.run, [it.response for it in items], jobs))
        return Scores([o.reward for o in outcomes], [False] * len(items), details=[asdict(o) for o in outcomes],
                      logs={"all_passed": [float(o.all_passed) for o in outcomes],
                            "failed_to_run": [float(o.reason is not None) for o in outcomes]})

    def run(self, response: str, job: dict[str, Any]) -> Outcome:
        code = extract_code(response)
        if not code.strip():
            return Outcome(0.0, 0, 0, False, "no_code", "the response has no Python code")
        job = {**job, "program": code, "test_s": self.settings.test_s}
        return outcome(self.sandbox.run({"harness.py": HARNESS}, ["harness.py", "{result_fd}"],
                                        json.dumps(job).encode()))


def outcome(run: Run) -> Outcome:
    """The reward and the reason, from what the sandbox saw."""
    if run.output_exceeded:
        return Outcome(0.0, 0, 0, False, "output_limit", "the program wrote more than the output limit")
    if run.timed_out:
        return Outcome(0.0, 0, 0, False, "timeout", "the run did not finish within its wall time")
    try:
        report = json.loads(run.result)
    except (json.JSONDecodeError, UnicodeDecodeError):
        stderr = run.stderr.decode(errors="replace")
        reason = "memory" if "MemoryError" in stderr else "error"
        return Outcome(0.0, 0, 0, False, reason, f"the run ended without a report (exit {run.returncode}): "
                                                 f"{stderr[-300:]}")
    tests = report.get("tests") or []
    if report.get("error") or not tests:
        message = report.get("error") or "no test ran"
        reason = "timeout" if "timeout:" in message else "memory" if "MemoryError" in message else "error"
        return Outcome(0.0, 0, len(tests), False, reason, message, tests)
    passed = sum(bool(t["passed"]) for t in tests)
    return Outcome(passed / len(tests), passed, len(tests), passed == len(tests), None, None, tests)
