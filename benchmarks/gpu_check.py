"""The GPU half of `benchmarks/gpu_check.sh`: numbers for a SmolLM2-135M-shaped BT model on CUDA.

The packaged backbone's weights cannot travel to a GPU machine here (no hub; the GGUF is
98 MB), so the model is SmolLM2-135M's own config and tokenizer with seeded random weights:
the same shapes and token counts, hence the same speed; the bf16-vs-fp32 differences are
those of random weights. Prints one JSON object (and writes it to --out):
- bf16_vs_fp32: max and mean |reward difference| between bf16 and fp32 serving on the GPU,
  next to the rewards' standard deviation (the scale a ranking has to resolve);
- forward_ms: one forward pass by rows x tokens, and the call overhead in tokens that
  encoding.CALL_OVERHEAD_TOKENS["cuda"] estimates (the fit time = a + b * padded tokens, a / b);
- score_vs_raw_32: items/s of 32 threads each scoring one item at a time through the
  scorer (cross-request batching) over a raw length-sorted batched forward of the same items;
- groups: 8 prompts of 640 tokens x 16 responses, a call per prompt and one item per call,
  over the whole-sequence forward (prefix sharing, prefix.py).
It imports only the library (no BentoML, no packaged data), so a bare GPU image with torch
and transformers runs it.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from plaudit.rewardmodels import Item, load_scorer
from plaudit.rewardmodels.encoding import Batching, encode_item, micro_batches, pad

CODE = ("def running_mean(values, window):\n    total = 0.0\n    out = []\n    for i, v in enumerate(values):\n"
        "        total += v\n        if i >= window:\n            total -= values[i - window]\n"
        "        out.append(total / min(i + 1, window))\n    return out\n")


def items(count: int, seed: int = 0) -> list[Item]:
    """Code responses of log-uniform 12..1200 characters, as the CPU benchmarks draw them."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        chars = round(math.exp(rng.uniform(math.log(12), math.log(1200))))
        out.append(Item(prompt=f"Write running_mean (#{rng.randrange(10**6)}).",
                        response=(CODE * (chars // len(CODE) + 1))[:chars]))
    return out


def build(shape: Path, out: Path) -> Path:
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(shape, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(shape)
    config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    AutoModelForSequenceClassification.from_config(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def timed(fn, repeat: int = 5) -> float:
    def sync():
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    fn()
    sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - start) / repeat


SHAPES = [(1, 32), (1, 256), (4, 256), (16, 256), (32, 512), (64, 512), (64, 1024)]


def forward_costs(scorer, shapes: list[tuple[int, int]]) -> dict:
    """ms per forward by (rows, tokens), and the least-squares call overhead in tokens."""
    ms = {}
    with torch.inference_mode():
        for rows, width in shapes:
            ids = torch.randint(100, 1000, (rows, width), device=scorer.device)
            mask = torch.ones_like(ids)
            ms[f"{rows}x{width}"] = round(1000 * timed(lambda: scorer.rows(ids, mask)), 3)
    xs = [r * w for r, w in shapes]
    ys = list(ms.values())
    slope, intercept = statistics.linear_regression(xs, ys)
    return {"forward_ms": ms, "ms_per_token": round(slope, 6), "call_ms": round(intercept, 3),
            "call_overhead_tokens": round(intercept / slope) if slope > 0 else None}


def raw_seconds(scorer, batch: list[Item]) -> float:
    """The whole-sequence forward over `batch`: length-sorted padded micro-batches, no service."""
    seqs = [list(encode_item(scorer.tokenizer, it, scorer.max_length)[0]) for it in batch]
    batching = Batching().on(scorer.device)
    pad_id = scorer.tokenizer.pad_token_id

    def raw():
        with torch.inference_mode():
            for b in micro_batches([len(s) for s in seqs], batching):
                scorer.rows(*pad([seqs[i] for i in b], pad_id, scorer.device)).float().cpu()

    return timed(raw, repeat=3)


def score_vs_raw(scorer, batch: list[Item], clients: int = 32) -> dict:
    raw_s = raw_seconds(scorer, batch)
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda it: scorer.score([it]), batch[:clients]))  # warm-up
        start = time.perf_counter()
        list(pool.map(lambda it: scorer.score([it]), batch))
        served_s = time.perf_counter() - start
    return {"raw_items_per_s": round(len(batch) / raw_s, 1), "served_items_per_s": round(len(batch) / served_s, 1),
            "score_vs_raw_32": round(raw_s / served_s, 3)}


def group_items(tokenizer, phase: int, prompts: int = 8, k: int = 16, prompt_tokens: int = 640,
                response_tokens: tuple[int, int] = (64, 256)) -> list[Item]:
    """GRPO-shaped: `prompts` prompts of `prompt_tokens` tokens, `k` responses of 64-256 tokens
    each, interleaved; each phase has prompts of its own (none in the prefix cache yet)."""
    ids = tokenizer(CODE * 400, add_special_tokens=False)["input_ids"]
    rng = random.Random(phase)
    texts = [f"Task {phase}.{p}:\n" + tokenizer.decode(ids[p * 11:p * 11 + prompt_tokens]) for p in range(prompts)]
    return [Item(prompt=texts[p], response=tokenizer.decode(ids[:rng.randint(*response_tokens)]))
            for _ in range(k) for p in range(prompts)]


def groups(scorer, prompts: int = 8, k: int = 16, prompt_tokens: int = 640) -> dict:
    """Issue 16's group keys in process: a score call per prompt (8 threads) and one item per
    call (32 threads), items/s over the whole-sequence forward of the same shape of items."""
    lengths = (64, 256) if prompt_tokens >= 256 else (8, 32)
    raw_s = raw_seconds(scorer, group_items(scorer.tokenizer, 0, prompts, k, prompt_tokens, lengths))
    out = {"raw_items_per_s": round(prompts * k / raw_s, 1)}
    phases = (("group_vs_raw_k16", prompts, k), ("group_single_vs_raw_k16", 32, 1))
    for phase, (name, clients, size) in enumerate(phases, start=1):
        batch = group_items(scorer.tokenizer, phase, prompts, k, prompt_tokens, lengths)
        calls = [batch[i::prompts] for i in range(prompts)] if size > 1 else [[it] for it in batch]
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            list(pool.map(scorer.score, calls))
            out[name] = round(raw_s / (time.perf_counter() - start), 3)
    out["prefix_cache"] = scorer.prefixes.stats()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", required=True, help="folder with SmolLM2-135M's config.json and tokenizer")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, small: checks the script, not the GPU")
    args = parser.parse_args()
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device")
    results: dict = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
                     "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        path = build(Path(args.shape), Path(tmp) / "bt")
        bf16 = load_scorer(path, device=device, dtype="bfloat16")
        fp32 = load_scorer(path, device=device, dtype="float32")
        batch = items(16 if args.dry_run else 512)
        low, high = bf16.score(batch).rewards, fp32.score(batch).rewards
        diffs = [abs(a - b) for a, b in zip(low, high)]
        order_kept = sum((a1 > a2) == (b1 > b2) for (a1, b1), (a2, b2) in zip(zip(low, high), zip(low[1:], high[1:])))
        results["bf16_vs_fp32"] = {"items": len(batch), "max_abs": round(max(diffs), 5),
                                   "mean_abs": round(statistics.fmean(diffs), 5),
                                   "reward_std": round(statistics.pstdev(high), 5),
                                   "neighbour_order_kept": round(order_kept / (len(batch) - 1), 4)}
        results.update(forward_costs(bf16, SHAPES[:3] if args.dry_run else SHAPES))
        results.update(score_vs_raw(bf16, batch))
        results["groups"] = groups(bf16, 2, 4, 48) if args.dry_run else groups(bf16)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
