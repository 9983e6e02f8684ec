"""WARM on tiny backbones: members from one init, the streamed fp32 merge and its checks,
the greedy soup, the prediction ensemble (mean and spread), and merge memory flat in M."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import make_tiny, tiny_training
from plaudit.rewardmodels import Item, ModelLoadError, Pair, load_scorer
from plaudit.rewardmodels.bt import load_classifier
from plaudit.rewardmodels.loading import read_metadata, write_metadata
from plaudit.rewardmodels.trunk import TrunkAndTails, shared_blocks
from plaudit.service.api import ModelPool, score as score_endpoint
from plaudit.service.config import ModelConfig, ServiceConfig
from plaudit.schemas import ScoreRequest
from helpers import marker_pairs, write_pairs
from plaudit.training.warm import MEMBERS, Member, WarmConfig, average, merge, train_warm

ADAPTED = "model.layers.1.self_attn.q_proj.weight"  # in the last block: LoRA merges into it
FROZEN = "model.layers.0.self_attn.q_proj.weight"


def config(base, **overrides) -> WarmConfig:
    return tiny_training(WarmConfig, base, **{"num_train_epochs": 3, "lora_layers": 1, **overrides})


@pytest.fixture(scope="module")
def warm(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "merged"
    report = train_warm(marker_pairs(24, seed=100), out, config(tiny_base, lr_spread=2.0), members=3,
                        on_log=lambda row: None, data="marker")
    return out, report


def merged_state(directory: Path) -> dict[str, torch.Tensor]:
    model, _ = load_classifier(directory, read_metadata(directory), torch.float32)
    return model.state_dict()


def test_members_share_the_init_and_differ_in_order_and_lr(warm):
    out, report = warm
    members = report["training"]
    assert [m["learning_rate"] for m in members] == pytest.approx([2.5e-3, 5e-3, 1e-2])
    assert len({m["data_seed"] for m in members}) == 3
    seeds = {json.loads((out / MEMBERS / f"member-{i}" / "plaudit.json").read_text())["training"]["config"]["seed"]
             for i in range(3)}
    assert seeds == {0}  # one init: head and adapters start from the same seed


def test_merge_is_the_mean_of_the_merged_members_and_moves_the_backbone(warm):
    """Each member's LoRA is merged into its weights before averaging, so the average changes
    a transformer block, not only the head; untouched blocks stay the base's."""
    out, _ = warm
    states = [merged_state(out / MEMBERS / f"member-{i}") for i in range(3)]
    merged = load_file(str(out / "model.safetensors"))
    assert not torch.allclose(states[0][ADAPTED], states[1][ADAPTED])
    for name in (ADAPTED, FROZEN, "score.weight"):
        assert torch.allclose(merged[name], sum(s[name] for s in states) / 3, atol=1e-6), name
    assert torch.equal(states[0][FROZEN], states[2][FROZEN])
    assert merged[ADAPTED].dtype == torch.float32


def test_merged_model_is_a_normal_bt_model(warm, tmp_path):
    out, _ = warm
    scorer = load_scorer(out)
    meta = read_metadata(out)
    assert scorer.kind == "bt" and "adapter" not in meta and meta["normalization"]["stored"]
    assert "base" in meta["init"] and len(meta["warm"]["members"]) == 3
    held_out = marker_pairs(24, seed=999)
    wins = scorer.compare([Pair(prompt=p.prompt, a=p.chosen, b=p.rejected) for p in held_out]).margins
    assert sum(m > 0 for m in wins) / len(wins) > 0.75


