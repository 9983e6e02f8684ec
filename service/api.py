"""What each endpoint does, as plain functions over a pool of loaded models.

The BentoML service and the CLI both call these, with the same schemas: an endpoint
only translates HTTP to a call here and an `InputError` to a 4xx.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Literal

from plaudit.judges.base import Judge
from plaudit.rewardmodels.queries import score_queries
from plaudit.schemas import JudgeRequest, JudgeResponse
from plaudit.judges.hub import BackendHub
from plaudit.judges.registry import METHODS, JudgeConfig, build_judge
from plaudit.rewardmodels import (AGGREGATES, InputError, Item, LimitExceeded, ModelLoadError, Scorer, Steps,
                                  UnsupportedOperation, load_scorer)
from plaudit.rewardmodels.prm import DEFAULT_SEPARATOR, split_steps

from . import pooling
from .config import Limits, ModelConfig, ServiceConfig, load_config
from .run_code import run_code as run_code_with
from plaudit.schemas import (ClassificationData, ClassifyRequest, ClassifyResponse, PoolingData, PoolingRequest,
                             PoolingResponse, Usage)
from plaudit.schemas import (CompareRequest, CompareResponse, GetRewardRequest, GetRewardResponse, ModelInfo,
                      ModelsResponse, RankRequest, RankResponse, RunCodeRequest, RunCodeResponse, ScoreRequest,
                      ScoreResponse, StepsRequest, StepsResponse)


class UnknownModel(InputError):
    """The request names a model that is not configured (HTTP 404)."""


@dataclass
class Served:
    """What one answer served, said once by the endpoint's function below: the service's
    monitor records it (rewards, items, a judge's counters) and signs the ids the answer
    carries, so that feedback can label each prediction later."""

    endpoint: str
    scorer: Scorer
    kind: Literal["item", "pair"]
    predictions: list[float | None]  # what feedback labels: P(good) per item, P(a beats b) per pair
    rewards: list[float | None] | None = None  # for the reward windows (none for pairs and traces)
    lengths: list[int] | None = None  # the response lengths beside the rewards (length bias)


def plain_ids(served: Served) -> list[str]:
    """Ids outside the service (the CLI, the Python API): unique, signed by no one."""
    return [uuid.uuid4().hex for _ in served.predictions]


class ModelPool:
    """The configured models and judges by name, each loaded once (at start-up in the service).
    A bare judge method (`tick`, `pairwise`, `direct`) is a judge on the default backend.
    `served` is told of every answer and gives its ids (the service's monitor in the service)."""

    def __init__(self, config: ServiceConfig, served: Callable[[Served], list[str]] = plain_ids):
        self.config = config
        self.served = served
        self._scorers: dict[str, Scorer] = {}
        self._lock = threading.RLock()  # a composite loads its parts while loading itself
        self._loading: list[str] = []
        self._hub: BackendHub | None = None

    def load_all(self) -> None:
        for name in (*self.config.models, *self.config.judges):
            self.get(name)

    def get(self, name: str | None, field: str = "model") -> Scorer:
        name = name or self.config.default_model
        with self._lock:
            if name not in self._scorers:
                if name in self._loading:
                    raise ModelLoadError(f"models.{name}: a composite that contains itself: "
                                         f"{' -> '.join([*self._loading, name])}")
                self._loading.append(name)
                try:
                    self._scorers[name] = self._load(name, field)
                finally:
                    self._loading.pop()
            return self._scorers[name]

    def _load(self, name: str, field: str) -> Scorer:
        if name in self.config.models:
            cfg = self.config.models[name]
            scorer = load_scorer(cfg.path, name=name, lookup=self.get, **cfg.load_options())
            scorer.limit_tokens(self.config.limits.max_tokens)
            return scorer
        if name in self.config.judges or name in METHODS:
            judge = self.config.judges.get(name) or JudgeConfig(method=name)
            if self._hub is None:
                self._hub = BackendHub(self.config.backends)
            return build_judge(name, judge, self._hub, judge.backend or self.config.default_backend)
        raise UnknownModel(field, f"unknown model or judge {name!r}; models: {', '.join(self.config.models)}; "
                                  f"judges: {', '.join([*self.config.judges, *METHODS])}")

    def resolve(self, model: str | None) -> str | None:
        """A model's configured name when it is named by its configured path (how vLLM names a
        model, and what verl sends); any other name unchanged."""
        if model is None or model in self.config.models or model in self.config.judges or model in METHODS:
            return model
        for name, cfg in self.config.models.items():
            if cfg.path is not None and (cfg.path == model or _same_file(cfg.path, model)):
                return name
        return model

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._scorers)

    def judge(self, name: str | None) -> Judge:
        scorer = self.get(self.config.judge_name(name), field="judge")
        if not isinstance(scorer, Judge):
            raise InputError("judge", f"{scorer.name!r} is a reward model ({scorer.kind}), not a judge; judges: "
                                      f"{', '.join([*self.config.judges, *METHODS])}")
        return scorer

    def able_to(self, method: str) -> list[str]:
        """Configured models whose family implements `method` (for errors that point the way)."""
        return [n for n in self.config.models if getattr(type(self.get(n)), method) is not getattr(Scorer, method)]

    def describe(self) -> ModelsResponse:
        names = dict.fromkeys([*self.config.models, *self.config.judges, *self._scorers])
        return ModelsResponse(models=[
            ModelInfo(name=s.name, kind=s.kind, default=s.name == self.config.default_model,
                      metadata={**s.metadata, "neutral_reward": s.neutral_reward},
                      stats=s.stats())
            for s in (self.get(n) for n in names)])

    def close(self) -> None:
        """Stops what the models started and the judges' backends (the local llama.cpp server)."""
        with self._lock:
            for scorer in self._scorers.values():
                scorer.close()
        if self._hub is not None:
            self._hub.close()


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # either is not a path here (a hub id, a name)
        return False


def pool_for(model: str | None, config: str | None) -> tuple[ModelPool, str | None]:
    """The configured models and judges, and the name to ask for (a bare judge method too); a
    model given as a directory is served alone."""
    cfg = load_config(config)
    if model and model not in cfg.models and model not in cfg.judges and model not in METHODS:
        name = Path(model).name or model
        cfg = ServiceConfig(models={name: ModelConfig(path=model)}, default_model=name)
        model = None
    return ModelPool(cfg), model


def check_limits(limits: Limits, field: str, count: int, texts: Iterable[tuple[str, str]]) -> None:
    """Refuse requests over the configured limits, naming the limit and the field."""
    if count > limits.max_items:
        raise LimitExceeded(field, f"{count} entries, over the limit of {limits.max_items} (limits.max_items)")
    for where, text in texts:
        if len(text) > limits.max_chars:
            raise LimitExceeded(where, f"{len(text)} characters, over the limit of {limits.max_chars} "
                                       f"(limits.max_chars)")


def _prompt_texts(where: str, prompt) -> list[tuple[str, str]]:
    if isinstance(prompt, str):
        return [(where, prompt)]
    return [(f"{where}[{j}].content", m.content) for j, m in enumerate(prompt)]


def score(pool: ModelPool, request: ScoreRequest) -> ScoreResponse:
    check_limits(pool.config.limits, "items", len(request.items), (
        t for i, it in enumerate(request.items)
        for t in _prompt_texts(f"items[{i}].prompt", it.prompt) + [(f"items[{i}].response", it.response)]))
    scorer = pool.get(request.model)
    result = scorer.score(request.items)
    details = result.details if request.test_outcomes else _without_tests(result.details)
    ids = pool.served(Served("score", scorer, "item", [scorer.p_good(r) for r in result.rewards], result.rewards,
                             [len(item.response) for item in request.items]))
    return ScoreResponse(model=scorer.name, rewards=result.rewards, truncated=result.truncated, ids=ids,
                         uncertainty=result.spread, unscored=result.unscored, errors=result.errors, details=details)


def _without_tests(details: list[dict] | None) -> list[dict] | None:
    """Details without the per-test outcomes, a composite's parts' included."""
    def strip(detail: dict) -> dict:
        kept = {k: v for k, v in detail.items() if k != "tests"}
        if isinstance(kept.get("part_details"), dict):
            kept["part_details"] = {part: strip(d) for part, d in kept["part_details"].items()}
        return kept
    return None if details is None else [strip(d) for d in details]


def compare(pool: ModelPool, request: CompareRequest) -> CompareResponse:
    check_limits(pool.config.limits, "pairs", len(request.pairs), (
        t for i, p in enumerate(request.pairs)
        for t in _prompt_texts(f"pairs[{i}].prompt", p.prompt) + [(f"pairs[{i}].a", p.a), (f"pairs[{i}].b", p.b)]))
    scorer = pool.get(request.model)
    result = scorer.compare(request.pairs)
    ids = pool.served(Served("compare", scorer, "pair", result.probabilities))
    return CompareResponse(model=scorer.name, probabilities=result.probabilities, margins=result.margins,
                           truncated=result.truncated, ids=ids, errors=result.errors)


def rank(pool: ModelPool, request: RankRequest) -> RankResponse:
    check_limits(pool.config.limits, "responses", len(request.responses),
                 _prompt_texts("prompt", request.prompt)
                 + [(f"responses[{i}]", r) for i, r in enumerate(request.responses)])
    scorer = pool.get(request.model)
    result = scorer.rank(request.prompt, request.responses, request.reference)
    ids = pool.served(Served("rank", scorer, "item", [scorer.p_good(r) for r in result.rewards], result.rewards,
                             [len(r) for r in request.responses]))
    return RankResponse(model=scorer.name, rewards=result.rewards, order=result.order, truncated=result.truncated,
                        matrix=result.matrix if request.matrix else None, ids=ids)


def steps(pool: ModelPool, request: StepsRequest) -> StepsResponse:
    scorer = pool.get(request.model)
    if request.response is not None:
        check_limits(pool.config.limits, "response", 1, [("response", request.response)])
        separator = request.separator or scorer.metadata.get("separator", DEFAULT_SEPARATOR)
        trace = split_steps(request.response, separator)
    else:
        trace = request.steps
    check_limits(pool.config.limits, "steps", len(trace), _prompt_texts("prompt", request.prompt)
                 + [(f"steps[{i}]", s) for i, s in enumerate(trace)])
    try:
        [result] = scorer.score_steps([Steps(prompt=request.prompt, steps=trace)])
    except UnsupportedOperation as e:
        able = pool.able_to("score_steps")
        raise UnsupportedOperation("model", f"{str(e).removeprefix('model: ')}; configured models that can: "
                                            f"{', '.join(able) or 'none'}") from None
    rewards = result.step_rewards
    aggregates = {name: combine(rewards) for name, combine in AGGREGATES.items()}
    [served_id] = pool.served(Served("steps", scorer, "item", [aggregates["min"]]))
    return StepsResponse(model=scorer.name, steps=trace, step_rewards=rewards, truncated=result.truncated,
                         aggregates=aggregates, id=served_id)


def get_reward(pool: ModelPool, request: GetRewardRequest) -> GetRewardResponse:
    """OpenRLHF's contract. Queries are read back into conversations (rewardmodels/queries.py),
    so a conversation gets /score's reward however the trainer ended it. An empty request
    (a trainer sharding one sample over several URLs) is answered empty."""
    check_limits(pool.config.limits, "query", len(request.query),
                 [(f"query[{i}]", q) for i, q in enumerate(request.query)])
    scorer = pool.get(request.model)
    if not request.query:
        return GetRewardResponse(rewards=[], scores=[], extra_logs={}, ids=pool.served(Served("get_reward", scorer,
                                                                                                "item", [])))
    result, ended = score_queries(scorer, request.query, request.prompts, request.labels)
    logs = {"truncated": [float(t) for t in result.truncated], "unfinished": [float(not e) for e in ended]}
    logs.update(result.logs or {})  # verifiable kinds and composites: what a trainer can log beside the reward
    if result.spread is not None:
        logs["reward_std"] = result.spread
    rewards = result.rewards
    if isinstance(scorer, Judge) or result.errors is not None:  # a trainer needs a number: the neutral one, flagged
        errors = result.errors or [None] * len(rewards)
        logs["unscored"] = [float(r is None and e is None) for r, e in zip(rewards, errors)]
        logs["error"] = [float(e is not None) for e in errors]
        rewards = [scorer.neutral_reward if r is None else r for r in rewards]
    ids = pool.served(Served("get_reward", scorer, "item", [scorer.p_good(r) for r in result.rewards],
                             result.rewards, [len(q) for q in request.query]))
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=logs, ids=ids)


