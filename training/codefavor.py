"""CodeFavor's synthetic evolution data: code preference pairs from real commits (Commit-Instruct)
and from a critic improving a weak model's attempts (Critic-Evol).

Every LLM call goes through the judge backends (`judges.backends`), so the local llama.cpp
default and a strong model behind TGI or vLLM run the same code. Each stage writes one
JSONL line per commit or task through the resumable runner of `plaudit judge`: an
interrupted run continues, backend failures are retried by the next run, and every
record keeps each LLM answer, its decision, the reason a record was dropped and which
model produced it. `export` turns the kept records into the pairwise classification form
(both orders) and TRL's preference format.
"""
from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from plaudit.judges.backends import Backend, Completion
from plaudit.judges.base import read_choice, render_file
from plaudit.files import write_jsonl
from plaudit.jobs import run_resumable
from plaudit.rewardmodels.base import InputError

PROMPTS = Path(__file__).resolve().parent / "prompts"


def _prompt(name: str, **values: str) -> list[dict[str, str]]:
    return render_file(PROMPTS / f"{name}.md", **values)


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True).stdout


# ---- mining commits ----

@dataclass
class MinedCommit:
    sha: str
    path: str = ""
    message: str = ""
    old_code: str = ""
    new_code: str = ""
    dropped: str | None = None  # why the commit is not a candidate


def _hunk_sides(diff: str) -> tuple[str, str] | None:
    """The code before and after of a diff with exactly one hunk (its context lines on both sides)."""
    lines = diff.splitlines()
    hunks = [i for i, line in enumerate(lines) if line.startswith("@@")]
    if len(hunks) != 1:
        return None
    old, new = [], []
    for line in lines[hunks[0] + 1:]:
        if line.startswith("\\"):  # "\ No newline at end of file"
            continue
        sign, text = line[:1], line[1:]
        if sign in (" ", "-"):
            old.append(text)
        if sign in (" ", "+"):
            new.append(text)
    return "\n".join(old), "\n".join(new)


def mine_commits(repo: str | Path, limit: int | None = None, max_changed_lines: int = 30,
                 context: int = 8) -> list[MinedCommit]:
    """The repository's non-merge commits, newest first: those changing one Python file in one
    small hunk are candidates (code before and after the hunk, with context), the others carry
    the reason they were dropped."""
    repo = Path(repo)
    shas = _git(repo, "log", "--no-merges", "--format=%H", *([f"-{limit}"] if limit else [])).split()
    mined = []
    for sha in shas:
        commit = MinedCommit(sha, message=_git(repo, "log", "-1", "--format=%B", sha).strip())
        files = [line.split("\t") for line in _git(repo, "show", "--numstat", "--format=", sha).splitlines() if line]
        python = [f for f in files if f[2].endswith(".py")]
        if len(files) != 1 or len(python) != 1:
            commit.dropped = f"changes {len(files)} files ({len(python)} Python); one Python file wanted"
        elif python[0][0] == "-" or int(python[0][0]) + int(python[0][1]) > max_changed_lines:
            commit.dropped = f"changes {python[0][0]}+{python[0][1]} lines, over {max_changed_lines}"
        else:
            commit.path = python[0][2]
            parents = _git(repo, "log", "-1", "--format=%P", sha).split()
            diff = _git(repo, "diff", f"-U{context}", parents[0], sha, "--", commit.path) if parents else ""
            sides = _hunk_sides(diff)
            if not parents:
                commit.dropped = "the first commit: nothing to compare with"
            elif sides is None:
                commit.dropped = "not exactly one hunk"
            elif not sides[0].strip():
                commit.dropped = "adds code only: no version before"
            else:
                commit.old_code, commit.new_code = sides
        mined.append(commit)
    return mined


# ---- asking the LLM ----

def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def code_of(text: str) -> str:
    """The code in an answer: its first fenced block, else the whole answer."""
    match = re.search(r"```(?:python|py)?\n(.*?)(?:```|$)", text, re.S)
    return (match.group(1) if match else text).strip()


def _unusable(instruction: str, criterion: str) -> str | None:
    """Why an LLM's instruction or criterion cannot make a training pair, if it cannot."""
    if len(instruction.split()) < 4:
        return "the instruction has fewer than 4 words"
    if not criterion.endswith("?"):
        return "the criterion is not a question"
    return None


async def _yes(backend: Backend, messages: list[dict[str, str]]) -> float | None:
    completion: Completion = await backend.chat(messages, max_tokens=4, logprobs=True)
    return read_choice(completion, ("YES", "NO"))


