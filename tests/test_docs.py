"""The user docs stay true: links resolve inside the repository, and the README's commands are
the ones CI runs. Unit tests: they read files and open no sockets."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "loadtest" / "README.md", *(ROOT / "docs").glob("*.md")])
_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A repository path quoted in backticks: `docs/x.md`, `handlers/echo.py`, `loadtest/README.md`.
_QUOTED_PATH = re.compile(r"`((?:docs|handlers|loadtest|wsgateway|tests)/[\w./-]*\w)`")
_MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|Users|root|opt|srv)/")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_and_quoted_paths_resolve_inside_the_repository(doc: Path) -> None:
    text = doc.read_text()
    assert not _MACHINE_PATH.findall(text), "a path on someone's machine, not in the repository"
    for target in _LINK.findall(text):
        if target.startswith(("http://", "https://", "#", "mailto:")):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.is_relative_to(ROOT) and path.exists(), target
    for quoted in _QUOTED_PATH.findall(text):
        assert (ROOT / quoted).exists(), quoted


def test_docs_are_for_users_only() -> None:
    """Team coordination does not ship in docs/."""
    assert not (ROOT / "docs" / "TEAM_NOTES.md").exists()


def test_readme_commands_are_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "pip install -e '.[test]' && python -m pytest" in readme
    assert "pip install . && wsgateway serve" in readme
    steps = [line for line in ci if line and not line.startswith(("#", " ", "fi", "if", "set", "cd"))]
    # The install first (it brings the linters), the linters, the tests last.
    assert steps == ["pip install -e '.[test]'", "ruff check .", "mypy", "python -m pytest"]


def test_the_test_extra_carries_the_linters_ci_runs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    names = {re.split(r"[<>=~!\[; ]", req)[0] for req in project["project"]["optional-dependencies"]["test"]}
    assert {"ruff", "mypy", "pytest"} <= names
    assert project["tool"]["mypy"]["strict"] is True
    assert "wsgateway" in project["tool"]["mypy"]["files"]
