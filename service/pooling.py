"""vLLM's pooling API (`POST /classify`, `POST /pooling`) over plaudit's scorers, for code
written against a vLLM reward server (verl's reward loop posts `{"model", "input": <the
templated conversation>, "use_activation": false}` and reads `data[-1].probs[-1]`).

A templated `input` is read as /get_reward reads a query (rewardmodels/queries.py): cut at
the last opening of the assistant's turn into its prompt and the response, whose end
markers are dropped, so the reward equals /score's on the same conversation. Without such an
opening the text is scored whole (BT and ensembles only). `messages` is one conversation,
scored as /score scores it. Token ids are decoded with the model's tokenizer first.

One number per sequence: kinds whose reward is a preference against the other responses
(GPM, code preference models, a pairwise judge) are refused, as are verifiable kinds,
whose reference (tests, an expected answer) the pooling API has no field for.
"""
from __future__ import annotations

import re
from typing import Sequence

from plaudit.judges.backends import BackendUnavailable
from plaudit.rewardmodels import InputError, Item, Scorer, Scores, UnsupportedOperation
from plaudit.rewardmodels.encoding import template_bos
from plaudit.rewardmodels.queries import score_queries, split_rendered
from plaudit.schemas import ClassifyRequest, Message

_FIELD = re.compile(r"^(?:query|prompts|labels|items)\[(\d+)\](.*)$")


def texts_of(scorer: Scorer, request: ClassifyRequest) -> list[str]:
    """The `input` texts, token ids decoded with the model's tokenizer. A text rendered by a
    template that starts with the BOS gets it back where the caller stripped it (verl does, as
    vLLM's tokenizer adds it again)."""
    given = request.input
    if isinstance(given, str) or all(isinstance(x, str) for x in given):
        texts = [given] if isinstance(given, str) else list(given)
        bos = template_bos(scorer.tokenizer) if scorer.tokenizer is not None else None
        return [bos + t if bos and not t.startswith(bos) else t for t in texts]
    sequences = [given] if all(isinstance(x, int) for x in given) else given
    tokenizer = scorer.tokenizer
    if tokenizer is None:
        raise InputError("input", f"token ids need a model that reads tokens; {scorer.name!r} ({scorer.kind}) "
                                  "reads text: send the text")
    for i, ids in enumerate(sequences):
        if not ids:
            raise InputError(f"input[{i}]", "no tokens to score")
        outside = next((t for t in ids if not 0 <= t < len(tokenizer)), None)
        if outside is not None:
            raise InputError(f"input[{i}]", f"token id {outside} is outside the model's vocabulary "
                                            f"(0..{len(tokenizer) - 1})")
    return [tokenizer.decode(ids, skip_special_tokens=False) for ids in sequences]


def score(scorer: Scorer, request: ClassifyRequest) -> tuple[Scores, list[str], list[int]]:
    """The scores of the request's sequences, the texts the model read (for usage) and the
    responses' lengths (for the monitor)."""
    if scorer.relative:
        raise UnsupportedOperation("model", f"model {scorer.name!r} ({scorer.kind}) gives a preference against "
                                            "the other responses to a prompt, not one number per sequence: use "
                                            "/rank or /score")
    try:
        if request.messages is not None:
            *prompt, response = request.messages
            if response.role != "assistant":
                raise InputError(f"messages[{len(prompt)}].role", "the last message is the response to score: "
                                                                  "its role is `assistant`")
            scored = scorer.score([Item(prompt=prompt, response=response.content)])
            return _numbers(scorer, scored), [_rendered(scorer, request.messages)], [len(response.content)]
        texts = texts_of(scorer, request)
        prompts = [split_rendered(text, scorer.turn_starts()) for text in texts]
        whole = None in prompts
        scored, _ = score_queries(scorer, texts, None if whole else prompts)
        lengths = [len(t) if whole else len(t) - len(p) for t, p in zip(texts, prompts)]
        return _numbers(scorer, scored), texts, lengths
    except UnsupportedOperation as e:
        if e.field != "prompts":
            raise
        raise InputError("input", f"no opening of the assistant's turn ({', '.join(map(repr, scorer.turn_starts()))}"
                                  f") in every input: model {scorer.name!r} ({scorer.kind}) needs the response "
                                  "apart from its prompt; send the conversation as its chat template renders it, "
                                  "or `messages`") from None
    except InputError as e:
        raise _as_sent(scorer, e, "messages" if request.messages is not None else "input") from None


def _as_sent(scorer: Scorer, error: InputError, where: str) -> InputError:
    """An error named as the caller sent the request (`input[i]`, `messages`); a reference the
    kind needs is one the pooling API cannot carry."""
    match = _FIELD.match(error.field or "")
    message = str(error)[len(f"{error.field}: "):]
    if match and (match[2] == ".reference" or error.field.startswith("labels")):
        return UnsupportedOperation("model", f"model {scorer.name!r} ({scorer.kind}) checks each response against "
                                             "a reference (tests, an expected answer), which the pooling API has no "
                                             "field for: use /score (`reference`) or /get_reward (`labels`)")
    if match:
        return type(error)(where if where == "messages" else f"input[{match[1]}]", message)
    return error


def _numbers(scorer: Scorer, scored: Scores) -> Scores:
    """One number for every sequence: a judge's unreadable answer is its neutral value (vLLM's
    answer has no place for none); a backend that failed is the whole answer's 503."""
    failed = next((e for e in scored.errors or () if e), None)
    if failed:
        raise BackendUnavailable(f"the judge's backend failed: {failed}")
    scored.rewards = [scorer.neutral_reward if r is None else r for r in scored.rewards]
    return scored


def _rendered(scorer: Scorer, messages: Sequence[Message]) -> str:
    """The conversation as the model reads it (its chat template), for counting its tokens."""
    turns = [m.model_dump() for m in messages]
    if scorer.tokenizer is not None and scorer.tokenizer.chat_template:
        return scorer.tokenizer.apply_chat_template(turns, tokenize=False)
    return "\n".join(m.content for m in messages)


def token_counts(scorer: Scorer, texts: Sequence[str]) -> list[int]:
    """Tokens the model read per sequence; 0 for kinds that read no tokens."""
    if scorer.tokenizer is None:
        return [0] * len(texts)
    return [len(scorer.tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