def test_the_merge_is_also_one_exact_adapter(warm):
    """The members' average as one PEFT adapter of rank 3 x 8 over the base: the same rewards
    as the full merged checkpoint."""
    out, report = warm
    adapter = out / "adapter"
    assert report["adapter"] == str(adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (24, 24.0, ["score"])
    items = [Item(prompt=p.prompt, response=r) for p in marker_pairs(12, seed=5) for r in (p.chosen, p.rejected)]
    full, exact = load_scorer(out), load_scorer(adapter)
    assert exact.metadata["normalization"] == full.metadata["normalization"]
    assert exact.score(items).rewards == pytest.approx(full.score(items).rewards, abs=1e-4)
    # smaller even for this 32-wide model; on SmolLM2 (3 members, r=8, 8 blocks) 7.8 MB against 540 MB
    assert (adapter / "adapter_model.safetensors").stat().st_size < (out / "model.safetensors").stat().st_size


@pytest.fixture(scope="module")
def unrelated(tmp_path_factory):
    """An ensemble of two BT models initialised apart: no block in common, members run side by side."""
    folder = tmp_path_factory.mktemp("unrelated")
    for seed in (0, 1):
        make_tiny(folder / f"m{seed}", head=True, seed=seed)
    write_metadata(folder, {"kind": "ensemble", "members": ["m0", "m1"]})
    return folder


def group_items() -> list[Item]:
    """Four responses of mixed lengths to each of four prompts."""
    return [Item(prompt=p.prompt, response=r) for p in marker_pairs(4, seed=5)
            for r in (p.chosen, p.rejected, p.chosen + " and then some more words", "x")]


def test_ensemble_serves_mean_and_spread(warm):
    """WARM members adapt only their last block, so the ensemble runs the embedding and block 0
    once (one copy in memory), then each member's block 1 and head; the K responses of a
    prompt share its pass. Rewards and spread are the members' own, scored one by one."""
    out, _ = warm
    ensemble = load_scorer(out / MEMBERS)
    members = [load_scorer(out / MEMBERS / f"member-{i}") for i in range(3)]
    items = group_items()
    got = ensemble.score(items)
    columns = list(zip(*(m.score(items).rewards for m in members)))
    assert ensemble.kind == "ensemble" and ensemble.shared_blocks == 1
    assert got.rewards == pytest.approx([statistics.fmean(c) for c in columns], abs=1e-5)
    assert got.spread == pytest.approx([statistics.pstdev(c) for c in columns], abs=1e-5)
    assert any(s > 0 for s in got.spread)
    layers = [m.model.base_model.layers for m in ensemble.members]
    assert all(own[0] is layers[0][0] for own in layers) and len({id(own[1]) for own in layers}) == 3
    stats = ensemble.stats()
    assert stats["forward_calls"] == 1 and stats["prefix_cache"]["shared_sequences"] == len(items)
    assert ensemble.score_rendered(["hello there", "a longer rendered text"]).rewards == pytest.approx(
        [statistics.fmean(c) for c in zip(*(m.score_rendered(["hello there", "a longer rendered text"]).rewards
                                            for m in members))], abs=1e-5)
    pool = ModelPool(ServiceConfig(models={"ens": ModelConfig(path=str(out / MEMBERS))}, default_model="ens"))
    answer = score_endpoint(pool, ScoreRequest(items=items[:2]))
    assert answer.uncertainty == pytest.approx(got.spread[:2], abs=1e-5)


def test_members_that_share_no_block_run_side_by_side(unrelated):
    ensemble = load_scorer(unrelated)
    members = [load_scorer(unrelated / m) for m in ("m0", "m1")]
    items = group_items()
    columns = list(zip(*(m.score(items).rewards for m in members)))
    assert ensemble.shared_blocks == 0 and ensemble.shared is None
    assert ensemble.score(items).rewards == pytest.approx([statistics.fmean(c) for c in columns], abs=1e-5)


def test_every_member_s_forward_calls_reach_the_metrics(unrelated, warm):
    """The service watches each scorer's batchers: side by side, every member's; shared, the
    trunk's one, under the ensemble's name."""
    from prometheus_client import CollectorRegistry

    from plaudit.service.config import MonitoringConfig
    from plaudit.service.monitoring import Metrics, Monitor

    registry = CollectorRegistry()
    monitor = Monitor(MonitoringConfig(), Metrics(registry))
    side_by_side = load_scorer(unrelated, name="apart")
    shared = load_scorer(warm[0] / MEMBERS, name="warm")
    for ensemble in (side_by_side, shared):
        monitor.watch(ensemble)
        ensemble.score(group_items()[:4])
    calls = {label: registry.get_sample_value("plaudit_forward_batch_size_count", {"model": label})
             for label in ("apart/m0", "apart/m1", "warm")}
    assert calls == {"apart/m0": 1.0, "apart/m1": 1.0, "warm": 1.0}


def test_a_forward_that_is_more_than_its_blocks_is_not_split():
    """A backbone that scales its input inside `forward` (as older Gemma did) would scale the
    trunk's states again in every tail: the load-time check refuses it, so the ensemble's
    members run whole."""
    from transformers import LlamaConfig, LlamaModel

    class Scaled(LlamaModel):
        def forward(self, input_ids=None, inputs_embeds=None, **kwargs):
            inputs_embeds = (self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds) * 2.0
            return super().forward(inputs_embeds=inputs_embeds, **kwargs)

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    first, second = Scaled(config), Scaled(config)
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        second.layers[1].mlp.up_proj.weight.add_(0.1)
    assert shared_blocks([first, second]) == 1
    with pytest.raises(ValueError, match="differs from its own forward"):
        TrunkAndTails([first, second], 1)
    plain = [LlamaModel(config) for _ in range(2)]
    plain[1].load_state_dict(plain[0].state_dict())
    TrunkAndTails(plain, 1)  # the same shape without the scaling passes


@pytest.mark.parametrize("which", ["warm", "unrelated"])
def test_concurrent_ensemble_requests_merge(which, request):
    """8 one-item requests at once: the batcher (the shared one, or every member's) runs the
    first alone and merges the other 7 (its forward slowed to 300 ms so that they queue, even
    on a loaded machine). With a pool of M threads per ensemble, requests reached the members
    one at a time: 8 calls each."""
    folder = request.getfixturevalue(which)
    ensemble = load_scorer(folder[0] / MEMBERS if which == "warm" else folder)
    batchers = [ensemble.shared.forward] if ensemble.shared else [m.forward for m in ensemble.members]
    for batcher in batchers:
        run = batcher._run
        batcher._run = lambda seqs, run=run: (time.sleep(0.3), run(seqs))[1]
    items = [Item(prompt=p.prompt, response=p.chosen) for p in marker_pairs(8, seed=9)]
    alone = ensemble.score(items).rewards
    before = [b.batches for b in batchers]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda it: ensemble.score([it]).rewards[0], items))
    assert got == pytest.approx(alone, abs=1e-5)
    assert all(b.batches - n <= 3 for b, n in zip(batchers, before))


