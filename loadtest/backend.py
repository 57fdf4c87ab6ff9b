"""The backend side of a run: POSTs to a target's management API, SigV4-signed when asked.

Signing uses botocore's own ``SigV4Auth`` once per request, as an AWS SDK would; the cost
lands in the generator's CPU, which the report shows next to every figure.
"""

from __future__ import annotations

from urllib.parse import quote

import aiohttp
from yarl import URL

__all__ = ["Backend", "connection_path", "tenant_path"]

_REGION = "us-east-1"


def connection_path(conn_id: str) -> str:
    """Return the management path that posts to ``conn_id`` (url-encoded, as AWS's)."""
    return "/@connections/" + quote(conn_id, safe="")


def tenant_path(tenant: str) -> str:
    """Return the fan-out extension's path for ``tenant``."""
    return f"/@tenants/{quote(tenant, safe='')}/messages"


class Backend:
    """A pool of HTTP connections to one management endpoint; use as ``async with``.

    ``sigv4`` is ``(access_key_id, secret_access_key)`` or ``None`` for unsigned requests.
    """

    def __init__(self, base_url: str, sigv4: tuple[str, str] | None, concurrency: int) -> None:
        self.base_url = base_url.rstrip("/")
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None
        self._signer = None
        if sigv4 is not None:
            from botocore.auth import SigV4Auth
            from botocore.credentials import Credentials

            self._signer = SigV4Auth(Credentials(*sigv4), "execute-api", _REGION)

    async def __aenter__(self) -> Backend:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=10),
            skip_auto_headers=("User-Agent", "Content-Type"),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _headers(self, url: str, data: bytes) -> dict[str, str]:
        if self._signer is None:
            return {}
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method="POST", url=url, data=data)
        self._signer.add_auth(request)
        return dict(request.headers.items())

    async def post(self, path: str, data: bytes) -> tuple[int, bytes]:
        """POST ``data`` to ``path``; return ``(status, body)``.

        Raises ``aiohttp.ClientError`` or ``TimeoutError`` when the request fails outright.
        """
        assert self._session is not None, "use Backend as an async context manager"
        url = self.base_url + path
        headers = self._headers(url, data)
        async with self._session.post(URL(url, encoded=True), data=data, headers=headers) as resp:
            return resp.status, await resp.read()
