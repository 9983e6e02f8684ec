"""Process reward models: a score per step, from one forward pass per trace.

The trace is the prompt (as the model sees it before a response) followed by each step
plus the model's separator, every step tokenised on its own so that its end is exact.
A token-classification head with two classes (TRL's PRM layout: 1 = good step) is read
at the last token of each step, i.e. at its separator; the step reward is P(good).
However many steps a trace has, it costs one forward pass.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from .base import AGGREGATES, InputError, Item, ModelLoadError, Prompt, Scores, StepScores, Steps
from .bt import ClassifierScorer
from .encoding import Tokens, _fit, _ids, fp32_linear, prompt_text

DEFAULT_SEPARATOR = "\n"


def split_steps(response: str, separator: str) -> list[str]:
    """A response cut into steps at the separator; a trailing separator ends the last step."""
    if not separator:
        raise InputError("separator", "must not be empty")
    steps = response.split(separator)
    return steps[:-1] if len(steps) > 1 and steps[-1] == "" else steps


def encode_steps(tokenizer: Any, prompt: Prompt, steps: Sequence[str], separator: str, max_length: int,
                 field: str = "steps") -> tuple[Tokens, list[int], bool]:
    """Token ids of prompt + steps, the position of each step's last token, and whether the
    prompt was cut. The prompt is cut from the left; steps are never dropped: traces whose
    steps alone exceed `max_length` are refused, naming the field."""
    chunks = [_ids(tokenizer, step + separator) for step in steps]
    for i, chunk in enumerate(chunks):
        if not chunk:
            raise InputError(f"{field}[{i}]", "an empty step with an empty separator has no token to read")
    body = [t for chunk in chunks for t in chunk]
    if len(body) > max_length:
        raise InputError(field, f"the steps take {len(body)} tokens, over this model's max_length {max_length}")
    head, _, cut = _fit(_ids(tokenizer, prompt_text(tokenizer, prompt)), body, max_length)
    positions, end = [], len(head)
    for chunk in chunks:
        end += len(chunk)
        positions.append(end - 1)
    return Tokens(head + body, len(head)), positions, cut


class ProcessRewardModel(ClassifierScorer):
    kind = "prm"
    neutral_reward = 0.5  # mean P(win) / P(good step)
    per_token = True
    defaults = {"separator": DEFAULT_SEPARATOR, "aggregate": "min"}

    def p_good(self, reward: float | None) -> float | None:
        """A PRM's reward is an aggregate of P(good step): already a probability."""
        return reward

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.separator, self.aggregate = self.metadata["separator"], self.metadata["aggregate"]
        if self.aggregate not in AGGREGATES:
            raise ModelLoadError(f"{self.name}: aggregate {self.aggregate!r} is not one of {sorted(AGGREGATES)}")

    def rows(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """P(class 1 = good step) at every token; the caller reads it at the step ends."""
        if getattr(self.model, "score", None) is not None:
            return self.head(self.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, mask)
        return self.model(input_ids=ids, attention_mask=mask).logits.float().softmax(dim=-1)[..., 1]

    def head(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A decoder's `.score` head, in fp32, at every token."""
        return fp32_linear(hidden, self.model.score.weight, self.model.score.bias).softmax(dim=-1)[..., 1]

    def _step_scores(self, traces: Sequence[Steps], fields: Sequence[str]) -> list[StepScores]:
        encoded = [encode_steps(self.tokenizer, t.prompt, t.steps, self.separator, self.max_length, field)
                   for t, field in zip(traces, fields)]
        rows = self.forward_within_limit([ids for ids, _, _ in encoded], fields[0] if len(fields) == 1 else "traces")
        return [StepScores(row[positions].tolist(), cut) for row, (_, positions, cut) in zip(rows, encoded)]

    def score_steps(self, traces: Sequence[Steps]) -> list[StepScores]:
        fields = ["steps"] if len(traces) == 1 else [f"traces[{i}].steps" for i in range(len(traces))]
        return self._step_scores(traces, fields)

    def score(self, items: Sequence[Item]) -> Scores:
        """The response split at the model's separator, its step rewards aggregated the
        model's way (`aggregate` in its metadata, `min` unless trained otherwise)."""
        # model_construct: a Templated prompt (a trainer's rendering) must stay what it is
        traces = [Steps.model_construct(prompt=it.prompt, steps=split_steps(it.response, self.separator))
                  for it in items]
        scored = self._step_scores(traces, [f"items[{i}].response" for i in range(len(items))])
        combine = AGGREGATES[self.aggregate]
        return Scores([combine(s.step_rewards) for s in scored], [s.truncated for s in scored])
