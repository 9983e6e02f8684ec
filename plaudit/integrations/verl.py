"""verl: a custom reward function that scores on a plaudit server.

    reward:
      custom_reward_function:
        path: <site-packages>/plaudit/integrations/verl.py   # python -m plaudit.integrations.verl prints it
        name: compute_score
        reward_kwargs: {url: "http://127.0.0.1:3000", model: default}

verl's reward loop awaits `compute_score(data_source=, solution_str=, ground_truth=,
extra_info=, **kwargs)` once per sample. The prompt comes from `extra_info["prompt"]` (a
string or chat messages): put it there when preparing the data (see the README). Without
one the response is scored with an empty prompt, and the answer says so (`no_prompt`).
"""
from __future__ import annotations

import asyncio
import os
from typing import Any

from plaudit.client import AsyncClient
from plaudit.schemas import Item

URL_ENV = "PLAUDIT_URL"
_clients: dict[tuple[int, str], AsyncClient] = {}  # one per event loop and server: a client belongs to its loop


def _client(url: str, options: dict[str, Any]) -> AsyncClient:
    key = (id(asyncio.get_running_loop()), url)
    if key not in _clients:
        _clients[key] = AsyncClient(url, **options)
    return _clients[key]


async def compute_score(data_source: str | None = None, solution_str: str = "", ground_truth: Any = None,
                        extra_info: dict[str, Any] | None = None, *, url: str | None = None, model: str | None = None,
                        deadline_s: float | None = None, api_key: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """{"score": float, ...} with the reward and, as extra info (numbers, so verl can log them):
    truncated, unscored (a judge could not read its answer: the score is the neutral value),
    deadline (not answered in time: the neutral value) and no_prompt. Other keyword arguments
    verl passes (reward_router_address, the tokenizer, ...) are not needed and ignored."""
    url = url or os.environ.get(URL_ENV) or "http://127.0.0.1:3000"
    prompt = (extra_info or {}).get("prompt")
    client = _client(url, {"api_key": api_key} if api_key else {})
    item = Item(prompt=prompt or "", response=solution_str, reference=ground_truth)  # the execution kind's tests
    answer = await client.score([item], model=model, deadline_s=deadline_s)
    reward, error, late = answer.rewards[0], (answer.errors or [None])[0], bool((answer.deadline or [False])[0])
    if error and not late:  # the judge's backend failed: verl needs a number
        raise RuntimeError(f"plaudit could not score this sample: {error}")
    if reward is None:  # a judge that could not read its own answer: its neutral value, flagged
        served = (await client.models()).models
        reward = next(m.metadata["neutral_reward"] for m in served if m.name == model or (not model and m.default))
        unscored = True
    else:
        unscored = False
    return {"score": float(reward), "truncated": float(answer.truncated[0]),
            "unscored": float(unscored), "deadline": float(late), "no_prompt": float(not prompt)}


if __name__ == "__main__":
    print(__file__)  # the path for verl's custom_reward_function.path
