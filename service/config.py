"""The service's configuration: which models and judges to serve under which names, the
judges' backends, request limits and API keys.

Read from the YAML named by `--config` or $PLAUDIT_CONFIG; without one, the embedded
default models are served: `default` (BT), `default-gpm` and `default-prm`, the judge
`local` (TICK on the packaged SmolLM2 through llama.cpp's server), and the execution reward
`execution` with the composite `default-code` and the consensus reward `default-consensus`
(B4 over the prompt's examples, in `execution`'s sandbox). Relative model paths
are resolved against the YAML file's folder.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

import plaudit
from plaudit.judges.hub import BackendSpec
from plaudit.judges.local import LocalBackendConfig, local_judge_installed
from plaudit.judges.registry import METHODS, JudgeConfig
from plaudit.rewardmodels import Batching, ModelLoadError
from plaudit.rewardmodels.sandbox import sandbox_unavailable

log = logging.getLogger("plaudit")

# The defaults are package data: they load from wherever plaudit is installed.
MODELS_DIR = Path(plaudit.__file__).resolve().parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "default-bt"
PACKAGED = "packaged:"  # `path: packaged:default-bt` in a config names a packaged default model
DEFAULT_MODELS = {"default": DEFAULT_MODEL_DIR, "default-gpm": MODELS_DIR / "default-gpm",
                  "default-prm": MODELS_DIR / "default-prm"}


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str | None = Field(None, description=(
        "a model folder, or `packaged:NAME` for a packaged default; none for kinds without weights "
        "(execution, rules, math, composite), which need `kind`"))
    kind: str | None = Field(None, description="checked against the model's metadata when both are given")
    settings: dict[str, Any] = Field(default={}, description="the kind's own settings (execution: sandbox, slots, ...)")
    device: str = Field("auto", description="a torch device (cpu, cuda, cuda:1); auto: CUDA when present, else CPU")
    dtype: str = Field("auto", description="float32, bfloat16 or float16; auto: bfloat16 on a GPU, float32 on CPU")
    max_length: int | None = Field(default=None, gt=0, description=(
        "tokens a sequence is cut to (the prompt first, from its left); default: the model's own"))
    max_batch_size: int = Field(default=32, gt=0, description="sequences per forward batch, at most")
    max_batch_tokens: int = Field(default=16384, gt=0, description=(
        "padded tokens per forward batch, at most (a longer single sequence still runs alone)"))
    call_overhead_tokens: int | None = Field(default=None, ge=0, description=(
        "a forward call's cost in padded tokens, weighed against padding when batches are cut; "
        "default by device: 32 on CPU, 16384 on GPU"))
    linger: float | None = Field(default=None, ge=0, description=(
        "how long the batcher waits for its last batch's callers to return, as a share of that "
        "batch's forward time; default by device: 0 on CPU, 0.5 on GPU"))
    prefix_cache_mb: float = Field(default=512, ge=0, description=(
        "memory for prompts' keys and values kept between requests, so that the later samples of a "
        "prompt (one per request, as RL trainers send them) read it from the cache, least recently used "
        "out; 0 shares a prompt within one forward batch only. A 640-token prompt takes about 30 MB "
        "on SmolLM2-135M in fp32"))
    share_prefixes: bool = Field(default=True, description=(
        "compute a prompt once for the responses that share it (prefix.py); false runs every sequence whole"))

    @model_validator(mode="after")
    def _path_or_kind(self):
        """A folder, or a kind without weights whose settings its `Settings` model accepts."""
        from plaudit.rewardmodels.base import validated_settings
        from plaudit.rewardmodels.registry import scorer_class

        if self.path is not None:
            if self.settings:
                raise ValueError("settings are for kinds without weights (execution, rules, math, composite); "
                                 "a model folder is configured by its own fields")
            return self
        if self.kind is None:
            raise ValueError("a model needs a `path`, or a `kind` that has no weights (execution)")
        try:
            scorer = scorer_class(self.kind)
            if scorer.Settings is None:
                raise ModelLoadError(f"the {self.kind} kind loads a model folder: give its `path`")
            validated_settings(scorer.Settings, self.settings, self.kind)
        except ModelLoadError as e:
            raise ValueError(str(e)) from None
        return self

    def load_options(self) -> dict:
        """What `load_scorer` takes: the kind and its load context's fields."""
        return {"kind": self.kind, "settings": self.settings, "device": self.device, "dtype": self.dtype,
                "max_length": self.max_length,
                "batching": Batching(self.max_batch_size, self.max_batch_tokens, self.call_overhead_tokens,
                                     self.linger, self.prefix_cache_mb, self.share_prefixes)}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_items: int = Field(default=512, gt=0, description="items, pairs or responses per request")
    max_chars: int = Field(default=32000, gt=0, description="characters per prompt or response text")
    max_tokens: int = Field(default=262_144, gt=0, description=(
        "tokens per request that a model reads (after truncation to its max_length), all items together"))
    max_queue: int = Field(default=256, gt=0, description=(
        "requests being answered or waiting, per worker; past it a 503 with Retry-After, so latency "
        "stays bounded under overload instead of growing with the queue"))