def test_greedy_soup_keeps_only_what_helps(warm, tmp_path):
    out, _ = warm
    members = [out / MEMBERS / f"member-{i}" for i in range(3)]
    report = merge(members, tmp_path / "soup", soup=marker_pairs(16, seed=7))
    soup = report["soup"]
    assert 1 <= len(soup["kept"]) <= 3 and soup["accuracy"] >= max(soup["member_accuracy"])
    assert not (tmp_path / "soup.soup-trial").exists()
    assert load_scorer(tmp_path / "soup").kind == "bt"


def test_members_of_another_backbone_are_refused(warm, tmp_path):
    """Same architecture, different pretrained weights: averaging them is meaningless."""
    out, _ = warm
    other_base = make_tiny(tmp_path / "other-base", head=False, seed=1)
    train_warm(marker_pairs(8, seed=1), tmp_path / "other", config(other_base, num_train_epochs=1), members=2,
               on_log=lambda row: None)
    with pytest.raises(ModelLoadError) as err:
        merge([out / MEMBERS / "member-0", tmp_path / "other" / MEMBERS / "member-0"], tmp_path / "bad")
    assert "different backbone" in str(err.value) and not (tmp_path / "bad").exists()


def test_every_tensor_name_and_shape_is_checked(warm, tmp_path):
    out, _ = warm
    state = load_file(str(out / "model.safetensors"))
    for case, edit in (("missing", lambda s: s.pop(ADAPTED)), ("shape", lambda s: s.update({ADAPTED: s[ADAPTED][:4]}))):
        broken = tmp_path / case
        broken.mkdir()
        for f in out.iterdir():
            if f.is_file():
                (broken / f.name).write_bytes(f.read_bytes())
        changed = dict(state)
        edit(changed)
        save_file(changed, str(broken / "model.safetensors"))
        with pytest.raises(ModelLoadError) as err:
            average([Member(out), Member(broken)])
        assert ADAPTED in str(err.value) and str(broken) in str(err.value)


def test_an_ensemble_of_other_kinds_is_refused(warm, tmp_path):
    ens = tmp_path / "ens"
    ens.mkdir()
    (ens / "plaudit.json").write_text(json.dumps({"kind": "ensemble", "members": []}))
    with pytest.raises(ModelLoadError) as err:
        load_scorer(ens)
    assert "members" in str(err.value)


