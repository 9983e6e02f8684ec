"""What an RL trainer sends to /get_reward, read back into (prompt, response) so that a
conversation gets the reward /score gives it, however the trainer ended it.

OpenRLHF decodes prompt + generated tokens with the special tokens kept: a query ends with
the end-of-turn token when generation stopped (`<|im_end|>` for ChatML), with nothing
when it hit max_tokens, and older versions add pad tokens. /score renders the chat
template's own ending (`<|im_end|>\\n`). The rule, in one place:

- The query starts with its prompt (leading pad tokens aside): the response is the rest,
  its trailing end-of-turn, eos and pad markers removed, and the pair is scored as /score
  scores (prompt, response), the prompt taken as already templated (`Templated`).
- Without prompts the text is taken whole: its end markers removed, then the template's
  own end-of-turn appended (the eos for a model without a template).
- A generation cut at max_tokens (no end marker) is scored as the same text ended there:
  exactly what /score gives that text, and flagged `unfinished` in the answer.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from .base import InputError, Item, Message, Prompt, Scores

if TYPE_CHECKING:
    from .base import Scorer

@dataclass
class Query:
    prompt: str | None  # the templated prompt the query starts with; None when the caller sent none
    response: str  # the rest, without its end markers (the whole text when there is no prompt)
    ended: bool  # an end-of-turn, eos or pad marker closed it: the generation was not cut at max_tokens


def strip_end(text: str, markers: Sequence[str]) -> tuple[str, bool]:
    """`text` without any run of trailing `markers` (longest first), and whether there was one."""
    ordered = sorted((m for m in markers if m), key=len, reverse=True)
    ended = False
    while match := next((m for m in ordered if text.endswith(m)), None):
        text, ended = text[:-len(match)], True
    return text, ended


def _strip_start(text: str, markers: Sequence[str]) -> str:
    ordered = sorted((m for m in markers if m), key=len, reverse=True)
    while match := next((m for m in ordered if text.startswith(m)), None):
        text = text[len(match):]
    return text


def read_queries(texts: Sequence[str], prompts: Sequence[str] | None, end_markers: Sequence[str],
                 pad_markers: Sequence[str] = ()) -> list[Query]:
    if prompts is None:
        return [Query(None, *strip_end(t, end_markers)) for t in texts]
    if len(prompts) != len(texts):
        raise InputError("prompts", f"{len(prompts)} prompts for {len(texts)} queries")
    queries = []
    for i, (text, prompt) in enumerate(zip(texts, prompts)):
        if not text.startswith(prompt):
            text = _strip_start(text, pad_markers)  # left padding kept by older trainers
            if not text.startswith(prompt):
                raise InputError(f"query[{i}]", f"does not start with its prompt (prompts[{i}]): the response "
                                               "cannot be told apart")
        queries.append(Query(prompt, *strip_end(text[len(prompt):], end_markers)))
    return queries


def split_rendered(text: str, turn_starts: Sequence[str]) -> str | None:
    """The prompt of a whole rendered conversation: the text up to and including the last
    opening of the assistant's turn (the response follows it); None when there is none."""
    found = [(text.rfind(start), start) for start in turn_starts if start]
    at, start = max(found, default=(-1, ""))
    return None if at < 0 else text[:at + len(start)]


def score_queries(scorer: "Scorer", texts: Sequence[str], prompts: Sequence[str] | None,
                  labels: Sequence[Any] | None = None) -> tuple[Scores, list[bool]]:
    """Rewards for trainer-rendered queries as /score gives their conversations (`labels` are
    their references), and per query whether its generation ended (False: cut at max_tokens)."""
    if labels is not None and len(labels) != len(texts):
        raise InputError("labels", f"{len(labels)} labels for {len(texts)} queries")
    references = list(labels) if labels is not None else [None] * len(texts)
    queries = read_queries(texts, prompts, scorer.end_markers(), scorer.pad_markers())
    try:
        if prompts is None:
            scored = scorer.score_rendered([q.response for q in queries])
        else:
            # model_construct: a Templated prompt must reach the encoder as it is, not as a plain str
            scored = scorer.score([Item.model_construct(prompt=scorer.query_prompt(q.prompt), response=q.response,
                                                        reference=reference)
                                   for q, reference in zip(queries, references)])
    except InputError as e:  # named as the caller sent it: prompts[i], query[i], labels[i]
        raise type(e)(_request_field(e.field), str(e)[len(f"{e.field}: "):]) from None
    return scored, [q.ended for q in queries]


_ITEM_FIELD = re.compile(r"^items\[(\d+)\](?:\.(\w+))?")
_AS_SENT = {"prompt": "prompts", "reference": "labels", "response": "query", None: "query"}


def _request_field(field: str | None) -> str | None:
    match = _ITEM_FIELD.match(field or "")
    return f"{_AS_SENT.get(match[2], 'query')}[{match[1]}]" if match else field


# ---- chat templates read back into messages (for judges, which read messages, not tokens) ----

_CHATML = re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>\n?", re.S)
_LLAMA3 = re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S)
_FORMATS = ((_CHATML, "<|im_start|>assistant\n"), (_LLAMA3, "<|start_header_id|>assistant<|end_header_id|>\n\n"))


def parse_chat(text: str) -> list[dict[str, str]] | None:
    """The messages of a ChatML or Llama-3 rendering that ends with the assistant's generation
    prompt; None for any other text."""
    for pattern, generation_prompt in _FORMATS:
        if not text.endswith(generation_prompt):
            continue
        body = _strip_start(text[:-len(generation_prompt)], ("<|begin_of_text|>", "<s>"))
        messages, end = [], 0
        for match in pattern.finditer(body):
            if match.start() != end:
                break
            messages.append({"role": match[1], "content": match[2]})
            end = match.end()
        if messages and end == len(body):
            return messages
    return None


def untemplated(text: str) -> Prompt:
    """Chat messages when the text is a known rendering of them, else the text as it is."""
    messages = parse_chat(text)
    return [Message(**m) for m in messages] if messages else text
