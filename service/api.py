"""What each endpoint does, as plain functions over a pool of loaded models.

The BentoML service and the CLI both call these, with the same schemas: an endpoint
only translates HTTP to a call here and an `InputError` to a 4xx.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Iterable

from plaudit.judges.base import Judge
from plaudit.rewardmodels.queries import score_queries
from plaudit.schemas import JudgeRequest, JudgeResponse
from plaudit.judges.hub import BackendHub
from plaudit.judges.registry import METHODS, JudgeConfig, build_judge
from plaudit.rewardmodels import (AGGREGATES, InputError, Item, LimitExceeded, ModelLoadError, Scorer, Steps,
                                  UnsupportedOperation, load_scorer)
from plaudit.rewardmodels.prm import DEFAULT_SEPARATOR, split_steps

from .config import Limits, ModelConfig, ServiceConfig, load_config
from .run_code import run_code as run_code_with
from plaudit.schemas import (CompareRequest, CompareResponse, GetRewardRequest, GetRewardResponse, ModelInfo,
                      ModelsResponse, RankRequest, RankResponse, RunCodeRequest, RunCodeResponse, ScoreRequest,
                      ScoreResponse, StepsRequest, StepsResponse)


class UnknownModel(InputError):
    """The request names a model that is not configured (HTTP 404)."""


class ModelPool:
    """The configured models and judges by name, each loaded once (at start-up in the service).
    A bare judge method (`tick`, `pairwise`, `direct`) is a judge on the default backend."""

    def __init__(self, config: ServiceConfig):
        self.config = config
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
            parts = {"lookup": self.get} if cfg.path is None else {}  # a composite's parts are configured models
            scorer = load_scorer(cfg.path, name=name, **cfg.load_options(), **parts)
            scorer.limit_tokens(self.config.limits.max_tokens)
            return scorer
        if name in self.config.judges or name in METHODS:
            judge = self.config.judges.get(name) or JudgeConfig(method=name)
            if self._hub is None:
                self._hub = BackendHub(self.config.backends)
            return build_judge(name, judge, self._hub, judge.backend or self.config.default_backend)
        raise UnknownModel(field, f"unknown model or judge {name!r}; models: {', '.join(self.config.models)}; "
                                  f"judges: {', '.join([*self.config.judges, *METHODS])}")

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
        """Stops the judges' backends (the local llama.cpp server among them)."""
        if self._hub is not None:
            self._hub.close()


def pool_for(model: str | None, config: str | None) -> tuple[ModelPool, str | None]:
    """The configured models and judges, and the name to ask for (a bare judge method too); a
    model given as a directory is served alone."""
    cfg = load_config(config)
    if model and model not in cfg.models and model not in cfg.judges and model not in METHODS:
        name = Path(model).name or model
        cfg = ServiceConfig(models={name: ModelConfig(path=model)}, default_model=name)
        model = None
    return ModelPool(cfg), model


def _ids(n: int) -> list[str]:
    return [uuid.uuid4().hex for _ in range(n)]


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
    return ScoreResponse(model=scorer.name, rewards=result.rewards, truncated=result.truncated,
                         ids=_ids(len(request.items)), uncertainty=result.spread, unscored=result.unscored,
                         errors=result.errors, details=details)


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
    return CompareResponse(model=scorer.name, probabilities=result.probabilities, margins=result.margins,
                           truncated=result.truncated, ids=_ids(len(request.pairs)), errors=result.errors)


def rank(pool: ModelPool, request: RankRequest) -> RankResponse:
    check_limits(pool.config.limits, "responses", len(request.responses),
                 _prompt_texts("prompt", request.prompt)
                 + [(f"responses[{i}]", r) for i, r in enumerate(request.responses)])
    scorer = pool.get(request.model)
    result = scorer.rank(request.prompt, request.responses, request.reference)
    return RankResponse(model=scorer.name, rewards=result.rewards, order=result.order, truncated=result.truncated,
                        matrix=result.matrix if request.matrix else None, ids=_ids(len(request.responses)))


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
    return StepsResponse(model=scorer.name, steps=trace, step_rewards=rewards, truncated=result.truncated,
                         aggregates={name: combine(rewards) for name, combine in AGGREGATES.items()},
                         id=_ids(1)[0])


def get_reward(pool: ModelPool, request: GetRewardRequest) -> GetRewardResponse:
    """OpenRLHF's contract. Queries are read back into conversations (rewardmodels/queries.py),
    so a conversation gets /score's reward however the trainer ended it. An empty request
    (a trainer sharding one sample over several URLs) is answered empty."""
    check_limits(pool.config.limits, "query", len(request.query),
                 [(f"query[{i}]", q) for i, q in enumerate(request.query)])
    scorer = pool.get(request.model)
    if not request.query:
        return GetRewardResponse(rewards=[], scores=[], extra_logs={}, ids=[])
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
    return GetRewardResponse(rewards=rewards, scores=rewards, extra_logs=logs, ids=_ids(len(rewards)))


def judge(pool: ModelPool, request: JudgeRequest) -> JudgeResponse:
    check_limits(pool.config.limits, "responses", len(request.responses),
                 _prompt_texts("instruction", request.instruction)
                 + [(f"responses[{i}]", r) for i, r in enumerate(request.responses)])
    response = pool.judge(request.judge).run(request)
    response.ids = _ids(len(response.results))
    return response


def score_one(pool: ModelPool, model: str | None, prompt, response: str) -> ScoreResponse:
    """The CLI's `plaudit score`: the same path as POST /score with one item."""
    return score(pool, ScoreRequest(model=model, items=[Item(prompt=prompt, response=response)]))


def run_code(pool: ModelPool, request: RunCodeRequest) -> RunCodeResponse:
    """SandboxFusion's /run_code, through the sandbox of the first execution model configured."""
    from plaudit.rewardmodels.execution import Execution

    for name in pool.config.models:
        if pool.config.models[name].kind == Execution.kind:
            execution = pool.get(name)
            return run_code_with(execution, request)
    raise UnknownModel("model", "no execution model is configured: /run_code runs in its sandbox (a model with "
                                "`kind: execution`; the default config has one where bubblewrap works)")
