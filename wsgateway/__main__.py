"""``python -m wsgateway`` is the ``wsgateway`` command."""

import sys

from .cli import main

sys.exit(main())
