"""A small HTTP/1.1 server for the management edge, on httptools (llhttp, as in uvicorn).

The management API is the gateway's hottest HTTP path (every backend push is one POST), and
aiohttp's web stack cost more per request than the rest of the push together (see
docs/benchmarks.md). This server keeps what the API needs and nothing else: requests parsed
by httptools (chunked bodies and pipelining included), answered in order per connection
(a malformed or timed-out request is answered after the requests before it; a request the
head check marks ``concurrent`` may start before those ahead of it are answered), keep-alive with
an idle timeout, ``Expect: 100-continue``, bounded header and body sizes (an oversize body is
drained and flagged, so the handler can answer 413 in AWS's shape; one announced with
``Expect: 100-continue`` is refused at once instead), and a graceful close that lets requests
in progress finish. Every answer carries ``Date`` (RFC 9110 6.6.1, as AWS's do: SDKs set
their clock offset from it), and a 204 no ``Content-Length`` (RFC 9110 8.6). What it refuses
itself (a malformed, late or oversize request, an upgrade, a connection past the cap, a
handler that failed) is answered by its ``refusal``, so that the management edge gives those
answers the shape of its own.

Before any authentication it also bounds what a peer can hold (docs/security.md): a deadline
for each request's head and one for its whole body, a cap on open connections, and a
``head_check`` that may answer a request from its head alone, so that the body of a request
refused there is never buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import http
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from typing import Any

import httptools
from multidict import CIMultiDict, istr

from .eager import DONE, START, call_as, carry_on, first_step

__all__ = ["Deferred", "HeadCheck", "HttpServer", "Refusal", "Request", "Response"]

log = logging.getLogger("wsgateway.http")

_MAX_HEAD_BYTES = 64 * 1024  # request line + headers
_LINGER_S = 1.0  # after a final answer, input is read and dropped this long before closing
_IDLE, _HEAD, _BODY = "idle", "head", "body"  # what a connection's current request awaits
_MAX_PIPELINED = 16  # parsed requests waiting per connection before reading pauses
# Each answer's first line and the start of its head, made once per status.
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\nContent-Length: " % (s.value, s.phrase.encode()) for s in http.HTTPStatus}
# Header names looked up in every request, made case-insensitive once (not per lookup).
_EXPECT, _CONTENT_LENGTH, _HOST = istr("Expect"), istr("Content-Length"), istr("Host")
_METHODS = {m.encode(): m for m in ("GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH")}
# Header names as sent (bytes) -> the same, decoded as case-insensitive strings, for the
# headers callers send with every request (bounded: a name past the bound is decoded each time).
_NAMES: dict[bytes, istr] = {}
_NAMES_KEPT = 256


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
    # What the head check learned, for the handler to reuse. (Any, not object: mypyc's
    # dataclasses cannot yet name object in a field's type.)
    head_state: Any = None
    # Set by the head check: the handler may start before the requests ahead of it on the
    # connection are answered (it is answered after them all the same). For requests whose
    # effect is ordered by the handler's first step (a post to a connection), so that a
    # pipelining caller keeps several in flight where each waits for another node.
    concurrent: bool = False


@dataclass(slots=True)
class Response:
    """An answer. ``head`` is more header lines, already serialized (``Name: value\r\n``
    each), written after ``headers``: for an answer made often, most of them made once."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    head: bytes = b""
    bodiless: bool = False  # the answer to a HEAD request: its Content-Length, not its body


