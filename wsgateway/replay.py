"""What identifies a verified SigV4 request for replay protection, and for how long it could
be replayed (``management.replay_protection``).

A SigV4 signature is an HMAC over the method, path, query, signed headers, body hash and
``X-Amz-Date``: two requests that both verify with the same signature are the same request.
So the signature (hashed, to keep keys short and uniform) is the request's one-time key. The
gateway remembers it through the registry (``Gateway.refuse_replay``); this module is pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from hashlib import blake2b
from urllib.parse import unquote

__all__ = ["replay_key"]


def replay_key(headers: Mapping[str, str], raw_query: str, max_skew_s: float) -> tuple[str, float]:
    """Call after the request's signature verified. Returns the request's one-time key and
    how many seconds to remember it: as long as the verifier would still accept it.

    A header-signed request is accepted while its date is within ``max_skew_s`` of the clock,
    and its date may lie ``max_skew_s`` ahead: ``2 * max_skew_s``. A presigned URL is
    accepted until its date plus ``X-Amz-Expires``: ``max_skew_s + X-Amz-Expires``.
    """
    authorization = headers.get("authorization")
    if authorization is not None:
        return _digest(_header_signature(authorization)), 2 * max_skew_s
    params = _presigned(raw_query)
    return _digest(params.get("X-Amz-Signature", "")), max_skew_s + int(params.get("X-Amz-Expires", "0"))


def _header_signature(authorization: str) -> str:
    # Parsed as the verifier parses it: field order and spacing do not change the key.
    for part in authorization.partition(" ")[2].split(","):
        name, _, value = part.strip().partition("=")
        if name == "Signature":
            return value
    return ""


def _presigned(raw_query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in raw_query.split("&"):
        name, _, value = item.partition("=")
        name = unquote(name)
        if name in ("X-Amz-Signature", "X-Amz-Expires"):
            params[name] = unquote(value)
    return params


def _digest(signature: str) -> str:
    return blake2b(signature.encode(), digest_size=16).hexdigest()
