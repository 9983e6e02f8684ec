"""Judges on the local llama.cpp server (packaged SmolLM2): checklist generations per
instruction, and the batch CLI's throughput against the backend's own.

1. TICK over 2 instructions x 8 responses, all requests at once: how many checklists are
   generated (target: one per instruction).
2. The backend's own throughput: every (response, question) prompt of a batch sent straight
   through the client at the backend's concurrency. Then `plaudit judge`'s runner over the
   same items (caller checklists, so both send exactly the same prompts) at the same
   concurrency. Target: the runner reaches at least 0.8x the backend's questions/s.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from plaudit.judges import batch
from plaudit.judges.base import render
from plaudit.schemas import JudgeRequest
from plaudit.service import api
from plaudit.service.config import ModelConfig, ServiceConfig
from plaudit.training.humaneval import load_problems

QUESTIONS = ["Does the code define the function the instruction asks for?", "Is the code valid Python?",
             "Does the code avoid printing anything?"]


def _items(first: int, n: int) -> list[dict]:
    problems = load_problems()[first:first + n]
    return [{"id": p["task_id"], "instruction": f"Complete this function:\n{p['prompt']}",
             "response": p["canonical_solution"], "checklist": QUESTIONS} for p in problems]


async def _backend_only(backend, items: list[dict]) -> float:
    prompts = [render("tick_answer", instruction=i["instruction"], response=i["response"], question=q)
               for i in items for q in QUESTIONS]
    start = time.perf_counter()
    await asyncio.gather(*[backend.chat(p, max_tokens=4, logprobs=True) for p in prompts])
    return time.perf_counter() - start


def run(items: int = 12) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        pool = api.ModelPool(ServiceConfig(models={"unused": ModelConfig(path="unused")}, default_model="unused",
                                           judges={"local": {"method": "tick", "checklist_dir": tmp}}))
        judge = pool.judge("local")
        concurrency = judge.backend.config.concurrency

        requests = [JudgeRequest(judge="local", instruction=f"Write a haiku about {topic}.",
                                 responses=[f"draft {i}"]) for topic in ("the sea", "autumn") for i in range(8)]
        with ThreadPoolExecutor(len(requests)) as threads:
            list(threads.map(judge.run, requests))
        generations = judge.store.counts["generated"] + judge.store.counts["failed"]

        # Different problems for the two runs: llama.cpp reuses a slot's cached prompt prefix.
        backend_s = judge.hub.run(_backend_only(judge.backend, _items(0, items)))
        data = _items(items, items)
        path, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        path.write_text("".join(json.dumps(d) + "\n" for d in data))
        start = time.perf_counter()
        summary = batch.run(path, out, lambda r, i: api.judge(pool, r), judge_name="local", concurrency=concurrency,
                            progress=False)
        batch_s = time.perf_counter() - start
        pool.close()
    asked = items * len(QUESTIONS)
    return {"judge_checklists_per_instruction": generations / 2,
            "judge_batch": {"items": items, "questions": asked, "concurrency": concurrency,
                            "backend_questions_per_s": round(asked / backend_s, 2),
                            "batch_questions_per_s": round(asked / batch_s, 2), "errors": summary["errors"]},
            "judge_batch_vs_backend": round(backend_s / batch_s, 2)}
