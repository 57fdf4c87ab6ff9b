"""Builds wsgateway. Everything but the compiled modules is declared in pyproject.toml.

A wheel built here (``pip install .``) compiles the management edge with mypyc: the HTTP
server, the management API and the SigV4 verifier, which every backend post runs through
(docs/benchmarks.md has what it buys). The compiled modules are the same source, so the
package behaves the same without them, only slower, and they are optional:

- without a C compiler, or when the compile fails, the wheel holds the Python modules alone
  (a warning says so), never a partial set;
- ``WSGATEWAY_NO_EXTENSIONS=1`` skips the compile;
- an editable install (``pip install -e .``) is never compiled, so an edit to a source file
  is what runs.

``wsgateway serve`` logs which one runs ("management edge compiled" or "... Python").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The hot path of a backend's post, in the order a request meets them. Nothing else is
# compiled: these are mypyc-compatible by design (tests/test_compiled.py runs their tests
# against the compiled build), and the rest gains little.
COMPILED = ["wsgateway/http.py", "wsgateway/management.py", "wsgateway/sigv4.py"]
_BUILDS = {"bdist_wheel", "build", "build_ext", "install"}


def _not_compiled(exc: BaseException) -> None:
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    print(f"warning: wsgateway's management edge is not compiled ({reason}); it runs as Python", file=sys.stderr)


def _extensions() -> list[Any]:
    if os.environ.get("WSGATEWAY_NO_EXTENSIONS") or not _BUILDS & set(sys.argv[1:]):
        return []
    try:
        from mypyc.build import mypycify

        # pip's build environment has mypy but not the runtime dependencies, so their types
        # are Any here, wherever it builds (--no-site-packages: the same code from a venv that
        # has them), and what they make of the modules not compiled is not reported (CI runs
        # mypy --strict over the full install).
        options = ["--config-file=", "--no-site-packages", "--ignore-missing-imports", "--follow-imports=silent"]
        return list(mypycify([*options, *COMPILED], group_name="wsgateway"))
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - mypyc missing or refusing the source: ship Python
        _not_compiled(exc)
        return []


class AllOrNothing(build_ext):
    """Compiles every module or none: the compiled modules share one runtime library, and
    a module whose library is missing would not import."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, or a compile error: ship Python
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            _not_compiled(exc)


setup(ext_modules=_extensions(), cmdclass={"build_ext": AllOrNothing})
