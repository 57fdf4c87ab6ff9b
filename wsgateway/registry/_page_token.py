"""The opaque ``next_token`` of tenant listings, shared by every registry: any node can
continue a listing another node started. It is the last connection id of the page, in
base64url, so a page starts strictly after it (listings are in connection id order)."""

from __future__ import annotations

import base64
import binascii

from ..errors import BadRequestError
from ..ids import is_connection_id

__all__ = ["MAX_PAGE", "check_limit", "decode_token", "encode_token"]

MAX_PAGE = 1000


def check_limit(limit: int) -> None:
    """Raise BadRequestError unless ``1 <= limit <= MAX_PAGE``."""
    if not 1 <= limit <= MAX_PAGE:
        raise BadRequestError(f"limit must be between 1 and {MAX_PAGE}")


def encode_token(last_connection_id: str) -> str:
    """The token of the page that follows ``last_connection_id``."""
    return base64.urlsafe_b64encode(last_connection_id.encode("ascii")).decode("ascii").rstrip("=")


def decode_token(token: str | None) -> str | None:
    """The connection id a page starts after (None for the first page).

    Raises BadRequestError for a token no registry issued."""
    if token is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        last = raw.decode("ascii")
    except (binascii.Error, ValueError):
        raise BadRequestError("invalid next token") from None
    if not last or not is_connection_id(last) or encode_token(last) != token:
        raise BadRequestError("invalid next token")
    return last
