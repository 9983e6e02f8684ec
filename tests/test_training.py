"""Tests for training/: reading preference data, training a BT reward model as LoRA + head on a
tiny backbone, and held-out evaluation.

Training runs on conftest's 2-layer random Llama (`tiny_base`) with a rule it can learn in a
second: the chosen response contains the word "tested", the rejected one is the same text
without it. The untrained model is checked to get this wrong, so passing means it learned.
"""
from __future__ import annotations

import json

import pytest
import torch

from conftest import tiny_training
from helpers import marker_pairs, write_pairs
from plaudit.rewardmodels import InputError, Item, ModelLoadError, Scorer, Scores, load_scorer
from plaudit.rewardmodels.bt import last_token_rewards
from plaudit.rewardmodels.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS
from plaudit.rewardmodels.encoding import encode_item
from plaudit.training.bt import BTConfig, train_bt
from plaudit.training.data import PreferencePair, read_pairs
from plaudit.training.evaluate import eval_pairs

# --- read_pairs ------------------------------------------------------------------------------------


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_read_pairs_accepts_strings_messages_and_conversations(tmp_path):
    """TRL's preference format in its three shapes; a conversational chosen/rejected becomes
    the content of its last message, and unknown fields are ignored."""
    path = write_lines(tmp_path / "pairs.jsonl", [
        json.dumps({"prompt": "2+2?", "chosen": "4", "rejected": "5", "id": 7}),
        "",  # blank lines are skipped
        json.dumps({"prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                    "chosen": "hello", "rejected": "go away"}),
        json.dumps({"prompt": [{"role": "user", "content": "add"}],
                    "chosen": [{"role": "user", "content": "add"}, {"role": "assistant", "content": "a + b"}],
                    "rejected": [{"role": "assistant", "content": "a - b"}]}),
    ])
    pairs = read_pairs(path)
    assert [(p.chosen, p.rejected) for p in pairs] == [("4", "5"), ("hello", "go away"), ("a + b", "a - b")]
    assert pairs[0].prompt == "2+2?"
    assert [(m.role, m.content) for m in pairs[1].prompt] == [("system", "be brief"), ("user", "hi")]


def test_read_pairs_names_file_line_and_field(tmp_path):
    """A bad record is reported where it is (file:line) and what is wrong (the field)."""
    path = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}),
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}),
        json.dumps({"prompt": "a", "chosen": "b"}),
    ])
    with pytest.raises(InputError) as err:
        read_pairs(path)
    assert err.value.field == f"{path}:3"
    assert f"{path}:3" in str(err.value) and "'rejected'" in str(err.value)


def test_read_pairs_counts_blank_lines_in_line_numbers(tmp_path):
    """Line numbers are those an editor shows, blank lines included."""
    path = write_lines(tmp_path / "bad.jsonl", [
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}), "",
        json.dumps({"prompt": "a", "chosen": 3, "rejected": "c"}),
    ])
    with pytest.raises(InputError) as err:
        read_pairs(path)
    assert f"{path}:3" in str(err.value) and "chosen" in str(err.value)


def test_read_pairs_reports_invalid_json_line(tmp_path):
    path = write_lines(tmp_path / "broken.jsonl", [
        json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}),
        '{"prompt": "a", "chosen": "b", "rejected": ',
    ])
    with pytest.raises(InputError) as err:
        read_pairs(path)
    assert f"{path}:2" in str(err.value) and "JSON" in str(err.value)


def test_read_pairs_reports_bad_message_in_conversation(tmp_path):
    path = write_lines(tmp_path / "bad-msg.jsonl", [
        json.dumps({"prompt": "a", "chosen": [{"role": "assistant"}], "rejected": "c"}),
    ])
    with pytest.raises(InputError) as err:
        read_pairs(path)
    assert f"{path}:1" in str(err.value) and "chosen" in str(err.value)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_read_pairs_refuses_empty_file(tmp_path, content):
    """No pairs is an error, not an empty training run."""
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as err:
        read_pairs(path)
    assert str(path) in str(err.value)


# --- train_bt --------------------------------------------------------------------------------------

def config(base, **overrides) -> BTConfig:
    return tiny_training(BTConfig, base, **overrides)