class Deferred:
    """An answer still to come, given later by :meth:`resolve` from a callback (another
    node's reply) rather than by a task: what a handler returns for a request that waits on
    an event, so that no coroutine or task is made for it. Resolved once; must be resolved
    (the request is answered in its turn only then)."""

    __slots__ = ("_then", "response")

    def __init__(self) -> None:
        self.response: Response | None = None
        self._then: Callable[[], None] | None = None  # the connection, once it waits for it

    def resolve(self, response: Response) -> None:
        if self.response is not None:
            return
        self.response = response
        then = self._then
        if then is not None:
            self._then = None
            then()

    def __await__(self) -> Generator[Any, None, Response]:
        """For a request served alone (a concurrent one while the server stops): its
        connection's task awaits the answer."""
        if self.response is None:
            future = asyncio.get_running_loop().create_future()
            self._then = functools.partial(_wake, future)
            yield from future.__await__()
        assert self.response is not None
        return self.response


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# A handler answers at once (a Response: no coroutine made or run, as for most management
# posts), returns the coroutine that will (an ``async def`` handler always does), or, for a
# concurrent request, a Deferred resolved later.
Handler = Callable[[Request], Response | Deferred | Coroutine[Any, Any, Response]]
# Called with a request whose body is still to come (``body`` is b""); a Response answers it
# without buffering its body, None lets it through to the handler.
HeadCheck = Callable[[Request], Response | None]
# Makes the answer to a request the server refuses itself: called with the status, a short
# reason the client may read, and the request as far as it was read (before its head was
# complete: no path, the method if known, the headers so far). A fresh Response each time.
Refusal = Callable[[int, str, Request], Response]


def _name(raw: bytes) -> istr:
    """A header name not in _NAMES: decoded, and kept there while there is room."""
    name = istr(raw.decode("latin-1"))
    if len(_NAMES) < _NAMES_KEPT:
        _NAMES[raw] = name
    return name


def _bare(status: int, reason: str, request: Request) -> Response:
    """The default :data:`Refusal`: the status alone."""
    return Response(status)


def _nobody(peer: str) -> Request:
    """What stands for a request of which nothing is known (a connection past the cap)."""
    return Request("", "", "", CIMultiDict(), b"", peer)


_FAILED = "Internal server error"  # a handler failed: its error is logged, never sent


def _date_line() -> bytes:
    """``Date: <now, IMF-fixdate>\\r\\n``."""
    return b"Date: %s\r\n" % formatdate(usegmt=True).encode()


# The Date line every answer carries: remade each second by each running server (_redate),
# so that an answer reads a global instead of the clock.
_DATE = [_date_line()]


def _serialize(response: Response, keep_alive: bool) -> bytes:
    status, body = response.status, response.body
    fields = b""
    if response.headers:
        lines = ""
        for name, value in response.headers:
            lines += f"{name}: {value}\r\n"
        fields = lines.encode("latin-1")
    close = b"" if keep_alive else b"Connection: close\r\n"
    if status == 204:  # no content, and no Content-Length either (RFC 9110 8.6)
        return b"HTTP/1.1 204 No Content\r\n%s%s%s%s\r\n" % (_DATE[0], fields, response.head, close)
    first = _STATUS_LINES.get(status) or b"HTTP/1.1 %d Unknown\r\nContent-Length: " % status
    return b"%s%d\r\n%s%s%s%s\r\n%s" % (
        first, len(body), _DATE[0], fields, response.head, close, b"" if response.bodiless else body)


