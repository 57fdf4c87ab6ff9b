"""HTTP integrations: a route whose target is an ``http://`` or ``https://`` URL.

The gateway POSTs the same Lambda-proxy event a Python handler gets, as JSON, over the node's
pooled keep-alive connections (:class:`HttpPool`, one per node), and reads the answer as AWS's
HTTP_PROXY integration does (:func:`read_result`): a JSON object with ``statusCode`` is a
Lambda result; any other 2xx body goes back to the client as one frame; an empty 2xx sends
nothing. A redirect, a 5xx, a refused connection, a body over ``limits.max_message_bytes`` or
a reply naming ``statusCode`` that is not valid JSON raise
:class:`~wsgateway.errors.IntegrationError`; on ``$connect`` a 4xx is the handshake's
answer, elsewhere it is a failure too.

``$disconnect`` must not be lost: a refusal, a dropped connection or a 5xx is retried with
:class:`~wsgateway.integrations.backoff.Backoff` for up to ``disconnect_retry_s``, every
attempt carrying the same ``requestId`` so that the backend can drop duplicates.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import orjson

from ..config import HttpIntegrationConfig
from ..errors import IntegrationError
from .backoff import Backoff
from .context import HandlerContext
from .signature import HEADER, sign
from .timed import within

__all__ = ["HttpIntegration", "HttpPool", "read_result"]

log = logging.getLogger("wsgateway")

_KEEPALIVE_S = 30.0  # idle pooled connections live this long (backends usually allow 60+)


class HttpPool:
    """One node's HTTP client: a keep-alive pool of ``max_connections`` shared by every HTTP
    route. Call :meth:`start` when the gateway starts and :meth:`close` when it stops (both
    idempotent); a request on a closed pool raises IntegrationError."""

    __slots__ = ("settings", "_secret", "_session", "_closed")

    def __init__(self, settings: HttpIntegrationConfig) -> None:
        self.settings = settings
        self._secret = settings.signing_secret.encode() if settings.signing_secret else None
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    async def start(self) -> None:
        """Open the pool (on the running loop); later calls do nothing."""
        if self._session is None and not self._closed:
            connector = aiohttp.TCPConnector(limit=self.settings.max_connections, keepalive_timeout=_KEEPALIVE_S)
            # No client-side timeout: the route's time limit (handler_timeout_s) bounds every call.
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None), headers={"User-Agent": "wsgateway"}
            )

    async def close(self) -> None:
        """Close every pooled connection; idempotent."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def post(self, url: str, body: bytes, headers: dict[str, str], max_body: int) -> tuple[int, str, bytes]:
        """POST ``body`` (signed if a secret is set); return (status, content type, body read
        up to ``max_body`` bytes). Raises IntegrationError for a transport failure or a body
        over ``max_body``."""
        if self._session is None:
            await self.start()
        if self._session is None:
            raise IntegrationError("http", "closed", "HTTP integration used after the gateway stopped")
        if self._secret is not None:
            headers[HEADER] = sign(self._secret, body, time.time())
        try:
            async with self._session.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                data = await _read(resp, max_body, url) if resp.status < 300 else b""
                return resp.status, resp.content_type, data
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS: nothing was sent
            raise IntegrationError("http", "connect", f"{url}: {exc}", retryable=True) from None
        except aiohttp.ClientError as exc:  # dropped mid-request: the backend may or may not have it
            raise IntegrationError("http", "transport", f"{url}: {exc!r}", retryable=True) from None


