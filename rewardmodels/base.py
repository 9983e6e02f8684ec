"""The scorer interface: every reward-model family and judge answers the same questions.

A family implements `score`; `compare` and `rank` derive from it unless the family
knows better (a GPM compares through embeddings, a pairwise judge compares directly).
The service, the CLI and the Python API only ever call these methods.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from pydantic import BaseModel, ConfigDict, Field

from plaudit.schemas import Item, Message, Pair, PairVerdict, Prompt  # noqa: F401  the scorer interface speaks the API's types


class Steps(BaseModel):
    """A reasoning trace (or a program, one line a step) to score step by step."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    steps: list[str] = Field(min_length=1)


class Templated(str):
    """A prompt already rendered by a chat template, generation prompt included (what a
    trainer sends to /get_reward): read as is, never templated again."""


# What may close a trainer's query when a scorer has no tokenizer to ask (judges): the
# end-of-turn, eos and pad markers of common chat templates.
KNOWN_END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "<end_of_turn>", "<|end|>",
                     "</s>", "<eos>", "<pad>", "<|pad|>", "<|finetune_right_pad_id|>")


# What opens the assistant's turn in common chat templates (ChatML, Llama 3, Gemma, Phi): where
# a rendered conversation is cut into prompt and response when a scorer has no template of its own.
KNOWN_TURN_STARTS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     "<start_of_turn>model\n", "<|assistant|>\n")


class InputError(ValueError):
    """Bad user input; `field` names where it is, so the API can answer 4xx with it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class LimitExceeded(InputError):
    """The request is over a configured size limit (HTTP 413)."""


class UnsupportedOperation(InputError):
    """The chosen model's kind cannot answer this question (e.g. /steps on a BT model)."""


class Unavailable(RuntimeError):
    """Try again later: the service answers 503 with Retry-After, and clients retry. The class
    says how long to wait and how its metrics name it."""

    retry_after_s: ClassVar[int] = 1
    outcome: ClassVar[str] = "overloaded"  # plaudit_requests' `outcome` label
    kind: ClassVar[str] = "Overloaded"  # plaudit_errors' `kind` label


class ModelLoadError(RuntimeError):
    """A model directory cannot be served as declared; raised at start-up, never per request."""


@dataclass(frozen=True)
class LoadContext:
    """What every kind is loaded with, `Scorer.load(context)`: one contract whatever the kind.
    Families with weights read `path` and the device options; kinds without read `settings`
    (their `Settings` model validates them); a composite looks its parts up with `lookup`."""

    name: str | None = None
    path: Any = None  # the model folder, as configured (None: a kind without weights)
    device: str = "auto"
    dtype: str = "auto"
    max_length: int | None = None
    batching: Any = None  # batch_limits.Batching; None: the defaults
    settings: dict[str, Any] = field(default_factory=dict)
    lookup: Any = None  # (name) -> Scorer: the pool's configured models


@dataclass
class Batcher:
    """A forward batcher a scorer runs, as the service's metrics watch it."""

    name: str  # the `model` label of its metrics: the scorer's name, or an ensemble member's
    observers: list  # called with (sequences, queue waits) after each merged forward call
    prefix_stats: Any = None  # () -> its prompt cache's counters, where it shares prompts


@dataclass
class Scores:
    rewards: list[float | None]  # None: a judge could not read its own answer (unscored, never the worst)
    truncated: list[bool]
    spread: list[float] | None = None  # an ensemble's disagreement (std of its members' rewards)
    unscored: list[int] | None = None  # a judge's unreadable answers per item
    errors: list[str | None] | None = None  # a judge's backend failure per item (its reward is None)
    details: list[dict[str, Any]] | None = None  # verifiable kinds: how each reward came about
    logs: dict[str, list[float]] | None = None  # per-item numbers a trainer logs (/get_reward's extra_logs)


@dataclass
class Comparison:
    probabilities: list[float | None]
    margins: list[float | None]
    truncated: list[bool]
    errors: list[str | None] | None = None  # a judge's backend failure per pair (its probability is None)


