"""Property tests of reward invariances (issue 7, "Reliability"), on the tiny models of conftest.py.

Hypothesis draws the items, their neighbours, their order and the micro-batch limits: a reward
must come out the same however it is batched, padded or ordered, and odd text (whitespace,
zero-width and control characters, emoji, right-to-left scripts, runs long enough to be cut)
must score as a finite number, or be refused with an InputError that names the entry.
"""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from plaudit.rewardmodels import Batching, InputError, Item, Steps, load_scorer
from plaudit.rewardmodels.encoding import encode_item
from plaudit.rewardmodels.queries import score_queries

# float32 matmuls over different batch shapes; on a GPU the scorers load in bf16 (device "auto"),
# where a batch's shape changes the rounding of its sums (the bound tests/test_gpu.py states)
TOL = 0.05 if torch.cuda.is_available() else 1e-4
MAX_LENGTH = 64  # small, so that the long texts below are truncated
SETTINGS = settings(max_examples=25, deadline=None)

ODD = ["", " ", "  \t\n  ", "\n\n\n", "\u200b\u200c\u200d\ufeff", "\u2060", "😀🎉👍🏽", "👨‍👩‍👧‍👦 family",
       "مرحبا بالعالم", "שלום עולם", "\u202eevil\u202c text", "\x00\x01\x07\x1b[31mred\x7f", "\r\n\r\n",
       "e\u0301\u0301\u0301", "𝕳𝖊𝖑𝖑𝖔", "中文字符测试", "<|im_end|>", "<s></s><pad>", "\ud7ff\ue000\U0010ffff"]
WORDS = ("the quick brown fox jumps over lazy dog def add return for range if not None hello world "
         "total zebra quartz 0123456789 assistant user").split()

words = st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
runs = st.builds(lambda unit, n: unit * n, st.sampled_from(["a", "ab ", " ", "😀", "\u200b", "日本", "\t"]),
                 st.integers(20, 300))  # around and past MAX_LENGTH tokens
texts = st.one_of(st.sampled_from(ODD), words, runs, st.text(max_size=60))
messages = st.lists(st.builds(lambda role, content: {"role": role, "content": content},
                              st.sampled_from(["system", "user", "assistant"]), texts), min_size=1, max_size=3)
items = st.builds(lambda prompt, response: Item(prompt=prompt, response=response), st.one_of(texts, messages), texts)


def close(a, b) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= TOL for x, y in zip(a, b))


# The last two: batches cut by padding cost (the CPU default), and filled to the limits whatever the padding.
BATCHINGS = [Batching(max_batch_size=1), Batching(max_batch_size=2), Batching(max_batch_size=3, max_batch_tokens=90),
             Batching(max_batch_size=32, max_batch_tokens=150), Batching(max_batch_size=32),
             Batching(max_batch_size=32, call_overhead_tokens=10**9)]


@pytest.fixture(scope="module", params=["tiny_bt", "tiny_bt_plain"])
def bt(request):
    """The BT model with a chat template and the one that joins prompt and response as a token pair,
    each loaded under every micro-batch limit of BATCHINGS (the first: one row per forward pass)."""
    path = request.getfixturevalue(request.param)
    return [load_scorer(path, max_length=MAX_LENGTH, batching=b) for b in BATCHINGS]


@given(target=items, neighbours=st.lists(items, max_size=12), data=st.data())
@SETTINGS
def test_bt_reward_does_not_depend_on_its_batch(bt, target, neighbours, data):
    """An item scores the same alone as among neighbours of any lengths, wherever it sits, under
    micro-batch limits that split the call differently; and it is a finite number."""
    [alone] = bt[0].score([target]).rewards
    assert math.isfinite(alone)
    position = data.draw(st.integers(0, len(neighbours)), label="position")
    batch = neighbours[:position] + [target] + neighbours[position:]
    scorer = data.draw(st.sampled_from(bt[1:]), label="scorer")
    rewards = scorer.score(batch).rewards
    assert abs(rewards[position] - alone) <= TOL
    assert all(math.isfinite(r) for r in rewards)


@given(batch=st.lists(items, min_size=2, max_size=12), data=st.data())
@SETTINGS
def test_bt_rewards_follow_a_permutation_of_the_items(bt, batch, data):
    """Reordering the items of a request reorders the rewards and truncation flags, nothing else."""
    order = data.draw(st.permutations(range(len(batch))), label="order")
    scorer = bt[-1]
    base = scorer.score(batch)
    shuffled = scorer.score([batch[i] for i in order])
    assert close(shuffled.rewards, [base.rewards[i] for i in order])
    assert shuffled.truncated == [base.truncated[i] for i in order]


@given(item=items)
@SETTINGS
def test_odd_text_scores_finite_and_truncation_is_reported(bt, item):
    """Whatever the characters, an item gets a finite reward; `truncated` says exactly whether
    its tokens were over max_length."""
    scorer = bt[-1]
    scored = scorer.score([item])
    assert math.isfinite(scored.rewards[0])
    whole, _ = encode_item(scorer.tokenizer, item, 10**6)
    assert scored.truncated == [len(whole) > MAX_LENGTH]


