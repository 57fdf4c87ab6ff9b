"""A small HTTP/1.1 server for the management edge, on httptools (llhttp, as in uvicorn).

The management API is the gateway's hottest HTTP path (every backend push is one POST), and
aiohttp's web stack cost more per request than the rest of the push together (see
docs/benchmarks.md). This server keeps what the API needs and nothing else: requests parsed
by httptools (chunked bodies and pipelining included), answered in order per connection
(a malformed or timed-out request is answered after the requests before it), keep-alive with
an idle timeout, ``Expect: 100-continue``, bounded header and body sizes (an oversize body is
drained and flagged, so the handler can answer 413 in AWS's shape), and a graceful close
that lets requests in progress finish.

Before any authentication it also bounds what a peer can hold (docs/security.md): a deadline
for each request's head and one for its whole body, a cap on open connections, and a
``head_check`` that may answer a request from its head alone, so that the body of a request
refused there is never buffered.
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

__all__ = ["HeadCheck", "HttpServer", "Request", "Response"]

log = logging.getLogger("wsgateway.http")

_MAX_HEAD_BYTES = 64 * 1024  # request line + headers
_LINGER_S = 1.0  # after a final answer, input is read and dropped this long before closing
_IDLE, _HEAD, _BODY = "idle", "head", "body"  # what a connection's current request awaits
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
    head_state: object = None  # what the head check learned, for the handler to reuse


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[Request], Awaitable[Response]]
# Called with a request whose body is still to come (``body`` is b""); a Response answers it
# without buffering its body, None lets it through to the handler.
HeadCheck = Callable[[Request], Response | None]


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
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        # A parsed request, or a final answer (a Response) after which the connection closes.
        self._queue: deque[tuple[Request | Response, bool]] = deque()
        self._queued_bytes = 0
        self._worker: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False
        self._failed = False  # a final answer is queued: parse nothing more
        self._paused = False  # reading paused by us: too many answers pending
        self._started = 0.0  # loop time of the current request's first byte
        self._phase = _IDLE  # what the current request is waiting for: _HEAD, _BODY, or none
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._too_large = False
        self._head: Request | None = None

    # ---------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: no isinstance check here.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = str(peer[0]) if peer else ""
        if len(self._server.connections) >= self._server.max_connections:
            log.warning("management connection from %s refused: %d open", self._peer, len(self._server.connections))
            self._closing = True
            transport.write(_serialize(Response(503), keep_alive=False))  # type: ignore[attr-defined]
            transport.close()
            return
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._server.connections.discard(self)
        for timer in (self._idle, self._deadline):
            if timer is not None:
                timer.cancel()
        self._idle = self._deadline = None
        self._queue.clear()  # a request in progress finishes; its answer has nowhere to go
        # The parser refers back to this protocol: drop the cycle (and the body chunks it keeps
        # alive) now rather than at a full collection, which tuned GC thresholds make rare.
        self._parser = None
        self._reset()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._failed or self._parser is None:
            return  # a final answer is queued; what follows it is not read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(Response(400))
        except httptools.HttpParserError:
            self._fail(Response(431 if self._head_bytes > _MAX_HEAD_BYTES else 400))
        else:
            # Idle between requests: closed after idle_timeout_s without a byte. A request
            # that stopped coming is bounded by its deadline instead (see _late).
            if self._worker is None and self._phase is _IDLE:
                self._arm_idle()

    # ---------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self._reset()
        self._started = self._loop.time()
        self._phase = _HEAD
        if self._deadline is None:  # one timer per connection, re-armed lazily (see _late)
            self._arm_deadline(self._started + self._server.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value))
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        # The body gets what is left of the whole request's deadline, counted from its first
        # byte; the timer armed for the head moves there when it fires (see _late).
        self._phase = _BODY
        assert self._parser is not None  # only the parser calls this
        if self._parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: answered 400, never handled
        self._head = self._request()
        check = self._server.head_check
        refused = check(self._head) if check is not None else None
        if refused is not None:
            # Answered from its head: its body is never buffered (nor, after the answer, read).
            self._fail(refused)
            return
        for name, value in self._headers:
            if name.lower() == "expect" and value.lower() == "100-continue" and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._failed:
            return  # the rest of this feed after a final answer
        if self._body_bytes > self._server.max_body:
            self._too_large = True  # keep parsing (the connection stays usable), drop the bytes
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._phase = _IDLE  # the timer lapses when it fires, or serves the next request
        assert self._parser is not None  # only the parser calls this
        if self._failed or self._parser.should_upgrade():
            return
        keep_alive = self._parser.should_keep_alive()
        request, self._head = self._head, None
        assert request is not None  # on_headers_complete came first
        request.body, request.body_too_large = b"".join(self._body), self._too_large
        self._body = []
        self._enqueue(request, keep_alive)

    def _request(self) -> Request:
        """The request whose head was just parsed; its body is filled in when complete."""
        path, _, query = self._url.decode("latin-1").partition("?")
        assert self._parser is not None
        return Request(
            method=self._parser.get_method().decode("latin-1"),
            raw_path=path,
            raw_query=query,
            headers=CIMultiDict(self._headers),
            body=b"",
            peer=self._peer,
        )

    # ---------------------------------------------------------------- answering

    def _enqueue(self, item: Request | Response, keep_alive: bool) -> None:
        self._queue.append((item, keep_alive))
        if isinstance(item, Request):
            self._queued_bytes += len(item.body)
        # Parsed bodies wait here unauthenticated: bound them by count and by bytes.
        full = len(self._queue) >= _MAX_PIPELINED or self._queued_bytes > 2 * self._server.max_body
        if full and self._transport is not None:
            self._paused = True
            self._transport.pause_reading()
        if self._worker is None:
            self._worker = self._loop.create_task(self._work())

    async def _work(self) -> None:
        """Answer queued requests one at a time, in the order they came."""
        try:
            while self._queue and not self._closing:
                item, keep_alive = self._queue.popleft()
                if isinstance(item, Request):
                    self._queued_bytes -= len(item.body)
                    response = await self._call(item)
                else:
                    response = item
                transport = self._transport
                if transport is None or transport.is_closing():
                    return
                keep_alive = keep_alive and not self._server.stopping
                transport.write(_serialize(response, keep_alive))
                if not keep_alive:
                    self._closing = True
                    self._close_after_answer(transport)
                    return
                if self._paused and len(self._queue) < _MAX_PIPELINED // 2 and self._queued_bytes <= self._server.max_body:
                    self._paused = False
                    transport.resume_reading()
        finally:
            self._worker = None
            if not self._closing:
                self._arm_idle()

    def _close_after_answer(self, transport: asyncio.Transport) -> None:
        if not self._failed or not transport.can_write_eof():
            transport.close()
            return
        # The peer may still be sending what we refused to read: closing now would reset the
        # connection and could destroy our answer before it is read. Send FIN, drop what
        # still comes (data_received ignores it) and close for good a moment later.
        transport.write_eof()
        transport.resume_reading()
        self._deadline = self._loop.call_later(_LINGER_S, transport.close)

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

    def _fail(self, response: Response) -> None:
        """Stop reading; answer ``response`` after the requests already queued, then close."""
        if self._failed:
            return
        self._failed = True
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._transport is not None:
            self._transport.pause_reading()
        self._enqueue(response, False)

    def _arm_deadline(self, when: float) -> None:
        """(Re)arm the deadline of the request being read, at loop time ``when``."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_at(when, self._late)

    def _late(self) -> None:
        """The deadline timer fired. Re-armed lazily: requests that complete in time never
        touch it, so it costs one timer per connection per ``header_timeout_s``, not two per
        request. Past its deadline, a request's head or body did not arrive in time
        (slowloris): 408, then close."""
        self._deadline = None
        if self._phase is _IDLE or self._failed:
            return  # between requests: the next one arms it again
        timeout = self._server.header_timeout_s if self._phase is _HEAD else self._server.request_timeout_s
        due = self._started + timeout
        if self._loop.time() < due:  # a later request, or the head arrived: not late yet
            self._arm_deadline(due)
            return
        if self._paused:
            # We stopped reading (answers pending), not the peer: time it again once we read.
            self._arm_deadline(self._loop.time() + self._server.header_timeout_s)
            return
        log.info("management request from %s timed out before it was complete", self._peer)
        self._fail(Response(408))

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
    """Use: ``server = HttpServer(handler, max_body=...); await server.start(sock)``.

    ``header_timeout_s`` bounds the time from a request's first byte to the end of its head,
    ``request_timeout_s`` the time to its last body byte; a late request is answered 408 and
    its connection closed. Past ``max_connections`` open connections a new one is answered
    503 and closed. ``head_check`` (optional) may answer a request from its head alone.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        idle_timeout_s: float = 75.0,
        header_timeout_s: float = 10.0,
        request_timeout_s: float = 30.0,
        max_connections: int = 1024,
        head_check: HeadCheck | None = None,
    ) -> None:
        if not 0 < header_timeout_s <= request_timeout_s:
            raise ValueError("need 0 < header_timeout_s <= request_timeout_s")
        if max_connections < 1:
            raise ValueError("max_connections must be >= 1")
        self.handler = handler
        self.max_body = max_body
        # A connection with no request in progress and no byte for this long is closed.
        self.idle_timeout_s = idle_timeout_s
        self.header_timeout_s = header_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_connections = max_connections
        self.head_check = head_check
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
                # Shutdown only: a 10 ms poll beats an event every request would have to set.
                while any(conn.busy for conn in self.connections):  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
        for conn in list(self.connections):
            conn.close()
