"""Text to token ids, truncation, and length-sorted micro-batches.

Truncation keeps the response and cuts the prompt from the left: the reward is read at
the response's last token, so the response is what must survive. Every sequence is
tokenised once; batching only pads, sorted by length so padding waste stays small.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .base import Item, Message, Prompt, Templated
from .batch_limits import Batching  # noqa: F401  where the model code has always found it
from .queries import untemplated


class Tokens(list):
    """Token ids whose first `prefix` tokens are the prompt: sequences with the same prompt may
    compute it once (prefix.py)."""

    def __init__(self, ids: Sequence[int], prefix: int = 0):
        super().__init__(ids)
        self.prefix = prefix


def prefix_length(seq: Sequence[int]) -> int:
    return getattr(seq, "prefix", 0)


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [m.model_dump() if isinstance(m, Message) else dict(m) for m in prompt]


def _plain(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in as_messages(prompt))


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _fit(prefix: list[int], suffix: list[int], budget: int) -> tuple[list[int], list[int], bool]:
    """Cut the prefix from the left (then, only if it must, the suffix) to fit `budget`."""
    if len(prefix) + len(suffix) <= budget:
        return prefix, suffix, False
    keep = budget - len(suffix)
    if keep > 0:
        return prefix[len(prefix) - keep:], suffix, True
    return [], suffix[len(suffix) - budget:], True


def prompt_text(tokenizer, prompt: Prompt) -> str:
    """The prompt as the model sees it just before the response (generation prompt included)."""
    if isinstance(prompt, Templated):
        return str(prompt)
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(as_messages(prompt), tokenize=False, add_generation_prompt=True)
    return _plain(prompt)


def encode_item(tokenizer, item: Item, max_length: int) -> tuple[Tokens, bool]:
    """Token ids of prompt + response (chat template applied when there is one), marked with
    the prompt's length, and whether they were truncated."""
    if isinstance(item.prompt, Templated):  # a trainer's rendering: the response's turn is added as the template would
        if not tokenizer.chat_template:
            return _encode_pair(tokenizer, str(item.prompt), item.response, max_length)
        turn = assistant_turn(tokenizer, item.response)
        prefix, suffix, cut = _fit(_ids(tokenizer, item.prompt), _ids(tokenizer, turn), max_length)
        return Tokens(prefix + suffix, len(prefix)), cut
    if tokenizer.chat_template:
        messages = as_messages(item.prompt)
        full = tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": item.response}], tokenize=False)
        head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if not full.startswith(head):  # a template that rewrites earlier turns: cut the whole text
            head = ""
        prefix, suffix, cut = _fit(_ids(tokenizer, head), _ids(tokenizer, full[len(head):]), max_length)
        return Tokens(prefix + suffix, len(prefix)), cut
    return _encode_pair(tokenizer, _plain(item.prompt), item.response, max_length)


_PROBE = [{"role": "user", "content": "?"}]


def assistant_turn(tokenizer, response: str) -> str:
    """What the chat template renders after the generation prompt for an assistant message:
    `response<|im_end|>\n` for ChatML, with the template's own trimming or markup."""
    head = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(_PROBE + [{"role": "assistant", "content": response}], tokenize=False)
    return full[len(head):] if full.startswith(head) else response + (tokenizer.eos_token or "")


def generation_prompt(tokenizer) -> str | None:
    """What the chat template adds to open the assistant's turn (`<|im_start|>assistant\\n` for
    ChatML); None without a template or where the template adds nothing of its own."""
    if not tokenizer.chat_template:
        return None
    head = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    bare = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=False)
    return (head[len(bare):] or None) if head.startswith(bare) else None


def template_bos(tokenizer) -> str | None:
    """The BOS string the chat template starts its renderings with (`<|im_start|>` is SmolLM2's
    BOS, `<|begin_of_text|>` Llama 3's), or None."""
    bos = tokenizer.bos_token
    if not bos or not tokenizer.chat_template:
        return None
    return bos if tokenizer.apply_chat_template(_PROBE, tokenize=False).startswith(bos) else None


def end_markers(tokenizer) -> list[str]:
    """What may close a trainer's query for this tokenizer: the template's end of turn, eos, pad."""
    markers = [tokenizer.eos_token, tokenizer.pad_token]
    if tokenizer.chat_template:
        end = assistant_turn(tokenizer, "")
        markers += [end, end.strip()]
    return [m for m in dict.fromkeys(markers) if m]


