"""The compiled management edge (setup.py): built as `pip install .` builds it, it is what
imports, and it passes the edge's own tests.

The rest of the suite runs the editable install, which is never compiled; this test compiles
a copy of the source with setup.py (mypyc and the C compiler: about half a minute) and runs
the management edge's test files again in a subprocess with that copy ahead of the source on
the path, for the nodes those tests start too. Skipped without a C compiler (a wheel would
then hold the Python modules, which the rest of the suite tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPILED = ("wsgateway.http", "wsgateway.management", "wsgateway.sigv4")
# Every test of the compiled modules, and the SDK clients' end-to-end runs through them.
EDGE_TESTS = (
    "tests/test_http.py",
    "tests/test_management.py",
    "tests/test_management_hardening.py",
    "tests/test_management_memory.py",
    "tests/test_sigv4.py",
)

pytestmark = pytest.mark.slow


def _compiler() -> str | None:
    return shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the source with the compiled modules built in place by setup.py, as a wheel
    gets them (the same extensions, the same all-or-nothing build): no index is reached."""
    if _compiler() is None:
        pytest.skip("no C compiler: a wheel built here holds the Python modules only")
    site = tmp_path_factory.mktemp("compiled")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, site / name)
    for name in ("wsgateway", "handlers"):
        shutil.copytree(ROOT / name, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    env = {k: v for k, v in os.environ.items() if k != "WSGATEWAY_NO_EXTENSIONS"}
    build = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"],
                           env=env, cwd=site, timeout=600, capture_output=True, text=True)
    assert build.returncode == 0 and "not compiled" not in build.stderr, build.stderr[-4000:]
    return site


def _env(site: Path) -> dict[str, str]:
    """The compiled copy first on the path, then the repository (for tests/); PYTHONSAFEPATH
    keeps every process, the nodes the tests start too, from putting its working directory
    (the repository, with the Python source) ahead of the copy."""
    return {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "PYTHONSAFEPATH": "1"}


def test_the_wheel_runs_the_compiled_edge(site: Path) -> None:
    """Every compiled module imports as an extension, and the edge says it is compiled."""
    script = (
        "import importlib, importlib.machinery as m, wsgateway.management as mg\n"
        f"for name in {COMPILED!r}:\n"
        "    path = importlib.import_module(name).__file__\n"
        "    assert path.endswith(tuple(m.EXTENSION_SUFFIXES)), path\n"
        "assert mg.COMPILED\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env=_env(site), cwd=ROOT, timeout=60)


def test_the_compiled_edge_passes_the_edges_tests(site: Path) -> None:
    """The management edge's test files, run against the compiled modules (the runner checks
    that they are what it imported before it starts)."""
    script = (
        "import sys, pytest, wsgateway.management as m\n"
        "assert m.COMPILED, m.__file__\n"
        f"sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '--import-mode=append', '-x', *{EDGE_TESTS!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], env=_env(site), cwd=ROOT, timeout=600,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
