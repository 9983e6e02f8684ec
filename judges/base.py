"""The judge scorer: an LLM reads responses and answers questions about them.

A judge is a `Scorer` like any reward model, so `/score`, `/compare`, `/rank` and
`/get_reward` work with a judge's name; `judge()` returns the full detail (`POST /judge`,
`plaudit judge`). A method (TICK, pairwise, direct) is one module that implements
`judge()` and says how its verdicts become rewards.

An answer that cannot be read is retried (at temperature 1.0, as prometheus-eval does),
then left unscored and counted: never a NO, never the worst score.
"""
from __future__ import annotations

import asyncio
import math
import re
import string
from abc import abstractmethod
from collections import Counter
from pathlib import Path
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from plaudit.rewardmodels.base import Item, Prompt, Scorer, Scores
from plaudit.rewardmodels.queries import untemplated
from plaudit.schemas import JudgeRequest, JudgeResponse

from .backends import BackendError, BackendUnavailable, Completion
from .hub import BackendHub

PROMPTS = Path(__file__).resolve().parent / "prompts"
T = TypeVar("T")


# ---- reading an answer ----

_TURN = re.compile(r"^<!-- (system|user|assistant) -->\n", re.MULTILINE)


def render(template: str, **values: str) -> list[dict[str, str]]:
    """The judges' prompt file `prompts/<template>.md` as chat messages (see `render_file`)."""
    return render_file(PROMPTS / f"{template}.md", **values)


def render_file(path: Path, **values: str) -> list[dict[str, str]]:
    """A prompt template file as chat messages, its $names filled in. A file is one user
    message, or turns each headed by `<!-- role -->` (few-shot examples that a small model
    follows far better than a description)."""
    text = path.read_text()
    parts = _TURN.split(text)
    turns = list(zip(parts[1::2], parts[2::2])) if len(parts) > 1 else [("user", text)]
    return [{"role": role, "content": string.Template(content).substitute(values).strip()} for role, content in turns]


def prompt_text(prompt: Prompt) -> str:
    """An instruction as the judge reads it: the text, or the conversation one turn a paragraph."""
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0].content
    return "\n\n".join(f"{m.role}: {m.content}" for m in prompt)


def _first_word(text: str) -> str:
    match = re.search(r"[A-Za-z0-9]+", text)
    return match.group(0).upper() if match else ""


def read_choice(completion: Completion, labels: tuple[str, str]) -> float | None:
    """P(labels[0]) / (P(labels[0]) + P(labels[1])) from the first token's logprobs when both
    or either is among them, else 1 or 0 from the answer's first word; None when neither says."""
    if completion.top_logprobs:
        mass = dict.fromkeys(labels, 0.0)
        for token, logprob in completion.top_logprobs.items():
            word = token.strip().upper()
            if word in mass:
                mass[word] += math.exp(logprob)
        total = sum(mass.values())
        if total > 0:
            return mass[labels[0]] / total
    word = _first_word(completion.text)
    for label, p in zip(labels, (1.0, 0.0)):
        if word == label or (len(label) > 1 and word.startswith(label)):
            return p
    return None


# ---- the judge scorer ----

