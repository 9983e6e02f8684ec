"""The consensus reward: the K responses to one prompt scored together, by how their programs
agree on a few plausible tests (CodeT's dual execution agreement, or B4's Bayesian score).

Every response runs against every test of its prompt (the pass matrix, K x M), through the
execution kind's sandbox; responses that pass exactly the same tests form a group, and a
group is scored by:

- `codet` (Chen et al., ICLR 2023, "CodeT: Code Generation with Generated Tests", §2.2):
  score = (tests the group passes) x (responses in the group)^exponent, the exponent 1 as
  in the paper's f(S) = |S_x| |S_y|; 0.5 is what CodeT's and B4's released code compute.
- `b4` (Chen et al., ASE 2024, "B4: Towards Optimal Assessment of Plausible Code Solutions
  with Plausible Tests", its `strategy.B4`): the log posterior of "this group is the correct
  programs and its passed tests the correct tests",
      lnB(P + a, M - P + 1) + lnB(n + a, K - n + 1) + lnB(e1 + 1, m1 - e1 + 1) + lnB(e0 + 1, m0 - e0 + b0)
  with P the group's tests passed, n its size, e1 (e0) the passes of the other responses on
  the group's passed (failed) tests out of m1 (m0) cells, lnB the log Beta function, and the
  priors a = 1e3, b0 = 1e4 (the released code's alpha_xy and the first of its beta_0 range).
  The default method: it picked better than CodeT on HumanEval (docs/consensus.md).

A response's reward is its group's score over the best group's, times the best group's pass
rate: in [0, 1], 1 for the responses of a best group that passes every test, and for a lone
response (or K responses that all agree) exactly its pass rate. A group that passes no test
scores 0 (agreeing on failing everything is no evidence; B4 alone could prefer it).

The tests are the item's reference when it has one (any shape the execution kind reads),
else the examples in the prompt: `>>>` doctest lines with the expected value on the next
line(s) (asserts), or `Input:` / `Output:` blocks (stdin/stdout cases). With `judge` set, a
configured judge's backend also writes Python asserts for a prompt without a reference,
once per prompt, kept on disk like TICK's checklists, and added to its `>>>` examples. An
item with no test at all gets the neutral reward (0.5) and `reason: no_tests` in its details.
"""
from __future__ import annotations

import ast
import hashlib
import json
import math
import re
import string
import threading
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from .base import InputError, Item, LoadContext, ModelLoadError, Prompt, Scorer, Scores
from .execution import Execution, ExecutionSettings, Outcome, Tests, read_tests
from .loading import cache_dir

Method = Literal["codet", "b4"]
TRANSIENT = ("timeout", "memory")  # outcomes not kept: the same program may finish next time
WRITE_TESTS = string.Template((Path(__file__).resolve().parent / "prompts" / "consensus_tests.md").read_text())


class ConsensusSettings(BaseModel):
    """The `settings:` of a consensus model in the config."""

    model_config = ConfigDict(extra="forbid")
    method: Method = Field("b4", description="b4: B4's Bayesian score of the pass matrix (the default: it picks "
                                             "better on HumanEval, docs/consensus.md); codet: tests passed x group "
                                             "size^codet_exponent")
    execution: str | ExecutionSettings = Field(default_factory=ExecutionSettings, description=(
        "a configured execution model whose sandbox runs the programs, or the settings of one of its own"))
    codet_exponent: float = Field(1.0, ge=0, description="1: the CodeT paper's |S_x| |S_y|; 0.5: its released code")
    b4_alpha: float = Field(1e3, gt=0, description="B4's prior that a program and a test are correct (alpha_xy)")
    b4_beta0: float = Field(1e4, gt=0, description="B4's prior that a wrong program fails a wrong test (beta_0)")
    examples: bool = Field(True, description="an item without a reference is tested on its prompt's examples")
    cache: int = Field(4096, ge=0, description="outcomes kept per (response, tests): a repeated response runs once")
    judge: str | None = Field(None, description=(
        "a configured judge whose backend writes Python asserts for a prompt without a reference, added to its "
        ">>> examples (not to Input/Output ones); once per prompt, kept on disk"))
    judge_tests: int = Field(8, ge=1, le=32, description="the most asserts kept of what the judge writes")
    tests_dir: str | None = Field(None, description="where written tests are kept (default: the cache's "
                                                    "consensus-tests folder, $PLAUDIT_CACHE or ~/.cache/plaudit)")