@given(queries=st.lists(texts, min_size=1, max_size=6))
@SETTINGS
def test_trainer_queries_are_scored_to_finite_numbers(bt, queries):
    """/get_reward's path without prompts: whatever the text (empty, only end markers, odd
    characters), it is closed as the template closes a turn and scored to a finite number, the
    same alone as in its batch (never a crash or NaN)."""
    scorer = bt[-1]
    together = score_queries(scorer, queries, None)[0].rewards
    assert all(math.isfinite(r) for r in together)
    assert close(together, [score_queries(scorer, [q], None)[0].rewards[0] for q in queries])


def test_a_conversation_without_messages_is_refused_by_the_schema():
    """Found by tests/test_fuzz.py: `"prompt": []` passed validation and crashed the chat template
    (HTTP 500); it is now a validation error on the prompt (HTTP 400)."""
    with pytest.raises(ValidationError) as refused:
        Item(prompt=[], response="x")
    assert {e["loc"][:1] for e in refused.value.errors()} == {("prompt",)}


# --- GPM: K responses to one prompt ---------------------------------------------------------------


@pytest.fixture(scope="module")
def gpm(tiny_gpm):
    return load_scorer(tiny_gpm, max_length=MAX_LENGTH,
                       batching=Batching(max_batch_size=3))


@given(prompt=st.one_of(texts, messages), responses=st.lists(texts, min_size=2, max_size=6), data=st.data())
@SETTINGS
def test_gpm_rank_is_equivariant_to_response_order(gpm, prompt, responses, data):
    """Ranking a permutation of the responses permutes the rewards and the preference matrix; the
    order is best first; skew-symmetry makes the rewards sum to zero."""
    order = data.draw(st.permutations(range(len(responses))), label="order")
    base = gpm.rank(prompt, responses)
    shuffled = gpm.rank(prompt, [responses[i] for i in order])
    assert close(shuffled.rewards, [base.rewards[i] for i in order])
    for row, i in zip(shuffled.matrix, order):
        assert close(row, [base.matrix[i][j] for j in order])
    assert [base.rewards[i] for i in base.order] == sorted(base.rewards, reverse=True)
    assert abs(sum(base.rewards)) <= TOL * len(responses)


@given(group=st.lists(texts, min_size=2, max_size=4),
       others=st.lists(st.tuples(st.one_of(texts, messages), st.lists(texts, min_size=2, max_size=3)), max_size=3),
       data=st.data())
@SETTINGS
def test_gpm_rewards_depend_only_on_their_own_prompt_group(gpm, group, others, data):
    """A GPM scores an item against the other items with its prompt: items with other prompts,
    wherever they are in the call, change nothing."""
    prompt = "Settle a game (#0): answer with one hand."
    mine = [Item(prompt=prompt, response=r) for r in group]
    call = mine + [Item(prompt=p, response=r) for p, responses in others if p != prompt for r in responses]
    order = data.draw(st.permutations(range(len(call))), label="order")
    mixed = gpm.score([call[i] for i in order]).rewards
    assert close([mixed[order.index(i)] for i in range(len(mine))], gpm.score(mine).rewards)


def test_gpm_names_a_prompt_without_tokens(gpm):
    """/get_reward's templated prompts: an empty one is refused as that prompt (it used to be named
    `query[2]`, past the end of the queries)."""
    with pytest.raises(InputError) as refused:
        score_queries(gpm, ["p1q1 apple", "p1q1 stone", "q2 tiger", "q2 piano"], ["p1", "p1", "", ""])
    assert refused.value.field == "prompts[2]"


# --- PRM: a reward per step -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prm(tiny_prm):
    return load_scorer(tiny_prm, kind="prm", max_length=MAX_LENGTH,
                       batching=Batching(max_batch_size=2))


traces = st.builds(lambda prompt, steps: Steps(prompt=prompt, steps=steps), st.one_of(texts, messages),
                   st.lists(st.one_of(st.sampled_from(ODD), words.map(lambda w: w[:30])), min_size=1, max_size=5))


@given(batch=st.lists(traces, min_size=1, max_size=5))
@SETTINGS
def test_prm_step_rewards_do_not_depend_on_other_traces_or_later_steps(prm, batch):
    """Each trace's step rewards are the same alone and in a batch; a trace over max_length is
    refused naming it; and (a causal model, no truncation) a step's reward ignores later steps."""
    alone = []
    for t in batch:
        try:
            alone.append(prm.score_steps([t])[0])
        except InputError as e:
            alone.append(e)
    refused = [i for i, a in enumerate(alone) if isinstance(a, InputError)]
    if refused:
        with pytest.raises(InputError) as error:
            prm.score_steps(batch)
        assert error.value.field == ("steps" if len(batch) == 1 else f"traces[{refused[0]}].steps")
        return
    for together, a in zip(prm.score_steps(batch), alone):
        assert close(together.step_rewards, a.step_rewards) and together.truncated == a.truncated
        assert all(0.0 <= r <= 1.0 for r in a.step_rewards)
    for t, a in zip(batch, alone):
        if not a.truncated and len(t.steps) > 1:
            [prefix] = prm.score_steps([Steps(prompt=t.prompt, steps=t.steps[:-1])])
            assert close(prefix.step_rewards, a.step_rewards[:-1])
