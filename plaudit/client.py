"""The client side of plaudit's API, for trainers and scripts: what `pip install plaudit`
brings, without torch, transformers or bentoml.

    from plaudit.client import Client
    client = Client("http://127.0.0.1:3000")            # the key from api_key= or $PLAUDIT_API_KEY
    client.score([{"prompt": "2+2?", "response": "4"}]).rewards

Each call is one HTTP request (the K responses of a prompt reach the server together),
with a time limit per attempt and bounded retries with backoff on connection errors, 429
and 5xx, honouring `Retry-After`; any other 4xx is raised at once as `PlauditError`,
naming the field. `AsyncClient` has the same methods, awaited.

A deadline per call (`deadline_s`) is for RL loops that must not stall on a slow judge:
/score and /get_reward calls not answered by then (or whose server still fails after the
retries) give every item the model's neutral reward (from GET /models: 0 for a normalised
BT model, 0.5 for probabilities, a judge's midpoint), each flagged in `errors` (/score) or
`extra_logs["deadline"]` (/get_reward), and counted in `client.counts["deadline_items"]`.
Never silently.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from typing import Any, Sequence, TypeVar

import httpx2
from pydantic import BaseModel

from plaudit.schemas import (CompareRequest, CompareResponse, FeedbackRequest, FeedbackResponse, GetRewardRequest,
                             GetRewardResponse, Item, JudgeRequest, JudgeResponse, Message, ModelsResponse, Pair,
                             Prompt, RankRequest, RankResponse, ScoreRequest, ScoreResponse, StepsRequest,
                             StepsResponse)

__all__ = ["AsyncClient", "Client", "CompareResponse", "FeedbackResponse", "GetRewardResponse", "Item",
           "JudgeResponse", "Message", "ModelsResponse", "Pair", "PlauditError", "RankResponse", "ScoreResponse",
           "StepsResponse"]

API_KEY_ENV = "PLAUDIT_API_KEY"
RETRIED = {429, 500, 502, 503, 504}
R = TypeVar("R", bound=BaseModel)


class PlauditError(RuntimeError):
    """The service refused the request (a 4xx other than 429), or kept failing after the retries."""

    def __init__(self, status: int | None, message: str, field: str | None = None):
        where = f" (field {field})" if field else ""
        super().__init__(f"plaudit answered {status}: {message}{where}" if status else f"plaudit: {message}")
        self.status, self.message, self.field = status, message, field


class DeadlineExceeded(TimeoutError):
    """No answer within the call's deadline (from calls that have no neutral answer to give)."""


def _error(response: httpx2.Response) -> PlauditError:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return PlauditError(response.status_code, response.text[:500])
    return PlauditError(response.status_code, body.get("error") or str(body.get("detail") or body), body.get("field"))


