"""``python -m loadtest``: the one entry point (see :mod:`loadtest.cli`).

Without the ``loadtest`` extra it prints one line naming the extra and exits 2, instead of a
traceback from deep inside an import.
"""

import importlib.util
import sys

# What the extra installs and the generator imports, some only lazily (botocore for the
# signer's self-check before a run, matplotlib for the plots): checked up front so that a
# run never stops halfway for want of one.
_EXTRA_MODULES = ("numpy", "psutil", "matplotlib", "botocore")
_HINT = "python -m loadtest needs the 'loadtest' extra: pip install -e '.[loadtest]'"


def _missing_extra() -> str | None:
    """Return the first module of the extra that cannot be found, or None."""
    return next((name for name in _EXTRA_MODULES if importlib.util.find_spec(name) is None), None)


if (missing := _missing_extra()) is not None:
    print(f"{_HINT} (no module named {missing!r})", file=sys.stderr)
    raise SystemExit(2)

try:
    from loadtest.cli import main
except ModuleNotFoundError as exc:  # a base dependency missing: the same install fixes it
    if not exc.name or exc.name.partition(".")[0] in ("loadtest", "wsgateway"):
        raise
    print(f"{_HINT} (no module named {exc.name!r})", file=sys.stderr)
    raise SystemExit(2) from None

raise SystemExit(main())
