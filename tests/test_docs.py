"""The user docs stay true: links resolve inside the repository, the README's commands are the
ones CI runs, and every config they show is one the gateway loads. Unit tests: they read files
and open no sockets."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

from wsgateway import errors
from wsgateway.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted([ROOT / "README.md", ROOT / "loadtest" / "README.md", *(ROOT / "docs").glob("*.md")])
_LINK = re.compile(r"\]\(([^)\s]+)\)")
# A repository path quoted in backticks: `docs/x.md`, `handlers/echo.py`, `loadtest/README.md`.
_QUOTED_PATH = re.compile(r"`((?:docs|handlers|loadtest|wsgateway|tests)/[\w./-]*\w)`")
_MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|home|Users|root|opt|srv)/")
_TOML_BLOCK = re.compile(r"^```toml\n(.*?)^```", re.S | re.M)
# What a snippet asks of its surroundings: the variables its secrets are read from, its files.
_ENV_VARIABLE = re.compile(r'^\s*\w+_env\s*=\s*"(\w+)"', re.M)
_FILE_VALUE = re.compile(r'^\s*\w+_file\s*=\s*"([^"/]+)"', re.M)


def _toml_snippets() -> dict[str, str]:
    """Every ```toml block of the docs, by "<doc>:<line>"."""
    snippets = {}
    for doc in DOCS:
        text = doc.read_text()
        for block in _TOML_BLOCK.finditer(text):
            line = text.count("\n", 0, block.start()) + 1
            snippets[f"{doc.relative_to(ROOT)}:{line}"] = block.group(1)
    return snippets


TOML_SNIPPETS = _toml_snippets()


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


@pytest.mark.parametrize("snippet", TOML_SNIPPETS.values(), ids=TOML_SNIPPETS.keys())
def test_every_toml_snippet_in_the_docs_is_a_config_the_gateway_loads(snippet: str, tmp_path: Path) -> None:
    """A config a doc shows is one a user can paste into a file and start with: it parses, and
    the gateway's own loader accepts it, given the files and environment variables it names."""
    for name in _FILE_VALUE.findall(snippet):
        (tmp_path / name).write_text("")
    env = dict.fromkeys(_ENV_VARIABLE.findall(snippet), "x" * 64)
    (tmp_path / "gateway.toml").write_text(snippet)
    load_config(tmp_path / "gateway.toml", env=env)


@pytest.mark.parametrize("snippet", TOML_SNIPPETS.values(), ids=TOML_SNIPPETS.keys())
def test_python_route_targets_in_the_docs_run_from_any_directory(snippet: str) -> None:
    """`handlers/` imports as `handlers` only inside a clone; `pip install .` ships it as
    `wsgateway.examples`, which is what a doc's route must name to start from anywhere."""
    for key, target in tomllib.loads(snippet).get("routes", {}).items():
        if key == "selection_expression" or target.startswith(("http://", "https://", "lambda:")):
            continue
        module, _, function = target.partition(":")
        assert module.split(".")[0] != "handlers", f"{key} = {target!r}: name wsgateway.examples.{module[9:]}"
        assert callable(getattr(importlib.import_module(module), function)), target


def test_the_toml_snippets_include_the_configuration_reference() -> None:
    """The test above cannot pass by finding nothing."""
    assert any(where.startswith("docs/configuration.md:") for where in TOML_SNIPPETS), list(TOML_SNIPPETS)
    assert len(TOML_SNIPPETS) >= 9, list(TOML_SNIPPETS)


def test_every_close_code_the_gateway_closes_with_has_a_row_in_the_close_code_table() -> None:
    """errors.py's CLOSE_* constants are the documented contract; configuration.md lists them.
    CLOSE_UNSUPPORTED_DATA (1003) is AWS's answer to a binary frame, which the gateway routes
    instead: it is exported for handlers, never sent by the gateway itself."""
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("## Close codes"):text.index("`$disconnect` runs exactly once")]
    rows = {int(code) for code in re.findall(r"^\| (\d{4}) \|", table, re.M)}
    codes = {getattr(errors, name) for name in errors.__all__ if name.startswith("CLOSE_")}
    assert codes - {errors.CLOSE_UNSUPPORTED_DATA} <= rows, sorted(codes - rows)