async def _read(resp: aiohttp.ClientResponse, limit: int, url: str) -> bytes:
    """The response body, refused as soon as it passes ``limit`` bytes."""
    if resp.content_length is not None:
        if resp.content_length > limit:
            raise IntegrationError("http", "too_large", f"{url}: body of {resp.content_length} bytes")
        return await resp.read()  # the length is known and allowed: one read
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise IntegrationError("http", "too_large", f"{url}: body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def read_result(status: int, content_type: str, body: bytes, *, connect: bool, url: str) -> Any:
    """What a backend's answer means, as a Python handler's return value would: a dict (a
    Lambda result, or ``{"statusCode": 200, "body": ...}`` for a plain body) or None (send
    nothing). ``connect``: the route is ``$connect``, where a 4xx rejects the handshake.
    Raises IntegrationError for every answer that is a failure."""
    if 200 <= status < 300:
        if not body:
            return None
        # Only a reply that names statusCode can be a Lambda result: others skip the parse.
        is_json = content_type == "application/json" or content_type.endswith("+json")
        if b'"statusCode"' in body and (is_json or body.lstrip()[:1] == b"{"):
            try:
                parsed = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise IntegrationError("http", "invalid_json", f"{url}: {status} with invalid JSON") from None
            if isinstance(parsed, dict) and "statusCode" in parsed:
                return parsed
        return {"statusCode": 200, "body": body}
    if 300 <= status < 400:
        raise IntegrationError("http", "redirect", f"{url}: answered {status} (redirects are not followed)")
    if 400 <= status < 500:
        if connect:
            return {"statusCode": status}
        raise IntegrationError("http", "4xx", f"{url}: answered {status}")
    if 500 <= status < 600:
        raise IntegrationError("http", "5xx", f"{url}: answered {status}", retryable=True)
    raise IntegrationError("http", "status", f"{url}: answered {status}")


class HttpIntegration:
    """A route whose target is a URL; build it with :func:`wsgateway.integrations.load_integration`."""

    __slots__ = ("target", "pool", "timeout", "max_body", "_connect", "_backoff")

    kind = "http"

    def __init__(
        self, target: str, *, pool: HttpPool, timeout: float, max_body: int, route_key: str
    ) -> None:
        self.target = target
        self.pool = pool
        self.timeout = timeout
        self.max_body = max_body
        self._connect = route_key == "$connect"
        budget = pool.settings.disconnect_retry_s
        self._backoff = Backoff(budget_s=budget) if route_key == "$disconnect" else None

    async def start(self) -> None:
        """Open the node's pool (the gateway calls it at start)."""
        await self.pool.start()

    async def close(self) -> None:
        """Close the node's pool (the gateway calls it last at stop)."""
        await self.pool.close()

    async def invoke(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """POST the event within the time limit; for ``$disconnect`` retry refusals and 5xx.
        Return the result as :func:`read_result`; raise HandlerTimeout or IntegrationError."""
        if self._backoff is None:
            return await self._timed(event, context)
        return await self._deliver(event, context, self._backoff)

    async def call(self, event: dict[str, Any], context: HandlerContext) -> Any:
        """POST the event once with no time limit of its own (the dispatcher enforces it)."""
        body = orjson.dumps(event)
        ctx = event.get("requestContext") or {}
        headers = {
            "Content-Type": "application/json",
            "X-Wsgateway-Connection-Id": context.connection_id,
            "X-Wsgateway-Route-Key": str(ctx.get("routeKey", "")),
            "X-Wsgateway-Request-Id": context.aws_request_id,
        }
        status, content_type, data = await self.pool.post(self.target, body, headers, self.max_body)
        return read_result(status, content_type, data, connect=self._connect, url=self.target)

    async def _timed(self, event: dict[str, Any], context: HandlerContext) -> Any:
        return await within(self.timeout, self.target, self.call(event, context))

    async def _deliver(self, event: dict[str, Any], context: HandlerContext, backoff: Backoff) -> Any:
        """The retry loop: the one place that sleeps between attempts (see Backoff)."""
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                return await self._timed(event, context)
            except IntegrationError as exc:
                delay = backoff.delay(attempt)
                if not exc.retryable or not backoff.allows(time.monotonic() - started, delay):
                    raise
                log.warning("$disconnect delivery failed (%s), retry %d in %.2fs: requestId=%s connectionId=%s",
                            exc.reason, attempt + 1, delay, context.aws_request_id, context.connection_id)
            try:
                await asyncio.sleep(delay)
            except asyncio.CancelledError:  # the node stopped past limits.shutdown_timeout_s
                log.error("$disconnect delivery abandoned at shutdown: requestId=%s connectionId=%s",
                          context.aws_request_id, context.connection_id)
                raise
            attempt += 1