API_KEYS_ENV = "PLAUDIT_API_KEYS"  # the service's accepted keys


class AuthConfig(BaseModel):
    """API keys for the scoring endpoints. None configured (here or in $PLAUDIT_API_KEYS): open."""

    model_config = ConfigDict(extra="forbid")
    api_keys: list[SecretStr] = Field(default=[], description=(
        f"accepted keys, sent as `Authorization: Bearer KEY` or `X-API-Key: KEY`; ${API_KEYS_ENV} "
        "(comma-separated) adds more"))
    open_paths: list[str] = Field(default=["/healthz", "/livez", "/readyz", "/metrics", "/", "/docs", "/docs.json",
                                           "/v1/ping"],
                                  description="paths answered without a key (health, readiness, metrics, API docs)")

    def keys(self) -> list[str]:
        from_env = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        return [k.get_secret_value() for k in self.api_keys] + from_env


class MonitoringConfig(BaseModel):
    """Sizes of the online monitoring's windows (`service/monitoring.py`)."""

    model_config = ConfigDict(extra="forbid")
    reward_window: int = Field(1000, ge=10, description="rewards per model for mean, std, length bias and drift")
    feedback_window: int = Field(1000, ge=10, description="labelled predictions per model for ECE, Brier, accuracy")
    max_pending: int = Field(200_000, ge=1, description=(
        "labelled ids each process remembers, to refuse a second label for one id; the oldest go first"))
    pending_ttl_s: float = Field(86_400, gt=0, description="how long an id waits for its feedback")
    feedback_key: str | None = Field(None, description=(
        "the key that signs feedback ids (else $PLAUDIT_FEEDBACK_KEY); give every worker and replica the "
        "same one, so any of them accepts a label for an id another served. Without one `plaudit serve` "
        "makes one when it starts and gives it to its workers (`bentoml serve`'s workers share one the "
        "same way): ids are then refused after a restart and by other replicas"))
    update_interval_s: float = Field(1.0, ge=0, description="how often the reward window's gauges are recomputed")