def _to(request: Request, response: Response) -> Response:
    """``response`` as the answer to ``request``: a HEAD request's carries no content (RFC 9110
    9.3.2), else a keep-alive client reads that content as the start of the next answer."""
    if request.method != "HEAD" or not response.body:
        return response
    return replace(response, bodiless=True)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._loop = server.loop
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._peer = ""
        # A parsed request, its handler already started (a Task, or a Deferred), or an answer
        # (a Response: a final one, after which the connection closes, or a concurrent
        # request's); with keep-alive and its body's size.
        self._queue: deque[tuple[Request | asyncio.Task[Response] | Deferred | Response, bool, int]] = deque()
        self._serial = 0  # requests queued or in progress that must not be overtaken
        self._queued_bytes = 0
        # The connection's task, made with its first serial request: handlers' first steps run
        # as if in it (see _run); it wakes only to carry on one that suspended.
        self._worker: asyncio.Task[None] | None = None
        self._context: contextvars.Context | None = None  # where every serial handler runs
        self._waiter: asyncio.Future[None] | None = None  # the idle worker sleeps on it
        self._suspended: tuple[Coroutine[Any, Any, None], Any] | None = None  # for the worker
        self._watched: asyncio.Task[Response] | None = None  # head of the queue, not done yet
        self._resolved_due = False  # a Deferred at the head resolved: answered by a call soon
        self._out: list[bytes] = []  # answers made this turn, not written yet
        self._idle: asyncio.TimerHandle | None = None  # see _idle_due
        self._idle_since = 0.0  # loop time the connection last became idle
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False
        self._failed = False  # a final answer is queued: parse nothing more
        self._last = False  # a request without keep-alive was parsed: none after it is served
        self._paused = False  # reading paused by us: too many answers pending
        self._started = 0.0  # loop time of the current request's first byte
        self._phase = _IDLE  # what the current request is waiting for: _HEAD, _BODY, or none
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._head_bytes = 0
        self._headers: list[tuple[istr, str]] = []
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
            refused = self._server.refusal(503, "Too many connections", _nobody(self._peer))
            transport.write(_serialize(refused, keep_alive=False))  # type: ignore[attr-defined]
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
        for item, _, _ in self._queue:  # a request in progress finishes; its answer has nowhere to go
            if isinstance(item, asyncio.Task) and not item.done():
                self._server.hold(item)
            elif isinstance(item, Deferred):
                item._then = None
        self._queue.clear()
        self._out.clear()
        self._wake()  # the worker ends (after a handler it carries on)
        # The parser refers back to this protocol: drop the cycle (and the body chunks it keeps
        # alive) now rather than at a full collection, which tuned GC thresholds make rare.
        self._parser = None
        self._reset()
        self._transport = None

    def data_received(self, data: bytes) -> None:
        if self._failed or self._parser is None:
            return  # a final answer is queued; what follows it is not read
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(self._refusal(400, "Upgrade is not supported"))
        except httptools.HttpParserError:
            if self._head_bytes > _MAX_HEAD_BYTES:
                self._fail(self._refusal(431, "Request header fields too large"))
            else:
                self._fail(self._refusal(400, "Malformed request"))
        self._advance()
        # Idle between requests: closed after idle_timeout_s without a byte (see _idle_due). A
        # request that stopped coming is bounded by its deadline instead (see _late).
        if not self._closing and self._phase is _IDLE and not self.busy:
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
        self._head_bytes += len(url)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        # Called for every header: kept to the least (the multidict made at once, in
        # on_headers_complete). A name seen before is its case-insensitive string already:
        # no decoding, and the multidict need not fold its case.
        self._headers.append((_NAMES.get(name) or _name(name), value.decode("latin-1")))
        self._head_bytes += len(name) + len(value)
        if self._head_bytes > _MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request head too large")

    def on_headers_complete(self) -> None:
        # The body gets what is left of the whole request's deadline, counted from its first
        # byte; the timer armed for the head moves there when it fires (see _late).
        self._phase = _BODY
        assert self._parser is not None  # only the parser calls this
        if self._parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: answered 400, never handled
        path, _, query = self._url.decode("latin-1").partition("?")
        method = self._parser.get_method()
        headers: CIMultiDict[str] = CIMultiDict(self._headers)
        self._head = request = Request(_METHODS.get(method) or method.decode("latin-1"), path, query, headers, b"",
                                       self._peer)
        if _HOST not in headers and self._parser.get_http_version() != "1.0":
            # RFC 9112 3.2: an HTTP/1.1 request without Host is answered 400, before anything
            # that would read the (missing) Host as an empty name: allow lists, signatures.
            self._fail(self._refusal(400, "Host header is missing"))
            return
        check = self._server.head_check
        refused = check(request) if check is not None else None
        if refused is not None:
            # Answered from its head: its body is never buffered (nor, after the answer, read).
            self._fail(_to(request, refused))
            return
        if _EXPECT in headers and self._transport is not None and any(
            value.lower() == "100-continue" for value in headers.getall(_EXPECT)
        ):
            if self._announced_too_large(headers):
                # The client waits for our word before sending: tell it the final answer
                # now, rather than 100 and a body drained only to answer 413.
                self._fail(self._refusal(413, "Payload too large"))
                return
            self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _announced_too_large(self, headers: CIMultiDict[str]) -> bool:
        """Whether the request's Content-Length is over the body limit (the parser checked
        it is a number; a chunked body's size is not known before it comes)."""
        length = headers.get(_CONTENT_LENGTH)
        return length is not None and length.isdigit() and int(length) > self._server.max_body

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
        request = self._head  # None: an upgrade (on_headers_complete made no request)
        if request is None or self._failed or self._last or self._closing:
            return  # nor is one after a final answer (its handler must not run: never answered)
        self._head = None
        assert self._parser is not None  # only the parser calls this
        keep_alive = self._parser.should_keep_alive()
        self._last = not keep_alive
        request.body = body = b"".join(self._body)
        if self._too_large:
            request.body_too_large = True
        self._body = []
        size = len(body)  # counted until answered, started or not
        queue = self._queue
        if not request.concurrent:
            self._serial += 1
            queue.append((request, keep_alive, size))
        elif self._serial or self._server.stopping:  # started in turn (see _advance)
            queue.append((request, keep_alive, size))
        else:  # only concurrent ones ahead: start it now, in order
            started = self._start(request)
            if not queue and keep_alive and isinstance(started, Response):
                self._answer(started, keep_alive)  # answered, none ahead: written with this read's others
                return
            queue.append((started, keep_alive, size))
        self._queued_bytes += size
        if (len(queue) >= _MAX_PIPELINED or self._queued_bytes > 2 * self._server.max_body) and (
            self._transport is not None
        ):
            self._paused = True  # parsed bodies wait here unauthenticated: bounded by count and bytes
            self._transport.pause_reading()

    # ---------------------------------------------------------------- answering

    def _advance(self, in_worker: bool = False) -> None:
        """Answer queued requests in the order they came, as far as can be done now: a serial
        one runs alone, after those ahead of it, its handler's first step right here (most
        complete in it: no task wakes for them); concurrent ones behind each other start
        together, each answered by its handler's call, by the Deferred it returned once that
        is resolved (see :meth:`_resolved`) or, if it returned a coroutine, by that
        coroutine's task (from its done callback). The answers made in one call leave in one
        write (pipelined requests of one read, a batch of replies from another node)."""
        queue = self._queue
        while queue and not self._closing and self._suspended is None:
            item, keep_alive, size = queue[0]
            if isinstance(item, Deferred):  # first: most queued answers are other nodes' (see _resolved)
                response = item.response
                if response is None:
                    item._then = self._resolved
                    break
                queue.popleft()
                self._queued_bytes -= size
                self._answer(response, keep_alive)
            elif isinstance(item, Response):  # a local post's, queued behind one still waited for
                queue.popleft()
                self._queued_bytes -= size
                self._answer(item, keep_alive)
            elif isinstance(item, Request):
                if item.concurrent:
                    if not self._server.stopping:  # it waited behind a serial one: start it and those right behind it
                        self._start_queued()
                        continue
                    # Stopping: served alone, as a serial one, as its answer may close the
                    # connection; what follows it must not have run.
                    self._serial += 1
                queue.popleft()
                self._queued_bytes -= size
                self._serve_now(item, keep_alive, in_worker)
            elif item.done():
                queue.popleft()
                self._queued_bytes -= size
                # Cancelled only by a loop shutting down; the request is known to its task alone.
                self._answer(item.result() if not item.cancelled() else
                             self._server.refusal(500, _FAILED, _nobody(self._peer)), keep_alive)
            else:
                if self._watched is not item:
                    self._watched = item
                    item.add_done_callback(self._answered)
                break
        self._flush()
        if self._paused and len(queue) < _MAX_PIPELINED // 2 and self._queued_bytes <= self._server.max_body:
            self._paused = False
            if self._transport is not None and not self._closing:
                self._transport.resume_reading()

    def _answered(self, task: asyncio.Task[Response]) -> None:
        """A concurrent request's handler finished: answer it if its turn came."""
        if self._watched is task:
            self._watched = None
        self._advance()
        if not self.busy:
            self._arm_idle()

    def _resolved(self) -> None:
        """The Deferred at the head of the queue was resolved (in some callback): answered
        soon, with whatever else is answered by then (the rest of a batch of replies from
        another node), in one write."""
        if not self._resolved_due:
            self._resolved_due = True
            self._loop.call_soon(self._answer_resolved)

    def _answer_resolved(self) -> None:
        self._resolved_due = False
        self._advance()
        if not self.busy:
            self._arm_idle()

    def _serve_now(self, request: Request, keep_alive: bool, in_worker: bool) -> None:
        """Call a serial request's handler now, as the connection's task would (made current
        for it, as the inbox does for client messages): an answer it returns is answered at
        once; a coroutine it returns runs as :meth:`_run` says."""
        worker = self._worker
        if worker is None:  # made with the first request; it wakes only for suspended handlers
            worker = self._worker = self._loop.create_task(self._work())
            self._context = contextvars.copy_context()
        context = self._context
        assert context is not None
        try:
            result = call_as(self._loop, None if in_worker else worker, context, self._server.handler, request)
        except Exception:
            log.exception("management handler failed")
            result = self._server.refusal(500, _FAILED, request)
        if type(result) is Response:
            self._serial -= 1
            # Most answers leave here (one per post): HEAD's check without _to's call.
            self._answer(result if request.method != "HEAD" else _to(request, result), keep_alive)
        else:  # START (the worker calls it) or a coroutine
            self._run(self._serve(request, keep_alive, None if result is START else result), in_worker)  # type: ignore[arg-type]

    def _run(self, coro: Coroutine[Any, Any, None], in_worker: bool) -> None:
        """Run a serial handler's first step now, as the connection's task would; one that
        suspends is carried on by that task, and nothing after it is answered before it."""
        worker = self._worker
        context = self._context
        assert worker is not None and context is not None  # _serve_now made them
        yielded = first_step(self._loop, None if in_worker else worker, context, coro)
        if yielded is DONE:
            return
        # It suspended (or another task runs: START, all of it left to the worker).
        self._suspended = (coro, yielded)
        if not in_worker:
            self._wake()

    async def _serve(
        self, request: Request, keep_alive: bool, started: Response | Deferred | Coroutine[Any, Any, Response] | None
    ) -> None:
        """A serial request: its handler (``started``: what its call returned, None: to be
        called), then its answer (after everything ahead of it)."""
        try:
            result = self._server.handler(request) if started is None else started
            response = result if isinstance(result, Response) else await result
        except Exception:
            log.exception("management handler failed")
            response = self._server.refusal(500, _FAILED, request)
        finally:
            self._serial -= 1
        self._answer(_to(request, response), keep_alive)

    async def _work(self) -> None:
        """The connection's task: carries on a serial handler that suspended in its first step
        (then answers what it can), else sleeps; ends with the connection."""
        try:
            while True:
                suspended = self._suspended
                if suspended is not None:
                    assert self._context is not None
                    try:
                        await carry_on(suspended[0], suspended[1], None, self._context)
                    finally:
                        self._suspended = None
                    self._advance(in_worker=True)
                    if not self.busy:
                        self._arm_idle()
                elif self._closing:
                    return
                else:
                    self._waiter = self._loop.create_future()
                    try:
                        await self._waiter
                    finally:
                        self._waiter = None
        finally:
            self._worker = self._context = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _answer(self, response: Response, keep_alive: bool) -> None:
        """Serialize an answer to be written with the others of this turn (see _flush)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._closing:
            self._closing = True  # a request in progress finished; its answer has nowhere to go
            return
        keep_alive = keep_alive and not self._server.stopping
        self._out.append(_serialize(response, keep_alive))
        if not keep_alive:
            self._flush()
            self._closing = True
            self._wake()
            self._close_after_answer(transport)

    def _flush(self) -> None:
        out = self._out
        if out:
            if self._transport is not None:
                self._transport.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

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

    def _start(self, request: Request) -> asyncio.Task[Response] | Deferred | Response:
        """Start a concurrent request's handler: its answer, the Deferred it returned, or the
        task of the coroutine it returned (answered in its turn, see _outcome)."""
        try:
            result = self._server.handler(request)
        except Exception:
            log.exception("management handler failed")
            return _to(request, self._server.refusal(500, _FAILED, request))
        if isinstance(result, Response):
            return _to(request, result)
        if isinstance(result, Deferred):
            return result
        # The queue holds it until it is answered; the server, if the connection goes first.
        return self._loop.create_task(self._outcome(request, result))

    async def _outcome(self, request: Request, answer: Coroutine[Any, Any, Response]) -> Response:
        """A concurrent request's answer, from the coroutine its handler returned."""
        try:
            return _to(request, await answer)
        except Exception:
            log.exception("management handler failed")
            return _to(request, self._server.refusal(500, _FAILED, request))

    def _start_queued(self) -> None:
        """Start the concurrent requests at the head of the queue, up to the next serial one."""
        queue = self._queue
        for i, (item, keep_alive, size) in enumerate(queue):
            if isinstance(item, Request):
                if not item.concurrent:
                    break
                queue[i] = (self._start(item), keep_alive, size)

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
        self._queue.append((response, False, 0))  # answered after the requests ahead of it

    def _refusal(self, status: int, reason: str) -> Response:
        """The server's own answer refusing the request being read."""
        request = self._head
        if request is None:  # its head is not complete: what was read of it
            request = Request(self._method(), "", "", CIMultiDict(self._headers), b"", self._peer)
        return _to(request, self._server.refusal(status, reason, request))

    def _method(self) -> str:
        """The method of the request being read, or "" if the parser has not read it yet
        (its URL has begun: the method before it was read)."""
        if self._parser is None or not self._url:
            return ""
        try:
            return _METHODS.get(self._parser.get_method()) or ""
        except httptools.HttpParserError:
            return ""

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
        self._fail(self._refusal(408, "Request timed out"))
        self._advance()

    def _arm_idle(self) -> None:
        """The connection is idle from now: no request in progress, none to answer."""
        if self._closing:
            return
        self._idle_since = now = self._loop.time()
        if self._idle is None:
            self._idle = self._loop.call_at(now + self._server.idle_timeout_s, self._idle_due)

    def _idle_due(self) -> None:
        """The idle timer fired. Armed lazily, as the deadline (see _late): a read does not
        cancel it, so that it costs one timer per connection per ``idle_timeout_s``, not one
        per read. A connection in a request or with answers to make is not idle (it is armed
        again once it is, by _arm_idle); one idle again since is timed from then."""
        self._idle = None
        if self._closing or self._phase is not _IDLE or self.busy:
            return
        due = self._idle_since + self._server.idle_timeout_s
        if self._loop.time() < due:
            self._idle = self._loop.call_at(due, self._idle_due)
            return
        self._close_idle()

    def _close_idle(self) -> None:
        if not self.busy and self._transport is not None:
            self._closing = True
            self._transport.close()

    def close_when_idle(self) -> None:
        """Server shutdown: close now if idle, else after the answer in progress."""
        if not self.busy:
            self._close_idle()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def busy(self) -> bool:
        """Requests parsed and not answered yet."""
        return bool(self._queue) or self._suspended is not None