# ---- tests from the prompt's examples ----

_DOCTEST = re.compile(r"^(\s*)>>>(?: (.*))?$")
_STRING_END = re.compile(r"""\s*(\"\"\"|''')\s*$""")


def prompt_text(prompt: Prompt) -> str:
    """What the examples are read from: the text, or every message's content."""
    return prompt if isinstance(prompt, str) else "\n".join(m.content for m in prompt)


def doctest_examples(text: str) -> list[tuple[str, str | None]]:
    """(source, expected output or None) for each `>>>` example: `...` lines continue the
    source; the expected output is the lines after it up to a blank line, the next `>>>`
    or the end of the docstring, dedented to the `>>>`."""
    lines, examples, i = text.splitlines(), [], 0
    while i < len(lines):
        match = _DOCTEST.match(lines[i])
        if not match:
            i += 1
            continue
        indent, source = match[1], [match[2] or ""]
        i += 1
        more = re.compile(re.escape(indent) + r"\.\.\.(?: (.*))?$")
        while i < len(lines) and (continued := more.match(lines[i])):
            source.append(continued[1] or "")
            i += 1
        want = []
        while i < len(lines):
            line = lines[i]
            if not line.strip() or _DOCTEST.match(line) or line.strip().startswith("```"):
                break
            closed = _STRING_END.search(line)
            if closed:
                line = line[:closed.start()]
            line = line[len(indent):] if line.startswith(indent) else line.strip()
            if line.strip():
                want.append(line)
            i += 1
            if closed:
                break
        examples.append(("\n".join(source).strip(), "\n".join(want) if want else None))
    return examples


def _parses(source: str, mode: str = "exec") -> bool:
    try:
        ast.parse(source, mode=mode)
        return True
    except (SyntaxError, ValueError):
        return False


def doctest_asserts(examples: list[tuple[str, str | None]]) -> tuple[str, list[str]]:
    """The examples as the execution kind's asserts (each one a test; an example without an
    expected output is setup, but `f(x) == y` alone is a test), and each test as shown.
    `print(x)` compares str(x) to the text; an expected value Python can read compares by
    ==; the rest (tracebacks, `...` elisions, output that is not a value) is skipped."""
    setup, tests, shown = [], [], []
    for source, want in examples:
        if not source or not _parses(source):
            continue
        expression = ast.parse(source, mode="eval").body if _parses(source, "eval") else None
        if want is None and isinstance(expression, ast.Compare) and isinstance(expression.ops[0], ast.Eq):
            want = "True"  # `>>> f(x) == y` with no output line: HumanEval's other way to show an example
        if want is None:
            setup.append(source)
            continue
        if "..." in want or "<BLANKLINE>" in want or want.startswith("Traceback") or expression is None:
            continue
        if isinstance(expression, ast.Call) and isinstance(expression.func, ast.Name) \
                and expression.func.id == "print" and len(expression.args) == 1 and not expression.keywords:
            test = f"assert str({ast.unparse(expression.args[0])}) == {want!r}"
        elif want == "True" and isinstance(expression, ast.Compare):
            test = f"assert {ast.unparse(expression)}"
        elif _parses(want, "eval"):
            test = f"assert ({ast.unparse(expression)}) == ({want})"  # unparsed: a trailing comment goes
        else:
            continue
        if _parses(test):
            tests.append(test)
            shown.append(f"{source} -> {want}")
    return "\n".join(setup + tests), shown