class Judge(Scorer):
    kind = "judge"
    method: ClassVar[str]
    labels: ClassVar[tuple[str, str]] = ("YES", "NO")
    neutral_reward: ClassVar[float]  # each method's midpoint; /get_reward's value for an unscored item (flagged)

    def __init__(self, name: str, hub: BackendHub, backend: str, *, logprobs: bool = True, parse_retries: int = 2,
                 **options: Any):
        self.hub = hub
        self.backend = hub.backend(backend)
        self.logprobs = logprobs
        self.parse_retries = parse_retries
        self.counts: Counter[str] = Counter()
        super().__init__(name, {"method": self.method, "backend": backend, "judge_model": hub.identity(backend),
                                "logprobs": logprobs, "parse_retries": parse_retries, **options})

    @abstractmethod
    async def judge(self, request: JudgeRequest) -> JudgeResponse:
        """The full verdict on the request's responses."""

    async def ask(self, messages: list[dict[str, str]], read: Callable[[Completion], T | None], *,
                  max_tokens: int | None = None, logprobs: bool = False, answer: bool = True) -> T | None:
        """`read` of the judge's answer; an unreadable answer is asked again at temperature 1.0,
        up to `parse_retries` times, then None (the caller leaves it unscored). Counted in
        `answers` and `unscored` unless `answer` is false (a checklist is not an answer)."""
        self.counts["answers"] += answer
        for attempt in range(1 + self.parse_retries):
            completion = await self.backend.chat(messages, max_tokens=max_tokens, logprobs=logprobs and self.logprobs,
                                                 temperature=None if attempt == 0 else 1.0)
            if (value := read(completion)) is not None:
                return value
            self.counts["parse_retries"] += attempt < self.parse_retries
        self.counts["unscored"] += answer
        return None

    async def choose(self, messages: list[dict[str, str]]) -> float | None:
        """P(labels[0]) against labels[1] for one question; None when unreadable."""
        return await self.ask(messages, lambda c: read_choice(c, self.labels), max_tokens=4, logprobs=True)

    @staticmethod
    async def settle(*awaitables: Any) -> list[Any]:
        """All of `awaitables` run to their end (none left running), then the first failure
        among them is raised."""
        done = await asyncio.gather(*awaitables, return_exceptions=True)
        for outcome in done:
            if isinstance(outcome, BaseException):
                raise outcome
        return done

    def backend_failed(self, error: BackendError) -> str:
        """An item's error: its backend failed after the retries. Counted, and the message."""
        self.counts["backend_errors"] += 1
        return str(error)

    def run(self, request: JudgeRequest) -> JudgeResponse:
        """`judge()` from synchronous code (the service's request threads, the CLI). When the
        backend failed for every response there is nothing to answer: BackendUnavailable (a 503)."""
        response = self.hub.run(self.judge(request))
        raise_if_all_failed([v.error for v in response.results])
        return response

    # The Scorer questions, answered through judge(): one call per prompt, prompts concurrently.
    def _judge_groups(self, items: Sequence[Item]) -> tuple[list[list[int]], list[JudgeResponse]]:
        groups: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(Item(prompt=item.prompt, response="").model_dump_json(), []).append(i)
        indices = list(groups.values())
        requests = [JudgeRequest(judge=self.name, instruction=items[g[0]].prompt,
                                 responses=[items[i].response for i in g]) for g in indices]
        return indices, self.hub.run(_gather(self.judge(r) for r in requests))

    def score(self, items: Sequence[Item]) -> Scores:
        rewards: list[float | None] = [None] * len(items)
        unscored = [0] * len(items)
        errors: list[str | None] = [None] * len(items)
        for group, response in zip(*self._judge_groups(items)):
            for i, verdict in zip(group, response.results):
                rewards[i], unscored[i], errors[i] = verdict.reward, verdict.unscored, verdict.error
        raise_if_all_failed(errors)
        return Scores(rewards, [False] * len(items), unscored=unscored, errors=errors)

    def query_prompt(self, templated: str) -> Prompt:
        """A judge reads messages: a ChatML or Llama-3 rendering is read back into them."""
        return untemplated(templated)

    def p_good(self, reward: float | None) -> float | None:
        """The reward on the 0..1 scale of a probability: TICK's mean P(YES) and a pairwise
        judge's P(win) are already; `direct` rescales its 1..10 rating."""
        return reward

    def stats(self) -> dict[str, Any]:
        return {**self.counts, "backend": self.backend.stats()}


async def _gather(coroutines) -> list[Any]:
    return await asyncio.gather(*coroutines)


def raise_if_all_failed(errors: Sequence[str | None]) -> None:
    """Some items judged: answer them, the failed ones flagged. None judged: the request failed."""
    if errors and all(errors):
        raise BackendUnavailable(f"the judge's backend failed for every item; first: {errors[0]}")
