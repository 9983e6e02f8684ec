"""GRPO-shaped load: K responses per prompt, prompts longer than the responses.

8 prompts of about 640 tokens (HumanEval task statements and code, as a code RL prompt
carries context), 16 responses each of 64-256 tokens. Served two ways against the raw
whole-sequence batched forward over the same items (every response re-reads its prompt):
- `group_vs_raw_k16`: one /score request per prompt with its 16 responses, 8 clients;
- `group_single_vs_raw_k16`: one response per request from 32 clients, the samples of a
  prompt interleaved with the other prompts' (as OpenRLHF and verl send them), so sharing
  has to happen across requests, through the prefix cache.
Then how the in-process cost per item grows with K (1, 4, 16, 64 responses to one prompt)
and with the prompt's length, shared against whole.
"""
from __future__ import annotations

import random
import time
from typing import Sequence

from plaudit.rewardmodels import Item

from . import serving
from .workload import forward
from plaudit.training.humaneval import load_problems

PROMPTS, K, PROMPT_TOKENS, RESPONSE_TOKENS = 8, 16, 640, (64, 256)


def _cut(tokenizer, text: str, tokens: int) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:tokens])


def group_items(tokenizer, prompts: int = PROMPTS, k: int = K, prompt_tokens: int = PROMPT_TOKENS,
                response_tokens: tuple[int, int] = RESPONSE_TOKENS, seed: int = 0) -> list[Item]:
    """`prompts` x `k` items, interleaved (response r of every prompt, then r + 1)."""
    rng = random.Random(seed)
    problems = load_problems()
    code = [p["prompt"] + p["canonical_solution"] for p in problems]
    texts = [_cut(tokenizer, "Solve the task below; the code it builds on comes first.\n\n"
                  + "\n".join(rng.sample(code, 12)), prompt_tokens) for _ in range(prompts)]
    responses = [[_cut(tokenizer, rng.choice(code) + rng.choice(code), rng.randint(*response_tokens))
                  for _ in range(k)] for _ in range(prompts)]
    return [Item(prompt=texts[p], response=responses[p][r]) for r in range(k) for p in range(prompts)]


def _served(server: serving.Server, items: Sequence[Item], clients: int, requests=None) -> tuple[float, dict]:
    before = server.forward_stats()
    load = serving.drive(server.url, items, clients, requests=requests)
    after = server.forward_stats()
    cache = {k: after["prefix_cache"][k] - before["prefix_cache"][k] for k in ("hits", "misses", "evictions")}
    return len(items) / load.seconds, {"items_per_s": round(len(items) / load.seconds, 3), "errors": load.errors,
                                       "forward_calls": after["forward_calls"] - before["forward_calls"],
                                       "prefix_cache": cache, "rewards": load.rewards}


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def curves(scorer) -> dict:
    """ms per item in process, shared (scorer.score, prompts new to its cache) and whole."""
    def point(k: int, prompt_tokens: int, seed: int) -> dict:
        items = group_items(scorer.tokenizer, 1, k, prompt_tokens, (128, 128), seed)
        shared, whole = _timed(lambda: scorer.score(items)), _timed(lambda: forward(scorer, items))
        return {"k": k, "prompt_tokens": prompt_tokens, "shared_ms_per_item": round(1000 * shared / k, 1),
                "whole_ms_per_item": round(1000 * whole / k, 1), "speedup": round(whole / shared, 2)}
    by_k = [point(k, PROMPT_TOKENS, 100 + k) for k in (1, 4, 16, 64)]
    by_prompt = [point(K, n, 200 + n) for n in (128, 320, 640, 880)]
    return {"by_k": by_k, "by_prompt_tokens": by_prompt}


def run(service: serving.Server, scorer) -> dict:
    items = group_items(scorer.tokenizer)
    forward(scorer, items[:2])  # warm-up
    start = time.perf_counter()
    reference = forward(scorer, items)
    raw = len(items) / (time.perf_counter() - start)
    serving.drive(service.url, group_items(scorer.tokenizer, 1, 2, seed=3), 2)  # warm-up, prompts of its own
    # each phase has prompts of its own, so that neither finds the other's in the cache
    per_prompt = [[i for i in range(len(items)) if i % PROMPTS == p] for p in range(PROMPTS)]
    grouped, grouped_detail = _served(service, group_items(scorer.tokenizer, seed=1), PROMPTS, per_prompt)
    single, single_detail = _served(service, items, 32)
    gap = max(abs(single_detail["rewards"][i] - reference[i]) for i in single_detail["rewards"])
    for detail in (grouped_detail, single_detail):
        del detail["rewards"]
    return {"prefix_groups": {"prompts": PROMPTS, "k": K, "prompt_tokens": PROMPT_TOKENS,
                              "response_tokens": list(RESPONSE_TOKENS), "raw_items_per_s": round(raw, 3),
                              "grouped": grouped_detail, "single": single_detail,
                              "max_reward_diff_single_vs_raw": gap, "curves": curves(scorer)},
            "group_vs_raw_k16": round(grouped / raw, 3), "group_single_vs_raw_k16": round(single / raw, 3)}


if __name__ == "__main__":  # this benchmark alone: python -m benchmarks.prefix_groups
    import json
    import tempfile
    from pathlib import Path

    from .workload import load_model

    with tempfile.TemporaryDirectory(prefix="plaudit-bench-") as tmp, \
            serving.plaudit(Path(tmp), serving.BT_ONLY) as served:
        print(json.dumps(run(served, load_model()), indent=2))
