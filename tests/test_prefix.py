"""Prefix sharing (rewardmodels/prefix.py): responses to one prompt run on the prompt's cached
keys and values, and every family reads the same rewards as from the whole forward."""
from __future__ import annotations

import random

import pytest
import torch

from plaudit.rewardmodels.base import Item, Steps
from plaudit.rewardmodels.bt import BradleyTerry
from plaudit.rewardmodels.encoding import Batching, encode_item, run_batched
from plaudit.rewardmodels.gpm import GPM, GPMNet
from plaudit.rewardmodels.prefix import MIN_CACHED_PREFIX, can_share
from plaudit.rewardmodels.registry import load_scorer

from conftest import CORPUS, make_tokenizer

TOL = 1e-4
WORDS = " ".join(CORPUS[:6]).split()


def text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def groups(seed: int, k: int, prompt_words=(8, 2, 60), response_words=(1, 12)) -> list[Item]:
    """Prompts of mixed lengths, k responses of mixed lengths each, prompts interleaved."""
    rng = random.Random(seed)
    prompts = [text(rng, n) for n in prompt_words]
    return [Item(prompt=p, response=text(rng, rng.randint(*response_words))) for _ in range(k) for p in prompts]


def whole(scorer, seqs) -> list[torch.Tensor]:
    """The reference: every sequence's whole forward, no prompt marked."""
    split = scorer.prefixes.split
    return run_batched([list(s) for s in seqs], split, Batching().on(scorer.device),
                       scorer.tokenizer.pad_token_id, scorer.device)


def bt_whole(scorer: BradleyTerry, items: list[Item]) -> list[float]:
    seqs = [encode_item(scorer.tokenizer, it, scorer.max_length)[0] for it in items]
    return [(float(r) - scorer.mean) / scorer.std for r in whole(scorer, seqs)]


@pytest.mark.parametrize("k", [1, 4, 16])
@pytest.mark.parametrize("fixture", ["tiny_bt", "tiny_bt_plain"])
def test_bt_rewards_on_shared_prompts_equal_the_whole_forward(request, fixture, k):
    """With and without a chat template, 3 prompts x k responses in one request, and a
    max_length that cuts the longest prompt from the left."""
    scorer = load_scorer(request.getfixturevalue(fixture), kind="bt", device="cpu", dtype="float32", max_length=128)
    items = groups(k, k)
    scored = scorer.score(items)
    assert any(scored.truncated) and not all(scored.truncated)
    assert scored.rewards == pytest.approx(bt_whole(scorer, items), abs=TOL)
    stats = scorer.prefixes.stats()
    seqs = [encode_item(scorer.tokenizer, it, scorer.max_length)[0] for it in items]
    # Every item ran on a shared prompt, but a short prompt with one response runs whole.
    alone = [s for s in seqs if sum(t[:t.prefix] == s[:s.prefix] for t in seqs) == 1]
    assert stats["shared_sequences"] == len(items) - sum(s.prefix < MIN_CACHED_PREFIX for s in alone)
    assert k > 1 or 0 < stats["shared_sequences"] < len(items)
    # Each prompt is computed once, the long one once per place its responses' lengths cut it.
    prompts = {tuple(s[:s.prefix]) for s in seqs if s not in alone or s.prefix >= MIN_CACHED_PREFIX}
    assert stats["misses"] == len(prompts) and stats["hits"] == 0
    assert k == 1 or stats["misses"] < len(items)


def test_pad_equal_to_eos_and_without_a_cache(tiny_bt):
    """SmolLM2's case: the pad token is the end-of-turn token, which ends every response. Without
    a cache, prompts met more than once in a batch are still shared, the rest run whole."""
    from transformers import AutoModelForSequenceClassification

    tokenizer = make_tokenizer(chat_template=True)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bt).eval()
    metadata = {"kind": "bt", "normalization": {"mean": 0.5, "std": 2.0}}
    scorer = BradleyTerry("pad-eos", model, tokenizer, metadata, torch.device("cpu"), 256,
                          Batching(prefix_cache_mb=0))
    items = groups(1, 5) + [Item(prompt=text(random.Random(9), 60), response="the only response to a long prompt")]
    assert scorer.score(items).rewards == pytest.approx(bt_whole(scorer, items), abs=TOL)
    stats = scorer.prefixes.stats()
    assert stats["shared_sequences"] == 15 and stats["bytes"] == 0


def test_one_sample_per_request_hits_the_cache(tiny_bt):
    """OpenRLHF and verl send one sample per request: the first sample of a prompt computes it,
    the others hit the cache, and the rewards do not change."""
    scorer = load_scorer(tiny_bt, kind="bt", device="cpu", dtype="float32")
    items = groups(2, 4, prompt_words=(60, 70))
    rewards = [scorer.score([it]).rewards[0] for it in items]
    assert rewards == pytest.approx(bt_whole(scorer, items), abs=TOL)
    stats = scorer.prefixes.stats()
    assert (stats["misses"], stats["hits"], stats["entries"]) == (2, 6, 2)
    assert 0 < stats["bytes"] <= stats["max_bytes"]
    assert scorer.stats()["prefix_cache"]["hits"] == 6


def test_the_cache_stays_within_its_bytes(tiny_bt):
    """Room for one prompt: two prompts alternating evict each other, and every answer is right."""
    probe = load_scorer(tiny_bt, kind="bt", device="cpu", dtype="float32")
    probe.score([Item(prompt=text(random.Random(0), 60), response="x")])
    one_prompt = probe.prefixes.stats()["bytes"]
    scorer = load_scorer(tiny_bt, kind="bt", device="cpu", dtype="float32",
                               batching=Batching(prefix_cache_mb=1.5 * one_prompt / 2**20))
    items = groups(3, 3, prompt_words=(60, 62))
    rewards = [scorer.score([it]).rewards[0] for it in items]
    assert rewards == pytest.approx(bt_whole(scorer, items), abs=TOL)
    stats = scorer.prefixes.stats()
    assert stats["entries"] == 1 and stats["bytes"] <= stats["max_bytes"]
    assert stats["evictions"] == 5 and stats["hits"] == 0


