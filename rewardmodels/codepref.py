"""Code preference models (CodeFavor): a causal LM reads an instruction, two programs and a
criterion, and prefers A or B by its logits for the tokens "A" and "B" at the last position.

The input is `prompts/codepref.md` as one user turn (chat template applied), the same in
training and serving. A comparison is read in both orders and averaged, so the position
of a program cannot decide for it. The model only compares: `/score` and `/rank` come
from comparisons of every pair of responses to one prompt (K(K-1) forward passes for K).
"""
from __future__ import annotations

import itertools
import string
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .base import Comparison, InputError, Item, ModelLoadError, Pair, Prompt, Ranking, Scores, best_first
from .batcher import BatchedScorer
from .encoding import Batching, _plain, encode_text, fp32_linear, last_token_states, prompt_text, query_messages
from .loading import resolve_path
from .lora import apply_adapter

TEMPLATE = string.Template((Path(__file__).resolve().parent / "prompts" / "codepref.md").read_text())
DEFAULT_CRITERION = "Which code better does what the instruction asks?"
LABELS = ("A", "B")


def pair_prompt(instruction: Prompt, code_a: str, code_b: str, criterion: str | None) -> str:
    """The user turn a code preference model reads."""
    return TEMPLATE.substitute(instruction=_plain(instruction), code_a=code_a, code_b=code_b,
                               criterion=criterion or DEFAULT_CRITERION).strip()


def label_ids(tokenizer: Any) -> list[int]:
    """The token ids of "A" and "B"; each must be one token, as the answer is one position."""
    ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in LABELS]
    if any(len(i) != 1 for i in ids):
        raise ModelLoadError(f"the tokenizer splits {LABELS} into {ids}: a code preference model answers in one token")
    return [i[0] for i in ids]


def label_logits(model: nn.Module, labels: list[int], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[logit of A, logit of B] at each row's last real token: only the LM head's two label
    rows run, on that position only, in fp32."""
    head = model.lm_head
    return fp32_linear(last_token_states(model.model, ids, mask), head.weight[labels],
                       None if head.bias is None else head.bias[labels])


class CodePreference(BatchedScorer):
    kind = "codepref"
    relative = True  # /score: mean preference against the other responses to the prompt
    neutral_reward = 0.5  # mean P(win)

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, metadata: dict[str, Any], device: torch.device,
                 max_length: int, batching: Batching):
        self.labels = label_ids(tokenizer)
        super().__init__(name, metadata, tokenizer, max_length,
                         lambda ids, mask: label_logits(model, self.labels, ids, mask), batching, device)
        self.model = model

    @classmethod
    def read(cls, directory: Path, metadata: dict[str, Any], dtype: torch.dtype) -> tuple[Any, Any, dict[str, Any]]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if "adapter" not in metadata:
            raise ModelLoadError(f"{directory}: a code preference folder is written by `plaudit train codepref`")
        base = resolve_path(metadata["base"])
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = apply_adapter(model, directory, metadata["base"], metadata["adapter"].get("base_shape"))
        return model, AutoTokenizer.from_pretrained(base), metadata

    def encode(self, instruction: Prompt, code_a: str, code_b: str, criterion: str | None) -> tuple[list[int], bool]:
        text = prompt_text(self.tokenizer, pair_prompt(instruction, code_a, code_b, criterion))
        return encode_text(self.tokenizer, text, self.max_length)

    def compare(self, pairs: Sequence[Pair]) -> Comparison:
        """P(a beats b) = sigmoid(margin), the margin being logit_A - logit_B read as given and
        swapped, averaged: swapping a and b gives exactly 1 - P."""
        encoded = [self.encode(p.prompt, *codes, p.criterion) for p in pairs for codes in ((p.a, p.b), (p.b, p.a))]
        rows = self.run(encoded, "pairs")
        margins = [float((rows[2 * i][0] - rows[2 * i][1]) + (rows[2 * i + 1][1] - rows[2 * i + 1][0])) / 2
                   for i in range(len(pairs))]
        truncated = [encoded[2 * i][1] or encoded[2 * i + 1][1] for i in range(len(pairs))]
        return Comparison([self.probability(m) for m in margins], margins, truncated)

    def _round_robin(self, prompt: Prompt, responses: Sequence[str]) -> tuple[list[list[float]], list[bool]]:
        """P(i beats j) for every pair of responses, and whether any comparison of i was cut."""
        k = len(responses)
        pairs = list(itertools.combinations(range(k), 2))
        result = self.compare([Pair(prompt=prompt, a=responses[i], b=responses[j]) for i, j in pairs])
        matrix = [[0.5] * k for _ in range(k)]
        cut = [False] * k
        for (i, j), p, c in zip(pairs, result.probabilities, result.truncated):
            matrix[i][j], matrix[j][i] = p, 1.0 - p
            cut[i] |= c
            cut[j] |= c
        return matrix, cut

    def rank(self, prompt: Prompt, responses: Sequence[str], reference: Any = None) -> Ranking:
        matrix, cut = self._round_robin(prompt, responses)
        rewards = [_mean_win(row, i) for i, row in enumerate(matrix)]
        return Ranking(rewards, best_first(rewards), cut, matrix)

    def query_prompt(self, templated: str) -> Prompt:
        """The instruction goes into the model's A/B prompt: read back into messages when it can be."""
        return query_messages(self.tokenizer, templated)

    def score(self, items: Sequence[Item]) -> Scores:
        """Mean P(win) against the other items with the same prompt in this call (two or more)."""
        groups: dict[str, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(Item(prompt=it.prompt, response="").model_dump_json(), []).append(i)
        rewards, truncated = [0.0] * len(items), [False] * len(items)
        for members in groups.values():
            if len(members) < 2:
                raise InputError(f"items[{members[0]}]", "a code preference model compares responses: each prompt "
                                 "needs two or more in the request")
            matrix, cut = self._round_robin(items[members[0]].prompt, [items[i].response for i in members])
            for row_index, i in enumerate(members):
                rewards[i], truncated[i] = _mean_win(matrix[row_index], row_index), cut[row_index]
        return Scores(rewards, truncated)


def _mean_win(row: list[float], own: int) -> float:
    others = [p for j, p in enumerate(row) if j != own]
    return sum(others) / len(others) if others else 0.5