def _retry_after(response: httpx2.Response | None) -> float | None:
    """Seconds from a Retry-After header (a number, or an HTTP date)."""
    value = response.headers.get("retry-after") if response is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Api:
    """The endpoints, written once: `_call` is blocking in `Client` and a coroutine in `AsyncClient`."""

    def __init__(self, url: str = "http://127.0.0.1:3000", api_key: str | None = None, *, timeout_s: float = 120.0,
                 max_retries: int = 4, backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 deadline_s: float | None = None, neutral: dict[str, float] | None = None):
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.timeout_s, self.max_retries, self.backoff_s, self.max_backoff_s = (timeout_s, max_retries, backoff_s,
                                                                                 max_backoff_s)
        self.deadline_s = deadline_s  # the default for calls that take one
        self._neutral = dict(neutral or {})  # model name -> neutral reward; filled from GET /models
        self.counts = {"calls": 0, "attempts": 0, "retries": 0, "deadline_calls": 0, "deadline_items": 0}

    # ---- the endpoints ----

    def score(self, items: Sequence[Item | dict], model: str | None = None, deadline_s: float | None = None):
        request = ScoreRequest(model=model, items=list(items))
        return self._call("/score", request, ScoreResponse, self._deadline_s(deadline_s))

    def get_reward(self, query: Sequence[str], prompts: Sequence[str] | None = None,
                   labels: Sequence[Any] | None = None, model: str | None = None, deadline_s: float | None = None):
        request = GetRewardRequest(model=model, query=list(query), prompts=prompts, labels=labels)
        return self._call("/get_reward", request, GetRewardResponse, self._deadline_s(deadline_s))

    def compare(self, pairs: Sequence[Pair | dict], model: str | None = None):
        return self._call("/compare", CompareRequest(model=model, pairs=list(pairs)), CompareResponse)

    def rank(self, prompt: Prompt, responses: Sequence[str], model: str | None = None, matrix: bool = False,
             reference: Any = None):
        return self._call("/rank", RankRequest(model=model, prompt=prompt, responses=list(responses), matrix=matrix,
                                               reference=reference), RankResponse)

    def steps(self, prompt: Prompt, steps: Sequence[str] | None = None, response: str | None = None,
              separator: str | None = None, model: str | None = None):
        request = StepsRequest(model=model, prompt=prompt, steps=list(steps) if steps is not None else None,
                               response=response, separator=separator)
        return self._call("/steps", request, StepsResponse)

    def judge(self, instruction: Prompt, responses: Sequence[str], judge: str | None = None,
              checklist: Sequence[str] | None = None):
        request = JudgeRequest(judge=judge, instruction=instruction, responses=list(responses),
                               checklist=list(checklist) if checklist is not None else None)
        return self._call("/judge", request, JudgeResponse)

    def feedback(self, labels: dict[str, int]):
        """Labels (1 good / 0 bad; for a pair, 1 if a won) for ids from earlier answers."""
        request = FeedbackRequest(items=[{"id": i, "label": label} for i, label in labels.items()])
        return self._call("/feedback", request, FeedbackResponse)

    def models(self):
        return self._call("/models", None, ModelsResponse)

    def send(self, path: str, request: BaseModel, answer: type[R]):
        """Any endpoint by its path, with the same retries (the batch jobs' runner uses it)."""
        return self._call(path, request, answer)

    def _deadline_s(self, deadline_s: float | None) -> float | None:
        return deadline_s if deadline_s is not None else self.deadline_s

    # ---- the retry policy, written once as a plan that both clients drive ----

    def _plan(self, path: str, request: BaseModel | None, kind: type[R], deadline_s: float | None = None):
        """Yields ("send", (path, json, timeout)) and ("sleep", seconds); is sent the response or the
        transport error of each send; returns the answer. Raises PlauditError on a refusal or
        when the retries run out."""
        self.counts["calls"] += 1
        deadline = None if deadline_s is None else time.monotonic() + deadline_s
        fallback = deadline is not None and kind in (ScoreResponse, GetRewardResponse)
        try:
            if fallback and not self._neutral:
                yield from self._learn_neutral(deadline)
            return (yield from self._attempts(path, request, kind, deadline))
        except DeadlineExceeded:
            if fallback:
                return self._neutral_answer(request, kind, f"deadline: no answer within {deadline_s:g} s")
            raise
        except PlauditError as e:  # with a deadline, a server still failing after the retries does not stop training
            if fallback and (e.status is None or e.status in RETRIED):
                return self._neutral_answer(request, kind, f"deadline: {e.message}")
            raise

    def _attempts(self, path: str, request: BaseModel | None, kind: type[R], deadline: float | None,
                  retries: int | None = None):
        # defaults left out: the server applies the same ones, and an older server knows no newer field
        body = None if request is None else request.model_dump(mode="json", exclude_defaults=True)
        last: httpx2.Response | Exception | None = None
        for attempt in range((self.max_retries if retries is None else retries) + 1):
            if attempt:
                self.counts["retries"] += 1
                wait = self._delay(attempt - 1, last if isinstance(last, httpx2.Response) else None)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    raise DeadlineExceeded()
                yield "sleep", wait
            self.counts["attempts"] += 1
            timeout = self.timeout_s if deadline is None else min(self.timeout_s, deadline - time.monotonic())
            if timeout <= 0:
                raise DeadlineExceeded()
            last = yield "send", (path, body, timeout)
            if isinstance(last, httpx2.TimeoutException) and deadline is not None and time.monotonic() >= deadline:
                raise DeadlineExceeded()
            if isinstance(last, httpx2.Response):
                if last.status_code == 200:
                    return kind.model_validate(last.json())
                if last.status_code not in RETRIED:
                    raise _error(last)
        if isinstance(last, httpx2.Response):
            error = _error(last)
            raise PlauditError(error.status, f"{error.message} (after {attempt + 1} attempts)", error.field)
        raise PlauditError(None, f"{self.url}{path} could not be reached after {attempt + 1} attempts: {last!r}")

    def _delay(self, attempt: int, response: httpx2.Response | None) -> float:
        after = _retry_after(response)
        if after is not None:
            return min(self.max_backoff_s, after)
        return min(self.max_backoff_s, self.backoff_s * 2 ** attempt) * (0.5 + random.random() / 2)

    def _learn_neutral(self, deadline: float):
        """Each model's neutral reward, from GET /models (once); 0.0 stands in when it cannot be had."""
        try:
            answer = yield from self._attempts("/models", None, ModelsResponse, deadline, retries=0)
        except (PlauditError, DeadlineExceeded):
            return
        for m in answer.models:
            if "neutral_reward" in m.metadata:
                self._neutral[m.name] = float(m.metadata["neutral_reward"])
                if m.default:
                    self._neutral[""] = self._neutral[m.name]

    def _neutral_answer(self, request: BaseModel, kind: type[R], reason: str) -> R:
        """A call with a deadline that got no answer: the model's neutral reward for every item, flagged."""
        model = getattr(request, "model", None) or ""
        neutral = self._neutral.get(model, 0.0)
        n = len(request.items) if isinstance(request, ScoreRequest) else len(request.query)
        self.counts["deadline_calls"] += 1
        self.counts["deadline_items"] += n
        if kind is ScoreResponse:
            reason = f"{reason}; the model's neutral reward {neutral} stands in"
            return ScoreResponse(model=model, rewards=[neutral] * n, truncated=[False] * n, ids=[""] * n,
                                 errors=[reason] * n, deadline=[True] * n)
        return GetRewardResponse(rewards=[neutral] * n, scores=[neutral] * n, ids=[""] * n,
                                 extra_logs={"deadline": [1.0] * n})


