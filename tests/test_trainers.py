"""The trainer adapters against a real plaudit server on 127.0.0.1 (tiny BT model): a real TRL
GRPOTrainer training two steps on CPU with plaudit as its reward, and verl's calling
convention as its reward loop uses it. (OpenRLHF's request shapes: test_get_reward.py.)"""
from __future__ import annotations

import asyncio
import math

import httpx2
import pytest

from conftest import make_tiny
from plaudit.integrations.trl import async_reward_function, reward_function
from plaudit.integrations.verl import compute_score


@pytest.fixture(scope="module")
def server(tiny_service):
    """The run's shared service: the tiny BT model `tiny` is its default."""
    return tiny_service


def score(url: str, items: list[dict]) -> list[float]:
    reply = httpx2.post(f"{url}/score", json={"items": items}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["rewards"]


@pytest.mark.parametrize("conversational", [False, True])
def test_grpo_trains_two_steps_on_plaudit_rewards(server, tmp_path, conversational):
    """TRL logs what the reward function returned for each completion; each equals /score on the
    same prompt and completion."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    policy = make_tiny(tmp_path / "policy", head=False)
    questions = ["Write a function that adds two numbers.", "hello world", "def add(a, b):", "for i in range(n):"]
    prompts = [[{"role": "user", "content": q}] for q in questions] if conversational else questions
    args = GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                      max_completion_length=8, max_steps=2, logging_steps=1, report_to=[], use_cpu=True,
                      learning_rate=1e-3, save_strategy="no", seed=0, temperature=1.0)
    reward = reward_function(server)
    trainer = GRPOTrainer(model=str(policy), reward_funcs=[reward], args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}))
    trainer.train()
    assert trainer.state.global_step == 2
    logged = trainer._logs  # TRL's record of what it scored: its completions table
    completions = [c if isinstance(c, str) else c[0]["content"] for c in logged["completion"]]
    items = [{"prompt": p, "response": c} for p, c in zip(logged["prompt"], completions)]
    rewards = logged["rewards"]["plaudit_default"]
    assert len(rewards) == len(items) == 4 and not any(math.isnan(r) for r in rewards)  # the last group kept
    assert rewards == pytest.approx(score(server, items), abs=1e-4)
    assert any("rewards/plaudit_default/mean" in row for row in trainer.state.log_history)
    assert reward.client.counts["calls"] >= 2 and reward.client.counts["deadline_items"] == 0


def test_trl_reward_function_formats_and_async(server):
    prompts = ["2+2?", [{"role": "user", "content": "2+2?"}]]
    completions = ["4", [{"role": "assistant", "content": "4"}]]
    expected = score(server, [{"prompt": p, "response": "4"} for p in prompts])
    metrics = {}
    sync = reward_function(server)
    assert sync.__name__ == "plaudit_default"
    assert sync(prompts, completions, log_metric=metrics.__setitem__) == pytest.approx(expected, abs=1e-4)
    assert metrics == {"plaudit_default/deadline_items": 0.0, "plaudit_default/failed_items": 0.0}
    named = async_reward_function(server, model="tiny")
    assert named.__name__ == "plaudit_tiny"
    assert asyncio.run(named(prompts=prompts, completions=completions)) == pytest.approx(expected, abs=1e-4)


def test_verl_compute_score_as_its_reward_loop_calls_it(server, monkeypatch):
    """Awaited with keyword arguments, the reward kwargs from the config and what verl adds itself."""
    monkeypatch.setenv("PLAUDIT_URL", server)
    messages = [{"role": "user", "content": "Write a function that adds two numbers."}]
    solution = "def add(a, b):\n    return a + b\n"

    async def reward_loop():
        return await asyncio.gather(
            compute_score(data_source="humaneval", solution_str=solution, ground_truth=None,
                          extra_info={"prompt": messages, "index": 0}, reward_router_address=None,
                          reward_model_tokenizer=None),
            compute_score(data_source="humaneval", solution_str=solution, ground_truth="x",
                          extra_info={"prompt": "plain prompt"}, url=server, model="tiny"),
            compute_score(data_source="humaneval", solution_str=solution, ground_truth=None, extra_info=None))

    with_messages, with_text, without = asyncio.run(reward_loop())
    expected = score(server, [{"prompt": p, "response": solution} for p in (messages, "plain prompt", "")])
    assert [r["score"] for r in (with_messages, with_text, without)] == pytest.approx(expected, abs=1e-4)
    assert (with_messages["no_prompt"], without["no_prompt"]) == (0.0, 1.0)
    assert set(with_messages) == {"score", "truncated", "unscored", "deadline", "no_prompt"}
