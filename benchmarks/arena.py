"""`plaudit eval arena` at the size the issue names: 200 questions, three models against a
baseline, the packaged default reward model as the judge, in this process; the time of the
judging and of the leaderboard (100 bootstrap rounds, with and without style control), and
the bootstrap's share of the whole.

The answers are HumanEval's (unverified here, only timed): the baseline and `renamed` give
the canonical solution, `mutant` a single-point mutant of it, `verbose` the canonical
solution under a paragraph of prose. Questions past the 164th reuse a problem with another
wording, so that there are 200 distinct questions.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from plaudit.evaluation.arena import arena
from plaudit.evaluation.judgments import make_judgments, read_judgments, read_outputs
from plaudit.training.humaneval import _prompt, _response, load_problems, mutants, solution_source

QUESTIONS = 200
PROSE = ("Here is a careful solution. It handles the edge cases stated in the docstring, keeps to the "
         "standard library and runs in linear time in the size of its input.\n\n")


def answers(folder: Path) -> list[Path]:
    problems = load_problems()
    rows: dict[str, list[dict]] = {"base": [], "renamed": [], "mutant": [], "verbose": []}
    for q in range(QUESTIONS):
        problem = problems[q % len(problems)]
        source = solution_source(problem)
        wrong = (mutants(source, problem["entry_point"]) or [source + "\n    return None"])[0]
        instruction = _prompt(problem) + ("" if q < len(problems) else "\n\nKeep the answer short.")
        texts = {"base": _response(source), "renamed": _response(source.replace("    ", "  ")),
                 "mutant": _response(wrong), "verbose": PROSE + _response(source)}
        for model, text in texts.items():
            rows[model].append({"question_id": q, "model": model, "instruction": instruction, "output": text})
    paths = []
    for model, lines in rows.items():
        paths.append(folder / f"{model}.jsonl")
        paths[-1].write_text("".join(json.dumps(line) + "\n" for line in lines))
    return paths


def run(scorer) -> dict:
    with tempfile.TemporaryDirectory(prefix="plaudit-bench-arena-") as tmp:
        folder = Path(tmp)
        outputs = read_outputs(answers(folder))
        start = time.perf_counter()
        made = make_judgments(outputs, "base", lambda pair: scorer.verdicts([pair])[0], folder / "judgments.jsonl",
                              concurrency=8, progress=False)
        judged = time.perf_counter()
        rows = arena(read_judgments([folder / "judgments.jsonl"]), "base", rounds=100, seed=0)
        ranked = time.perf_counter()
    total = ranked - start
    return {"arena_200x3_s": round(total, 1),
            "arena_bootstrap_share_pct": round(100 * (ranked - judged) / total, 2),
            "arena": {"judgments": made["judgments"], "errors": len(made["errors"]),
                      "judging_s": round(judged - start, 1), "leaderboard_s": round(ranked - judged, 2),
                      "judgments_per_s": round(made["judgments"] / (judged - start), 2),
                      "win_rates": {r["model"]: [round(r["win_rate"], 1), round(r["lower"], 1),
                                                 round(r["upper"], 1),
                                                 round(r["style_controlled_win_rate"], 1)] for r in rows}}}


if __name__ == "__main__":
    from plaudit.service.api import ModelPool
    from plaudit.service.config import load_config

    print(json.dumps(run(ModelPool(load_config()).get("default")), indent=2))