def test_prm_step_rewards_on_a_shared_prompt(tmp_path):
    """A PRM reads every step's end: the prompt's states come from the cache, the steps' from
    the response pass, and each step's P(good) equals the whole forward's."""
    from transformers import LlamaConfig, LlamaForTokenClassification

    torch.manual_seed(0)
    tokenizer = make_tokenizer(chat_template=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
                         num_labels=2, tie_word_embeddings=False)
    LlamaForTokenClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    prm = load_scorer(tmp_path, kind="prm", device="cpu", dtype="float32")
    rng = random.Random(4)
    prompt = text(rng, 50)
    traces = [Steps(prompt=prompt, steps=[text(rng, rng.randint(1, 8)) for _ in range(rng.randint(1, 5))])
              for _ in range(6)]
    scored = prm.score_steps(traces)
    from plaudit.rewardmodels.prm import encode_steps
    encoded = [encode_steps(prm.tokenizer, t.prompt, t.steps, prm.separator, prm.max_length) for t in traces]
    rows = whole(prm, [ids for ids, _, _ in encoded])
    for got, row, (_, positions, _) in zip(scored, rows, encoded):
        assert got.step_rewards == pytest.approx(row[positions].tolist(), abs=TOL)
    assert prm.prefixes.stats()["shared_sequences"] == 6


def test_gpm_rank_reads_the_prompt_once(tiny_base):
    """GPM's prompt pass is the responses' shared prefix: K responses and the prompt make one
    prompt computation and K response passes, with the whole forward's preferences."""
    from transformers import AutoModel, AutoTokenizer

    torch.manual_seed(0)
    net = GPMNet(AutoModel.from_pretrained(tiny_base), dims=4, prompt_head=True).eval()
    gpm = GPM("tiny-gpm", net, AutoTokenizer.from_pretrained(tiny_base), {"kind": "gpm"}, torch.device("cpu"),
              256, Batching())
    rng = random.Random(5)
    prompt, responses = text(rng, 40), [text(rng, rng.randint(1, 20)) for _ in range(8)]
    ranked = gpm.rank(prompt, responses)
    stats = gpm.prefixes.stats()
    assert stats["misses"] == 1 and stats["shared_sequences"] == 9
    reference = GPM("whole", net, gpm.tokenizer, {"kind": "gpm"}, torch.device("cpu"), 256, Batching())
    reference.prefixes = None
    reference.forward._run = lambda seqs: whole(gpm, seqs)
    expected = reference.rank(prompt, responses)
    assert ranked.rewards == pytest.approx(expected.rewards, abs=TOL)
    assert ranked.order == expected.order


def test_encoders_run_whole():
    """Bidirectional attention: a prompt's states depend on the response, nothing to share."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, MistralConfig, MistralModel

    assert not can_share(BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                              intermediate_size=64)))
    assert can_share(LlamaModel(LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64)))
    assert not can_share(MistralModel(MistralConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                    intermediate_size=64, sliding_window=16)))


def test_training_reads_each_prompt_once_with_the_whole_forwards_values_and_gradients(tiny_bt):
    """A trainer's step (shared_prompt_states, with gradients): a pair's responses and a GPM's
    prompt-alone sequence read the prompt once, and the states, a loss on them and its
    gradients are the whole forward's; at max_length 96 the long prompt is cut from the left,
    at a different place for each of its responses."""
    from transformers import AutoModelForSequenceClassification

    from plaudit.rewardmodels.bt import reward_head
    from plaudit.rewardmodels.encoding import encode_text, pad, prompt_text
    from plaudit.rewardmodels.prefix import shared_prompt_states

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bt, dtype=torch.float32).train()
    tokenizer = make_tokenizer(True)
    items = groups(3, 2, prompt_words=(4, 30), response_words=(1, 4))
    seqs = [encode_item(tokenizer, it, 96)[0] for it in items]
    seqs += [encode_text(tokenizer, prompt_text(tokenizer, items[0].prompt), 96)[0]]  # no marked prompt
    assert seqs[0][:seqs[0].prefix] == seqs[2][:seqs[2].prefix] == seqs[4] and seqs[1].prefix != seqs[3].prefix
    rows = []
    model.base_model.embed_tokens.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    weights = torch.linspace(-1, 1, len(seqs))

    def loss_and_grads(hidden, mask):
        loss = (reward_head(model, hidden, mask) * weights).sum()
        return loss, torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad])

    hidden, mask = shared_prompt_states(model.base_model, seqs, tokenizer.pad_token_id, torch.device("cpu"))
    assert rows == [3, len(seqs)]  # the short prompt once for three sequences, the cut long one twice; responses
    ids, whole_mask = pad(seqs, tokenizer.pad_token_id, torch.device("cpu"))
    whole_hidden = model.base_model(input_ids=ids, attention_mask=whole_mask).last_hidden_state
    assert torch.equal(mask, whole_mask)
    assert torch.allclose(hidden * mask[..., None], whole_hidden * mask[..., None], atol=1e-5)
    shared_loss, shared_grads = loss_and_grads(hidden, mask)
    whole_loss, whole_grads = loss_and_grads(whole_hidden, whole_mask)
    assert shared_loss.item() == pytest.approx(whole_loss.item(), abs=1e-5)
    for ours, theirs in zip(shared_grads, whole_grads):
        assert torch.allclose(ours, theirs, atol=1e-5)