@pytest.fixture(scope="module")
def trained(tiny_base, tmp_path_factory):
    """One training run shared by the tests below: (out dir, summary, logged rows, training pairs)."""
    pairs = marker_pairs(24, seed=100)
    out = tmp_path_factory.mktemp("bt-out")
    rows: list[dict] = []
    summary = train_bt(pairs, out, config(tiny_base), on_log=rows.append)
    return out, summary, rows, pairs


def test_adapters_train_at_their_own_rate(tiny_base, tmp_path):
    """--adapter-learning-rate 0 leaves every LoRA B at its zero init while the head trains."""
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    train_bt(marker_pairs(8, seed=1), tmp_path, config(tiny_base, num_train_epochs=1, adapter_learning_rate=0.0),
             on_log=lambda row: None)
    weights = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    lora_b = [w for k, w in weights.items() if ".lora_B." in k]
    assert lora_b and all(torch.count_nonzero(w) == 0 for w in lora_b)
    trained_head = next(w for k, w in weights.items() if "score" in k)
    torch.manual_seed(0)  # the head's initialisation, as prepare() seeds it
    initial = AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1).score.weight
    assert not torch.allclose(trained_head, initial)



def test_adapters_join_after_the_heads_own_steps(tiny_base, tmp_path, monkeypatch):
    """--adapter-start 0.5: the first half of the steps train the head alone (every LoRA B
    still zero at the checkpoint after them), with the backbone run forward only (no graph
    through it), then the adapters train too."""
    from safetensors.torch import load_file

    import plaudit.training.bt as bt
    from plaudit.training.loop import TRAINABLE

    graphs = []  # per training step: did the backbone's states carry a graph back to the adapters?

    def watched(backbone, seqs, pad_id, device):
        states, mask = shared(backbone, seqs, pad_id, device)
        if torch.is_grad_enabled():  # training, not the final pass
            graphs.append(states.requires_grad)
        return states, mask

    shared = bt.shared_prompt_states
    monkeypatch.setattr(bt, "shared_prompt_states", watched)
    train_bt(marker_pairs(8, seed=1), tmp_path, config(tiny_base, num_train_epochs=2, adapter_start=0.5,
                                                       save_steps=2), on_log=lambda row: None)
    assert graphs == [False, False, True, True]  # 8 pairs in batches of 4, 2 epochs

    def lora_b(weights: dict) -> list[torch.Tensor]:
        return [w for k, w in weights.items() if ".lora_B." in k]

    halfway = load_file(str(tmp_path / "checkpoints" / "checkpoint-2" / TRAINABLE))
    assert lora_b(halfway) and all(torch.count_nonzero(w) == 0 for w in lora_b(halfway))
    final = load_file(str(tmp_path / ADAPTER_WEIGHTS))
    assert all(torch.count_nonzero(w) > 0 for w in lora_b(final))