def rendered_text(tokenizer, text: str) -> str:
    """A whole conversation without its end markers, closed as the template closes a turn."""
    return text + (assistant_turn(tokenizer, "") if tokenizer.chat_template else (tokenizer.eos_token or ""))


def query_messages(tokenizer, templated: str) -> Prompt:
    """A trainer's templated prompt as chat messages, when they render back to exactly that text
    with this tokenizer (a default system message the template adds itself is left to it);
    otherwise the text, marked as templated."""
    prompt = untemplated(templated)
    if isinstance(prompt, list) and tokenizer.chat_template:
        messages = as_messages(prompt)
        for start in (0, 1) if messages[0]["role"] == "system" and len(messages) > 1 else (0,):
            if tokenizer.apply_chat_template(messages[start:], tokenize=False, add_generation_prompt=True) == templated:
                return prompt[start:]
    return Templated(templated)


def _encode_pair(tokenizer, prompt: str, response: str, max_length: int) -> tuple[Tokens, bool]:
    """No chat template: the tokenizer's own pair encoding (e.g. [CLS] p [SEP] r [SEP]),
    with the prompt cut from the left before the special tokens are added."""
    backend = tokenizer.backend_tokenizer
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    first = backend.encode(prompt, add_special_tokens=False)
    second = backend.encode(response, add_special_tokens=False)
    prefix, suffix, cut = _fit(first.ids, second.ids, budget)
    if cut:
        first = backend.encode("", add_special_tokens=False) if not prefix else first
        first.truncate(len(prefix), direction="left")
        second.truncate(len(suffix), direction="left")
    pair = backend.post_process(first, second, add_special_tokens=True)
    prompt_part = next((i for i, part in enumerate(pair.sequence_ids) if part == 1), len(pair.ids))
    return Tokens(pair.ids, prompt_part), cut


def encode_text(tokenizer, text: str, max_length: int) -> tuple[list[int], bool]:
    """Token ids of a text that already carries its template and special tokens."""
    _, ids, cut = _fit([], _ids(tokenizer, text), max_length)
    return ids, cut


def micro_batches(lengths: Sequence[int], batching: Batching) -> list[list[int]]:
    """Indices grouped into batches of similar length, within the batch limits, at the least
    cost: sorted by length, the batches are runs of neighbours, and a dynamic programme picks
    the cut points minimising padded tokens plus the call overhead per batch (O(n x rows)).
    A sequence longer than the token limit goes alone."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    widths = [lengths[i] for i in order]
    overhead = batching.call_overhead_tokens or 0
    cost = [0.0] + [float("inf")] * len(order)  # cost[j]: the cheapest batching of the j shortest
    start = [0] * (len(order) + 1)  # where the last batch of that batching begins
    for end in range(1, len(order) + 1):
        width = widths[end - 1]  # the widest row of any batch that ends here
        for begin in range(end - 1, max(0, end - batching.max_batch_size) - 1, -1):
            rows = end - begin
            if rows > 1 and rows * width > batching.max_batch_tokens:
                break
            if cost[begin] + overhead + rows * width < cost[end]:
                cost[end], start[end] = cost[begin] + overhead + rows * width, begin
    batches: list[list[int]] = []
    end = len(order)
    while end:
        batches.append(order[start[end]:end])
        end = start[end]
    return batches[::-1]


def pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask; with right padding real tokens keep positions 0..n-1."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[row, : len(s)] = 1
    return ids.to(device), mask.to(device)


def fp32_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """A head's linear map in fp32 whatever the model's dtype (and outside autocast): in bf16 the
    step between representable rewards near |r| = 3 is 0.016, coarser than the margins a reward
    model is asked to tell apart."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.linear(x.float(), weight.float(), None if bias is None else bias.float())


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's state at its last real token (right padding: position mask.sum - 1)."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), mask.sum(dim=1) - 1]


def last_token_states(backbone: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The final hidden state at each row's last real token."""
    return last_token(backbone(input_ids=ids, attention_mask=mask).last_hidden_state, mask)


def run_batched(seqs: Sequence[Sequence[int]], forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                batching: Batching, pad_id: int, device: torch.device) -> list[torch.Tensor]:
    """Apply `forward(ids, mask) -> one row per sequence` over micro-batches; results in input order."""
    out: list[torch.Tensor | None] = [None] * len(seqs)
    with torch.inference_mode():
        for batch in micro_batches([len(s) for s in seqs], batching):
            rows = forward(*pad([seqs[i] for i in batch], pad_id, device))
            for i, row in zip(batch, rows.float().cpu()):
                out[i] = row
    return out  # type: ignore[return-value]