def combine(as_given: float | None, swapped: float | None) -> PairVerdict:
    """One verdict on a pair from its two readings, each P(a beats b): with a shown first, and
    with b shown first. When both are read and they disagree the verdict is a tie (0.5) and
    the pair counts as inconsistent."""
    read = [p for p in (as_given, swapped) if p is not None]
    if len(read) < 2:
        return PairVerdict(probability=read[0] if read else None, orders=[as_given, swapped], consistent=None)
    consistent = (as_given - 0.5) * (swapped - 0.5) > 0
    return PairVerdict(probability=sum(read) / 2 if consistent else 0.5, orders=[as_given, swapped],
                       consistent=consistent)


@dataclass
class Ranking:
    rewards: list[float | None]
    order: list[int]  # best first; unscored responses last
    truncated: list[bool]
    matrix: list[list[float | None]]  # P(i beats j)


@dataclass
class StepScores:
    step_rewards: list[float]  # P(step is good), one per step
    truncated: bool  # the prompt was cut from the left to fit


AGGREGATES = {  # how a trace's step rewards become one reward; the caller chooses
    "min": min,
    "mean": lambda r: sum(r) / len(r),
    "prod": math.prod,
    "last": lambda r: r[-1],
}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def best_first(rewards: Sequence[float | None]) -> list[int]:
    """Indices by reward, highest first; unscored (None) last, in their given order."""
    return sorted(range(len(rewards)), key=lambda i: (rewards[i] is None, -(rewards[i] or 0.0)))


def validated_settings(model: type[BaseModel], settings: dict[str, Any] | None, name: str) -> BaseModel:
    """`settings` as `model`, or a ModelLoadError naming the field (`NAME: settings.FIELD: why`)."""
    from pydantic import ValidationError

    try:
        return model.model_validate(settings or {})
    except ValidationError as e:
        error = e.errors()[0]
        where = ".".join(map(str, error["loc"]))
        raise ModelLoadError(f"{name}: settings{'.' + where if where else ''}: {error['msg']}") from None


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