def test_a_pairs_responses_read_their_prompt_once_through_the_trainer(tiny_base, tmp_path, monkeypatch):
    """The Trainer and accelerate rebuild lists on their way to the device; the step must still
    see each sequence's prompt length, so that both responses of a pair read their prompt
    once: 4 pairs per step, 8 responses on at most 4 prompt rows (pairs may share a prompt)."""
    import plaudit.training.bt as bt

    calls = []

    def watched(backbone, seqs, pad_id, device):
        calls.append((len({tuple(s[:s.prefix]) for s in seqs}), [s.prefix for s in seqs]))
        return shared(backbone, seqs, pad_id, device)

    shared = bt.shared_prompt_states
    monkeypatch.setattr(bt, "shared_prompt_states", watched)
    train_bt(marker_pairs(8, seed=1), tmp_path, config(tiny_base, num_train_epochs=1), on_log=lambda row: None)
    assert calls and all(distinct <= len(prefixes) // 2 and all(prefixes) for distinct, prefixes in calls)


def test_untrained_model_does_not_know_the_rule(trained, tiny_base, tmp_path):
    """Guard for the learning test: with lr=0 the same setup stays far below the trained model,
    so a high accuracy after training is learned, not an accident of the random init."""
    out = tmp_path / "untrained"
    train_bt(marker_pairs(24, seed=100), out, config(tiny_base, num_train_epochs=1, learning_rate=0.0), on_log=lambda row: None)
    untrained = eval_pairs(load_scorer(out), marker_pairs(24, seed=999))["accuracy"]
    learned = eval_pairs(load_scorer(trained[0]), marker_pairs(24, seed=999))["accuracy"]
    assert untrained < learned - 0.25, (untrained, learned)


def test_training_learns_the_rule(trained):
    """Final-epoch training accuracy and held-out accuracy on fresh pairs are both high."""
    out, summary, _, _ = trained
    assert summary["final_epoch"]["accuracy"] > 0.8
    assert summary["examples"] == 24 and summary["steps"] == 4 * 6
    held_out = eval_pairs(load_scorer(out), marker_pairs(24, seed=999))
    assert held_out["accuracy"] > 0.8, held_out
    assert held_out["mean_margin"] > 0 and held_out["pairs"] == 24 and held_out["truncated"] == 0


def test_on_log_rows(trained):
    """Progress rows carry loss, accuracy and margin; the last one is the end of the last epoch."""
    _, summary, rows, pairs = trained
    assert rows
    for row in rows:
        assert {"epoch", "step", "examples", "loss", "accuracy", "margin"} <= row.keys()
        assert row["loss"] > 0 and 0 <= row["accuracy"] <= 1
    assert [r["epoch"] for r in rows] == sorted(r["epoch"] for r in rows)
    assert {r["epoch"] for r in rows} == {1, 2, 3, 4}
    last = rows[-1]
    assert last["epoch"] == 4 and last["examples"] == len(pairs)
    assert {k: last[k] for k in ("loss", "accuracy", "margin")} == summary["final_epoch"]
    assert rows[-1]["loss"] < rows[0]["loss"]


def test_output_folder_is_small_and_described(trained, tiny_base):
    """What is shipped: plaudit.json plus a PEFT adapter holding only LoRA and head weights."""
    from safetensors.torch import load_file

    out, summary, _, _ = trained
    assert (out / "plaudit.json").is_file() and (out / ADAPTER_WEIGHTS).is_file()
    size = (out / ADAPTER_WEIGHTS).stat().st_size
    assert size < 200_000 and size < (tiny_base / "model.safetensors").stat().st_size / 2
    keys = [k.removeprefix("base_model.model.") for k in load_file(str(out / ADAPTER_WEIGHTS)).keys()]
    assert keys and all(".lora_A." in k or ".lora_B." in k or k.startswith("score.") for k in keys)
    assert "score.weight" in keys
    assert {k.split(".layers.")[1].split(".")[0] for k in keys if ".lora_" in k} == {"0", "1"}  # lora_layers=2
    config = json.loads((out / ADAPTER_CONFIG).read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"], config["modules_to_save"]) == \
        ("LORA", 8, 16.0, ["score"])

    meta = json.loads((out / "plaudit.json").read_text())
    assert meta["kind"] == "bt" and meta["base"] == str(tiny_base)
    assert meta["adapter"] == {"last_layers": 2, "rank": 8, "alpha": 16.0, "base_shape": {
        "model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "vocab_size": 300}}
    norm = meta["normalization"]
    assert norm["stored"] is True and norm["std"] > 0 and isinstance(norm["mean"], float)
    assert meta["max_length"] == 256
    assert meta["training"] == summary and meta["training"]["config"]["learning_rate"] == 5e-3


def test_loading_is_deterministic(trained):
    """Two loads of the same folder give identical rewards."""
    out, _, _, pairs = trained
    items = [Item(prompt=p.prompt, response=r) for p in pairs[:8] for r in (p.chosen, p.rejected)]
    first, second = load_scorer(out), load_scorer(out)
    assert first.score(items).rewards == second.score(items).rewards
    assert first.metadata["normalization"]["stored"] is True


def test_loaded_model_matches_the_trained_one(trained):
    """The served model (adapters merged into the weights, rewards normalised) computes what the
    trained model computes: the folder read by PEFT itself, adapters unmerged as in training."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _, _, pairs = trained
    meta = json.loads((out / "plaudit.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(meta["base"], num_labels=1, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(out)).get_base_model().eval()
    tokenizer = AutoTokenizer.from_pretrained(meta["base"])
    mean, std = meta["normalization"]["mean"], meta["normalization"]["std"]

    items = [Item(prompt=p.prompt, response=r) for p in pairs[:12] for r in (p.chosen, p.rejected)]
    with torch.no_grad():
        expected = []
        for item in items:
            ids = torch.tensor([encode_item(tokenizer, item, meta["max_length"])[0]])
            expected.append((last_token_rewards(model, ids, torch.ones_like(ids)).item() - mean) / std)
    served = load_scorer(out).score(items).rewards
    assert max(abs(a - b) for a, b in zip(served, expected)) < 1e-3
    served_margins = [served[i] - served[i + 1] for i in range(0, len(items), 2)]
    trained_margins = [expected[i] - expected[i + 1] for i in range(0, len(items), 2)]
    assert [m > 0 for m in served_margins] == [m > 0 for m in trained_margins]


# --- eval_pairs ------------------------------------------------------------------------------------


class FixedScorer(Scorer):
    """Rewards looked up by response text: tests eval_pairs' arithmetic, not a model."""

    kind = "fixed"

    def __init__(self, rewards: dict[str, float], cut: set[str] = frozenset()):
        super().__init__("fixed", {})
        self.rewards, self.cut = rewards, cut

    def score(self, items):
        return Scores([self.rewards[it.response] for it in items], [it.response in self.cut for it in items])


def test_eval_pairs_counts_ties_as_half():
    scorer = FixedScorer({"good": 2.0, "ok": 1.0, "same": 1.0, "bad": 0.0, "long": 3.0}, cut={"long"})
    pairs = [PreferencePair(prompt="p", chosen="good", rejected="ok"),    # win
             PreferencePair(prompt="p", chosen="same", rejected="ok"),    # tie
             PreferencePair(prompt="p", chosen="bad", rejected="ok"),     # loss
             PreferencePair(prompt="p", chosen="long", rejected="bad")]   # win, truncated
    result = eval_pairs(scorer, pairs)
    assert result["accuracy"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert result["ties"] == 1 and result["pairs"] == 4 and result["truncated"] == 1
    assert result["mean_margin"] == pytest.approx((1.0 + 0.0 - 1.0 + 3.0) / 4)
    assert result["model"] == "fixed"


# --- loading a trained folder that does not fit its base ----------------------------------------------


def other_base(directory, tiny_base, hidden_size: int, layers: int):
    """A causal LM sharing tiny_base's tokenizer but not its shape."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rebased_copy(trained_out, target, base):
    """The trained folder with its metadata pointing at another base, as after a base swap."""
    import shutil

    shutil.copytree(trained_out, target)
    meta = json.loads((target / "plaudit.json").read_text())
    meta["base"] = str(base)
    (target / "plaudit.json").write_text(json.dumps(meta))
    return target


def test_adapter_naming_missing_layers_is_a_load_error(trained, tiny_base, tmp_path):
    """An adapter for blocks 0-1 on a 4-block base (whose last two blocks are 2-3) is refused clearly."""
    base = other_base(tmp_path / "four-layers", tiny_base, hidden_size=32, layers=4)
    with pytest.raises(ModelLoadError, match="does not match its base"):
        load_scorer(rebased_copy(trained[0], tmp_path / "rebased", base))


def test_adapter_for_a_base_of_another_width_is_a_load_error(trained, tiny_base, tmp_path):
    base = other_base(tmp_path / "wider", tiny_base, hidden_size=48, layers=2)
    with pytest.raises(ModelLoadError):
        load_scorer(rebased_copy(trained[0], tmp_path / "rebased", base))


def test_missing_adapter_file_is_a_load_error(trained, tmp_path):
    import shutil

    folder = shutil.copytree(trained[0], tmp_path / "no-adapter")
    (folder / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ModelLoadError):
        load_scorer(folder)


# Rewards of the packaged default BT model on these items, measured when it was retrained
# through the Trainer and PEFT (2026-12-01): loading and encoding must keep serving them.
# (The folder it replaced, converted from plaudit's old adapter format, gave 1.554, -0.188,
# 1.224, 1.496 both before and after the conversion.)
SHIPPED = [1.733390966151102, -1.2352732846662908, 0.9234855459226785, 1.2684717669493342]
ADD_PROMPT = "Write a Python function `add(a, b)` that returns the sum."
ADD_RESPONSES = ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return a - b",
                 "I don't know.", "return a+b"]


def test_the_packaged_default_scores_as_when_it_was_trained():
    from plaudit.service.config import DEFAULT_MODEL_DIR

    rewards = load_scorer(DEFAULT_MODEL_DIR).score([Item(prompt=ADD_PROMPT, response=r) for r in ADD_RESPONSES]).rewards
    assert rewards == pytest.approx(SHIPPED, abs=1e-5)


def test_convert_adapter_rewrites_an_old_folder_with_the_same_rewards(trained, tmp_path, capsys):
    """An adapter in plaudit's pre-PEFT format (`X.lora_a`, `X.lora_b`, heads) is refused with the
    command that converts it; converted, it scores as the PEFT folder it was made from."""
    import shutil

    from safetensors.torch import load_file, save_file

    from plaudit.rewardmodels.lora import LEGACY_ADAPTER
    from plaudit.service.cli import main

    out, _, _, pairs = trained
    old = shutil.copytree(out, tmp_path / "old")
    state = {k.removeprefix("base_model.model.").replace(".lora_A.weight", ".lora_a").replace(".lora_B.weight",
                                                                                               ".lora_b"): v
             for k, v in load_file(str(old / ADAPTER_WEIGHTS)).items()}
    save_file(state, str(old / LEGACY_ADAPTER))
    (old / ADAPTER_WEIGHTS).unlink()
    (old / ADAPTER_CONFIG).unlink()
    with pytest.raises(ModelLoadError, match="plaudit convert-adapter"):
        load_scorer(old)
    main(["convert-adapter", str(old)])
    assert '"written"' in capsys.readouterr().out and not (old / LEGACY_ADAPTER).exists()
    items = [Item(prompt=p.prompt, response=r) for p in pairs[:6] for r in (p.chosen, p.rejected)]
    assert load_scorer(old).score(items).rewards == pytest.approx(load_scorer(out).score(items).rewards, abs=1e-6)


def test_export_is_a_plain_checkpoint_that_transformers_scores_as_plaudit(trained, tmp_path, capsys):
    """`plaudit export`: plain transformers (AutoModelForSequenceClassification, its own
    pooling, right-padded batch) gives plaudit's raw rewards; plaudit serves the export with
    the same normalised rewards as the adapter folder."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from plaudit.service.cli import main

    out, _, _, pairs = trained
    main(["export", "--model", str(out), "--out", str(tmp_path / "plain")])
    assert '"architecture": "LlamaForSequenceClassification"' in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")
    items = [Item(prompt=p.prompt, response=r) for p in pairs[:6] for r in (p.chosen, p.rejected)]
    def messages(prompt):
        return [m.model_dump() for m in prompt] if isinstance(prompt, list) else [{"role": "user", "content": prompt}]

    texts = [tokenizer.apply_chat_template(messages(it.prompt) + [{"role": "assistant", "content": it.response}],
                                           tokenize=False) for it in items]
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        plain = model(**batch).logits[:, 0].tolist()
    served = load_scorer(out)
    scored = served.score(items)
    raw = [r * served.std + served.mean for r in scored.rewards]
    fitting = [i for i, cut in enumerate(scored.truncated) if not cut]  # plaudit cut the others to max_length
    assert len(fitting) >= 8 and [raw[i] for i in fitting] == pytest.approx([plain[i] for i in fitting], abs=1e-4)
    assert load_scorer(tmp_path / "plain").score(items).rewards == pytest.approx(served.score(items).rewards,
                                                                                 abs=1e-4)


@pytest.mark.slow
def test_the_default_exports_to_a_checkpoint_transformers_scores_as_plaudit(tmp_path, capsys):
    """The packaged SmolLM2 model, whose pad token is its end-of-turn token: exported with a
    spare pad token, plain transformers reads the same last token as plaudit, in a padded batch
    (this checks the pooling of the exported model against plaudit's `last_token_rewards`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from plaudit.service.cli import main
    from plaudit.service.config import DEFAULT_MODEL_DIR

    main(["export", "--model", "default", "--out", str(tmp_path / "plain")])
    assert '"pad_token": "<|endoftext|>"' in capsys.readouterr().out
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "plain")
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": ADD_PROMPT},
                                            {"role": "assistant", "content": r}], tokenize=False)
             for r in ADD_RESPONSES]
    with torch.no_grad():
        plain = model(**tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")).logits[:, 0]
    served = load_scorer(DEFAULT_MODEL_DIR)
    raw = [r * served.std + served.mean for r in SHIPPED]
    assert plain.tolist() == pytest.approx(raw, abs=1e-4)
    # Sequences that end on the end-of-turn token itself (a trainer's query): transformers'
    # pooling reads the same token as plaudit's only because the export pads with another token.
    batch = tokenizer([t.rstrip("\n") for t in texts], add_special_tokens=False, padding=True, return_tensors="pt")
    with torch.no_grad():
        pooled = model(**batch).logits[:, 0]
        at_last_token = last_token_rewards(model, batch["input_ids"], batch["attention_mask"])
        assert pooled.tolist() == pytest.approx(at_last_token.tolist(), abs=1e-4)
        model.config.pad_token_id = tokenizer.eos_token_id  # as the backbone ships: pad == <|im_end|>
        assert (model(**batch).logits[:, 0] - at_last_token).abs().max() > 1e-2


def test_normalisation_is_measured_with_the_final_model(trained):
    """The stored mean and std are those of the trained model's raw rewards on its training
    pairs (not of rewards logged while the weights were still moving): served, the training
    pairs' rewards have mean 0 and standard deviation 1."""
    import statistics

    out, _, _, pairs = trained
    meta = json.loads((out / "plaudit.json").read_text())
    assert meta["normalization"]["source"] == f"raw rewards of the {len(pairs)} training pairs, final model"
    rewards = load_scorer(out).score([Item(prompt=p.prompt, response=r) for p in pairs
                                      for r in (p.chosen, p.rejected)]).rewards
    assert statistics.fmean(rewards) == pytest.approx(0.0, abs=1e-4)
    assert statistics.pstdev(rewards) == pytest.approx(1.0, abs=1e-4)


def test_a_run_killed_midway_resumes_to_the_uninterrupted_result(tiny_base, tmp_path, capsys):
    """kill -9 after a checkpoint, then the same command with --resume: the final model equals
    an uninterrupted run's (rewards on held-out items to 1e-4), and the rerun says its step."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from plaudit.service.cli import main
    from plaudit.training.loop import CHECKPOINTS, last_checkpoint

    data = tmp_path / "pairs.jsonl"
    write_pairs(data, marker_pairs(24, seed=100))
    command = ["train", "bt", "--data", str(data), "--base", str(tiny_base), "--num-train-epochs", "6", "--learning-rate", "5e-3",
               "--per-device-train-batch-size", "4", "--lora-layers", "2", "--max-length", "256", "--device", "cpu",
               "--save-steps", "8"]
    main([*command, "--out", str(tmp_path / "straight")])
    killed = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, "-m", "plaudit", *command, "--out", str(killed)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while last_checkpoint(killed / CHECKPOINTS) is None and run.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    assert not (killed / "plaudit.json").exists(), "the run finished before it could be killed"
    step = int(last_checkpoint(killed / CHECKPOINTS).name.rpartition("-")[2])
    assert 0 < step < 36
    capsys.readouterr()
    main([*command, "--out", str(killed), "--resume"])
    assert f'"from_step": {step}' in capsys.readouterr().out
    items = [Item(prompt=p.prompt, response=r) for p in marker_pairs(12, seed=7) for r in (p.chosen, p.rejected)]
    straight, resumed = load_scorer(tmp_path / "straight"), load_scorer(killed)
    assert resumed.score(items).rewards == pytest.approx(straight.score(items).rewards, abs=1e-4)
    assert resumed.metadata["training"]["steps"] == straight.metadata["training"]["steps"] == 36


@pytest.mark.parametrize("launcher", [
    ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"],
    ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
     "--mixed_precision", "no", "--dynamo_backend", "no"]], ids=["torchrun", "accelerate-launch"])
def test_two_processes_train_as_one_with_the_same_global_batch(tiny_base, tmp_path, launcher):
    """`torchrun --nproc-per-node 2 -m plaudit train bt` (or `accelerate launch --multi_gpu`, which
    runs torchrun) on CPU (gloo), 2 pairs a process, against one process with 4 pairs a step:
    the same batches in the same order, gradients averaged, so the same model up to the order of
    float additions (measured 8.8e-5 and 8.6e-7; allowed 1e-3)."""
    import subprocess
    import sys

    from plaudit.service.cli import main

    data = tmp_path / "pairs.jsonl"
    write_pairs(data, marker_pairs(24, seed=100))
    command = ["train", "bt", "--data", str(data), "--base", str(tiny_base), "--num-train-epochs", "2", "--learning-rate", "5e-3",
               "--lora-layers", "2", "--max-length", "256", "--device", "cpu"]
    main([*command, "--per-device-train-batch-size", "4", "--out", str(tmp_path / "one")])
    two = subprocess.run([sys.executable, *launcher, "-m", "plaudit",
                          *command, "--per-device-train-batch-size", "2", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    items = [Item(prompt=p.prompt, response=r) for p in marker_pairs(12, seed=7) for r in (p.chosen, p.rejected)]
    one, both = load_scorer(tmp_path / "one"), load_scorer(tmp_path / "two")
    assert both.metadata["training"]["steps"] == one.metadata["training"]["steps"] == 12
    assert both.score(items).rewards == pytest.approx(one.score(items).rewards, abs=1e-3)


@pytest.mark.parametrize("variable, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_is_refused_before_the_base_loads(tiny_base, tmp_path, monkeypatch, variable, name):
    """`accelerate launch` with an FSDP or DeepSpeed config sets these variables. Sharded weights
    would make the first process save and normalise from its shard, so plaudit refuses with
    the data-parallel launch to use, before loading a base (which may be an 8B)."""
    import transformers

    from plaudit.service.cli import main
    from plaudit.training.loop import refuse_sharding

    def loaded(*args, **kwargs):
        raise AssertionError("the base was loaded before the launch was refused")

    data = tmp_path / "pairs.jsonl"
    write_pairs(data, marker_pairs(4, seed=100))
    monkeypatch.setenv(variable, "true")
    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", loaded)
    with pytest.raises(SystemExit) as refused:
        main(["train", "bt", "--data", str(data), "--base", str(tiny_base), "--device", "cpu",
              "--out", str(tmp_path / "out")])
    assert f"launcher: {name} is not supported" in str(refused.value) and "MULTI_GPU" in str(refused.value)
    assert not (tmp_path / "out").exists()
    monkeypatch.setenv(variable, "false")  # what accelerate writes when its config does not shard
    refuse_sharding()


def test_accelerate_launch_with_fsdp_is_refused(tiny_base, tmp_path):
    """The real launcher: `accelerate launch --use_fsdp` (2 processes) ends non-zero with plaudit's
    reason (from the first process to refuse; the launcher then stops the other), not with
    accelerate's own error or a hang, and writes no model."""
    import subprocess
    import sys

    data = tmp_path / "pairs.jsonl"
    write_pairs(data, marker_pairs(4, seed=100))
    run = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--num_processes", "2",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "plaudit", "train", "bt", "--data", str(data), "--base", str(tiny_base),
                          "--device", "cpu", "--out", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode != 0
    assert "plaudit: error: launcher: FSDP is not supported" in run.stderr, run.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_held_out_data_is_evaluated_during_training(tiny_base, tmp_path, capsys):
    """--eval-data: the held-out pairs are scored every --eval-steps and at the end; the rows say
    so, and the last evaluation (accuracy on pairs never trained on) is in the summary."""
    from plaudit.service.cli import main

    data, heldout = tmp_path / "pairs.jsonl", tmp_path / "heldout.jsonl"
    write_pairs(data, marker_pairs(24, seed=100))
    write_pairs(heldout, marker_pairs(12, seed=999))
    main(["train", "bt", "--data", str(data), "--eval-data", str(heldout), "--eval-steps", "5", "--base",
          str(tiny_base), "--num-train-epochs", "4", "--learning-rate", "5e-3", "--lora-layers", "2",
          "--max-length", "256", "--device", "cpu", "--out", str(tmp_path / "out")])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    evals = [r for r in rows if r.get("eval") is True]
    assert [r["step"] for r in evals] == [5, 10, 15, 20, 24] and all(r["examples"] == 12 for r in evals)
    assert evals[-1]["loss"] < evals[0]["loss"] and evals[-1]["accuracy"] >= 0.75
    assert rows[-1]["eval"] == {k: evals[-1][k] for k in ("loss", "accuracy", "margin")}
