"""``python -m loadtest``: the one entry point (see :mod:`loadtest.cli`)."""

from loadtest.cli import main

raise SystemExit(main())
