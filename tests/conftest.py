"""Tiny models built from a config, with a tokenizer trained in milliseconds, for fast tests.

The real packaged model is exercised by the tests marked `slow`.
"""
from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from hypothesis import settings

os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

EXIT_GRACE_S = 60


def pytest_sessionfinish(session, exitstatus):
    """At exit Python joins every thread-pool thread, so one that a test left blocked would
    keep the run alive until CI's time limit (it did: judges/hub.py's calls on a closed hub).
    If the process is still here EXIT_GRACE_S after the session, every thread's stack is
    printed, to find the leak, and the run ends with the session's own status."""
    def watchdog() -> None:
        time.sleep(EXIT_GRACE_S)
        sys.stdout.flush()
        sys.stderr.write(f"\nconftest: still running {EXIT_GRACE_S} s after the session ended; "
                         "a thread left blocked by a test (stacks below):\n")
        faulthandler.dump_traceback(all_threads=True)
        sys.stderr.flush()
        os._exit(int(exitstatus))

    threading.Thread(target=watchdog, name="exit-watchdog", daemon=True).start()

# Random testing (hypothesis, and schemathesis through it) passes or fails on the code under
# CI=true: the same examples every run. Elsewhere each run draws new ones (`make fuzz`), and a
# failure prints the blob that reproduces it.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("random", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in ("1", "true", "yes") else "random")

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["def add(a, b):\n    return a + b\n", "Write a function that adds two numbers.",
          "The quick brown fox jumps over the lazy dog.", "user assistant system hello world 0123456789",
          "for i in range(n): total += i * 2 - 1", "if x < y and not z: return None"] * 20


def make_tokenizer(chat_template: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<pad>", "<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=special, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if not chat_template:  # a plain tokenizer adds <s> ... </s> around a pair, like many encoders do
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>",
            special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<s>", eos_token="<|im_end|>" if chat_template else "</s>")
    if chat_template:
        fast.chat_template = CHATML
    return fast


def make_tiny(directory: Path, *, head: bool, chat_template: bool = True, num_labels: int = 1, seed: int = 0) -> Path:
    """A 2-layer Llama with random weights: a causal LM (a base to train on) or a classifier."""
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    torch.manual_seed(seed)
    tokenizer = make_tokenizer(chat_template)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, num_labels=num_labels, tie_word_embeddings=False)
    model = LlamaForSequenceClassification(config) if head else LlamaForCausalLM(config)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_training(config_class, base: Path, **overrides):
    """A trainer config for the tiny backbone: small, CPU, a learning rate that learns in seconds."""
    values = dict(base=str(base), num_train_epochs=4, learning_rate=5e-3, per_device_train_batch_size=4,
                  lora_layers=2, lora_rank=8, lora_alpha=16.0, max_length=256, seed=0, device="cpu")
    return config_class(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_bt(tmp_path_factory) -> Path:
    """A plain transformers checkpoint: a one-output sequence classifier with a chat template."""
    return make_tiny(tmp_path_factory.mktemp("tiny-bt"), head=True)


@pytest.fixture(scope="session")
def tiny_bt_plain(tmp_path_factory) -> Path:
    """The same without a chat template, so prompt and response are joined as a token pair."""
    return make_tiny(tmp_path_factory.mktemp("tiny-bt-plain"), head=True, chat_template=False)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A causal LM with no reward head: a backbone to train on, and not servable as is."""
    return make_tiny(tmp_path_factory.mktemp("tiny-base"), head=False)


@pytest.fixture(scope="session")
def tiny_gpm(tiny_base, tmp_path_factory) -> Path:
    """A GPM trained one epoch on the tiny base, once for the run (its weights mean nothing)."""
    from helpers import make_gpm

    return make_gpm(tiny_base, tmp_path_factory.mktemp("tiny-gpm"))


@pytest.fixture(scope="session")
def tiny_prm(tiny_bt, tmp_path_factory) -> Path:
    """The tiny classifier's backbone under a fresh two-class token head, once for the run."""
    from helpers import make_prm

    return make_prm(tiny_bt, tmp_path_factory.mktemp("tiny-prm"))


# The execution kind's settings where tests run it: small, quick limits.
EXECUTION_SETTINGS = {"wall_s": 6, "test_s": 3, "slots": 2, "memory_mb": 256, "compile_s": 8}


@pytest.fixture(scope="session")
def tiny_service(tiny_bt, tmp_path_factory) -> str:
    """One plaudit service for the whole run, for the modules that need nothing of their own:
    the tiny BT model (`tiny`, the default), and where the sandbox works the execution kind
    (`tests`), a composite of the two (`code`: tests, then BT as the tie-breaker) and the
    consensus kind (`agree`, in `tests`'s sandbox); no API keys. Its URL."""
    import yaml

    from plaudit.rewardmodels.sandbox import sandbox_unavailable
    from servers import running_service

    tmp = tmp_path_factory.mktemp("tiny-service")
    models: dict = {"tiny": {"path": str(tiny_bt)}}
    if sandbox_unavailable() is None:
        models["tests"] = {"kind": "execution", "settings": EXECUTION_SETTINGS}
        models["code"] = {"kind": "composite", "settings": {"parts": {
            "tests": {"model": "tests"},
            "preference": {"model": "tiny", "weight": 0.1, "transform": "sigmoid", "requires": {"tests": 1.0}}}}}
        models["agree"] = {"kind": "consensus", "settings": {"method": "codet", "execution": "tests"}}
    config = tmp / "plaudit.yaml"
    config.write_text(yaml.safe_dump({"models": models, "default_model": "tiny"}))
    with running_service(config, tmp, env={"PLAUDIT_API_KEYS": ""}) as (url, _):
        yield url
