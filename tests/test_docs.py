"""The documentation: the site builds with `mkdocs build --strict` (a broken link, a missing
page or a stale anchor fails), the generated reference covers every endpoint, config field
and CLI flag, the README's links lead somewhere, and the code blocks marked for it run as
they are shown.

A block is marked by an HTML comment on the line before its fence (invisible on the site
and on GitHub; docs/development.md describes the convention):

- `<!-- test: run -->` before a ```bash block: run by bash (-e, -o pipefail) in the
  repository's root with the virtual environment's bin/ first on PATH; every `# => TEXT`
  comment in the block is text its output must contain.
- `<!-- test: run -->` before a ```python block: run by the environment's Python.
- `<!-- test: config -->` before a ```yaml block: a whole plaudit config, validated as
  `plaudit serve --config` validates it.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER = re.compile(r"^<!-- test: (run|config) -->$")
FENCE = re.compile(r"^```(\w+)")
EXPECT = re.compile(r"#\s*=>\s*(.+?)\s*$")
MKDOCS_ENV = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}  # the plugins' banners


def documents() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def marked_blocks() -> list[tuple[str, str, str, str]]:
    """(where, marker, language, text) for each marked block; a marker without a fence after it is a block of ''."""
    found = []
    for path in documents():
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            match = MARKER.match(line.strip())
            if not match:
                continue
            where = f"{path.relative_to(REPO)}:{number + 1}"
            fence = FENCE.match(lines[number + 1]) if number + 1 < len(lines) else None
            if fence is None:
                found.append((where, match[1], "", ""))
                continue
            end = next(i for i in range(number + 2, len(lines)) if lines[i].startswith("```"))
            found.append((where, match[1], fence[1], "\n".join(lines[number + 2:end]) + "\n"))
    return found


BLOCKS = marked_blocks()


def generator():
    spec = importlib.util.spec_from_file_location("gen_reference", REPO / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_blocks_are_marked_in_the_docs_and_in_the_readme():
    kinds = {(marker, language) for _, marker, language, _ in BLOCKS}
    assert {("run", "bash"), ("run", "python"), ("config", "yaml")} <= kinds
    assert any(where.startswith("README.md") for where, *_ in BLOCKS)
    unfenced = [where for where, _, language, _ in BLOCKS if not language]
    assert not unfenced, f"a test marker must stand on the line before a fence: {unfenced}"


@pytest.mark.parametrize("where,marker,language,text", [b for b in BLOCKS if b[1] == "run"],
                         ids=[b[0] for b in BLOCKS if b[1] == "run"])
def test_a_marked_block_runs_as_shown(where, marker, language, text):
    assert language in ("bash", "python"), f"{where}: a run block is bash or python, not {language!r}"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "BENTOML_DO_NOT_TRACK": "True"}
    command = ["bash", "-e", "-o", "pipefail", "-c", text] if language == "bash" else [sys.executable, "-c", text]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{where} exited {done.returncode}:\n{output[-3000:]}"
    for line in text.splitlines():
        expected = EXPECT.search(line)
        if expected:
            assert expected[1] in output, f"{where}: {expected[1]!r} is not in the output:\n{output[-3000:]}"


@pytest.mark.parametrize("where,marker,language,text", [b for b in BLOCKS if b[1] == "config"],
                         ids=[b[0] for b in BLOCKS if b[1] == "config"])
def test_a_marked_config_is_valid(where, marker, language, text):
    from plaudit.service.config import ServiceConfig

    assert language == "yaml", f"{where}: a config block is yaml"
    ServiceConfig.model_validate(yaml.safe_load(text))


def test_the_site_builds_strictly(tmp_path):
    """`mkdocs build --strict`, as `make docs` runs it: every page in the navigation exists,
    every link and anchor resolves, and the reference pages are generated."""
    site = tmp_path / "site"
    done = subprocess.run([str(BIN / "mkdocs"), "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                          env={**os.environ, **MKDOCS_ENV, "BENTOML_DO_NOT_TRACK": "True"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    for page in ("reference/http-api", "reference/configuration", "reference/cli", "getting-started"):
        assert (site / page / "index.html").is_file(), page
    assert "POST /score" in (site / "reference/http-api/index.html").read_text()


def test_the_reference_covers_every_endpoint_field_and_flag():
    """The generated pages name everything the code defines: a flag, field or endpoint added
    to the code appears in them with no hand edit."""
    import argparse

    from pydantic import BaseModel

    from plaudit.rewardmodels.registry import KINDS, scorer_class
    from plaudit.service.cli import parser
    from plaudit.service.config import ServiceConfig

    gen = generator()
    cli = gen.cli()
    for path, command, _ in gen.commands(parser()):
        assert f"`{' '.join(path)}`" in cli
        for action in command._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                for option in action.option_strings:
                    assert f"`{option}`" in cli, (path, option)

    configuration = gen.configuration()
    todo: list[type[BaseModel]] = [ServiceConfig] + [scorer_class(k).Settings for k in KINDS
                                                      if getattr(scorer_class(k), "Settings", None)]
    seen = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        assert f"#{gen.anchor_of(model)}" in configuration or f"{gen.anchor_of(model)}" in configuration, model
        for name, field in model.model_fields.items():
            assert f"| `{field.alias or name}` |" in configuration, (model, name)
            todo += gen.models_in(field.annotation)

    http = gen.http_api()
    document = gen.openapi_document()
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            assert f"## `{method.upper()} {path}`" in http
            for status in operation.get("responses", {}):
                assert re.search(rf"^\| {status} \|", http, re.M)
    for name, schema in document["components"]["schemas"].items():
        assert f"### {name} " in http
        for field in schema.get("properties", {}):
            assert f"| `{field}` |" in http


def test_the_generated_openapi_document_is_the_served_one():
    """The generator builds `/docs.json` in-process; the served document is BentoML's spec of
    the same service through the same `exact` rewrite."""
    document = generator().openapi_document()
    assert document["paths"]["/score"]["post"]["requestBody"]["content"]["application/json"]["schema"][
        "$ref"].endswith("/ScoreRequestIODescriptor")
    assert {"/score", "/compare", "/rank", "/steps", "/get_reward", "/judge", "/feedback", "/models"} <= set(
        document["paths"])
    assert "401" in document["paths"]["/score"]["post"]["responses"]


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(((?:docs/)?[^)#:\s]+\.md)(?:#[^)]*)?\)", readme):
        assert (REPO / target).is_file(), f"the README links {target}, which is not there"
    pages = re.findall(r":\s*([\w/.-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M)
    for target in re.findall(r"\]\(docs/([^)#:\s]+\.md)", readme):
        assert target in pages, f"the README links docs/{target}, which the site's navigation leaves out"