class Scorer(ABC):
    """Anything that turns responses into rewards, registered by `kind`."""

    kind: ClassVar[str]
    # What a kind without weights is configured with (validated at config load and at load);
    # None for the families that read a model folder.
    Settings: ClassVar[type[BaseModel] | None] = None
    # True where /score's reward is a preference against the other responses to the same prompt
    # in the call (GPM, code preference models, a pairwise judge), not a number per response.
    relative: ClassVar[bool] = False
    # The transformers tokenizer of families that read tokens (None for judges and rules): the
    # pooling API decodes token-id inputs and counts usage with it.
    tokenizer: Any = None
    # The reward that says nothing either way: what a client gives an item it could not have
    # scored in time, and /get_reward an unscored judge answer. A normalised reward's mean by
    # default; 0.5 for rewards that are probabilities.
    neutral_reward: ClassVar[float] = 0.0

    def __init__(self, name: str, metadata: dict[str, Any]):
        self.name = name
        self.metadata = metadata

    @classmethod
    def load(cls, context: LoadContext) -> "Scorer":
        """The scorer the context describes; a ModelLoadError names what is wrong."""
        raise ModelLoadError(f"{context.name}: the {cls.kind} kind is not loaded from a config")

    @classmethod
    def settings_from(cls, context: LoadContext) -> BaseModel:
        """The context's settings validated against `Settings`, or a ModelLoadError naming the field."""
        return validated_settings(cls.Settings, context.settings, context.name or cls.kind)

    @property
    def temperature(self) -> float:
        """Fitted by `plaudit calibrate` on held-out pairs and stored in the metadata; 1 when not."""
        return float(self.metadata.get("calibration", {}).get("temperature", 1.0))

    def p_good(self, reward: float | None) -> float | None:
        """P(this response is good) as the model sees it, for calibration against feedback:
        sigmoid(reward / temperature) for a reward model; families on a 0..1 scale override."""
        return self.probability(reward)

    def probability(self, margin: float | None) -> float | None:
        """P(a beats b) from a preference logit, calibrated: sigmoid(margin / temperature)."""
        return None if margin is None else sigmoid(margin / self.temperature)

    @abstractmethod
    def score(self, items: Sequence[Item]) -> Scores:
        """One reward per (prompt, response), independent of what else is in the call."""

    # ---- trainer-rendered queries (/get_reward; the rule is in queries.py) ----

    def end_markers(self) -> Sequence[str]:
        """What may close a trainer's query: the end-of-turn, eos and pad markers."""
        return KNOWN_END_MARKERS

    def pad_markers(self) -> Sequence[str]:
        """What a trainer may have left-padded a query with."""
        return ()

    def turn_starts(self) -> Sequence[str]:
        """What opens the assistant's turn in a rendered conversation: the pooling API cuts a
        templated `input` there into its prompt and the response."""
        return KNOWN_TURN_STARTS

    def query_prompt(self, templated: str) -> Prompt:
        """A trainer's templated prompt as this scorer's items take it."""
        return Templated(templated)

    def score_rendered(self, texts: Sequence[str]) -> Scores:
        """Whole rendered conversations, their end markers removed (queries sent without prompts)."""
        raise UnsupportedOperation("prompts", f"model {self.name!r} ({self.kind}) needs `prompts` with the queries "
                                              "to tell each response apart")

    def compare(self, pairs: Sequence[Pair]) -> Comparison:
        """P(a beats b) = sigmoid(r_a - r_b), from one scoring call over all responses."""
        items = [Item(prompt=p.prompt, response=p.a, reference=p.reference) for p in pairs]
        items += [Item(prompt=p.prompt, response=p.b, reference=p.reference) for p in pairs]
        scored = self.score(items)
        n = len(pairs)
        margins = [_difference(scored.rewards[i], scored.rewards[n + i]) for i in range(n)]
        truncated = [scored.truncated[i] or scored.truncated[n + i] for i in range(n)]
        errors = None if scored.errors is None else [scored.errors[i] or scored.errors[n + i] for i in range(n)]
        return Comparison([self.probability(m) for m in margins], margins, truncated, errors)

    def verdicts(self, pairs: Sequence[Pair]) -> list[PairVerdict]:
        """Each pair read in both orders (what evaluation asks, to see position bias). A scorer
        that reads each response alone cannot favour a position: one reading serves both. A
        relative one (it reads the pair together) is asked again with the pair swapped."""
        given = self.compare(pairs)
        if not self.relative:
            swapped_p = given.probabilities
        else:
            swapped = self.compare([p.model_copy(update={"a": p.b, "b": p.a}) for p in pairs])
            swapped_p = [None if p is None else 1.0 - p for p in swapped.probabilities]
            given.errors = [a or b for a, b in zip(given.errors or [None] * len(pairs),
                                                   swapped.errors or [None] * len(pairs))]
        errors = given.errors or [None] * len(pairs)
        return [combine(a, b).model_copy(update={"error": e}) for a, b, e in zip(given.probabilities, swapped_p, errors)]

    def rank(self, prompt: Prompt, responses: Sequence[str], reference: Any = None) -> Ranking:
        """Best-of-N: rewards for every candidate and their order, best first (`reference`: the
        prompt's tests or expected answer, for verifiable kinds)."""
        scored = self.score([Item(prompt=prompt, response=r, reference=reference) for r in responses])
        r = scored.rewards
        matrix = [[self.probability(_difference(a, b)) for b in r] for a in r]
        return Ranking(r, best_first(r), scored.truncated, matrix)

    def score_steps(self, traces: Sequence[Steps]) -> list[StepScores]:
        """A reward per step of each trace (process reward models)."""
        raise UnsupportedOperation("model", f"model {self.name!r} ({self.kind}) has no per-step head; "
                                            "serve a process reward model (kind 'prm') for /steps")

    def stats(self) -> dict[str, Any]:
        """Serving counters worth showing in `GET /models` (none by default)."""
        return {}

    def batchers(self) -> list[Batcher]:
        """The forward batchers this scorer runs (none for judges and rules), its members'
        included, so that every forward call is in the metrics."""
        return []

    def close(self) -> None:
        """Stop the processes this scorer started (the math kind's workers; none by default)."""

    def limit_tokens(self, max_request_tokens: int) -> None:
        """Refuse (LimitExceeded) a request that would make the model read more tokens than this;
        families that read no tokens themselves (judges) have nothing to limit."""
