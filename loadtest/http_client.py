"""A small HTTP/1.1 client on raw asyncio transports: keep-alive, requests pipelined.

Why not aiohttp's client: it costs the generator ~100 µs a request (a ``ClientRequest``, a
``ClientResponse``, a connector lookup, two task wake-ups), as much as the server under test
spends, so on a two-core machine it measured the client. Here a request is one pre-formatted
``transport.write`` and its response one parser callback that resolves a future.

Each :class:`HttpConnection` keeps several requests in flight and matches responses to them
in order, as HTTP/1.1 pipelining does (wsgateway's management edge, an httptools server, and
the ceiling's aiohttp server both answer pipelined requests in order). Responses are parsed
by httptools when it is installed (a wsgateway dependency: llhttp, ~0.5 µs a response), else
by aiohttp's own response parser (llhttp too, ~3 µs); nothing here parses HTTP by hand.

Every request is bounded: :class:`Pool` aborts a connection whose oldest request has waited
longer than ``timeout`` and fails everything pending on it with ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any, Self

__all__ = ["HttpConnection", "Pool", "parser_name"]

try:
    import httptools
except ImportError:  # the fallback: aiohttp is always installed
    httptools = None  # type: ignore[assignment]

Response = tuple[int, bytes]


def parser_name() -> str:
    """Name the response parser in use (the report states it)."""
    return "httptools" if httptools is not None else "aiohttp"


class _HttptoolsParser:
    """Feeds httptools; returns finished ``(status, body)`` responses in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._body: list[bytes] = []
        self._done: list[Response] = []

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._done.append((self._parser.get_status_code(), b"".join(self._body)))
        self._body = []

    def feed(self, data: bytes) -> list[Response]:
        """Parse ``data``; raise ``ValueError`` on a malformed response."""
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            raise ValueError(str(exc)) from exc
        done, self._done = self._done, []
        return done


class _AiohttpParser:
    """Feeds aiohttp's response parser; a response is done once its body is complete."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        from aiohttp.base_protocol import BaseProtocol
        from aiohttp.http_parser import HttpResponseParser

        self._parser = HttpResponseParser(BaseProtocol(loop), loop, 2**16, auto_decompress=False)
        self._open: deque[tuple[int, Any]] = deque()

    def feed(self, data: bytes) -> list[Response]:
        """Parse ``data``; raise ``ValueError`` on a malformed response."""
        try:
            messages, _, _ = self._parser.feed_data(data)
        except Exception as exc:
            raise ValueError(str(exc)) from exc
        self._open.extend((message.code, payload) for message, payload in messages)
        done: list[Response] = []
        while self._open and self._open[0][1].is_eof():
            code, payload = self._open.popleft()
            done.append((code, payload.read_nowait()))
        return done


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection; :meth:`request` pipelines, responses resolve in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._parser = (_HttptoolsParser if httptools is not None else _AiohttpParser)(loop)
        self._pending: deque[tuple[asyncio.Future[Response], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def oldest(self) -> float | None:
        """When the oldest unanswered request was sent (monotonic s), or ``None``."""
        return self._pending[0][1] if self._pending else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def request(self, data: bytes) -> asyncio.Future[Response]:
        """Send one complete request; the future gets ``(status, body)`` or an error."""
        fut = self._loop.create_future()
        if self.closed or self.transport is None:
            fut.set_exception(ConnectionResetError("connection closed"))
            return fut
        self._pending.append((fut, time.monotonic()))
        self.transport.write(data)
        return fut

    def data_received(self, data: bytes) -> None:
        try:
            responses = self._parser.feed(data)
        except ValueError as exc:
            self._fail(ConnectionResetError(f"bad response: {exc}"))
            return
        for response in responses:
            if not self._pending:
                self._fail(ConnectionResetError("response without a request"))
                return
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_result(response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("server closed the connection"))

    def abort(self, exc: Exception) -> None:
        """Drop the connection and fail what is pending with ``exc``."""
        self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        while self._pending:
            fut, _ = self._pending.popleft()
            if not fut.done():
                fut.set_exception(exc if isinstance(exc, Exception) else ConnectionResetError())


class Pool:
    """``connections`` keep-alive connections to one ``host:port``, used round-robin.

    Use as ``async with``. Callers bound their own concurrency; spread over the pool, that is
    ``concurrency / connections`` requests pipelined on each connection.
    """

    def __init__(self, host: str, port: int, connections: int, *, timeout: float = 10.0) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        self._size = max(1, connections)
        self._conns: list[HttpConnection] = []
        self._next = 0
        self._watchdog: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        async with asyncio.timeout(self.timeout):
            self._conns = [await self._connect() for _ in range(self._size)]
        self._watchdog = asyncio.create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        for conn in self._conns:
            conn.abort(ConnectionResetError("pool closed"))

    async def request(self, data: bytes) -> Response:
        """Send ``data`` (a whole request) and return ``(status, body)``.

        Raises ``OSError`` (the connection failed; the next request reconnects) or
        ``TimeoutError`` (no response within ``timeout``).
        """
        i = self._next = (self._next + 1) % self._size
        conn = self._conns[i]
        if conn.closed:
            async with asyncio.timeout(self.timeout):
                conn = self._conns[i] = await self._connect()
        return await conn.request(data)

    async def _connect(self) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: HttpConnection(loop), self.host, self.port)
        return conn

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.timeout / 4))
            limit = time.monotonic() - self.timeout
            for conn in self._conns:
                oldest = conn.oldest()
                if oldest is not None and oldest < limit:
                    conn.abort(TimeoutError(f"no response in {self.timeout:.0f} s"))
