"""TRL: a reward function for `GRPOTrainer(reward_funcs=[...])` (and RLOO, Online DPO) that
scores on a plaudit server.

    from plaudit.integrations.trl import reward_function
    trainer = GRPOTrainer(model=..., reward_funcs=[reward_function("http://127.0.0.1:3000")], ...)

TRL calls it with the batch's prompts and completions (standard text or conversational
messages) and logs it under its `__name__`. One HTTP request per call, so the G
completions of each prompt reach the server together: a GPM or a pairwise judge compares
them within their prompt, and the server batches them in one pass. A completion the
server could not score (a judge that could not read its own answer) is None, which TRL
leaves out of the sum of rewards rather than counting as the worst score.
"""
from __future__ import annotations

import asyncio
import re
from typing import Any, Callable

from plaudit.client import AsyncClient, Client
from plaudit.schemas import Item, ScoreResponse


def _response(completion: str | list[dict[str, Any]]) -> str:
    """A standard completion is its text; a conversational one is the content of its messages."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content") or "") for m in completion)


def items(prompts: list, completions: list, references: list | None = None) -> list[Item]:
    references = references if references is not None else [None] * len(prompts)
    return [Item(prompt=prompt, response=_response(completion), reference=reference)
            for prompt, completion, reference in zip(prompts, completions, references)]


def rewards(answer: ScoreResponse, name: str, trainer_kwargs: dict[str, Any]) -> list[float | None]:
    """None where the item has an error (a backend failure): never a made-up score. A missed
    deadline keeps the neutral reward the client put there, and is logged through TRL's
    `log_metric` as `<name>/deadline_items` (so is `<name>/failed_items`)."""
    errors = answer.errors or [None] * len(answer.rewards)
    late = answer.deadline or [False] * len(answer.rewards)
    failed = [e is not None and not d for e, d in zip(errors, late)]
    if (log_metric := trainer_kwargs.get("log_metric")) is not None:
        log_metric(f"{name}/deadline_items", float(sum(late)))
        log_metric(f"{name}/failed_items", float(sum(failed)))
    return [None if f else r for r, f in zip(answer.rewards, failed)]


def _name(model: str | None) -> str:
    return "plaudit_" + re.sub(r"\W", "_", model or "default")


def reward_function(url: str, model: str | None = None, *, reference_column: str | None = None,
                    deadline_s: float | None = None, **client_options: Any) -> Callable[..., list[float | None]]:
    """TRL's reward function signature: (prompts, completions, completion_ids=None, **kwargs) ->
    list[float | None]. `reference_column` names the dataset column that holds each prompt's
    reference (the execution kind's tests), which TRL passes as a keyword argument.
    `client_options` go to `plaudit.client.Client` (api_key, timeout_s, ...)."""
    client = Client(url, deadline_s=deadline_s, **client_options)

    def reward(prompts: list, completions: list, completion_ids: list | None = None,
               **kwargs: Any) -> list[float | None]:
        batch = items(prompts, completions, kwargs.get(reference_column) if reference_column else None)
        return rewards(client.score(batch, model=model), reward.__name__, kwargs)

    reward.__name__ = reward.__qualname__ = _name(model)
    reward.client = client  # its counters (retries, deadline_items) for the training logs
    return reward


def async_reward_function(url: str, model: str | None = None, *, reference_column: str | None = None,
                          deadline_s: float | None = None, **client_options: Any) -> Callable[..., Any]:
    """The same as a coroutine function, for trainers that await their reward functions. A
    client is made per event loop, since an async HTTP client belongs to its loop."""
    clients: dict[int, AsyncClient] = {}

    async def reward(prompts: list, completions: list, completion_ids: list | None = None,
                     **kwargs: Any) -> list[float | None]:
        loop = id(asyncio.get_running_loop())
        client = clients.setdefault(loop, AsyncClient(url, deadline_s=deadline_s, **client_options))
        batch = items(prompts, completions, kwargs.get(reference_column) if reference_column else None)
        return rewards(await client.score(batch, model=model), reward.__name__, kwargs)

    reward.__name__ = reward.__qualname__ = _name(model)
    return reward
