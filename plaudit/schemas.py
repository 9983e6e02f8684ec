"""Request and response bodies of the scoring API: the single source of the HTTP API,
its OpenAPI document, and what the CLI prints."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator


# ---- what is scored ----

class Message(BaseModel):
    """One chat turn, as in TRL's conversational format."""

    model_config = ConfigDict(extra="forbid")
    role: str = Field(min_length=1)
    content: str


# A conversation needs a message: a chat template has nothing to render from none.
Prompt = str | Annotated[list[Message], Field(min_length=1)]


REFERENCE_FIELD = Field(default=None, description=(
    "what a verifiable kind checks the response against: the tests for the execution kind (assert "
    "statements; {\"tests\": \"def check(candidate): ...\", \"entry_point\": NAME}; {\"fn_name\", \"inputs\", "
    "\"outputs\"}; or {\"cases\": [{\"input\", \"output\"}]}, with optional \"language\", \"compare\", "
    "\"float_tolerance\"); the expected answer for the match and numeric kinds; ignored by learned models and judges"))


class Item(BaseModel):
    """A (prompt, response) to score; the prompt is a string or chat messages."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    response: str
    reference: Any = REFERENCE_FIELD


class Pair(BaseModel):
    """Two responses to one prompt; the question is whether `a` beats `b`."""

    model_config = ConfigDict(extra="forbid")
    prompt: Prompt
    a: str
    b: str
    reference: Any = REFERENCE_FIELD
    criterion: str | None = Field(default=None, description=(
        "what 'better' means here, e.g. 'Which code runs faster?'; read by models that take one (a "
        "code preference model, a pairwise judge), ignored by reward models"))


# ---- what a judge is asked and what it answers ----

class JudgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    judge: str | None = Field(default=None, description=(
        "a configured judge, or a bare method (tick, pairwise, direct) on the default backend; "
        "the default judge when absent"))
    instruction: Prompt
    responses: list[str] = Field(min_length=1, description="the responses to judge; exactly two for pairwise")
    checklist: list[str] | None = Field(default=None, min_length=1, max_length=8, description=(
        "TICK only: YES/NO questions to use instead of generating them"))


class Answer(BaseModel):
    question: str
    answer: Literal["YES", "NO"] | None = Field(description="null when the judge's answer could not be read")
    p_yes: float | None = Field(description="P(YES)/(P(YES)+P(NO)) from logprobs, else 1 or 0 from the text")


class Verdict(BaseModel):
    """One response's verdict; the fields of the judge's method are filled."""

    reward: float | None = Field(description="what /score returns for it; null when unscored")
    unscored: int = Field(0, description="questions (or orders) whose answer could not be read")
    pass_rate: float | None = Field(None, description="TICK: fraction of scored questions answered YES")
    mean_p_yes: float | None = Field(None, description="TICK: mean P(YES) over scored questions")
    answers: list[Answer] | None = Field(None, description="TICK: one per checklist question")
    rating: float | None = Field(None, description="direct: the judge's 1-10 rating")
    error: str | None = Field(None, description=(
        "the judge's backend failed for this response after its retries (reward null): retry it later"))


class PairVerdict(BaseModel):
    probability: float | None = Field(description=(
        "P(first beats second), both orders averaged; 0.5 when the orders disagree; null if neither was read"))
    orders: list[float | None] = Field(description="P(first beats second) as read with the responses as given, "
                                                   "then swapped")
    consistent: bool | None = Field(description="both orders prefer the same response; null if one was unread")
    error: str | None = Field(None, description="the judge's backend failed for this pair after its retries")


class JudgeResponse(BaseModel):
    judge: str
    method: str
    checklist: list[str] | None = None
    checklist_source: Literal["generated", "cache", "caller"] | None = None
    results: list[Verdict]
    comparison: PairVerdict | None = None
    ids: list[str] | None = Field(None, description="an id per response, for feedback on it later (the service)")


# ---- the scoring endpoints ----

MODEL_FIELD = Field(default=None, description="a configured model name; the default model when absent")


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = MODEL_FIELD


class ScoreRequest(Request):
    items: list[Item] = Field(min_length=1, description=(
        "(prompt, response) items to score. A GPM model has no absolute reward: it scores each item by "
        "its mean preference against the other items with the same prompt in this request, so each "
        "prompt needs at least two items."))
    test_outcomes: bool = Field(default=False, description="verifiable kinds: each test's outcome in `details`")


class ScoreResponse(BaseModel):
    model: str
    rewards: list[float | None] = Field(description="one reward per item, in request order; null: a judge "
                                                    "could not read its own answer")
    truncated: list[bool] = Field(description="whether the item's prompt was cut to fit max_length")
    ids: list[str] = Field(description="an id per item, for feedback on it later")
    uncertainty: list[float] | None = Field(default=None, description=(
        "ensemble models only: the standard deviation of the members' rewards per item (the reward is "
        "their mean)"))
    unscored: list[int] | None = Field(default=None, description=(
        "judges only: per item, the questions whose answer could not be read; an item with none read "
        "has reward null (unscored, never the worst score)"))
    errors: list[str | None] | None = Field(default=None, description=(
        "judges only: per item, why the judge's backend gave no answer after its retries (reward null; "
        "retry the item later); when every item failed the request answers 503 instead"))
    details: list[dict[str, Any]] | None = Field(default=None, description=(
        "verifiable kinds only: per item, how the reward came about (execution: passed, total, all_passed, "
        "reason (timeout, memory, output_limit, error, no_code) and message; per-test outcomes in `tests` when "
        "the request asks for test_outcomes)"))
    deadline: list[bool] | None = Field(default=None, description=(
        "set by plaudit.client only, never by the server: per item, whether the call missed its deadline_s "
        "and the reward is the model's neutral value"))


class CompareRequest(Request):
    pairs: list[Pair] = Field(min_length=1)


class CompareResponse(BaseModel):
    model: str
    probabilities: list[float | None] = Field(description="P(a beats b) per pair; null when a judge could not "
                                                          "read its answer")
    margins: list[float | None] = Field(description="reward(a) - reward(b) per pair (a pairwise judge: P - 0.5)")
    truncated: list[bool]
    ids: list[str]
    errors: list[str | None] | None = Field(default=None, description=(
        "pairwise judges only: per pair, why the judge's backend gave no answer (probability null)"))


class RankRequest(Request):
    prompt: Prompt
    responses: list[str] = Field(min_length=1)
    reference: Any = REFERENCE_FIELD
    matrix: bool = Field(default=False, description="also return the K x K matrix of P(i beats j)")


class RankResponse(BaseModel):
    model: str
    rewards: list[float | None]
    order: list[int] = Field(description="indices into responses, best first; unscored ones last")
    truncated: list[bool]
    matrix: list[list[float | None]] | None = Field(default=None, description="P(i beats j), when asked for")
    ids: list[str] = Field(description="an id per response, for feedback on it later")


class StepsRequest(Request):
    """A trace to score step by step (process reward models): the steps, or a response
    cut into steps at `separator` (the model's own separator when absent)."""

    prompt: Prompt
    steps: list[str] | None = Field(default=None, min_length=1, description="the steps, in order")
    response: str | None = Field(default=None, description="the whole response, instead of `steps`")
    separator: str | None = Field(default=None, min_length=1,
                                  description="where `response` is cut into steps; default: the model's separator")

    @model_validator(mode="after")
    def _steps_or_response(self):
        if (self.steps is None) == (self.response is None):
            raise ValueError("give either `steps` or `response` (with an optional `separator`), not both or neither")
        if self.separator is not None and self.response is None:
            raise ValueError("`separator` goes with `response`; `steps` are already split")
        return self


class StepsResponse(BaseModel):
    model: str
    steps: list[str] = Field(description="the steps scored (the split response, when one was sent)")
    step_rewards: list[float] = Field(description="P(step is good), one per step")
    aggregates: dict[str, float] = Field(description="the step rewards combined: min, mean, prod, last")
    truncated: bool = Field(description="whether the prompt was cut to fit max_length")
    id: str = Field(description="an id for the trace, for feedback on it later")


class GetRewardRequest(BaseModel):
    """OpenRLHF's remote reward contract; queries arrive already chat-templated."""

    model_config = ConfigDict(extra="allow")
    query: list[str] = Field(description=(
        "prompt + response texts, templated by the caller (special tokens kept); empty: an empty answer"))
    prompts: list[str] | None = Field(default=None, description=(
        "the templated prompt of each query: the response is what follows it, scored as /score scores "
        "(prompt, response). Needed by every kind but BT (GPM and code preference models compare the "
        "queries of one prompt; PRMs and judges need the response apart)"))
    labels: list[Any] | None = Field(default=None, description=(
        "one per query: the reference of verifiable kinds (the execution kind's tests); others ignore them"))
    model: str | None = MODEL_FIELD


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    ids: list[str] = Field(description="an id per query, for feedback on it later (POST /feedback)")
    extra_logs: dict[str, list[float]] = Field(description=(
        "per query: truncated (1/0: the prompt was cut to fit), unfinished (1: no end-of-turn or eos, the "
        "generation was cut at max_tokens; scored as the text it is); ensembles: reward_std; judges: unscored "
        "(1 where the judge's answer could not be read and the reward is the judge's neutral value) and error "
        "(1 where the judge's backend failed for it and the reward is the neutral value)"))


# ---- vLLM's pooling API (/classify, /pooling), for code written against a vLLM reward server ----

class ClassifyRequest(BaseModel):
    """vLLM's /classify body. `input` (the completion form) or `messages` (the chat form); the
    fields vLLM defines that plaudit cannot honour are accepted only at their neutral value."""

    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, description=(
        "a configured model by its name or by its configured path (vLLM serves a model under its path; verl "
        "sends reward_model.model.path); the default model when absent"))
    input: str | list[str] | list[StrictInt] | list[list[StrictInt]] | None = Field(default=None, description=(
        "one text or several, each a whole conversation rendered by the model's chat template (special tokens "
        "kept), read as /get_reward reads a query: cut at the last opening of the assistant's turn into "
        "prompt and response; or token ids (one list, or one per sequence), decoded with the model's tokenizer"))
    messages: list[Message] | None = Field(default=None, min_length=2, description=(
        "one conversation whose last message is the assistant's response: scored as /score scores it"))
    use_activation: bool | None = Field(default=None, description=(
        "true (vLLM's default): P(good), the sigmoid of a reward model's reward (over its calibrated "
        "temperature, 1 unless `plaudit calibrate` set one), the reward itself for kinds already on 0..1; "
        "false: the raw reward /score gives"))
    activation: bool | None = Field(default=None, description="vLLM's older spelling of use_activation")
    add_special_tokens: bool | None = Field(default=None, description=(
        "accepted for vLLM's clients: the text is read as it is, so a BOS the caller left or stripped is the "
        "same either way"))
    truncate_prompt_tokens: Literal[-1] | None = Field(default=None, description=(
        "only -1 or null: plaudit cuts a sequence over the model's limit itself (from the prompt's left) and "
        "says so per item"))
    priority: Literal[0] = Field(default=0, description="only 0: plaudit schedules requests in arrival order")
    user: str | None = None
    request_id: str | None = Field(default=None, description="used as the answer's id")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.input is None) == (self.messages is None):
            raise ValueError("send `input` (rendered texts or token ids) or `messages` (one conversation), "
                             "not both and not neither")
        if self.input == [] or self.input == "":
            raise ValueError("input: nothing to score")
        if None not in (self.use_activation, self.activation) and self.use_activation != self.activation:
            raise ValueError("use_activation and activation disagree; send one (activation is its older name)")
        return self

    def activated(self) -> bool:
        """Whether the answer is P(good) (vLLM's default) or the raw reward."""
        chosen = self.use_activation if self.use_activation is not None else self.activation
        return True if chosen is None else chosen


