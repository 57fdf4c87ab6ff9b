"""A small HTTP/1.1 server for the management edge, on httptools (llhttp, as in uvicorn).

The management API is the gateway's hottest HTTP path (every backend push is one POST), and
aiohttp's web stack cost more per request than the rest of the push together (see
docs/benchmarks.md). This server keeps what the API needs and nothing else: requests parsed
by httptools (chunked bodies and pipelining included), answered in order per connection,
keep-alive with an idle timeout, ``Expect: 100-continue``, bounded header and body sizes
(an oversize body is drained and flagged, so the handler can answer 413 in AWS's shape),
and a graceful close that lets requests in progress finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools
from multidict import CIMultiDict

__all__ = ["HttpServer", "Request", "Response"]

log = logging.getLogger("wsgateway.http")

_MAX_HEAD_BYTES = 64 * 1024  # request line + headers
_MAX_PIPELINED = 16  # parsed requests waiting per connection before reading pauses
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request. ``raw_path``/``raw_query`` keep the bytes' percent-encoding, as
    SigV4 signs them; ``body_too_large`` means ``body`` was cut at the server's limit."""

    method: str
    raw_path: str
    raw_query: str
    headers: CIMultiDict[str]
    body: bytes
    peer: str
    body_too_large: bool = False


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]


def _serialize(response: Response, keep_alive: bool) -> bytes:
    reason = _REASONS.get(response.status, b"Unknown")
    head = [b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\n" % (response.status, reason, len(response.body))]
    for name, value in response.headers:
        head.append(f"{name}: {value}\r\n".encode("latin-1"))
    if not keep_alive:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    head.append(response.body)
    return b"".join(head)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        self._queue: deque[tuple[Request, bool]] = deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._too_large = False

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.connections.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        self._queue.clear()  # a request in progress finishes; its answer has nowhere to go

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)
        except httptools.HttpParserError:
            self._fail(431 if self._head_bytes > _MAX_HEAD_BYTES else 400)
        else:
            # Idle, or in the middle of a request that stopped coming (slowloris): either
            # way the connection is closed after idle_timeout_s without a byte.
            if self._worker is None:
                self._arm_idle()

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        for name, value in self._headers:
            if name.lower() == "expect" and value.lower() == "100-continue" and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._server.max_body:
            self._too_large = True  # keep parsing (the connection stays usable), drop the bytes
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        path, _, query = self._url.decode("latin-1").partition("?")
        request = Request(
            method=self._parser.get_method().decode("latin-1"),
            raw_path=path,
            raw_query=query,
            headers=CIMultiDict(self._headers),
            body=b"".join(self._body),
            peer=self._peer,
            body_too_large=self._too_large,
        )
        self._queue.append((request, self._parser.should_keep_alive()))
        if len(self._queue) >= _MAX_PIPELINED and self._transport is not None:
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())

    # ---------------------------------------------------------------- answering

    async def _work(self) -> None:
        """Answer queued requests one at a time, in the order they came."""
        try:
            while self._queue and not self._closing:
                request, keep_alive = self._queue.popleft()
                response = await self._call(request)
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                keep_alive = keep_alive and not self._server.stopping
                transport.write(_serialize(response, keep_alive))
                if not keep_alive:
                    self._closing = True
                    transport.close()
                    return
                if len(self._queue) < _MAX_PIPELINED // 2:
                    transport.resume_reading()
        finally:
            self._worker = None
            if not self._closing:
                self._arm_idle()

    async def _call(self, request: Request) -> Response:
        try:
            return await self._server.handler(request)
        except Exception:
            log.exception("management handler failed")
            return Response(500, b'{"message": "Internal server error"}', [("Content-Type", "application/json")])

    def _count_head(self, n: int) -> None:
        self._head_bytes += n
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def _fail(self, status: int) -> None:
        """A request that cannot be parsed: answer ``status`` and close."""
        transport = self._transport
        self._closing = True
        if transport is not None and not transport.is_closing():
            transport.write(_serialize(Response(status), keep_alive=False))
            transport.close()

    def _arm_idle(self) -> None:
        if self._idle is None and not self._closing:
            self._idle = self._loop.call_later(self._server.idle_timeout_s, self._close_idle)

    def _close_idle(self) -> None:
        self._idle = None
        if self._worker is None and self._transport is not None:
            self._closing = True
            self._transport.close()

    def close_when_idle(self) -> None:
        """Server shutdown: close now if idle, else after the answer in progress."""
        if self._worker is None:
            self._close_idle()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def busy(self) -> bool:
        return self._worker is not None


class HttpServer:
    """Use: ``server = HttpServer(handler, max_body=...); await server.start(sock)``."""

    def __init__(self, handler: Handler, *, max_body: int, idle_timeout_s: float = 75.0) -> None:
        self.handler = handler
        self.max_body = max_body
        # A connection with no request in progress and no byte for this long is closed.
        self.idle_timeout_s = idle_timeout_s
        self.connections: set[_Connection] = set()
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None

    async def start(self, sock: socket.socket) -> int:
        """Serve on a bound, listening socket; return its port."""
        self._server = await self.loop.create_server(lambda: _Connection(self), sock=sock)
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self, timeout: float) -> None:
        """Stop accepting; let requests in progress finish (up to ``timeout``); close all."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close_when_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while any(conn.busy for conn in self.connections):
                    await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