MEASURE = """
import resource, sys
from plaudit.training.warm import merge
merge(sys.argv[2:], sys.argv[1])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_merge_peak_memory_is_flat_in_the_number_of_members(tmp_path):
    """Five members peak no higher than two (+30%): one member is in memory at a time.
    Members are ~70 MB full checkpoints so that holding them all would show (+200 MB)."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from conftest import make_tokenizer

    tokenizer = make_tokenizer(chat_template=True)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                      num_attention_heads=8, num_key_value_heads=8, pad_token_id=tokenizer.pad_token_id,
                      num_labels=1)
    members = []
    for i in range(5):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(cfg)
        with torch.no_grad():
            model.score.weight.add_(0.01 * i)  # fine-tunes of one init
        model.save_pretrained(tmp_path / f"m{i}")
        tokenizer.save_pretrained(tmp_path / f"m{i}")
        members.append(str(tmp_path / f"m{i}"))
    size = (tmp_path / "m0" / "model.safetensors").stat().st_size
    assert size > 60e6
    peaks = {}
    for m in (2, 5):
        run = subprocess.run([sys.executable, "-c", MEASURE, str(tmp_path / f"out{m}"), *members[:m]],
                             capture_output=True, text=True, cwd=Path(__file__).parent.parent, check=True)
        peaks[m] = int(run.stdout.split()[-1]) * 1024
    assert peaks[5] <= 1.3 * peaks[2], {m: round(p / 1e6) for m, p in peaks.items()}
    assert peaks[5] - peaks[2] < size, peaks


def test_flip_labels_swaps_exactly_the_asked_fraction():
    from plaudit.training.experiments import flip_labels

    pairs = marker_pairs(20, seed=3)
    noisy, flipped = flip_labels(pairs, 0.25, seed=0)
    swapped = [(a.chosen, a.rejected) == (b.rejected, b.chosen) for a, b in zip(pairs, noisy)]
    assert flipped == 5 == sum(swapped)
    assert all((a.chosen, a.rejected) == (b.chosen, b.rejected) for a, b, s in zip(pairs, noisy, swapped) if not s)


def test_warm_noise_experiment_reports_every_contender(tiny_base, tmp_path):
    from plaudit.training.experiments import warm_noise

    for name, seed in (("train", 100), ("test", 999)):
        write_pairs(tmp_path / f"{name}.jsonl", marker_pairs(16, seed))
    report = warm_noise(tmp_path / "run", tmp_path / "train.jsonl", tmp_path / "test.jsonl", members=2,
                        epochs=2, lr=5e-3, lora_layers=1, base=str(tiny_base))
    assert report["flipped"] == 4 and report["test_pairs"] == 16
    assert set(report["accuracy"]) == {"member-0", "member-1", "ensemble", "warm"}
    assert all(0.0 <= a <= 1.0 for a in report["accuracy"].values())


def test_a_rerun_keeps_complete_members_and_resumes_the_interrupted_one(tiny_base, tmp_path):
    """`warm train` run again after an interruption: member 0 (complete) is not trained again,
    member 1 (its plaudit.json never written, checkpoints left) goes on from its last checkpoint."""
    out = tmp_path / "warm"
    pairs = marker_pairs(16, seed=3)
    train_warm(pairs, out, config(tiny_base, num_train_epochs=2, save_steps=2), members=2, on_log=lambda row: None)
    kept = (out / MEMBERS / "member-0" / "adapter_model.safetensors").stat().st_mtime_ns
    (out / MEMBERS / "member-1" / "plaudit.json").unlink()
    rows: list[dict] = []
    train_warm(pairs, out, config(tiny_base, num_train_epochs=2, save_steps=2), members=2, on_log=rows.append)
    assert {"member": 0, "skipped": "complete"} in rows
    assert {"member": 1, "resume": str(out / MEMBERS / "member-1" / "checkpoints" / "checkpoint-8"),
            "from_step": 8} in rows
    assert (out / MEMBERS / "member-0" / "adapter_model.safetensors").stat().st_mtime_ns == kept
    assert (out / MEMBERS / "member-1" / "plaudit.json").exists() and load_scorer(out).kind == "bt"