class PoolingRequest(ClassifyRequest):
    """vLLM's /pooling body: /classify's, with the pooling task and encoding."""

    task: Literal["classify"] | None = Field(default=None, description=(
        "only classify (or null): plaudit's models pool into one reward per sequence, not embeddings"))
    encoding_format: Literal["float"] = Field(default="float", description="only float: the numbers as JSON")
    dimensions: None = Field(default=None, description="only null: a reward has one dimension")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="tokens the model read (0 for kinds that read no tokens: rules, math)")
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassificationData(BaseModel):
    index: int
    label: str | None = Field(description="always null: a reward model has one class, with no name")
    probs: list[float] = Field(description="one value: the reward, or P(good) with activation (see the request)")
    num_classes: int


class ClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str = Field(description="the model as the request named it (its name or its path)")
    data: list[ClassificationData]
    usage: Usage
    ids: list[str] = Field(description="plaudit: an id per sequence, for feedback on it later (POST /feedback)")


class PoolingData(BaseModel):
    index: int
    object: Literal["pooling"] = "pooling"
    data: list[float]


class PoolingResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[PoolingData]
    usage: Usage
    ids: list[str] = Field(description="plaudit: an id per sequence, for feedback on it later (POST /feedback)")


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, description="an id from a scoring answer")
    label: Literal[0, 1] = Field(description="for a pair: 1 if a won; for an item: 1 if it was good (correct)")