def _pooled(pool: ModelPool, request: ClassifyRequest, endpoint: str
            ) -> tuple[Scorer, list[float], list[str], Usage]:
    """vLLM's pooling API (pooling.py): one number per sequence, P(good) with activation."""
    sequences = 1 if request.messages is not None or isinstance(request.input, str) \
        or all(isinstance(x, int) for x in request.input) else len(request.input)
    texts = [(f"messages[{i}].content", m.content) for i, m in enumerate(request.messages or [])]
    if isinstance(request.input, str):
        texts.append(("input", request.input))
    elif request.input and isinstance(request.input[0], str):
        texts += [(f"input[{i}]", text) for i, text in enumerate(request.input)]
    check_limits(pool.config.limits, "input", sequences, texts)
    scorer = pool.get(pool.resolve(request.model))
    scored, read, lengths = pooling.score(scorer, request)
    activated = request.activated()
    values = [scorer.p_good(r) if activated else r for r in scored.rewards]
    ids = pool.served(Served(endpoint, scorer, "item", [scorer.p_good(r) for r in scored.rewards], scored.rewards,
                             lengths))
    tokens = sum(pooling.token_counts(scorer, read))
    return scorer, values, ids, Usage(prompt_tokens=tokens, total_tokens=tokens)


def classify(pool: ModelPool, request: ClassifyRequest) -> ClassifyResponse:
    """vLLM's /classify: `data[i].probs` holds sequence i's one number."""
    scorer, values, ids, usage = _pooled(pool, request, "classify")
    return ClassifyResponse(id=f"classify-{request.request_id or uuid.uuid4().hex}", created=int(time.time()),
                            model=request.model or scorer.name, usage=usage, ids=ids,
                            data=[ClassificationData(index=i, label=None, probs=[v], num_classes=1)
                                  for i, v in enumerate(values)])