async def commit_instruct(backend: Backend, model: str, commit: MinedCommit, llm_code: bool = False
                          ) -> dict[str, Any]:
    """One commit through Commit-Instruct: explain, decide, then write instruction and criterion.
    The naive and improved code are the commit's own before and after, or, with `llm_code`,
    the LLM's self-contained rewrites of them (the paper's way; worth it with a strong model)."""
    record: dict[str, Any] = {"stage": "commit-instruct", "model": model, "commit": commit.sha, "path": commit.path,
                              "message": commit.message, "old_code": commit.old_code, "new_code": commit.new_code}
    if commit.dropped:
        return {**record, "kept": False, "dropped": commit.dropped}
    values = {"message": commit.message, "old_code": commit.old_code, "new_code": commit.new_code}
    explanation = (await backend.chat(_prompt("commit_explain", **values), max_tokens=160)).text.strip()
    p_yes = await _yes(backend, _prompt("commit_decide", **values, explanation=explanation))
    record.update(explanation=explanation, p_improvement=p_yes)
    if p_yes is None or p_yes < 0.5:
        why = "the decision could not be read" if p_yes is None else f"not a clear improvement (P(YES) = {p_yes:.2f})"
        return {**record, "kept": False, "dropped": why}
    instruction = first_line((await backend.chat(_prompt("commit_instruction", new_code=commit.new_code),
                                                 max_tokens=80)).text)
    criterion = first_line((await backend.chat(_prompt("commit_criterion", explanation=explanation),
                                               max_tokens=60)).text)
    record.update(instruction=instruction, criterion=criterion)
    if why := _unusable(instruction, criterion):
        return {**record, "kept": False, "dropped": why}
    naive, improved = commit.old_code, commit.new_code
    if llm_code:
        naive, improved = [code_of((await backend.chat(_prompt("commit_rewrite", instruction=instruction, code=code),
                                                       max_tokens=400)).text) for code in (naive, improved)]
        if not naive or naive == improved:
            return {**record, "kept": False, "dropped": "the rewritten versions are empty or equal",
                    "naive_code": naive, "improved_code": improved}
    return {**record, "kept": True, "code_source": "llm" if llm_code else "commit", "naive_code": naive,
            "improved_code": improved}


async def critic_evol(weak: Backend, critic: Backend, models: dict[str, str], task: dict[str, str]) -> dict[str, Any]:
    """One task through Critic-Evol: the weak model attempts, the critic either accepts the
    attempt (no pair) or names a criterion and writes an improved attempt."""
    instruction = task["instruction"]
    record: dict[str, Any] = {"stage": "critic-evol", "models": models, "task_id": task["task_id"],
                              "instruction": instruction}
    attempt = code_of((await weak.chat(_prompt("critic_attempt", instruction=instruction), max_tokens=400)).text)
    p_flaw = await _yes(critic, _prompt("critic_reflect", instruction=instruction, code=attempt))
    record.update(attempt=attempt, p_flaw=p_flaw)
    if p_flaw is None or p_flaw < 0.5:
        why = "the reflection could not be read" if p_flaw is None else f"the critic accepts it (P(flaw) = {p_flaw:.2f})"
        return {**record, "kept": False, "dropped": why}
    criterion = first_line((await critic.chat(_prompt("critic_criterion", instruction=instruction, code=attempt),
                                              max_tokens=60)).text)
    improved = code_of((await critic.chat(_prompt("critic_improve", instruction=instruction, code=attempt,
                                                  criterion=criterion), max_tokens=400)).text)
    record.update(criterion=criterion, improved=improved)
    if why := _unusable(instruction, criterion) or (None if improved and improved != attempt else
                                                    "the improved code is empty or equals the attempt"):
        return {**record, "kept": False, "dropped": why}
    return {**record, "kept": True, "criterion": criterion, "naive_code": attempt, "improved_code": improved}


# ---- running a stage and exporting its pairs ----

def run_stage(work: list[tuple[str, Callable[[], dict[str, Any]]]], out: Path, concurrency: int,
              progress: bool) -> dict[str, Any]:
    """Every record of `work` into `out` (resumable); the export and the stage's counts."""
    def as_result(task: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
        return lambda: {"result": task()}
    skipped, errors = run_resumable([(key, as_result(task)) for key, task in work], out, concurrency=concurrency,
                                    progress=progress, label="synthesising",
                                    failures=(InputError, RuntimeError, OSError))
    return {**export(out), "skipped": skipped, "processed": len(work) - skipped, "errors": len(errors),
            "error_examples": errors[:10]}


def export(out: Path) -> dict[str, Any]:
    """The kept records of a stage's output as pairwise classification records (both orders,
    OUT.pairwise.jsonl) and TRL preference pairs (OUT.trl.jsonl); counts and drop reasons."""
    kept, dropped = [], {}
    with open(out, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line).get("result")
            if record is None:
                continue
            if record["kept"]:
                kept.append(record)
            else:
                reason = re.sub(r"[\d.]+", "N", record["dropped"])  # group "P(YES) = 0.31" with "= 0.12"
                dropped[reason] = dropped.get(reason, 0) + 1
    pairwise, trl = [], []
    for r in kept:
        source = {"source": r["stage"], "model": r.get("model") or r.get("models")}
        pairwise += [{"instruction": r["instruction"], "code_a": a, "code_b": b, "criterion": r["criterion"],
                      "answer": answer, **source}
                     for a, b, answer in ((r["improved_code"], r["naive_code"], "A"),
                                          (r["naive_code"], r["improved_code"], "B"))]
        trl.append({"prompt": r["instruction"], "chosen": r["improved_code"], "rejected": r["naive_code"],
                    "criterion": r["criterion"], **source})
    for suffix, rows in ((".pairwise.jsonl", pairwise), (".trl.jsonl", trl)):
        write_jsonl(rows, out.with_name(out.stem + suffix))
    return {"records": len(kept) + sum(dropped.values()), "kept": len(kept), "dropped": dropped, "pairwise_records": len(pairwise),
            "trl_pairs": len(trl), "pairwise_out": str(out.with_name(out.stem + ".pairwise.jsonl")),
            "trl_out": str(out.with_name(out.stem + ".trl.jsonl"))}