LOCAL_BACKEND = "local"


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    models: dict[str, ModelConfig]
    default_model: str = "default"  # a model or a judge (OpenRLHF names none in its requests)
    judges: dict[str, JudgeConfig] = {}
    default_judge: str | None = None  # for POST /judge without a name: this, else the first judge, else tick
    # Where judges send their questions. `local` (llama.cpp on the packaged SmolLM2) is always
    # there unless redefined; it starts only when a judge uses it.
    backends: dict[str, BackendSpec] = {}
    default_backend: str = LOCAL_BACKEND  # for judges without a backend, and bare method names
    limits: Limits = Limits()
    auth: AuthConfig = AuthConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    workers: int = Field(1, ge=1, description=(
        "BentoML worker processes, each with its own copy of every model (and its own local llama.cpp "
        "server if a judge uses it): memory grows with each. Feedback, calibration and the prefix and "
        "checklist caches are per worker except what the feedback key and Prometheus's sums share"))

    @model_validator(mode="after")
    def _names_are_consistent(self):
        self.backends = {LOCAL_BACKEND: LocalBackendConfig(local=True), **self.backends}
        if self.default_model not in {*self.models, *self.judges}:  # a judge: the reward of callers that name none
            raise ValueError(f"default_model {self.default_model!r} is not among models or judges: "
                             f"{sorted(self.models) + sorted(self.judges)}")
        if self.default_backend not in self.backends:
            raise ValueError(f"default_backend {self.default_backend!r} is not among backends: {sorted(self.backends)}")
        for name, judge in self.judges.items():
            if name in self.models or name in METHODS:
                raise ValueError(f"judges.{name}: the name is taken by a model or a judge method")
            if judge.backend is not None and judge.backend not in self.backends:
                raise ValueError(f"judges.{name}.backend: {judge.backend!r} is not among backends: "
                                 f"{sorted(self.backends)}")
        if self.default_judge is not None and self.default_judge not in {*self.judges, *METHODS}:
            raise ValueError(f"default_judge {self.default_judge!r} is neither a configured judge nor a method")
        return self

    def judge_name(self, name: str | None) -> str:
        return name or self.default_judge or next(iter(self.judges), "tick")


# default-code: the execution reward, plus the default BT model as a tie-breaker among the
# responses that pass every test: reward = tests + 0.1 * sigmoid(r_BT) * [tests == 1].
DEFAULT_CODE = {"parts": {"tests": {"model": "execution"},
                          "preference": {"model": "default", "weight": 0.1, "transform": "sigmoid",
                                         "requires": {"tests": 1.0}}}}

# default-consensus: the responses to one prompt scored together by B4's posterior over their
# pass matrix, on the item's tests or the prompt's examples, run in `execution`'s sandbox
# (rewardmodels/consensus.py; B4 picked better than CodeT on HumanEval, docs/consensus.md).
DEFAULT_CONSENSUS = {"method": "b4", "execution": "execution"}


def default_config() -> ServiceConfig:
    """The three packaged models; `math`; the judge `local` when the judge-local extra is
    installed; and `execution` with `default-code` and `default-consensus` when bubblewrap can
    sandbox programs here.
    Without either, the rest is served and the log says what is missing."""
    models = {name: ModelConfig(path=str(path)) for name, path in DEFAULT_MODELS.items()}
    models["math"] = ModelConfig(kind="math")
    judges = {"local": JudgeConfig(method="tick", backend=LOCAL_BACKEND)}
    if not local_judge_installed():
        log.warning("the judge `local` is not served: xllamacpp is missing (pip install 'plaudit[judge-local]')")
        judges = {}
    unavailable = sandbox_unavailable()
    if unavailable:
        log.warning("`execution`, `default-code` and `default-consensus` are not served: %s", unavailable)
    else:
        models["execution"] = ModelConfig(kind="execution")
        models["default-code"] = ModelConfig(kind="composite", settings=DEFAULT_CODE)
        models["default-consensus"] = ModelConfig(kind="consensus", settings=DEFAULT_CONSENSUS)
    return ServiceConfig(models=models, judges=judges)


def load_config(path: str | os.PathLike | None = None) -> ServiceConfig:
    path = path or os.environ.get("PLAUDIT_CONFIG")
    if not path:
        return default_config()
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
        config = ServiceConfig.model_validate(raw)
    except (OSError, yaml.YAMLError) as e:
        raise ModelLoadError(f"config {file}: {e}") from None
    except ValidationError as e:
        err = e.errors()[0]
        raise ModelLoadError(f"config {file}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    for model in config.models.values():
        if model.path is None:
            continue
        if model.path.startswith(PACKAGED):  # a default shipped in the package, wherever it is installed
            model.path = str(MODELS_DIR / model.path.removeprefix(PACKAGED))
            continue
        local = file.parent / model.path
        if not Path(model.path).is_absolute() and local.exists():
            model.path = str(local.resolve())
    return config
