"""Connection ids, request ids and node ids.

A connection id is a bearer capability for the management API's neighbours (a handler that
learns an id may post to it), so it carries 96 bits from the OS's CSPRNG: 16 base64url
characters, as AWS's look. On a cluster it also names the node that holds it,
``<16 random characters>.<node id>``, so that a call from another node goes straight to the
owner without looking it up in Redis. The node part is public (node ids show in logs and
health answers); the random part alone makes the id unguessable, whatever the node id. The
``.`` never occurs in either part (base64url and node ids are ``A-Za-z0-9_-``), so the node
is always found again, whatever a user named it. Ids of the plain 16-character form (made
before nodes were named, or by a single node) keep working: they are looked up.

Request and message ids only need to be unique enough to correlate log lines, so they come
from a fast non-cryptographic generator in the same 16-character form.
"""

from __future__ import annotations

import base64
import os
import random
import re

__all__ = [
    "can_name",
    "is_connection_id",
    "new_connection_id",
    "new_node_id",
    "new_request_id",
    "node_of",
]

MAX_NODE_ID = 100  # configured ids are up to 64 characters; workers add "-<index>"
_RANDOM_CHARS = 16  # 96 bits in base64url
_NODE_PART = rf"[A-Za-z0-9_-]{{1,{MAX_NODE_ID}}}"
_NODE = re.compile(_NODE_PART)
# Ours: 16 base64url characters, then ".<node>" when the node is named. AWS-made ids (15 +
# "=") and other base64 forms are accepted so that ids copied from elsewhere get a 410, not
# a 400. At most 128 characters either way. Only the named form has a "." (at 17th place):
# each form has its pattern, so that neither is tried on the other's ids.
_PLAIN_ID = re.compile(r"[A-Za-z0-9_\-+/]{1,128}={0,2}")
_NAMED_ID = re.compile(r"[A-Za-z0-9_-]{16}\." + _NODE_PART)
# Node parts node_of found well-formed, kept to answer again without the regex (bounded).
_named: set[str] = set()
_NAMED_KEPT = 1024
_b64 = base64.urlsafe_b64encode
_getrandbits = random.getrandbits


def new_connection_id(node_id: str | None = None) -> str:
    """Return a fresh, unguessable connection id: 96 random bits (16 characters), followed
    by ``.<node_id>`` when ``node_id`` is given. Raises ValueError for a node id that is not
    1 to ``MAX_NODE_ID`` characters of ``A-Za-z0-9_-`` (it could not be parsed back)."""
    random_part = _b64(os.urandom(12)).decode("ascii")
    if node_id is None:
        return random_part
    if not can_name(node_id):
        raise ValueError(f"node id {node_id!r} cannot be named in a connection id")
    return f"{random_part}.{node_id}"


def can_name(node_id: str) -> bool:
    """Whether a connection id can name ``node_id`` (1 to ``MAX_NODE_ID`` of ``A-Za-z0-9_-``)."""
    return _NODE.fullmatch(node_id) is not None


def node_of(connection_id: str) -> str | None:
    """The node a connection id names, or None for an id that names none (the plain
    16-character form, or any id not made by :func:`new_connection_id` with a node)."""
    if len(connection_id) <= _RANDOM_CHARS + 1 or connection_id[_RANDOM_CHARS] != ".":
        return None
    node = connection_id[_RANDOM_CHARS + 1:]
    if node in _named:  # a node named before (ids name the few nodes of a cluster): no regex
        return node
    if _NODE.fullmatch(node) is None:
        return None
    if len(_named) >= _NAMED_KEPT:
        _named.clear()
    _named.add(node)
    return node


_BATCH = 256  # request ids made per refill: one random draw and one encode for all of them
_request_ids: list[str] = []
# A forked worker must not hand out its parent's ids (random reseeds itself in the child too).
os.register_at_fork(after_in_child=_request_ids.clear)


def new_request_id() -> str:
    """Return a 16-character request / message id for correlating events and log lines.

    Every message takes one, so they are made ``_BATCH`` at a time: 96 random bits each,
    encoded together (12 bytes are exactly 16 base64url characters, so the batch's text cuts
    into ids without padding), then handed out one per call."""
    try:
        return _request_ids.pop()
    except IndexError:
        text = _b64(_getrandbits(96 * _BATCH).to_bytes(12 * _BATCH, "big")).decode("ascii")
        _request_ids[:] = [text[i:i + _RANDOM_CHARS] for i in range(0, len(text), _RANDOM_CHARS)]
        return _request_ids.pop()


def new_node_id() -> str:
    """Return a node id unique per process: short, readable in logs, URL- and key-safe."""
    return "n" + _b64(os.urandom(6)).decode("ascii").replace("-", "x").replace("_", "y")


def is_connection_id(value: str) -> bool:
    """Tell whether ``value`` has the shape of a connection id (ours or AWS's).

    The management API answers 400 for a malformed id instead of looking it up.
    """
    pattern = _NAMED_ID if value[_RANDOM_CHARS:_RANDOM_CHARS + 1] == "." else _PLAIN_ID
    return pattern.fullmatch(value) is not None