class FeedbackRequest(BaseModel):
    """Labels for predictions served earlier, from a verifier or from people."""

    model_config = ConfigDict(extra="forbid")
    items: list[Feedback] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    accepted: int
    unknown: list[str] = Field(description="ids never served, already labelled, or expired; nothing else failed")
    reasons: list[str] = Field([], description=(
        "why each id in `unknown` was refused, in its order: forged (forged, altered or not an id), other_key "
        "(signed by another key: another replica's, or this server's before a restart), expired, already_labelled"))


class ModelInfo(BaseModel):
    name: str
    kind: str
    default: bool
    metadata: dict[str, Any]
    stats: dict[str, Any] = Field(
        description="serving counters, e.g. forward calls vs sequences (how well requests merge)")


class ModelsResponse(BaseModel):
    models: list[ModelInfo]


# ---- SandboxFusion's /run_code, for trainers that already speak it (verl) ----

class RunCodeRequest(BaseModel):
    """SandboxFusion's request: one program, compiled when its language is, run once with stdin."""

    model_config = ConfigDict(extra="ignore")  # as SandboxFusion: unknown keys are ignored
    code: str
    language: str = Field(description="SandboxFusion's name (python, cpp, java, nodejs, go, rust, bash, "
                                      "typescript) or plaudit's (c, and the fence tags)")
    compile_timeout: float = Field(10.0, ge=0.1, le=120)
    run_timeout: float = Field(10.0, ge=0.1, le=120)
    memory_limit_MB: int = Field(-1, le=16384, description="address space; -1: the execution model's memory_mb")
    stdin: str | None = None
    files: dict[str, str | None] = Field(default_factory=dict,
                                         description="relative path -> base64 content, placed in the working folder")
    fetch_files: list[str] = Field(default_factory=list, description="paths read back after the run (base64)")


class CommandRunResult(BaseModel):
    status: Literal["Finished", "Error", "TimeLimitExceeded"]
    execution_time: float | None = None
    return_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None


class RunCodeResponse(BaseModel):
    status: Literal["Success", "Failed", "SandboxError"]
    message: str = ""
    compile_result: CommandRunResult | None = None
    run_result: CommandRunResult | None = None
    executor_pod_name: str | None = None
    files: dict[str, str] = Field(default_factory=dict)


class ErrorResponse(BaseModel):
    """plaudit's own error answers (401, 404, 413, 422, 503); BentoML's 400 for a body that does
    not match the schema has its own shape."""

    error: str
    field: str | None = Field(description="where in the request the problem is, when it is in the request")


__all__ = ["ClassifyRequest", "ClassifyResponse", "CompareRequest", "CompareResponse", "ErrorResponse", "FeedbackRequest", "FeedbackResponse",
           "GetRewardRequest", "GetRewardResponse", "JudgeRequest", "JudgeResponse", "ModelInfo",
           "ModelsResponse", "PoolingRequest", "PoolingResponse", "RankRequest", "RankResponse", "ScoreRequest", "ScoreResponse", "StepsRequest",
           "StepsResponse"]
