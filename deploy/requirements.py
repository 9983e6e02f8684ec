"""The service image's Python requirements, generated from pyproject.toml so that the
bento and the package cannot drift: plaudit's own dependencies with the extras a server
needs (`serve`, `judge-local`).

    python deploy/requirements.py            # (re)write deploy/requirements.txt (`make requirements`)
    python deploy/requirements.py --check    # exit 1 when the file is stale (a test runs this)
"""
from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = REPO / "deploy" / "requirements.txt"
EXTRAS = ("serve", "judge-local")
SELF = re.compile(r"^plaudit\[([^\]]+)\]$")


def requirements(pyproject: dict, extras: tuple[str, ...] = EXTRAS) -> list[str]:
    """The project's dependencies plus `extras`, with plaudit's references to its own extras expanded."""
    project = pyproject["project"]
    out, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in project["optional-dependencies"][extra]:
            if match := SELF.match(requirement.replace(" ", "")):
                todo += match[1].split(",")
            else:
                out.append(requirement)
    return list(dict.fromkeys(out))


def render() -> str:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return ("# Generated from pyproject.toml by `make requirements` (deploy/requirements.py): do not edit.\n"
            f"# plaudit's dependencies with the extras {', '.join(EXTRAS)}; bentofile.yaml installs these.\n"
            + "".join(f"{r}\n" for r in requirements(pyproject)))


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        if not TARGET.exists() or TARGET.read_text() != render():
            sys.exit(f"{TARGET.relative_to(REPO)} is stale: run `make requirements` and commit it")
    else:
        TARGET.write_text(render())