_HEADER = re.compile(r"^\s*(?:[#*>]+\s*)?(?:sample\s+|example\s+)?(input|output)(?:\s*#?\s*\d+)?\s*(?:\*\*)?\s*(:)?"
                     r"\s*(?:\*\*)?(.*)$", re.I)
_DECORATED = re.compile(r"^\s*[-=]{3,}\s*(input|output)\s*[-=]{3,}\s*$", re.I)
_PROSE = re.compile(r"\w+(?:\s+\w+){3,}.*[.:]\s*$")
_ASSIGNMENT = re.compile(r"^\s*[A-Za-z_]\w*\s*=")
_STUB = re.compile(r"^\s*def \w+\s*\(", re.M)  # a Python function to complete: its examples are calls
_STDIN = re.compile(r"stdin|standard input|input\(\)", re.I)


def _header(line: str) -> tuple[str, str] | None:
    """("input" | "output", what follows on the line) for a header line, else None. A
    header is the word alone (with Sample / Example, a number, a colon, markdown marks),
    optionally followed by the value after a colon."""
    if _DECORATED.match(line):
        return None  # APPS's "-----Input-----": the format's description, not an example
    match = _HEADER.match(line)
    if not match:
        return None
    rest = match[3].strip()
    if rest and not match[2]:
        return None  # "Input format ...", "Output the answer": prose, not a header
    return match[1].lower(), rest


def io_examples(text: str) -> list[dict[str, str]]:
    """The prompt's `Input:` / `Output:` pairs as stdin/stdout cases (see `_header`); a
    block runs to the next header, a blank line after an output, or a fence's end. Pairs
    whose text reads as prose (a format's description) or as `name = value` (LeetCode's
    arguments, not stdin) are skipped, and so is every block of a prompt that holds a
    Python function to complete (`def f(...)`) and says nothing of stdin: its Input/Output
    examples are the function's arguments and result (HumanEval/68)."""
    if _STUB.search(text) and not _STDIN.search(text):
        return []
    lines, cases, i = text.splitlines(), [], 0
    pending: str | None = None
    while i < len(lines):
        found = _header(lines[i])
        if not found:
            i += 1
            continue
        kind, inline = found
        i += 1
        fenced = inline.startswith("```")
        block = [inline] if inline and not fenced else []
        while i < len(lines):
            line = lines[i]
            if line.strip().startswith("```"):  # a fence opens the block, or closes it
                i += 1
                if fenced or block:
                    break
                fenced = True
                continue
            if not fenced and (_header(line) or (not line.strip() and block)
                               or line.strip().lower().startswith(("explanation", "note"))):
                break
            block.append(line.rstrip())
            i += 1
        value = "\n".join(block).strip("\n")
        if kind == "input":
            pending = value
        elif pending is not None:
            case = {"input": pending + "\n" if pending else "", "output": value}
            pending = None
            sides = case["input"].splitlines() + case["output"].splitlines()
            if value.strip() and not any(_PROSE.match(s) or _ASSIGNMENT.match(s) for s in sides):
                cases.append(case)
    return cases


def prompt_tests(prompt: Prompt, written: Sequence[str] = ()) -> tuple[Tests, list[str]] | None:
    """The prompt's examples as tests, and each as shown: its doctests if it has any that
    can be read (with the `written` asserts after them), else its Input/Output cases, else the
    written asserts alone; None when there is nothing."""
    text = prompt_text(prompt)
    source, shown = doctest_asserts(doctest_examples(text))
    if not shown:
        cases = io_examples(text)
        if cases:
            return Tests("io", cases=cases), [f"input {c['input']!r} -> output {c['output']!r}" for c in cases]
    if written:
        source, shown = "\n".join([source, *written]).strip("\n"), [*shown, *written]
    return (Tests("asserts", source), shown) if shown else None


