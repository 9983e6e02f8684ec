"""The BentoML service: each endpoint validates its body with the shared schemas, runs
the matching function of `service.api` in a worker thread, and turns input errors into
4xx answers that name the field. Start it with `plaudit serve` or
`bentoml serve service.app:Plaudit`; $PLAUDIT_CONFIG names the YAML config."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from plaudit.judges.local import LocalServerError
from plaudit.rewardmodels import InputError, ModelLoadError
from plaudit.rewardmodels.base import Unavailable

from . import api
from .auth import ApiKeyMiddleware
from .bodies import JsonBodyMiddleware
from .config import AuthConfig, load_config
from .monitoring import Monitor
from .openapi import ExactOpenAPI
from plaudit.schemas import (ClassifyRequest, ClassifyResponse, PoolingRequest, PoolingResponse)
from plaudit.schemas import (CompareRequest, CompareResponse, FeedbackRequest, FeedbackResponse, GetRewardRequest,
                      GetRewardResponse, JudgeRequest, JudgeResponse, RankRequest, RankResponse, RunCodeRequest,
                      RunCodeResponse, ScoreRequest, ScoreResponse, StepsRequest, StepsResponse)

log = logging.getLogger("plaudit")
STATUS = {api.UnknownModel: 404, api.LimitExceeded: 413}


async def _models(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.pool.describe().model_dump())


async def _ping(request: Request) -> JSONResponse:
    return JSONResponse("pong")  # SandboxFusion's liveness answer, for clients that check it first


# GET endpoints live in a small Starlette app: BentoML's own APIs are POST.
read_only = Starlette(routes=[Route("/models", _models, methods=["GET"]), Route("/v1/ping", _ping, methods=["GET"])])


def _auth_config() -> AuthConfig | None:
    try:
        return load_config().auth
    except ModelLoadError:  # Plaudit.__init__ meets the same error, reports it and stops the server
        return None


def _workers() -> int:
    """`workers:` from the config, read when BentoML imports the service (its arbiter too)."""
    try:
        return load_config().workers
    except ModelLoadError:  # reported by Plaudit.__init__, which stops the server
        return 1


@bentoml.service(name="plaudit", traffic={"timeout": 300}, workers=_workers())
@bentoml.asgi_app(read_only, path="/")
class Plaudit:
    def __init__(self) -> None:
        try:
            config = load_config()
            self.monitor = Monitor(config.monitoring)
            self.pool = api.ModelPool(config, served=self.monitor.served)
            self.pool.load_all()  # a bad model directory fails here, at start-up, not on a request
        except (ModelLoadError, LocalServerError) as e:
            # A configuration error, not a transient fault: stop the whole server rather than
            # let BentoML's arbiter (our parent) respawn this worker forever.
            log.critical("plaudit cannot start: %s", e)
            if os.environ.get("PLAUDIT_STARTUP_ERROR_FILE"):  # set by `plaudit serve`, which reports it
                with open(os.environ["PLAUDIT_STARTUP_ERROR_FILE"], "w") as f:
                    f.write(str(e))
            os.kill(os.getppid(), signal.SIGTERM)
            raise
        read_only.state.pool = self.pool
        for name in self.pool.loaded():
            self.monitor.watch(self.pool.get(name))
        # One thread per in-flight request, so concurrent requests meet in the model's batcher.
        self.threads = ThreadPoolExecutor(max_workers=128, thread_name_prefix="request")
        self.in_progress = 0  # requests answered or waiting: bounded by limits.max_queue

    def _model_label(self, name: str | None) -> str:
        """A configured or loaded name for the metrics' `model` label, never what a user typed."""
        name = name or self.pool.config.default_model
        return name if name in self.pool.loaded() else "unknown"

    async def _answer(self, endpoint: str, handler: Callable[[api.ModelPool, Any], Any], request: Any,
                      model: str | None) -> Any:
        started = time.perf_counter()
        limit = self.pool.config.limits.max_queue
        if self.in_progress >= limit:  # shed load now rather than queue without bound
            self._failed(endpoint, model, "overloaded", "Overloaded", started)
            return JSONResponse({"error": f"overloaded: {self.in_progress} requests in progress, the limit is "
                                          f"{limit} (limits.max_queue); retry later", "field": None},
                                status_code=503, headers={"Retry-After": "1"})
        self.in_progress += 1  # on the event loop's thread: no lock needed
        self.monitor.metrics.in_progress.set(self.in_progress)
        try:
            response = await asyncio.get_running_loop().run_in_executor(self.threads, handler, self.pool, request)
        except InputError as e:
            self._failed(endpoint, model, "client_error", type(e).__name__, started)
            body = {"error": str(e), "field": e.field}
            if endpoint == "run_code":  # SandboxFusion's clients read FastAPI's shape
                body["detail"] = [{"type": "value_error", "loc": ["body", *e.field.split(".")], "msg": str(e)}]
            return JSONResponse(body, status_code=STATUS.get(type(e), 422))
        except Unavailable as e:  # a judge's backend down, every sandbox slot taken: try again later
            self._failed(endpoint, model, e.outcome, e.kind, started)
            return JSONResponse({"error": str(e), "field": None}, status_code=503,
                                headers={"Retry-After": str(e.retry_after_s)})
        except Exception:
            self._failed(endpoint, model, "server_error", "internal", started)
            raise
        finally:
            self.in_progress -= 1
            self.monitor.metrics.in_progress.set(self.in_progress)
        self.monitor.request(endpoint, self._model_label(model), "ok", time.perf_counter() - started)
        return response

    def _failed(self, endpoint: str, model: str | None, outcome: str, kind: str, started: float) -> None:
        self.monitor.request(endpoint, self._model_label(model), outcome, time.perf_counter() - started)
        self.monitor.error(endpoint, kind)

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    async def score(self, **body: Any) -> ScoreResponse:
        """One reward per (prompt, response) item."""
        return await self._answer("score", api.score, ScoreRequest.model_construct(**body), body.get("model"))

    @bentoml.api(route="/compare", input_spec=CompareRequest)
    async def compare(self, **body: Any) -> CompareResponse:
        """P(a beats b) and the reward margin per pair."""
        return await self._answer("compare", api.compare, CompareRequest.model_construct(**body), body.get("model"))

    @bentoml.api(route="/rank", input_spec=RankRequest)
    async def rank(self, **body: Any) -> RankResponse:
        """Rewards for K responses to one prompt and their order, best first (best-of-N)."""
        return await self._answer("rank", api.rank, RankRequest.model_construct(**body), body.get("model"))

    @bentoml.api(route="/steps", input_spec=StepsRequest)
    async def steps(self, **body: Any) -> StepsResponse:
        """A reward per reasoning step, and their min, mean, product and last (process reward models)."""
        return await self._answer("steps", api.steps, StepsRequest.model_construct(**body), body.get("model"))

    @bentoml.api(route="/get_reward", input_spec=GetRewardRequest)
    async def get_reward(self, **body: Any) -> GetRewardResponse:
        """OpenRLHF's remote reward model contract; queries are tokenised without adding special tokens."""
        return await self._answer("get_reward", api.get_reward, GetRewardRequest.model_construct(**body), body.get("model"))

    @bentoml.api(route="/classify", input_spec=ClassifyRequest)
    async def classify(self, **body: Any) -> ClassifyResponse:
        """vLLM's /classify: one reward per sequence (`data[i].probs[0]`), a templated text or chat messages."""
        request = ClassifyRequest.model_construct(**body)
        return await self._answer("classify", api.classify, request, self.pool.resolve(request.model))

    @bentoml.api(route="/pooling", input_spec=PoolingRequest)
    async def pooling(self, **body: Any) -> PoolingResponse:
        """vLLM's /pooling with the classify task: one reward per sequence (`data[i].data[0]`)."""
        request = PoolingRequest.model_construct(**body)
        return await self._answer("pooling", api.pool_sequences, request, self.pool.resolve(request.model))

    @bentoml.api(route="/judge", input_spec=JudgeRequest)
    async def judge(self, **body: Any) -> JudgeResponse:
        """A judge's full verdict: TICK's checklist and answers, a pairwise judge's two orders, a rating."""
        request = JudgeRequest.model_construct(**body)
        return await self._answer("judge", api.judge, request, self.pool.config.judge_name(request.judge))

    @bentoml.api(route="/run_code", input_spec=RunCodeRequest)
    async def run_code(self, **body: Any) -> RunCodeResponse:
        """SandboxFusion's /run_code: one program compiled and run in the execution model's sandbox."""
        return await self._answer("run_code", api.run_code, RunCodeRequest.model_construct(**body),
                                  api.execution_name(self.pool))

    @bentoml.api(route="/feedback", input_spec=FeedbackRequest)
    async def feedback(self, **body: Any) -> FeedbackResponse:
        """Labels for predictions served earlier (by their ids): calibration is measured against them."""
        return self.monitor.feedback(FeedbackRequest.model_construct(**body))


Plaudit.add_asgi_middleware(ApiKeyMiddleware, load=_auth_config)
Plaudit.add_asgi_middleware(JsonBodyMiddleware)
Plaudit.add_asgi_middleware(ExactOpenAPI)
