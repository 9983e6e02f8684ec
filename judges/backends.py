"""One client for every judge backend: text-generation-inference and the OpenAI-compatible
servers (vLLM, SGLang, llama.cpp) all answer `POST /v1/chat/completions`.

The local llama.cpp default and a production server therefore share one code path: a
time limit per attempt, retries with exponential backoff on transient failures
(connection errors, timeouts, 429, 5xx) but never on a request the server refused
(any other 4xx), a limit on requests in flight, and counters.

A `Backend` belongs to the event loop that first uses it (its HTTP session and its
semaphore do): create one per loop, and close it with `aclose()` or `async with`.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import httpx2
from huggingface_hub import AsyncInferenceClient
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from plaudit.rewardmodels.base import Unavailable

NO_API_KEY = "EMPTY"  # what vLLM's docs send to a server without a key


class BackendConfig(BaseModel):
    """Where a judge's model is served and how hard to try."""

    model_config = ConfigDict(extra="forbid")
    url: str  # the server's base URL (http://host:port or .../v1); /v1/chat/completions is appended
    model: str | None = None  # the name in the request body; None for one-model servers (TGI, llama.cpp)
    api_key: SecretStr | None = None  # the server's own key (vLLM --api-key, an endpoint behind auth)
    timeout_s: float = Field(60.0, gt=0)  # per attempt, for the whole request
    max_retries: int = Field(3, ge=0)
    backoff_s: float = Field(0.5, ge=0)  # the first wait between attempts; it doubles after each
    concurrency: int = Field(8, ge=1)  # requests in flight at most
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        # The client would read anything else as a Hugging Face hub model id and send the request to the hub.
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r}: a backend URL starts with http:// or https://")
        return url.rstrip("/")


@dataclass
class Completion:
    text: str
    top_logprobs: dict[str, float] | None  # the first generated token's alternatives, when asked for and returned
    attempts: int  # 1 when the first try succeeded


class BackendUnavailable(Unavailable):
    """No answer could be had from a judge's backend."""

    retry_after_s, outcome, kind = 5, "backend_error", "BackendError"


class BackendError(BackendUnavailable):
    """A backend gave no completion: a refused request at once, a transient failure after the last retry."""

    def __init__(self, url: str, cause: str, attempts: int, status: int | None = None):
        super().__init__(f"backend {url}: {cause} (after {attempts} attempt{'s' if attempts > 1 else ''})")
        self.url, self.cause, self.attempts, self.status = url, cause, attempts, status


class Backend:
    """Chat completions from one server, with time limits, retries, a concurrency limit and counters."""

    def __init__(self, config: BackendConfig):
        self.config = config
        # An explicit key: without one the client would send the user's cached Hugging Face token to this server.
        key = config.api_key.get_secret_value() if config.api_key else NO_API_KEY
        self._client = AsyncInferenceClient(base_url=config.url, api_key=key)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._in_flight = 0
        self._counts = {"calls": 0, "attempts": 0, "retries": 0, "failures": 0, "max_in_flight": 0}

    async def chat(self, messages: list[dict[str, str]], *, max_tokens: int | None = None,
                   temperature: float | None = None, logprobs: bool = False, top_logprobs: int = 5) -> Completion:
        """One completion of `messages`; with `logprobs`, the `top_logprobs` likeliest first tokens too."""
        cfg = self.config
        request = dict(model=cfg.model, max_tokens=max_tokens or cfg.max_tokens,
                       temperature=cfg.temperature if temperature is None else temperature,
                       logprobs=logprobs or None, top_logprobs=top_logprobs if logprobs else None)
        self._counts["calls"] += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                completion = _completion(await self._attempt(messages, request), attempt)
            except Exception as error:
                cause, status, transient = _diagnose(error, cfg.timeout_s)
                if cause is None:  # not the server's doing: a bug to surface as it is
                    raise
                if not transient or attempt > cfg.max_retries:
                    self._counts["failures"] += 1
                    raise BackendError(cfg.url, cause, attempt, status) from error
                self._counts["retries"] += 1
                await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1))
                continue
            return completion

    async def _attempt(self, messages: list[dict[str, str]], request: dict[str, Any]) -> Any:
        async with self._slots:  # waiting for a slot does not count against the time limit
            self._in_flight += 1
            self._counts["attempts"] += 1
            self._counts["max_in_flight"] = max(self._counts["max_in_flight"], self._in_flight)
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    return await self._client.chat_completion(messages, **request)
            finally:
                self._in_flight -= 1

    def stats(self) -> dict[str, Any]:
        """Counters: calls, attempts, retries, failures, requests in flight now and at most."""
        return {"url": self.config.url, **self._counts, "in_flight": self._in_flight}

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Backend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class UnreadableAnswer(ValueError):
    """The server said 200 but its body is not a chat completion (a proxy's error page, a truncated body)."""


def _completion(output: Any, attempt: int) -> Completion:
    try:
        choice = output.choices[0]
        return Completion(choice.message.content or "", _first_token_logprobs(choice.logprobs), attempt)
    except (AttributeError, IndexError, KeyError, TypeError) as e:
        raise UnreadableAnswer(f"no chat completion in the answer ({type(e).__name__}: {e})") from e


def _diagnose(error: Exception, timeout_s: float) -> tuple[str | None, int | None, bool]:
    """(what went wrong, HTTP status, whether trying again may help); no cause if not a backend failure."""
    if isinstance(error, TimeoutError):  # asyncio.timeout's, and the client's InferenceTimeoutError
        return f"no answer within {timeout_s:g} s", None, True
    if isinstance(error, UnreadableAnswer):
        return str(error), None, True
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        status = error.response.status_code
        return f"HTTP {status}: {error.response.text[:500]}", status, status == 429 or status >= 500
    if isinstance(error, httpx2.TransportError):  # refused or dropped connections
        return f"{type(error).__name__}: {error}", None, True
    if isinstance(error, OfflineModeIsEnabled):  # HF_HUB_OFFLINE=1 blocks even a server on localhost
        return str(error), None, False
    if isinstance(error, ValueError):  # the client could not parse the body: not JSON, or JSON of another shape
        return f"unreadable answer ({type(error).__name__}: {error})", None, True
    return None, None, False


def _first_token_logprobs(logprobs: Any) -> dict[str, float] | None:
    """token -> logprob for the first generated token's alternatives; tokens that print the same
    (e.g. pieces of one UTF-8 character) are one string, so their probabilities add up."""
    if logprobs is None or not logprobs.content:
        return None
    merged: dict[str, float] = {}
    for alternative in logprobs.content[0].top_logprobs:
        token, logprob = alternative.token, float(alternative.logprob)
        if token in merged:
            high, low = max(merged[token], logprob), min(merged[token], logprob)
            logprob = high + math.log1p(math.exp(low - high))
        merged[token] = logprob
    return merged
