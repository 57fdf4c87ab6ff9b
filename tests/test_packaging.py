"""What `pip install` puts in place: the package list and the extras' cover of their imports.

Unit tests: they read pyproject.toml, the source tree and the installed distributions'
metadata, and open no sockets.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
import tomllib
from importlib import metadata
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_directory_is_listed_for_the_wheel() -> None:
    """`packages` is an explicit list (handlers/ is mapped in), so a new subpackage left out
    of it would be missing from every wheel while editable installs still work."""
    setuptools = PYPROJECT["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in (ROOT / "wsgateway").rglob("__init__.py")
    }
    assert setuptools["package-dir"] == {"wsgateway.examples": "handlers"}
    assert set(setuptools["packages"]) == on_disk | {"wsgateway.examples"}


def test_every_file_beside_the_code_is_declared_as_package_data() -> None:
    """Files a package reads at run time that are not Python (the browser client served at
    /client.js, its TypeScript declaration) reach a wheel only as declared package data."""
    declared = PYPROJECT["tool"]["setuptools"]["package-data"]
    for path in (ROOT / "wsgateway").rglob("*"):
        if path.name.endswith(tuple(EXTENSION_SUFFIXES)):  # the compiled edge, built in place (setup.py)
            continue
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts:
            # a package's patterns are relative to its directory and may name subfolders (static/*)
            covered = any(
                path.is_relative_to(ROOT.joinpath(*package.split(".")))
                and any(fnmatch.fnmatchcase(path.relative_to(ROOT.joinpath(*package.split("."))).as_posix(), pattern)
                        for pattern in patterns)
                for package, patterns in declared.items()
            )
            assert covered, f"{path.relative_to(ROOT)} is not package data"


def _third_party_imports(package: Path) -> set[str]:
    """Top-level names of every module imported anywhere under ``package`` (lazy imports
    inside functions included), minus the standard library and this repository's packages."""
    names: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"loadtest", "wsgateway", "handlers", "__future__"}


def _closure(extras: set[str]) -> set[str]:
    """Canonical names of every distribution `pip install 'wsgateway[extras]'` installs,
    following the installed metadata's requirements (markers evaluated here); a distribution
    not installed here is counted but its own requirements are not followed."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("wsgateway", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        seen.add(canonicalize_name(name))
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in wanted or {""}):
                continue
            if canonicalize_name(req.name) not in seen:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_loadtest_readme_extras_carry_every_loadtest_import() -> None:
    """loadtest/README.md's `pip install -e '.[peers,loadtest]'` must be enough: botocore
    (the signer's self-check) was once only in the `test` extra."""
    assert "pip install -e '.[peers,loadtest]'" in (ROOT / "loadtest" / "README.md").read_text()
    installed = _closure({"peers", "loadtest"})
    providers = metadata.packages_distributions()
    unknown = _third_party_imports(ROOT / "loadtest") - set(providers)
    if unknown:
        pytest.skip(f"the peers extra is not installed here, so no distribution provides {sorted(unknown)}")
    missing = {
        name: providers.get(name)
        for name in _third_party_imports(ROOT / "loadtest")
        if not {canonicalize_name(d) for d in providers.get(name, [])} & installed
    }
    assert missing == {}


def test_the_loadtest_extra_alone_runs_every_scenario_but_the_peers() -> None:
    """Without `peers`, only the peer servers' own imports may be missing."""
    installed = _closure({"loadtest"})
    providers = metadata.packages_distributions()
    own = _third_party_imports(ROOT / "loadtest") - _third_party_imports(ROOT / "loadtest" / "peers")
    missing = {n for n in own if not {canonicalize_name(d) for d in providers.get(n, [])} & installed}
    assert missing == set()