def parse_written(text: str, most: int) -> list[str] | None:
    """The assert statements in a judge's answer, one a line (fences and prose dropped,
    duplicates once), at most `most`; None when there is none."""
    found: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("assert ") and line not in found and _parses(line) \
                and isinstance(ast.parse(line).body[0], ast.Assert) and len(ast.parse(line).body) == 1:
            found.append(line)
    return found[:most] or None


# ---- scoring a pass matrix ----

def log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def b4_score(matrix: list[list[bool]], pattern: tuple[bool, ...], alpha: float, beta0: float) -> float:
    """B4's log posterior for "the responses with this pass pattern are the correct ones, and
    the tests it passes the correct tests" (up to a constant)."""
    k, m = len(matrix), len(pattern)
    members = sum(tuple(row) == pattern for row in matrix)
    passed = sum(pattern)
    others = [row for row in matrix if tuple(row) != pattern]
    e1 = sum(row[j] for row in others for j in range(m) if pattern[j])
    e0 = sum(row[j] for row in others for j in range(m) if not pattern[j])
    m1, m0 = len(others) * passed, len(others) * (m - passed)
    return (log_beta(passed + alpha, m - passed + 1) + log_beta(members + alpha, k - members + 1)
            + log_beta(e1 + 1, m1 - e1 + 1) + log_beta(e0 + 1, m0 - e0 + beta0))


def score_matrix(matrix: list[list[bool]], method: Method = "b4", codet_exponent: float = 1.0,
                 b4_alpha: float = 1e3, b4_beta0: float = 1e4) -> tuple[list[float], list[int], list[dict]]:
    """(each row's reward, each row's group, the groups) for a K x M pass matrix (module doc)."""
    m = max((len(row) for row in matrix), default=0)
    rows = [tuple(bool(x) for x in row) + (False,) * (m - len(row)) for row in matrix]
    patterns = list(dict.fromkeys(rows))  # groups in order of first appearance
    group_of = [patterns.index(row) for row in rows]
    groups = []
    for g, pattern in enumerate(patterns):
        members = [i for i, of in enumerate(group_of) if of == g]
        passed = sum(pattern)
        if method == "codet":
            score = passed * len(members) ** codet_exponent
        else:
            score = b4_score([list(r) for r in rows], pattern, b4_alpha, b4_beta0)
        groups.append({"members": members, "passes": [int(x) for x in pattern], "passed": passed,
                       "size": len(members), "score": score})
    scoring = [g for g in groups if g["passed"] > 0]
    best = max(scoring, key=lambda g: g["score"], default=None)
    for g in groups:
        if best is None or g["passed"] == 0:
            g["reward"] = 0.0
            continue
        ratio = g["score"] / best["score"] if method == "codet" else math.exp(g["score"] - best["score"])
        g["reward"] = ratio * best["passed"] / m
    return [groups[g]["reward"] for g in group_of], group_of, groups


# ---- the kind ----

