"""Checks that need a CUDA device, skipped without one; `benchmarks/gpu_check.sh` runs them
with the property tests (which then run on the GPU in bf16) and the GPU benchmark.

On a GPU plaudit serves in bf16 but computes every reward head in fp32: BT's and the PRM's
linear heads, the GPM's response-minus-prompt difference and value head, codepref's A/B
logits. The tests check each against the same head computed in fp32 by hand from the model's
own bf16 hidden states (a bf16 head would be off by about 1e-2), and the bf16 rewards against
fp32 on the CPU within BF16_TOL."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_training
from plaudit.rewardmodels import Item, Pair, Steps, load_scorer
from plaudit.rewardmodels.encoding import encode_item, last_token_states, pad

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

BF16_TOL = 0.05  # reward units: the tiny random models' rewards are of order 1
ITEMS = [Item(prompt="Write a function that adds two numbers.", response=r)
         for r in ("def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n", "hello world",
                   "for i in range(n): total += i * 2 - 1")]


def both(path, **kwargs):
    return (load_scorer(path, device="cuda", dtype="bfloat16", **kwargs),
            load_scorer(path, device="cpu", dtype="float32", **kwargs))


def batch_states(scorer, backbone):
    seqs = [encode_item(scorer.tokenizer, it, scorer.max_length)[0] for it in ITEMS]
    with torch.no_grad():
        return last_token_states(backbone, *pad(seqs, scorer.tokenizer.pad_token_id, scorer.device))


def test_bt_head_runs_in_fp32_and_bf16_stays_close_to_fp32(tiny_bt):
    gpu, cpu = both(tiny_bt)
    assert gpu.metadata["dtype"] == "bfloat16"
    by_hand = batch_states(gpu, gpu.model.base_model).float() @ gpu.model.score.weight.float().T
    served = gpu.score(ITEMS).rewards
    assert served == pytest.approx(by_hand[:, 0].tolist(), abs=1e-5)
    assert max(abs(a - b) for a, b in zip(served, cpu.score(ITEMS).rewards)) <= BF16_TOL


def test_prm_head_runs_in_fp32(tiny_bt, tmp_path):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    AutoModelForTokenClassification.from_pretrained(tiny_bt, num_labels=2, ignore_mismatched_sizes=True
                                                    ).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_bt).save_pretrained(tmp_path)
    gpu, cpu = both(tmp_path, kind="prm")
    traces = [Steps(prompt="Add 2 and 3.", steps=["2 + 3", "= 5"]), Steps(prompt="Add 2 and 3.", steps=["= 6"])]
    served = [s for t in gpu.score_steps(traces) for s in t.step_rewards]
    reference = [s for t in cpu.score_steps(traces) for s in t.step_rewards]
    assert max(abs(a - b) for a, b in zip(served, reference)) <= BF16_TOL


def test_gpm_and_training_in_bf16_on_cuda(tiny_base, tmp_path):
    """A GPM trained on the GPU (the Trainer in bf16), then served there against the CPU."""
    from plaudit.training.experiments import cyclic_pairs
    from plaudit.training.gpm import GPMConfig, train_gpm

    summary = train_gpm(cyclic_pairs(4), tmp_path, tiny_training(GPMConfig, tiny_base, device="cuda", dims=4),
                        on_log=lambda row: None)
    assert summary["steps"] == 12 and summary["final_epoch"]["loss"] > 0
    gpu, cpu = both(tmp_path)
    pairs = [Pair(prompt=p.prompt, a=p.chosen, b=p.rejected) for p in cyclic_pairs(4)]
    served, reference = gpu.compare(pairs).probabilities, cpu.compare(pairs).probabilities
    assert max(abs(a - b) for a, b in zip(served, reference)) <= BF16_TOL


def test_codepref_label_logits_run_in_fp32(tiny_base, tmp_path):
    from plaudit.rewardmodels.codepref import label_logits
    from plaudit.training.codepref import CodePrefConfig, train_codepref
    from plaudit.training.data import CodePrefRecord

    good, bad = (it.response for it in ITEMS[:2])
    records = [CodePrefRecord(instruction=ITEMS[0].prompt, code_a=a, code_b=b, answer=answer)
               for a, b, answer in ((good, bad, "A"), (bad, good, "B"))] * 2
    train_codepref(records, tmp_path, tiny_training(CodePrefConfig, tiny_base, device="cuda", num_train_epochs=1),
                   on_log=lambda row: None)
    scorer = load_scorer(tmp_path, device="cuda", dtype="bfloat16")
    states = batch_states(scorer, scorer.model.model).float()
    by_hand = states @ scorer.model.lm_head.weight[scorer.labels].float().T
    seqs = [encode_item(scorer.tokenizer, it, scorer.max_length)[0] for it in ITEMS]
    with torch.no_grad():
        served = label_logits(scorer.model, scorer.labels, *pad(seqs, scorer.tokenizer.pad_token_id, scorer.device))
    assert torch.allclose(served, by_hand, atol=1e-5)


def test_prefix_sharing_in_bf16_stays_within_bf16_noise(tiny_bt):
    """Responses on a prompt's cached keys and values (prefix.py) against their whole forward,
    both in bf16 on the GPU: the same rewards within BF16_TOL."""
    from plaudit.rewardmodels.encoding import run_batched

    gpu = load_scorer(tiny_bt, device="cuda", dtype="bfloat16")
    prompt = " ".join(["Write a function that adds two numbers, then test it."] * 6)
    items = [Item(prompt=prompt, response=it.response) for it in ITEMS] * 4
    shared = gpu.score(items).rewards
    assert gpu.prefixes.stats()["shared_sequences"] == len(items)
    seqs = [list(encode_item(gpu.tokenizer, it, gpu.max_length)[0]) for it in items]
    whole = run_batched(seqs, gpu.prefixes.split, gpu.prefixes.batching, gpu.tokenizer.pad_token_id, gpu.device)
    assert max(abs(a - float(b)) for a, b in zip(shared, whole)) <= BF16_TOL


def test_an_ensemble_sharing_its_trunk_in_bf16_scores_as_its_members(tiny_bt, tmp_path):
    """Two members that differ only in their last block: run as trunk and tails in bf16 on the
    GPU, their mean and spread within BF16_TOL of each member scored alone in fp32 on the CPU."""
    import shutil
    import statistics

    from safetensors.torch import load_file, save_file

    from plaudit.rewardmodels.loading import write_metadata

    for m in ("m0", "m1"):
        shutil.copytree(tiny_bt, tmp_path / m)
    weights = load_file(str(tmp_path / "m1" / "model.safetensors"))
    save_file({k: v * 1.1 if ".layers.1." in k else v for k, v in weights.items()},
              str(tmp_path / "m1" / "model.safetensors"))
    write_metadata(tmp_path, {"kind": "ensemble", "members": ["m0", "m1"]})
    gpu = load_scorer(tmp_path, device="cuda", dtype="bfloat16")
    assert gpu.shared_blocks == 1
    got = gpu.score(ITEMS * 2)
    columns = list(zip(*(load_scorer(tmp_path / m, device="cpu", dtype="float32").score(ITEMS * 2).rewards
                         for m in ("m0", "m1"))))
    assert got.rewards == pytest.approx([statistics.fmean(c) for c in columns], abs=BF16_TOL)
    assert got.spread == pytest.approx([statistics.pstdev(c) for c in columns], abs=BF16_TOL)
