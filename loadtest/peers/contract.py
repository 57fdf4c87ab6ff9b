"""What every Python peer adapter shares: its command line, its ready file, its token check.

Call :func:`parse_args` at start, :func:`tenant_of` on every handshake, and
:func:`write_ready` once both listeners accept.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson

__all__ = ["parse_args", "tenant_of", "write_ready"]


def parse_args(description: str, argv: list[str] | None = None) -> argparse.Namespace:
    """Return the adapter's options (the same flags for every peer)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--ready-file", required=True, type=Path)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="client port (0 = free port)")
    p.add_argument("--management-port", type=int, default=0)
    p.add_argument("--jwt-secret", default="", help="verify HS256 ?token= when set")
    p.add_argument("--redis-url", default="", help="cross-node bus / peer backend")
    p.add_argument("--node-id", default="n0")
    p.add_argument("--reuse-port", action="store_true", help="share the ports (several workers)")
    p.add_argument("--compression", action="store_true", help="offer permessage-deflate (websockets' default)")
    p.add_argument("--backend-url", default="", help="echohttp: forward each echo to this HTTP backend")
    return p.parse_args(argv)


def tenant_of(path_or_token: str, secret: str, *, is_token: bool = False) -> str | None:
    """Return the tenant for a handshake, or ``None`` to refuse it.

    ``path_or_token`` is the request target (``/?token=...`` or ``/?tenant=...``) or, with
    ``is_token``, the token itself. With a ``secret`` the HS256 token is verified and its
    ``tenant`` claim used; without one ``?tenant=`` is trusted (auth off).
    """
    if is_token:
        token, tenant = path_or_token, None
    else:
        query = parse_qs(urlsplit(path_or_token).query)
        token = query.get("token", [""])[0]
        tenant = query.get("tenant", [None])[0]
    if not secret:
        return tenant or "t0"
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"])
    except jwt.PyJWTError:
        return None
    return str(claims.get("tenant", "t0"))


def write_ready(path: Path, node_id: str, port: int, management_port: int) -> None:
    """Write the ready file atomically, so a reader never sees half of it."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(
        orjson.dumps(
            {"node_id": node_id, "port": port, "management_port": management_port, "pid": os.getpid()}
        )
    )
    tmp.replace(path)
