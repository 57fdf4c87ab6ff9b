"""The backend side of a run: SigV4-signed POSTs to a target's management API.

Every target gets the same client work, so a ratio compares servers: each request is signed
(:mod:`loadtest.signer`, botocore's rules with the signing key cached; targets that do not
check SigV4 ignore the headers) and sent on a pipelining keep-alive connection
(:mod:`loadtest.http_client`). A whole unicast operation (sign, send, parse the response,
receive the delivery) costs the generator ~40 µs, less than any target spends serving it.
"""

from __future__ import annotations

from typing import Self
from urllib.parse import quote, urlsplit

from loadtest.http_client import Pool
from loadtest.signer import Signer

__all__ = ["UNCHECKED_KEYS", "Backend", "connection_path", "tenant_path"]

UNCHECKED_KEYS = ("AKIDLOADTEST", "unchecked-by-this-target")
"""Keys that sign requests to targets without SigV4, so they cost the generator the same."""


def connection_path(conn_id: str) -> str:
    """Return the management path that posts to ``conn_id`` (url-encoded, as AWS's)."""
    return "/@connections/" + quote(conn_id, safe="")


def tenant_path(tenant: str) -> str:
    """Return the fan-out extension's path for ``tenant``."""
    return f"/@tenants/{quote(tenant, safe='')}/messages"


class Backend:
    """Signed POSTs to one management endpoint; use as ``async with``.

    ``sigv4`` is ``(access_key_id, secret_access_key)``; ``concurrency`` is how many requests
    the caller keeps in flight, pipelined ``depth`` to a connection.
    """

    def __init__(self, base_url: str, sigv4: tuple[str, str], concurrency: int, depth: int = 4) -> None:
        parts = urlsplit(base_url)
        self._host = parts.netloc  # the Host header, exactly as signed
        self._signer = Signer(*sigv4)
        connections = max(1, -(-concurrency // depth))
        self._pool = Pool(parts.hostname or "127.0.0.1", parts.port or 80, connections)

    async def __aenter__(self) -> Self:
        self._signer.check(self._host, connection_path("check=="), b"{}")  # botocore agrees, or raise
        await self._pool.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pool.__aexit__(*exc)

    def request(self, path: str, data: bytes) -> bytes:
        """Return the whole signed request for ``POST path`` with body ``data``."""
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: {len(data)}\r\n"
            f"{self._signer.headers(self._host, path, data)}\r\n"
        )
        return head.encode() + data

    async def post(self, path: str, data: bytes) -> tuple[int, bytes]:
        """POST ``data`` to ``path``; return ``(status, body)``.

        Raises ``OSError`` or ``TimeoutError`` when the request fails outright.
        """
        return await self._pool.request(self.request(path, data))
