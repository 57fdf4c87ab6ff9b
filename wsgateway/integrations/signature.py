"""The ``X-Wsgateway-Signature`` header: how a backend knows a request came from this gateway.

``t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` with the shared
``[integrations.http] signing_secret``. Backends verify it as docs/integrations.md shows
(and :func:`verify` does): recompute, compare in constant time, refuse stale timestamps.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["HEADER", "MAX_AGE_S", "sign", "verify"]

HEADER = "X-Wsgateway-Signature"
MAX_AGE_S = 300  # what the documentation tells backends to accept


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, b"%d." % timestamp + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, now: float) -> str:
    """The header value for ``body`` sent at ``now`` (unix seconds); call once per request."""
    timestamp = int(now)
    return f"t={timestamp},v1={_digest(secret, timestamp, body)}"


def verify(secret: bytes, header: str, body: bytes, now: float, max_age_s: float = MAX_AGE_S) -> bool:
    """A backend's check of a signed request: True if ``header`` signs ``body`` with
    ``secret`` and its timestamp is within ``max_age_s`` of ``now``. Never raises."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > max_age_s:
        return False
    return hmac.compare_digest(_digest(secret, timestamp, body), fields.get("v1", ""))
