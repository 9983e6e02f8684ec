"""Helpers several test modules share: small models made for a test, the data files the
batch commands read, scripted judges. Test modules import from here, never from each other."""
from __future__ import annotations

import json
import random
from pathlib import Path

import yaml

from conftest import tiny_training
from plaudit.files import write_jsonl
from plaudit.training.data import CodePrefRecord, PreferencePair
from servers import Fail

# A code preference task: the better program is the one with +.
ADD = "Write a function that adds two numbers."
GOOD, BAD = "def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n"


def make_gpm(base: Path, out: Path) -> Path:
    """A GPM with real adapters and a prompt head, trained one epoch: the weights need not mean anything."""
    from plaudit.training.experiments import cyclic_pairs
    from plaudit.training.gpm import GPMConfig, train_gpm

    train_gpm(cyclic_pairs(2), out, tiny_training(GPMConfig, base, num_train_epochs=1, dims=4, prompt_head=True, lora_layers=1),
              on_log=lambda row: None)
    return out


def make_prm(classifier: Path, out: Path) -> Path:
    """A PRM: the tiny classifier's backbone under a fresh two-class token head."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    AutoModelForTokenClassification.from_pretrained(classifier, num_labels=2,
                                                    ignore_mismatched_sizes=True).save_pretrained(out)
    AutoTokenizer.from_pretrained(classifier).save_pretrained(out)
    return out


def records(n: int = 16) -> list[CodePrefRecord]:
    """The better program is always the one with +; it sits in A and in B equally often."""
    return [CodePrefRecord(instruction=ADD, code_a=a, code_b=b, answer=answer)
            for _ in range(n // 2) for a, b, answer in ((GOOD, BAD, "A"), (BAD, GOOD, "B"))]


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Greet me."}]


def write_lines(path: Path, n: int) -> list[dict]:
    """n prompts with 1 to 4 responses each; every third prompt as chat messages."""
    lines = []
    for i in range(n):
        prompt = MESSAGES if i % 3 == 0 else f"Say hello {i}."
        responses = [f"hello {'there ' * j}{i}" for j in range(1 + i % 4)]
        lines.append({"id": f"p{i}", "prompt": prompt, **({"response": responses[0]} if len(responses) == 1
                                                          else {"responses": responses})})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return lines


def rating_llm(fail_on: set[str]):
    """A direct judge's LLM: rates a response by its length, fails with 500 on chosen responses."""
    def respond(messages):
        response = messages[-1]["content"].split("Response:\n", 1)[1].split("\n\nAnswer", 1)[0]
        if response in fail_on:
            raise Fail(500)
        return str(min(10, len(response)))
    return respond


def write_items(path: Path, n: int, bad: bool = False) -> Path:
    lines = [json.dumps({"id": f"item-{i}", "instruction": f"Say {i} words.", "response": "x" * (1 + i % 9)})
             for i in range(n)]
    if bad:
        lines[2:2] = ["{not json", json.dumps({"id": "no-response", "instruction": "Hi."})]
    path.write_text("\n".join(lines) + "\n")
    return path


def config_yaml(tmp_path: Path, tiny_bt: Path, url: str) -> Path:
    """The tiny model and a judge `rater` on the scripted LLM at `url`. Its failures are scripted
    answers, never waits, so the backend's timeout is generous: on a loaded machine (Ray's
    actors beside a training run) a 5 s one let every item of a run fail."""
    path = tmp_path / "plaudit.yaml"
    path.write_text(yaml.safe_dump({
        "models": {"tiny": {"path": str(tiny_bt)}}, "default_model": "tiny",
        "backends": {"fake": {"url": url, "timeout_s": 60, "max_retries": 1, "backoff_s": 0.01}},
        "default_backend": "fake", "judges": {"rater": {"method": "direct"}}}))
    return path


TASKS = ["add two numbers", "sum a list", "reverse a string", "count words", "find the max", "sort a list",
         "check a prime", "square a number"]
BODY = ["for i in range(n): total += i", "if x < y and not z: return None", "def add(a, b):", "return a + b",
        "The quick brown fox", "hello world", "0123456789", "the lazy dog"]


def marker_pairs(n: int, seed: int) -> list[PreferencePair]:
    """The learnable rule: chosen = rejected with the word "tested" inserted after its first word."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        first, rest = (rng.choice(BODY) + " " + rng.choice(BODY)).split(" ", 1)
        prompt = f"Write code to {rng.choice(TASKS)}."
        if rng.random() < 0.25:
            prompt = [{"role": "user", "content": prompt}]
        pairs.append(PreferencePair(prompt=prompt, chosen=f"{first} tested {rest}", rejected=f"{first} {rest}"))
    return pairs


def write_pairs(path, pairs: list[PreferencePair]) -> None:
    """Pairs as the training commands read them (TRL's JSONL)."""
    write_jsonl([p.model_dump() for p in pairs], path)