class HttpServer:
    """Use: ``server = HttpServer(handler, max_body=...); await server.start(sock)``.

    ``header_timeout_s`` bounds the time from a request's first byte to the end of its head,
    ``request_timeout_s`` the time to its last body byte; a late request is answered 408 and
    its connection closed. Past ``max_connections`` open connections a new one is answered
    503 and closed. ``head_check`` (optional) may answer a request from its head alone;
    ``refusal`` (optional, default: the bare status) makes the server's own refusals.
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
        refusal: Refusal = _bare,
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
        self.refusal = refusal
        self.connections: set[_Connection] = set()
        # concurrent requests' handlers still running after their connection was lost
        self.tasks: set[asyncio.Task[Response]] = set()
        self.stopping = False
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.Server | None = None
        self._dating: asyncio.TimerHandle | None = None  # remakes the Date line (_redate)

    def hold(self, task: asyncio.Task[Response]) -> None:
        """Keep ``task`` until it is done: the loop holds tasks weakly, and the connection
        that held it is gone."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def start(self, sock: socket.socket) -> int:
        """Serve on a bound, listening socket; return its port."""
        self._server = await self.loop.create_server(lambda: _Connection(self), sock=sock)
        self._redate()
        server: Any = self._server  # uvloop's sockets are a list, not the tuple typeshed says
        return int(server.sockets[0].getsockname()[1])

    def _redate(self) -> None:
        """Remake the Date line now, and again just past the next whole second."""
        _DATE[0] = _date_line()
        self._dating = self.loop.call_later(1.0 - time.time() % 1.0 + 0.001, self._redate)

    async def close(self, timeout: float) -> None:
        """Stop accepting; let requests in progress finish (up to ``timeout``); close all."""
        self.stopping = True
        if self._dating is not None:
            self._dating.cancel()
            self._dating = None
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