def pool_sequences(pool: ModelPool, request: PoolingRequest) -> PoolingResponse:
    """vLLM's /pooling with the classify task: `data[i].data` holds sequence i's one number."""
    scorer, values, ids, usage = _pooled(pool, request, "pooling")
    return PoolingResponse(id=f"pooling-{request.request_id or uuid.uuid4().hex}", created=int(time.time()),
                           model=request.model or scorer.name, usage=usage, ids=ids,
                           data=[PoolingData(index=i, data=[v]) for i, v in enumerate(values)])


def judge(pool: ModelPool, request: JudgeRequest) -> JudgeResponse:
    check_limits(pool.config.limits, "responses", len(request.responses),
                 _prompt_texts("instruction", request.instruction)
                 + [(f"responses[{i}]", r) for i, r in enumerate(request.responses)])
    judge = pool.judge(request.judge)
    response = judge.run(request)
    rewards = [verdict.reward for verdict in response.results]
    response.ids = pool.served(Served("judge", judge, "item", [judge.p_good(r) for r in rewards], rewards,
                                      [len(r) for r in request.responses]))
    return response


def score_one(pool: ModelPool, model: str | None, prompt, response: str) -> ScoreResponse:
    """The CLI's `plaudit score`: the same path as POST /score with one item."""
    return score(pool, ScoreRequest(model=model, items=[Item(prompt=prompt, response=response)]))


def execution_name(pool: ModelPool) -> str | None:
    """The first execution model configured: /run_code runs in its sandbox."""
    return next((name for name, model in pool.config.models.items() if model.kind == "execution"), None)


def run_code(pool: ModelPool, request: RunCodeRequest) -> RunCodeResponse:
    """SandboxFusion's /run_code, through the sandbox of the first execution model configured."""
    name = execution_name(pool)
    if name is None:
        raise UnknownModel("model", "no execution model is configured: /run_code runs in its sandbox (a model with "
                                    "`kind: execution`; the default config has one where bubblewrap works)")
    execution = pool.get(name)
    response = run_code_with(execution, request)
    pool.served(Served("run_code", execution, "item", [None]))  # one program; nothing a label could score
    return response