def _request(http: httpx2.Client | httpx2.AsyncClient, path: str, body: Any, timeout: float):
    """One attempt: GET without a body, POST with one (a coroutine for the async client)."""
    if body is None:
        return http.get(path, timeout=timeout)
    return http.post(path, json=body, timeout=timeout)


class Client(_Api):
    """Blocking client; `with Client(url) as client:` closes its connections."""

    def __init__(self, url: str = "http://127.0.0.1:3000", api_key: str | None = None, *,
                 transport: httpx2.BaseTransport | None = None, **options: Any):
        super().__init__(url, api_key, **options)
        self.http = httpx2.Client(base_url=self.url, headers=self.headers, transport=transport)

    def _call(self, path: str, request: BaseModel | None, kind: type[R], deadline_s: float | None = None) -> R:
        plan, result = self._plan(path, request, kind, deadline_s), None
        try:
            while True:
                action, value = plan.send(result)
                if action == "sleep":
                    time.sleep(value)
                    result = None
                    continue
                try:
                    result = _request(self.http, *value)
                except httpx2.TransportError as e:
                    result = e
        except StopIteration as done:
            return done.value

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Api):
    """The same calls, awaited; `async with AsyncClient(url) as client:` closes its connections.
    It belongs to the event loop that first uses it."""

    def __init__(self, url: str = "http://127.0.0.1:3000", api_key: str | None = None, *,
                 transport: httpx2.AsyncBaseTransport | None = None, **options: Any):
        super().__init__(url, api_key, **options)
        self.http = httpx2.AsyncClient(base_url=self.url, headers=self.headers, transport=transport)

    async def _call(self, path: str, request: BaseModel | None, kind: type[R], deadline_s: float | None = None) -> R:
        plan, result = self._plan(path, request, kind, deadline_s), None
        try:
            while True:
                action, value = plan.send(result)
                if action == "sleep":
                    await asyncio.sleep(value)
                    result = None
                    continue
                try:
                    result = await _request(self.http, *value)
                except httpx2.TransportError as e:
                    result = e
        except StopIteration as done:
            return done.value

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
