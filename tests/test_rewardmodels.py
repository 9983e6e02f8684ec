"""Tests for the reward-model library (rewardmodels/): scoring invariances, encoding,
loading errors, batching across threads and LoRA merging.

Every model here is a tiny random 2-layer Llama from conftest.py: the numbers mean
nothing, but anything that makes a reward depend on batch size, padding, order or
neighbours shows up as a difference between two ways of computing the same reward.
"""
from __future__ import annotations

import copy

import json
import math
import itertools
import random
import shutil
import threading
import time

import pytest
import torch
from torch import nn

from conftest import make_tiny
from plaudit.rewardmodels import KINDS, Batching, InputError, Item, ModelLoadError, Pair, load_scorer
from plaudit.rewardmodels.batcher import ForwardBatcher
from plaudit.rewardmodels.bt import last_token_rewards
from plaudit.rewardmodels.queries import score_queries
from plaudit.rewardmodels.encoding import encode_item, micro_batches
from plaudit.rewardmodels.loading import choose_device
from plaudit.rewardmodels.lora import add_lora, apply_adapter, target_modules

TOL = 1e-4

# Words the tiny tokenizer knows well and words it must spell out byte by byte.
WORDS = ("the quick brown fox jumps over lazy dog def add return for range if not None hello world "
         "total zebra quartz 0123456789 assistant user").split()


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def mixed_items(n: int = 32, seed: int = 0) -> list[Item]:
    """Items whose token lengths range from a handful to several hundred, a few with chat prompts."""
    rng = random.Random(seed)
    prompt_words = [1, 2, 3, 45, 8, 70, 1, 15, 5, 30, 2, 4]
    response_words = [1, 1, 25, 1, 3, 10, 40, 2, 1, 5, 2, 15, 4]
    items = []
    for i in range(n):
        prompt = words(rng, prompt_words[i % len(prompt_words)])
        response = words(rng, response_words[i % len(response_words)])
        if i % 5 == 3:  # a conversation instead of a string
            prompt = [{"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}]
        items.append(Item(prompt=prompt, response=response))
    return items


@pytest.fixture(scope="module", params=["tiny_bt", "tiny_bt_plain"])
def model_dir(request):
    """Each test using this runs for the chat-template model and the pair-encoding one."""
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def scorer(tiny_bt):
    return load_scorer(tiny_bt)


@pytest.fixture(scope="module")
def plain_scorer(tiny_bt_plain):
    return load_scorer(tiny_bt_plain)


def close(a, b, tol=TOL):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def max_diff(a, b):
    return max(abs(x - y) for x, y in zip(a, b))


# --- 1. batch invariance ---------------------------------------------------------------------------


def test_rewards_do_not_depend_on_batch_size(model_dir):
    """The spec's first requirement (RewardBench #137): a reward is the same whatever batch it
    is scored in. Scored at batch sizes 1, 7 and 32, and one item per call, all must agree."""
    items = mixed_items()
    alone_scorer = load_scorer(model_dir, batching=Batching(max_batch_size=1, share_prefixes=False))
    lengths = [len(encode_item(alone_scorer.tokenizer, it, alone_scorer.max_length)[0]) for it in items]
    assert max(lengths) > 10 * min(lengths) and 200 < max(lengths) < 512, f"items are not mixed enough: {sorted(lengths)}"

    alone = [alone_scorer.score([it]).rewards[0] for it in items]
    assert len({round(r, 4) for r in alone}) > 16, "rewards are nearly constant: the check would be vacuous"
    for size in (1, 7, 32):  # a call costing more than any padding: batches are filled to `size`
        whole = load_scorer(model_dir, batching=Batching(max_batch_size=size, call_overhead_tokens=10**9,
                                                         share_prefixes=False))
        seen: list[list[int]] = []  # real lengths of the rows of every forward pass
        hook = whole.model.base_model.register_forward_pre_hook(
            lambda m, args, kwargs: seen.append(kwargs["attention_mask"].sum(1).tolist()), with_kwargs=True)
        try:
            rewards = whole.score(items).rewards
        finally:
            hook.remove()
        assert max(len(rows) for rows in seen) == size
        if size > 1:  # padding really happened, so the test covers it
            assert any(len(set(rows)) > 1 for rows in seen)
        assert close(rewards, alone), f"batch size {size}: max diff {max_diff(rewards, alone)}"
        # and with prompts computed once for the items that share them (prefix.py)
        shared = load_scorer(model_dir, batching=Batching(max_batch_size=size, call_overhead_tokens=10**9))
        rewards = shared.score(items).rewards
        assert close(rewards, alone), f"batch size {size}, shared prompts: max diff {max_diff(rewards, alone)}"


def test_rewards_do_not_depend_on_item_order(model_dir):
    """Shuffling the items of a call permutes the rewards and changes nothing else."""
    items = mixed_items(seed=1)
    s = load_scorer(model_dir, batching=Batching(max_batch_size=7))
    base = s.score(items).rewards
    for seed in (0, 1):
        perm = list(range(len(items)))
        random.Random(seed).shuffle(perm)
        shuffled = s.score([items[i] for i in perm]).rewards
        assert close([shuffled[perm.index(i)] for i in range(len(items))], base)


def test_token_limit_per_batch_keeps_rewards(model_dir):
    """A tight max_batch_tokens splits the call differently again; rewards stay put."""
    items = mixed_items(seed=2)
    loose = load_scorer(model_dir).score(items).rewards
    tight = load_scorer(model_dir, batching=Batching(max_batch_size=32, max_batch_tokens=600)).score(items).rewards
    assert close(tight, loose)


# --- 2. padding -------------------------------------------------------------------------------------


def test_last_token_rewards_ignore_right_padding(tiny_bt):
    """Reading the reward at the last real token: a padded row scores like the row alone, even
    when the pad id is also the end-of-turn id that ends the row (SmolLM2's case)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bt)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bt, dtype=torch.float32).eval()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    model.config.pad_token_id = im_end  # pad == end of turn
    rows = [
        [4, 90, 88, 264, 204, 294, 78, im_end],  # ends with the token that is also the pad id
        [4, 90, 88, 264, 204, 294, 78, 89, 74, 262, 226, 75, 90, 83, im_end, 204],
        [4, 70, 88],
        [4, 70, 88, 88, 78, im_end, im_end],  # two of them at the end
    ]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), im_end)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1

    with torch.no_grad():
        batched = last_token_rewards(model, ids, mask)
        for i, r in enumerate(rows):
            one = torch.tensor([r])
            alone = last_token_rewards(model, one, torch.ones_like(one))[0]
            # computed without the function under test: the head on the last hidden state
            direct = model.score(model.model(input_ids=one).last_hidden_state[0, -1])[0]
            assert abs(batched[i] - alone) < TOL and abs(alone - direct) < TOL, i
        # guard: the hazard is real, transformers' own pad-token search reads row 0 one token early
        assert abs(model(input_ids=ids, attention_mask=mask).logits[0, 0] - batched[0]) > 1e-3


# --- 3. truncation ----------------------------------------------------------------------------------


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_truncation_with_chat_template(tiny_bt):
    """Too-long items lose the start of the prompt; the response and the reward position survive."""
    max_length = 48
    s = load_scorer(tiny_bt, max_length=max_length)
    tok = s.tokenizer
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 12 + "END"
    items = [Item(prompt="hi", response="def add(a, b): return a + b"),
             Item(prompt=long_prompt, response="return None"),
             Item(prompt=[{"role": "user", "content": long_prompt}], response="hello world"),
             Item(prompt="for i in range", response="x")]
    scores = s.score(items)
    assert scores.truncated == [False, True, True, False]

    for item, cut in zip(items, scores.truncated):
        ids, was_cut = encode_item(tok, item, max_length)
        assert was_cut == cut and len(ids) <= max_length
        messages = ([{"role": "user", "content": item.prompt}] if isinstance(item.prompt, str)
                    else [m.model_dump() for m in item.prompt])
        head = _ids(tok, tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        tail = _ids(tok, item.response + "<|im_end|>\n")  # what the template puts after the prompt
        assert ids[-len(tail):] == tail, "the response must be kept whole"
        if cut:
            assert len(ids) == max_length
            kept = ids[:-len(tail)]
            assert kept == head[-len(kept):], "the prompt is cut from the left: its end is kept"
            assert tok.decode(kept).endswith("END<|im_end|>\n<|im_start|>assistant\n")
        else:
            assert ids == head + tail


def test_truncation_without_chat_template(tiny_bt_plain):
    """Pair encoding `<s> prompt </s> response </s>`: the prompt is cut from the left inside
    its special tokens, the response and the closing tokens stay."""
    max_length = 24
    s = load_scorer(tiny_bt_plain, max_length=max_length)
    tok = s.tokenizer
    bos, eos = tok.convert_tokens_to_ids("<s>"), tok.convert_tokens_to_ids("</s>")
    items = [Item(prompt="Write a function", response="def add"),
             Item(prompt="The quick brown fox jumps over the lazy dog. " * 6 + "END", response="return a + b"),
             Item(prompt="hello", response="world")]
    scores = s.score(items)
    assert scores.truncated == [False, True, False]
    for item, cut in zip(items, scores.truncated):
        ids, _ = encode_item(tok, item, max_length)
        prompt, response = _ids(tok, item.prompt), _ids(tok, item.response)
        assert len(ids) <= max_length
        assert ids[-len(response) - 1:] == response + [eos]
        kept = ids[1:-len(response) - 2]
        assert ids[0] == bos and ids[len(kept) + 1] == eos
        if cut:
            assert len(ids) == max_length and kept == prompt[-len(kept):] and len(kept) < len(prompt)
            assert tok.decode(kept).endswith("END")
        else:
            assert kept == prompt


def test_response_longer_than_limit_keeps_its_end(scorer, plain_scorer):
    """When even the response does not fit, its end (where the reward is read) is what stays."""
    item = Item(prompt="hi", response="The quick brown fox jumps over the lazy dog. " * 6 + "total")
    for s in (scorer, plain_scorer):
        ids, cut = encode_item(s.tokenizer, item, 16)
        assert cut and len(ids) == 16
    chat_tail = _ids(scorer.tokenizer, item.response + "<|im_end|>\n")
    assert encode_item(scorer.tokenizer, item, 16)[0] == chat_tail[-16:]
    plain_ids, _ = encode_item(plain_scorer.tokenizer, item, 16)
    assert plain_ids[-4:-1] == _ids(plain_scorer.tokenizer, item.response)[-3:]


# --- 4. chat prompts --------------------------------------------------------------------------------


def test_single_user_message_equals_string_prompt(scorer):
    """A prompt given as [{role: user, content: p}] is the same input as the string p."""
    prompts = ["Write a function that adds two numbers.", "2+2?", "hello " * 40]
    strings = scorer.score([Item(prompt=p, response="def add(a, b): return a + b") for p in prompts]).rewards
    chats = scorer.score([Item(prompt=[{"role": "user", "content": p}], response="def add(a, b): return a + b")
                          for p in prompts]).rewards
    assert close(chats, strings, 1e-6)
    # and the messages are really used: a system turn changes the reward
    system = scorer.score([Item(prompt=[{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": prompts[0]}],
                                response="def add(a, b): return a + b")]).rewards[0]
    assert abs(system - strings[0]) > 1e-6


# --- 5. compare and rank ----------------------------------------------------------------------------


def test_compare_is_sigmoid_of_reward_margin(model_dir):
    """P(a beats b) = sigmoid(r_a - r_b), with r taken from `score`."""
    s = load_scorer(model_dir)
    rng = random.Random(3)
    pairs = [Pair(prompt=words(rng, 1 + 7 * i), a=words(rng, 1 + i), b=words(rng, 9 - i)) for i in range(8)]
    pairs.append(Pair(prompt=[{"role": "user", "content": "hello"}], a="world", b="dog"))
    result = s.compare(pairs)
    ra = s.score([Item(prompt=p.prompt, response=p.a) for p in pairs]).rewards
    rb = s.score([Item(prompt=p.prompt, response=p.b) for p in pairs]).rewards
    assert close(result.margins, [a - b for a, b in zip(ra, rb)])
    assert close(result.probabilities, [1 / (1 + math.exp(-m)) for m in result.margins], 1e-9)
    assert all((p > 0.5) == (m > 0) for p, m in zip(result.probabilities, result.margins))
    assert len({m > 0 for m in result.margins}) == 2, "margins of both signs make the check meaningful"
    assert result.truncated == [False] * len(pairs)
    # swapping a and b mirrors the answer
    swapped = s.compare([Pair(prompt=p.prompt, a=p.b, b=p.a) for p in pairs])
    assert close(swapped.probabilities, [1 - p for p in result.probabilities])


def test_rank_orders_rewards_descending(scorer):
    """rank gives every candidate's reward (as score would) and the indices best first."""
    responses = ["def add(a, b): return a + b", "None", "hello world", "for i in range(n): total += i",
                 "the lazy dog", "x"]
    ranking = scorer.rank("Write a function that adds two numbers.", responses)
    rewards = scorer.score([Item(prompt="Write a function that adds two numbers.", response=r)
                            for r in responses]).rewards
    assert close(ranking.rewards, rewards)
    assert sorted(ranking.order) == list(range(len(responses)))
    assert [ranking.rewards[i] for i in ranking.order] == sorted(ranking.rewards, reverse=True)
    assert ranking.order != list(range(len(responses)))  # not the identity by accident


# --- 6. pre-templated text --------------------------------------------------------------------------


def test_score_texts_matches_score_with_chat_template(scorer):
    """OpenRLHF sends texts already rendered with the template: scoring one equals scoring the Item."""
    cases = [("Write a function", "def add(a, b): return a + b"), ("2+2?", "4"), ("hello " * 30, "world")]
    texts = [f"<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n{r}<|im_end|>\n" for p, r in cases]
    by_text = score_queries(scorer, texts, None)[0]
    by_item = scorer.score([Item(prompt=p, response=r) for p, r in cases])
    assert close(by_text.rewards, by_item.rewards, 1e-6)
    assert by_text.truncated == [False] * 3


def test_score_texts_adds_no_special_tokens(plain_scorer):
    """With a tokenizer that would wrap text in <s> ... </s>, the text's own tokens are used as is."""
    cases = [("Write a function", "def add"), ("hello", "world")]
    texts = [f"<s>{p}</s>{r}</s>" for p, r in cases]
    by_text = score_queries(plain_scorer, texts, None)[0].rewards
    by_item = plain_scorer.score([Item(prompt=p, response=r) for p, r in cases]).rewards
    assert close(by_text, by_item, 1e-6)


def test_score_texts_truncates_from_the_left(tiny_bt):
    """A pre-templated text over the limit keeps its end (the response) and says it was cut."""
    s = load_scorer(tiny_bt, max_length=32)
    text = "<|im_start|>user\n" + "hello world " * 30 + "<|im_end|>\n<|im_start|>assistant\nreturn None<|im_end|>\n"
    short = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"
    assert score_queries(s, [text, short], None)[0].truncated == [True, False]
    kept = s.tokenizer.decode(_ids(s.tokenizer, text)[-32:])
    assert close(score_queries(s, [text], None)[0].rewards, score_queries(load_scorer(tiny_bt), [kept], None)[0].rewards)


# --- 7. loading errors ------------------------------------------------------------------------------


def test_base_model_without_head_is_refused(tiny_base):
    """A causal LM would get a randomly initialised head: refuse it and say how to train one."""
    with pytest.raises(ModelLoadError) as err:
        load_scorer(tiny_base)
    assert "plaudit train bt" in str(err.value)
    assert "head" in str(err.value)


def test_two_output_classifier_is_refused_as_bt(tmp_path):
    """A BT reward is one number; a 2-label classifier must not be read as one."""
    path = make_tiny(tmp_path / "two", head=True, num_labels=2)
    with pytest.raises(ModelLoadError) as err:
        load_scorer(path)
    assert "1 output" in str(err.value) and "has 2" in str(err.value)


def test_uncached_hub_id_fails_offline_naming_a_directory(monkeypatch, tmp_path):
    """With no network, a hub id says what to do: download elsewhere and pass a local folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)  # so `someorg/some-rm` cannot be a local folder by chance
    start = time.time()
    with pytest.raises(ModelLoadError) as err:
        load_scorer("someorg/some-rm")
    message = str(err.value)
    assert "someorg/some-rm" in message and "offline" in message
    assert "./models/some-rm" in message and "directory" in message
    assert time.time() - start < 30


def test_declared_kind_must_match_requested_kind(tiny_bt, tmp_path):
    """Serving a BT head as another kind is refused before anything is loaded; the same kind loads."""
    path = shutil.copytree(tiny_bt, tmp_path / "declared-bt")
    (path / "plaudit.json").write_text(json.dumps({"kind": "bt"}))
    with pytest.raises(ModelLoadError) as err:
        load_scorer(path, kind="gpm")
    assert "'gpm'" in str(err.value) and "'bt'" in str(err.value)
    assert load_scorer(path, kind="bt").score([Item(prompt="a", response="b")]).rewards


def test_unknown_kind_in_metadata_names_known_kinds(tiny_bt, tmp_path):
    path = shutil.copytree(tiny_bt, tmp_path / "weird")
    (path / "plaudit.json").write_text(json.dumps({"kind": "weird"}))
    with pytest.raises(ModelLoadError) as err:
        load_scorer(path)
    assert "weird" in str(err.value)
    assert all(kind in str(err.value) for kind in KINDS) and "known kinds" in str(err.value)


def test_missing_path_and_file_path_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model directory"):
        load_scorer(tmp_path / "nowhere")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="must be a directory"):
        load_scorer(tmp_path / "model.bin")


def test_invalid_metadata_json_is_refused(tiny_bt, tmp_path):
    path = shutil.copytree(tiny_bt, tmp_path / "broken")
    (path / "plaudit.json").write_text("{kind: bt")
    with pytest.raises(ModelLoadError, match="plaudit.json"):
        load_scorer(path)


# --- 8. device and dtype ----------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU default")
def test_auto_device_is_cpu_float32_without_gpu():
    assert choose_device("auto") == (torch.device("cpu"), torch.float32)
    assert choose_device("auto", "auto") == (torch.device("cpu"), torch.float32)


def test_explicit_dtype_and_unknown_dtype():
    assert choose_device("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)
    assert choose_device("cpu", "fp16")[1] == torch.float16
    with pytest.raises(ModelLoadError, match="float8"):
        choose_device("cpu", "float8")


def test_loaded_scorer_uses_requested_dtype(tiny_bt):
    """dtype reaches the weights and the metadata; bf16 rewards stay close to fp32 ones."""
    items = mixed_items(8, seed=4)
    fp32 = load_scorer(tiny_bt, device="cpu", dtype="float32")
    bf16 = load_scorer(tiny_bt, device="cpu", dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    assert bf16.metadata["dtype"] == "bfloat16" and fp32.metadata["dtype"] == "float32"
    assert close(bf16.score(items).rewards, fp32.score(items).rewards, 0.1)
    with pytest.raises(ModelLoadError):
        load_scorer(tiny_bt, dtype="int3")


# --- 9. micro-batches -------------------------------------------------------------------------------


def padded_tokens(batches, lengths):
    return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b) for b in batches)


def test_micro_batches_cover_every_index_within_limits():
    rng = random.Random(5)
    lengths = [rng.choice([3, 5, 8, 40, 120, 300, 700]) + rng.randint(0, 9) for _ in range(200)]
    lengths += [5000]  # longer than the token limit on its own
    batching = Batching(max_batch_size=16, max_batch_tokens=2048)
    batches = micro_batches(lengths, batching)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= batching.max_batch_size
        longest = max(lengths[i] for i in b)
        assert len(b) * longest <= batching.max_batch_tokens or len(b) == 1
    assert [5000] in [[lengths[i] for i in b] for b in batches]
    # batches go from short to long, so rows in a batch have similar lengths
    for before, after in zip(batches, batches[1:]):
        assert max(lengths[i] for i in before) <= min(lengths[i] for i in after)


def test_sorting_cuts_padding_waste():
    """Padding in length-sorted batches is far below padding in arrival order."""
    rng = random.Random(6)
    lengths = [rng.choice([4, 10, 300, 20, 500, 7]) for _ in range(96)]
    batching = Batching(max_batch_size=8, max_batch_tokens=10**9)
    arrival = [list(range(i, min(i + 8, len(lengths)))) for i in range(0, len(lengths), 8)]
    sorted_waste = padded_tokens(micro_batches(lengths, batching), lengths)
    arrival_waste = padded_tokens(arrival, lengths)
    assert sorted_waste < 0.2 * arrival_waste, (sorted_waste, arrival_waste)


def test_micro_batches_weigh_padding_against_calls():
    """Two length clusters: with cheap calls each cluster is its own batch (no padding of the
    short to the long); with costly calls they share as few batches as the limits allow."""
    lengths = [10] * 8 + [400] * 8
    cheap = micro_batches(lengths, Batching(max_batch_size=32, call_overhead_tokens=32))
    assert sorted(sorted(lengths[i] for i in b) for b in cheap) == [[10] * 8, [400] * 8]
    costly = micro_batches(lengths, Batching(max_batch_size=32, call_overhead_tokens=10**6))
    assert len(costly) == 1
    assert padded_tokens(cheap, lengths) == 0 < padded_tokens(costly, lengths)
    # the least total cost among all cuts of the sorted order, checked by brute force
    rng = random.Random(7)
    for _ in range(20):
        small = [rng.choice([3, 9, 27, 81]) + rng.randint(0, 3) for _ in range(9)]
        batching = Batching(max_batch_size=4, max_batch_tokens=200, call_overhead_tokens=rng.choice([0, 16, 64]))
        assert batch_cost(micro_batches(small, batching), small, batching) == brute_force_cost(small, batching)


def batch_cost(batches, lengths, batching):
    return sum(batching.call_overhead_tokens + len(b) * max(lengths[i] for i in b) for b in batches)


def brute_force_cost(lengths, batching):
    widths = sorted(lengths)
    best = float("inf")
    for cuts in itertools.product([False, True], repeat=len(widths) - 1):
        batches, current = [], [0]
        for i, cut in enumerate(cuts, start=1):
            if cut:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        if all(len(b) <= batching.max_batch_size and (len(b) == 1 or len(b) * widths[b[-1]] <= batching.max_batch_tokens)
               for b in batches):
            best = min(best, batch_cost(batches, widths, batching))
    return best


def test_micro_batches_edge_cases():
    assert micro_batches([], Batching()) == []
    assert micro_batches([7], Batching(max_batch_size=1)) == [[0]]
    assert micro_batches([1, 1, 1], Batching(max_batch_size=1)) == [[0], [1], [2]]


# --- 10. cross-thread batching ----------------------------------------------------------------------


def wait_until(condition, timeout=10.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.005)


def derived(seq):
    """What the fake model returns for a row: depends on the row's content only."""
    return torch.tensor([float(sum(seq)), float(len(seq)), float(seq[0])])


class GatedRun:
    """A fake forward pass whose first call waits for a gate, so other requests queue up behind it."""

    def __init__(self):
        self.gate = threading.Event()
        self.calls: list[int] = []

    def __call__(self, seqs):
        self.calls.append(len(seqs))
        if len(self.calls) == 1:
            assert self.gate.wait(10)
        if any(s[0] < 0 for s in seqs):
            raise ValueError("poisoned row")
        return [derived(s) for s in seqs]


def submit_all(batcher, requests):
    """Call the batcher from one thread per request; returns results (or exceptions) by request."""
    results: dict[int, object] = {}

    def call(k):
        try:
            results[k] = batcher(requests[k])
        except Exception as e:  # noqa: BLE001 - the test inspects it
            results[k] = e

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    return threads, results


def test_forward_batcher_merges_threads_and_routes_rows():
    """16 concurrent callers share forward passes, and each gets exactly its own rows back."""
    run = GatedRun()
    batcher = ForwardBatcher(run, "test")
    observed: list[tuple[int, list[float]]] = []
    batcher.observers.append(lambda sequences, waits: observed.append((sequences, waits)))
    # thread k sends k % 4 + 1 rows whose content identifies it
    requests = [[[k, j, 100 + k] for j in range(k % 4 + 1)] for k in range(16)]
    threads, results = submit_all(batcher, requests)
    total = sum(map(len, requests))
    # the first forward pass is held open until every thread has queued its request
    wait_until(lambda: run.calls and run.calls[0] + sum(len(s) for s, _, _ in batcher._pending) == total)
    run.gate.set()
    for t in threads:
        t.join(10)
    assert batcher.batches < 16 and batcher.batches == len(run.calls) == 2
    assert batcher.sequences == total == sum(run.calls)
    assert [n for n, _ in observed] == run.calls  # the metrics see every forward call ...
    assert sum(len(waits) for _, waits in observed) == 16 and all(w >= 0 for _, ws in observed for w in ws)
    for k, rows in results.items():
        assert not isinstance(rows, Exception), rows
        assert len(rows) == len(requests[k])
        for row, seq in zip(rows, requests[k]):
            assert torch.equal(row, derived(seq)), (k, row, seq)


def test_forward_batcher_runs_a_failing_batch_in_halves_so_only_the_bad_request_fails():
    """A forward that fails is run again in halves: the poisoned request fails with the model's
    error, the five merged with it get their rows, and the worker goes on."""
    run = GatedRun()
    batcher = ForwardBatcher(run, "test")
    first_threads, first = submit_all(batcher, [[[1, 2]]])
    wait_until(lambda: len(run.calls) == 1)
    requests = [[[k, 5]] for k in range(1, 6)] + [[[-1, 0]]]  # one poisoned request among six
    threads, results = submit_all(batcher, requests)
    wait_until(lambda: len(batcher._pending) == len(requests))
    run.gate.set()
    for t in first_threads + threads:
        t.join(10)
    assert torch.equal(first[0][0], derived([1, 2]))
    poisoned = len(requests) - 1
    assert isinstance(results[poisoned], ValueError) and "poisoned" in str(results[poisoned])
    for k in range(poisoned):
        assert [r.tolist() for r in results[k]] == [derived(requests[k][0]).tolist()]
    assert run.calls[1] == 6 and max(run.calls[2:]) < 6  # the merged call failed, its halves ran
    assert [r.tolist() for r in batcher([[3, 4], [5]])] == [derived([3, 4]).tolist(), derived([5]).tolist()]
    assert batcher([]) == []


def clients_merge(linger: float, clients: int = 8, rounds: int = 6) -> float:
    """Sequences per forward call when `clients` threads each make `rounds` one-item calls
    through a batcher whose forward takes 100 ms whatever it holds (as on a GPU)."""
    def run(seqs):
        time.sleep(0.1)
        return [derived(s) for s in seqs]

    batcher = ForwardBatcher(run, "test", linger=linger)
    threads = [threading.Thread(target=lambda k=k: [batcher([[k, r]]) for r in range(rounds)]) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return batcher.sequences / batcher.batches


def test_forward_batcher_lingers_for_its_last_callers_where_calls_cost_the_same():
    """Without lingering, 8 clients split into two alternating halves (about 4 a call); waiting
    for the last batch's callers keeps them together. The wait ends as soon as they are back, so
    a long limit (20 forwards' time) costs nothing here and holds on a loaded machine."""
    assert clients_merge(linger=20.0) >= 6
    assert clients_merge(linger=0.0) < 6


def test_forward_batcher_survives_a_failing_observer():
    batcher = ForwardBatcher(lambda seqs: [derived(s) for s in seqs], "test")
    batcher.observers.append(lambda sequences, waits: 1 / 0)
    assert [r.tolist() for r in batcher([[1, 2]])] == [derived([1, 2]).tolist()]
    assert [r.tolist() for r in batcher([[7]])] == [derived([7]).tolist()]  # before: this call hung


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the worker's end, on purpose
def test_forward_batcher_caller_gets_an_error_when_the_worker_is_gone():
    def run(seqs):
        raise SystemExit  # not an Exception: it ends the worker thread
    batcher = ForwardBatcher(run, "test")
    with pytest.raises(RuntimeError, match="stopped"):
        batcher([[1]])


def test_scorer_calls_from_threads_match_sequential(scorer):
    """Through the real model: concurrent score calls give the rewards of sequential ones."""
    items = mixed_items(12, seed=7)
    expected = scorer.score(items).rewards
    got: dict[int, float] = {}

    def call(k):
        got[k] = scorer.score([items[k]]).rewards[0]

    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert close([got[k] for k in range(len(items))], expected)


# --- 11. LoRA ---------------------------------------------------------------------------------------


@pytest.fixture
def llama(tiny_bt):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(tiny_bt, dtype=torch.float32).eval()


def hidden(model, ids):
    with torch.no_grad():
        return model.base_model(input_ids=ids).last_hidden_state


IDS = torch.tensor([[4, 90, 88, 264, 204, 294, 78, 89, 74, 262, 5, 204], [4, 70, 88, 88, 78, 277, 270, 89, 5, 204, 0, 0]])


def test_zero_lora_is_the_identity_and_merges_to_the_original(llama):
    original = hidden(llama, IDS)
    names = target_modules(llama, last_layers=1)
    assert names and all(".layers.1." in n for n in names)  # only the last block
    assert len(names) == 7  # q, k, v, o, gate, up, down
    adapter = add_lora(llama, last_layers=1, rank=4, alpha=8.0)
    assert torch.allclose(hidden(llama, IDS), original, atol=1e-6)  # PEFT adapts the model in place
    assert torch.allclose(hidden(adapter.merge_and_unload(), IDS), original, atol=1e-6)


def test_merged_lora_equals_unmerged(llama, tmp_path):
    """Serving merges adapters into the weights: it must compute what training computed, from
    the files PEFT wrote."""
    fresh = copy.deepcopy(llama)
    original = hidden(llama, IDS)
    adapter = add_lora(llama, last_layers=2, rank=4, alpha=8.0)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in llama.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.2)
    adapted = hidden(llama, IDS)
    assert (adapted - original).abs().max() > 1e-2, "the adapters must change the output"
    adapter.save_pretrained(str(tmp_path))
    merged = apply_adapter(fresh, tmp_path, "tiny")
    assert type(merged) is type(llama)  # a plain transformers model again
    assert all(type(merged.get_submodule(n)) is nn.Linear for n in target_modules(merged, 2))
    assert (hidden(merged, IDS) - adapted).abs().max() < 1e-5


def test_inputs_are_validated():
    """Items are pydantic models: a malformed message is refused when the item is built."""
    with pytest.raises(ValueError):
        Item(prompt=[{"role": "", "content": "x"}], response="y")
    with pytest.raises(ValueError):
        Item(prompt="x", response="y", extra=1)
    assert issubclass(InputError, ValueError)


# --- empty input -----------------------------------------------------------------------------------
# An empty query is an empty turn: closed as the template closes one, it has tokens to read a
# reward at, and gets the same finite reward alone or beside others (never a crash, never a 0.0
# that depends on its batch neighbours).


def test_an_empty_query_is_scored_as_an_empty_turn(scorer):
    alone = score_queries(scorer, [""], None)[0].rewards
    batch = score_queries(scorer, ["", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n"],
                          None)[0].rewards
    assert math.isfinite(alone[0]) and close(alone, batch[:1], 1e-5)
