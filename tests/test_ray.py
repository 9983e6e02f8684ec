"""plaudit on Ray Data (plaudit/ray.py), on a local Ray the test starts with 2 CPUs: the same
rewards as the in-process runner, shards skipped on a re-run, failed shards run again, and
one line in a user's own pipeline."""
from __future__ import annotations

import json

import pytest

ray = pytest.importorskip("ray")

from plaudit import ray as on_ray  # noqa: E402
from plaudit.service import api, batch_score  # noqa: E402
from plaudit.service.config import ModelConfig, ServiceConfig, load_config  # noqa: E402
from helpers import write_lines  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_a_dataset_on_ray_equals_the_in_process_run(local_ray, tiny_bt, tmp_path):
    lines = write_lines(tmp_path / "in.jsonl", 23)
    with open(tmp_path / "in.jsonl", "a") as f:
        f.write('{"id": "no-response", "prompt": "hi"}\n')
    pool = api.ModelPool(ServiceConfig(models={"tiny": ModelConfig(path=str(tiny_bt))}, default_model="tiny"))
    batch_score.run(tmp_path / "in.jsonl", tmp_path / "local.jsonl", lambda r, i: api.score(pool, r), model=None,
                    progress=False)
    out = tmp_path / "ray.jsonl"
    summary = on_ray.run_job("score", tmp_path / "in.jsonl", out, model=str(tiny_bt), num_workers=2,
                             shard_lines=5, batch_size=4)
    assert summary["shards"] == 5 and summary["skipped_shards"] == 0 and summary["bad_lines"] == 1
    local = {r["id"]: r for r in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    on_cluster = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in on_cluster] == [line["id"] for line in lines]  # every line once, in input order
    for record in on_cluster:
        assert record["rewards"] == pytest.approx(local[record["id"]]["rewards"], abs=1e-5)
    assert len(list(on_ray.shard_dir(out).glob("*.jsonl"))) == 5

    # a re-run skips the finished shards; a shard lost (or with failed lines) runs again
    (on_ray.shard_dir(out) / "00002.jsonl").unlink()
    again = on_ray.run_job("score", tmp_path / "in.jsonl", out, model=str(tiny_bt), num_workers=1, shard_lines=5)
    assert again["skipped_shards"] == 4 and [json.loads(x) for x in out.read_text().splitlines()] == on_cluster


def test_one_line_in_a_users_pipeline(local_ray, tiny_bt):
    from plaudit.rewardmodels import Item, load_scorer

    rows = [{"prompt": f"Say hello {i}.", "response": "hello " * (1 + i % 4)} for i in range(10)]
    scored = (ray.data.from_items(rows)
              .map_batches(on_ray.ScoreRows, fn_constructor_kwargs={"model": str(tiny_bt)}, concurrency=1, batch_size=4)
              .take_all())
    expected = load_scorer(tiny_bt).score([Item(**r) for r in rows]).rewards
    by_prompt = {r["prompt"]: r["reward"] for r in scored}
    assert [by_prompt[r["prompt"]] for r in rows] == pytest.approx(expected, abs=1e-5)


def test_judging_on_ray_equals_the_in_process_run(local_ray, tiny_bt, tmp_path):
    """`plaudit judge --ray`'s job: actors with a direct judge whose LLM is a scripted server."""
    from plaudit.judges import batch
    from servers import FakeLLM
    from helpers import config_yaml, rating_llm, write_items

    items = write_items(tmp_path / "items.jsonl", 9)
    with FakeLLM(rating_llm(set())).serving() as url:
        config = config_yaml(tmp_path, tiny_bt, url)
        summary = on_ray.run_job("judge", items, tmp_path / "ray.jsonl", model="rater", config=str(config),
                                 num_workers=2, shard_lines=4)
        pool = api.ModelPool(load_config(config))
        batch.run(items, tmp_path / "local.jsonl", lambda r, i: api.judge(pool, r), judge_name="rater", progress=False)
        pool.close()
    assert summary["shards"] == 3 and summary["errors"] == 0 and summary["results"] == 9
    local = {r["id"]: r["result"] for r in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    for record in map(json.loads, (tmp_path / "ray.jsonl").read_text().splitlines()):
        rewards = [v["reward"] for v in record["result"]["results"]]
        assert rewards == [v["reward"] for v in local[record["id"]]["results"]]
