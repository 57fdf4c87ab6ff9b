"""Connection ids, request ids and node ids.

A connection id is a bearer capability for the management API's neighbours (a handler that
learns an id may post to it), so it carries 96 bits from the OS's CSPRNG and looks like AWS's:
16 base64url characters. Request and message ids only need to be unique enough to correlate
log lines, so they come from a fast non-cryptographic generator in the same 16-character form.
"""

from __future__ import annotations

import base64
import os
import random
import re

__all__ = ["is_connection_id", "new_connection_id", "new_node_id", "new_request_id"]

# Ours are 16 base64url characters; AWS-made ids (15 + "=") and other base64 forms are accepted
# so that ids copied from elsewhere get a 410, not a 400.
_CONNECTION_ID = re.compile(r"[A-Za-z0-9_\-+/]{1,128}={0,2}")
_b64 = base64.urlsafe_b64encode
_getrandbits = random.getrandbits


def new_connection_id() -> str:
    """Return a fresh, unguessable connection id (96 random bits, 16 characters)."""
    return _b64(os.urandom(12)).decode("ascii")


def new_request_id() -> str:
    """Return a 16-character request / message id for correlating events and log lines."""
    return _b64(_getrandbits(96).to_bytes(12, "big")).decode("ascii")


def new_node_id() -> str:
    """Return a node id unique per process: short, readable in logs, URL- and key-safe."""
    return "n" + _b64(os.urandom(6)).decode("ascii").replace("-", "x").replace("_", "y")


def is_connection_id(value: str) -> bool:
    """Tell whether ``value`` has the shape of a connection id (ours or AWS's).

    The management API answers 400 for a malformed id instead of looking it up.
    """
    return _CONNECTION_ID.fullmatch(value) is not None