class Consensus(Scorer):
    kind = "consensus"
    Settings = ConsensusSettings
    relative = True  # a response's reward depends on the other responses to its prompt in the call
    neutral_reward = 0.5

    def __init__(self, name: str, settings: ConsensusSettings, execution: Execution, owned: bool = False,
                 judge: Any = None):
        super().__init__(name, {"kind": self.kind, **settings.model_dump(), "runs_on": execution.name})
        self.settings, self.execution, self.owned, self.judge = settings, execution, owned, judge
        self.store = None
        if judge is not None:
            from plaudit.judges.checklists import ChecklistStore

            self.store = ChecklistStore(settings.tests_dir or cache_dir() / "consensus-tests")
            self.metadata["tests_dir"] = str(self.store.directory)
        self._outcomes: OrderedDict[str, Outcome] = OrderedDict()
        self._lock = threading.Lock()
        self.counts = {"runs": 0, "cached": 0}

    @classmethod
    def load(cls, context: LoadContext) -> "Consensus":
        from plaudit.judges.base import Judge

        name = context.name or cls.kind
        settings = cls.settings_from(context)
        judge = None if settings.judge is None else _configured(context, name, "judge", settings.judge, Judge)
        if isinstance(settings.execution, ExecutionSettings):
            return cls(name, settings, Execution(f"{name}-execution", settings.execution), owned=True, judge=judge)
        return cls(name, settings, _configured(context, name, "execution", settings.execution, Execution), judge=judge)

    def p_good(self, reward: float | None) -> float | None:
        return reward

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counts, "cache_entries": len(self._outcomes)}

    def close(self) -> None:
        if self.owned:
            self.execution.pool.shutdown(wait=False, cancel_futures=True)

    def _tests(self, item: Item, index: int, written: list[str] | None) -> tuple[Tests | None, str | None, list[str]]:
        """(tests, where they came from, each as shown) for an item."""
        if _has_reference(item):
            return read_tests(item.reference, f"items[{index}].reference"), "reference", []
        found = prompt_tests(item.prompt if self.settings.examples else "", written or ())
        if found is None:
            return None, None, []
        examples = len(found[1]) - (len(written or ()) if found[0].style == "asserts" else 0)
        sources = (["examples"] if examples else []) + (["judge"] if examples < len(found[1]) else [])
        return found[0], "+".join(sources), found[1]

    def _written(self, items: Sequence[Item]) -> dict[str, tuple[list[str] | None, str]]:
        """The judge's asserts for each prompt without a reference or Input/Output examples:
        (asserts or None, "cache" | "generated" | "error: ..."), by the prompt's text."""
        if self.judge is None:
            return {}
        from plaudit.judges.backends import BackendError

        texts = {_instruction(it.prompt) for it in items if not _has_reference(it)}
        if self.settings.examples:  # Input/Output examples are stdin cases: asserts cannot join them
            texts = {t for t in texts if not (io_examples(t) and not doctest_asserts(doctest_examples(t))[1])}
        texts = sorted(texts)
        most = self.settings.judge_tests
        identity = f"consensus-tests:{self.judge.metadata['judge_model']}:{most}"

        async def write(text: str) -> tuple[list[str] | None, str]:
            messages = [{"role": "user", "content": WRITE_TESTS.substitute(count=most, instruction=text).strip()}]
            try:
                return await self.store.get(identity, text, lambda: self.judge.ask(
                    messages, lambda c: parse_written(c.text, most), answer=False))
            except BackendError as e:
                return None, f"error: {e}"

        async def every() -> list[tuple[list[str] | None, str]]:
            import asyncio

            return await asyncio.gather(*(write(t) for t in texts))

        return dict(zip(texts, self.judge.hub.run(every()))) if texts else {}

    def _run(self, work: list[tuple[str, Tests]]) -> list[Outcome]:
        """Each (response, tests) run once in the sandbox, or read from the outcomes kept."""
        keys = [hashlib.sha256(json.dumps([response, asdict(tests)], sort_keys=True, default=str).encode()).hexdigest()
                for response, tests in work]
        with self._lock:
            known = {k: self._outcomes[k] for k in keys if k in self._outcomes}
            for k in known:
                self._outcomes.move_to_end(k)
        todo = {k: w for k, w in zip(keys, work) if k not in known}  # a repeated response runs once
        ran = dict(zip(todo, self.execution.pool.map(lambda w: self.execution.run(*w), todo.values())))
        with self._lock:
            self.counts["runs"] += len(ran)
            self.counts["cached"] += len(keys) - len(ran)
            for k, o in ran.items():
                if self.settings.cache and o.reason not in TRANSIENT and not any(
                        (t.get("message") or "").startswith(TRANSIENT) for t in o.tests):
                    self._outcomes[k] = o
            while len(self._outcomes) > self.settings.cache:
                self._outcomes.popitem(last=False)
        return [known.get(k) or ran[k] for k in keys]

    def score(self, items: Sequence[Item]) -> Scores:
        written = self._written(items)
        judged = [None if _has_reference(it) else written.get(_instruction(it.prompt)) for it in items]
        found = [self._tests(it, i, judged[i] and judged[i][0]) for i, it in enumerate(items)]
        prompts: dict[str, list[int]] = {}  # the items of one prompt with the same tests, scored together
        for i, it in enumerate(items):
            key = json.dumps([prompt_text(it.prompt) if isinstance(it.prompt, str)
                              else [m.model_dump() for m in it.prompt],
                              None if found[i][0] is None else asdict(found[i][0])], sort_keys=True, default=str)
            prompts.setdefault(key, []).append(i)
        runnable = [i for i in range(len(items)) if found[i][0] is not None]
        outcomes = dict(zip(runnable, self._run([(items[i].response, found[i][0]) for i in runnable])))
        rewards: list[float] = [self.neutral_reward] * len(items)
        details: list[dict] = [{}] * len(items)
        group_size, best = [0.0] * len(items), [0.0] * len(items)
        for members in prompts.values():
            tests, source, shown = found[members[0]]
            asked = judged[members[0]]
            judge = {} if asked is None else {"judge_tests": asked[0], "judge": asked[1]}
            if tests is None:
                for i in members:
                    details[i] = {"reward": self.neutral_reward, "method": self.settings.method, "reason": "no_tests",
                                  "message": "no reference, no `>>>` example or Input:/Output: block in the prompt"
                                             + (", and no test written by the judge" if self.judge else ""), **judge}
                continue
            matrix = [[bool(t["passed"]) for t in outcomes[i].tests] for i in members]
            width = max(max((len(r) for r in matrix), default=0), tests.count)
            matrix = [r + [False] * (width - len(r)) for r in matrix]
            s = self.settings
            scored, group_of, groups = score_matrix(matrix, s.method, s.codet_exponent, s.b4_alpha, s.b4_beta0)
            top = max((g["reward"] for g in groups), default=0.0)
            for g in groups:
                g["members"] = [members[j] for j in g["members"]]
            shared = {"method": s.method, "tests_from": source, "test_count": width, "examples": shown or None, **judge,
                      "members": members, "matrix": [[int(x) for x in row] for row in matrix], "groups": groups}
            for row, i in enumerate(members):
                o = outcomes[i]
                rewards[i] = scored[row]
                group_size[i] = float(groups[group_of[row]]["size"])
                best[i] = float(top > 0 and scored[row] == top)
                details[i] = {"reward": scored[row], "group": group_of[row], **shared, "passed": o.passed,
                              "pass_rate": o.reward, "reason": o.reason, "message": o.message, "tests": o.tests}
        return Scores(rewards, [False] * len(items), details=details,
                      logs={"group_size": group_size, "in_best_group": best,
                            "no_tests": [float(f[0] is None) for f in found]})


def _has_reference(item: Item) -> bool:
    return item.reference is not None and item.reference != ""


def _instruction(prompt: Prompt) -> str:
    """A prompt's text as the judge reads it: a known chat rendering read back into messages."""
    from .queries import untemplated

    return prompt_text(untemplated(prompt) if isinstance(prompt, str) else prompt)


def _configured(context: LoadContext, name: str, field: str, wanted: str, kind: type) -> Any:
    """The configured model or judge a setting names, of the kind it must be."""
    if context.lookup is None:
        raise ModelLoadError(f"{name}: settings.{field} names a configured model ({wanted!r}): load it in the "
                             "service or the CLI" + (", or give execution settings instead" if field == "execution"
                                                     else ""))
    try:
        found = context.lookup(wanted)
    except InputError as e:
        raise ModelLoadError(f"{name}: settings.{field}: {e}") from None
    if not isinstance(found, kind):
        raise ModelLoadError(f"{name}: settings.{field}: {wanted!r} is a {found.kind} model, not {field} "
                             f"({kind.__name__})")
    return found
