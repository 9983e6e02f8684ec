"""Train a code preference model (CodeFavor's classification form): LoRA on the last blocks of
a causal LM, cross-entropy over its logits for "A" and "B" at the last position of
`[INSTRUCTION] i [CODE_A] a [CODE_B] b [CRITERIA] c`. Data is classification records, or TRL
preference pairs, each read in both orders so that position carries no signal."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from plaudit.rewardmodels.codepref import DEFAULT_CRITERION, label_ids, label_logits, pair_prompt
from plaudit.rewardmodels.encoding import encode_text, pad, prompt_text

from .data import CodePrefRecord
from .loop import TrainConfig, fit, prepare, save_adapter

log = logging.getLogger(__name__)


@dataclass
class CodePrefConfig(TrainConfig):
    pass


def train_codepref(records: list[CodePrefRecord], out: str | Path, config: CodePrefConfig,
                   on_log: Callable[[dict], None] = lambda row: log.info("%s", row), data: str = "",
                   heldout: list[CodePrefRecord] = ()) -> dict:
    from transformers import AutoModelForCausalLM

    model, tokenizer, pad_id, adapter = prepare(
        lambda base: AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), config, ())
    labels = label_ids(tokenizer)

    def encode(r: CodePrefRecord) -> tuple[list[int], int]:
        text = prompt_text(tokenizer, pair_prompt(r.instruction, r.code_a, r.code_b, r.criterion))
        return encode_text(tokenizer, text, config.max_length)[0], "AB".index(r.answer)

    def step(model, batch, device):
        logits = label_logits(model, labels, *pad([ids for ids, _ in batch], pad_id, device)).float()
        target = torch.tensor([answer for _, answer in batch], device=device)
        chosen = logits.gather(1, target[:, None])[:, 0]
        margin = chosen - logits.gather(1, (1 - target)[:, None])[:, 0]
        return F.cross_entropy(logits, target), margin, margin

    summary = fit([encode(r) for r in records], step, model, config, out, on_log, data, [encode(r) for r in heldout])
    save_adapter(adapter, out, config, {"kind": "codepref", "labels": ["A", "B"],
                                          "default_criterion": DEFAULT_CRITERION, "training": summary})
    return summary
