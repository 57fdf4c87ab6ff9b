"""The client edge, on websockets: handshake (path, origin, auth, ``$connect``), reading
messages, limits, and the close code every ``$disconnect`` reports.

websockets' asyncio connection does the handshake, keepalive, the closing handshake and TLS;
once the upgrade is accepted its data frames go to the gateway's reader
(:mod:`wsgateway.reader`; a read of nothing but whole data frames skips websockets' parser)
and the messages to the connection's inbox (:mod:`wsgateway.inbox`), which dispatches them
from ``data_received``: no queue and no task wake-up per message.

Handshake order, as AWS: the path must be ``/`` or ``/{stage}``; a request that is not an
upgrade gets 426 (websockets); one without a Host header (or with a header repeated that
must not be) gets 400; the Origin is checked (403); the token is verified or the
authorizer asked (401/403/500; the connection id is drawn first, the authorizer sees it);
the tenant's usage plan must have a connection place left (429); then ``$connect`` runs
and the upgrade waits for it (a statusCode outside 2xx rejects with that
status, as AWS; a failure rejects with 500). Only then is the connection in the hub: a post during
``$connect`` answers 410. ``limits.max_connections`` is a :class:`~wsgateway.admission.Slot`
taken at admission and held from there until the handshake fails or the connection closes,
so handshakes in flight count against it too.

A client that offers ``wsgateway.reliable.v1`` gets a reliable session (``wsgateway.reliable``);
a handshake that resumes one (``?resume=ID&reconnectionToken=T&lastSeq=N``) is authenticated
and admitted as any, then carries the session on instead of running ``$connect``. The client
port also serves the browser client of that protocol at ``GET /client.js``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import logging
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import ConnectionClosed
from websockets.extensions.base import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import DATA_OPCODES, Frame
from websockets.http11 import Request, Response
from websockets.protocol import Event, State
from websockets.typing import Subprotocol

from .admission import Hold, Slot
from .authorizer import HandshakeRequest
from .errors import CLOSE_GOING_AWAY, CLOSE_INTERNAL_ERROR, CLOSE_PROTOCOL_ERROR, AuthError
from .inbox import Inbox
from .reader import MessageReader, ReadError, between_frames, frame_size_limit, whole_messages
from .reliable import SUBPROTOCOL, ReliableConnection, parse_resume

if TYPE_CHECKING:
    from .connection import Connection
    from .gateway import Gateway

__all__ = ["ClientServer", "GatewayConnection", "origin_key"]

log = logging.getLogger("wsgateway.server")

_DATA_OPCODES = frozenset(DATA_OPCODES)
_OPEN = State.OPEN


class _NoFrames:
    """Stands for websockets' ``Assembler`` once the inbox has the frames: what websockets
    still calls on it (``close`` when the socket is lost, ``paused``) does nothing."""

    __slots__ = ()
    paused = False

    def close(self) -> None:
        """Nothing waits on it."""

    def put(self, frame: Frame) -> None:
        raise AssertionError("data frames go to the inbox")  # see GatewayConnection.process_event


_NO_FRAMES = _NoFrames()
# GatewayConnection's own answers to a handshake request it does not hand to websockets.
_HEAD_REFUSALS = {
    status: b"HTTP/1.1 %d %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (
        status, http.HTTPStatus(status).phrase.encode())
    for status in (408, 431)
}
# What a held connection keeps of its handshake: the request and response it answered are
# ~3 KB of header objects per connection, and what the gateway needs of them is in the
# Connection (see Gateway.new_connection). websockets' parser keeps the request object to
# the end (a local of its generator): its headers are emptied instead.
_NO_HEADERS = Headers()
_HANDSHAKE_RESPONSE = Response(101, "Switching Protocols", _NO_HEADERS)


class GatewayConnection(ServerConnection):
    """websockets' connection plus what the handshake decided, for the handler.

    Its own fields are slots: websockets' connection keeps ~27 attributes in its ``__dict__``,
    and eight more took it past the size at which CPython stops sharing an instance dict's
    keys with the class, ~1.3 KB more per connection held.
    """

    __slots__ = (
        "gw_conn", "gw_subprotocol", "gw_started", "gw_request_id", "gw_queue_limit", "gw_resume",
        "gw_inbox", "gw_reader", "gw_between_frames", "gw_max_frame", "gw_head_bytes", "gw_head_timer",
    )
    # What a client may send before its handshake request is read, and how long it may take
    # (limits.max_handshake_bytes, handshake_timeout_s): class attributes, as websockets makes
    # each connection from a class; :meth:`with_limits` makes the class of a server.
    gw_max_head_bytes = 16384
    gw_head_timeout_s = 10.0
    # Told of each such refusal: (status, source ip, time.perf_counter() at the connection's start).
    gw_head_refused: Callable[[int, str, float], None] | None = None

    @classmethod
    def with_limits(
        cls, max_head_bytes: int, head_timeout_s: float, refused: Callable[[int, str, float], None] | None = None,
    ) -> type[GatewayConnection]:
        """This class with the handshake's limits of one server, and who is told of refusals."""
        return type(cls.__name__, (cls,), {
            "__slots__": (), "gw_max_head_bytes": max_head_bytes, "gw_head_timeout_s": head_timeout_s,
            "gw_head_refused": staticmethod(refused) if refused is not None else None,
        })

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.gw_conn: Connection | None = None
        self.gw_subprotocol: str | None = None
        self.gw_started = 0.0
        self.gw_request_id = ""
        self.gw_queue_limit = 0  # limits.max_queued_bytes, set by the handler
        self.gw_resume: int | None = None  # a resumed reliable session: the lastSeq the client has
        self.gw_inbox: Inbox | None = None  # its messages, from the upgrade on (see wsgateway.inbox)
        self.gw_reader: MessageReader | None = None  # None again once a message failed to read
        # websockets' parser waits for a new frame (see reader.between_frames), as of the last
        # read it parsed: the next read may go to reader.whole_messages instead.
        self.gw_between_frames = False
        self.gw_max_frame: int | None = None  # the largest frame the protocol accepts
        self.gw_head_bytes = 0  # read before the upgrade was accepted (see _gw_head_too_large)
        self.gw_head_timer: asyncio.TimerHandle | None = None  # armed until that request is read
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.gw_started = time.perf_counter()  # the handshake's own start replaces it once its request is in
        self.gw_head_timer = self.loop.call_later(self.gw_head_timeout_s, self._gw_refuse_head, 408)

    def _gw_head_too_large(self, data: bytes) -> bool:
        """Count a read that came before the upgrade was accepted; past the limit, refuse the
        handshake (431), or drop the connection if its request is already being answered.

        websockets caps one header line at 8 KB and a request at 128 of them: 1 MB held per
        connection until the open timeout. Frames a client sends after its request and before
        the 101 (which RFC 6455 forbids) are parsed and queued while auth and ``$connect`` run:
        up to 16 messages. This caps the whole."""
        self.gw_head_bytes += len(data)
        if self.gw_head_bytes <= self.gw_max_head_bytes:
            return False
        if self.request is None:
            self._gw_refuse_head(431)
        else:  # websockets answers the request once auth and $connect are done: no answer here
            log.info("handshake dropped: %d bytes before the upgrade from %s", self.gw_head_bytes, _peer_ip(self))
            self.transport.abort()
        return True

    def _gw_stop_head_timer(self) -> None:
        timer, self.gw_head_timer = self.gw_head_timer, None
        if timer is not None:
            timer.cancel()

    def _gw_refuse_head(self, status: int) -> None:
        """Answer a handshake whose request did not come in time (408) or in size (431), and
        close: nothing of it reaches websockets, admission or auth."""
        self._gw_stop_head_timer()
        if self.transport.is_closing():  # websockets refused the request itself
            return
        source_ip = _peer_ip(self)
        log.info("handshake refused (%d): request %s from %s", status,
                 "not read in time" if status == 408 else "too large", source_ip)
        self.transport.write(_HEAD_REFUSALS[status])
        self.transport.close()
        if self.gw_head_refused is not None:
            self.gw_head_refused(status, source_ip, self.gw_started)

    def gw_open_inbox(self) -> None:
        """The upgrade is accepted: from now on data frames go to the gateway's reader and
        inbox, not to websockets' queue of frames (the handler runs the inbox)."""
        self.gw_reader = MessageReader()
        self.gw_max_frame = frame_size_limit(self.protocol)
        # websockets' queue of frames is never fed again: free it (its deque is ~0.8 KB).
        assembler, self.recv_messages = self.recv_messages, _NO_FRAMES  # type: ignore[assignment]
        self.gw_inbox = Inbox(
            self.loop, self.transport.pause_reading, self._gw_resume_reading,
            self.max_queue_high or 16, self.max_queue_low or 4,
        )
        early = assembler.frames.queue
        if early:
            self._gw_take_early(list(early), assembler.paused)

    def _gw_take_early(self, frames: list[Frame], paused: bool) -> None:
        """Frames the client sent between its request and the 101, which RFC 6455 forbids
        (websockets' queue held them; its own recv() would deliver them): their messages wait
        in the inbox's backlog, dispatched in order once the connection is open. If one does
        not read, none is dispatched and the handler closes the connection with 1002."""
        reader, inbox = self.gw_reader, self.gw_inbox
        assert reader is not None and inbox is not None
        messages = []
        try:
            for frame in frames:
                message = reader.feed(frame)
                if message is not None:
                    messages.append(message)
        except ReadError:
            self.gw_reader = None  # as after a message that failed (see process_event)
            messages = []
        for message in messages:
            inbox.put(message)
        if paused and not inbox.paused:  # websockets' queue stopped reading for them
            self._gw_resume_reading()

    def gw_fail(self, code: int, reason: str) -> None:
        """Close for a message that did not read, as websockets' recv() would."""
        self.gw_reader = None
        self.protocol.fail(code, reason)
        with contextlib.suppress(Exception):  # as data_received: the close is best effort
            self.send_data()
        if self.gw_inbox is not None:
            self.gw_inbox.close()

    def _gw_resume_reading(self) -> None:
        """The inbox's backlog drained: read again, unless the queue's limit stopped reading."""
        conn = self.gw_conn
        if conn is None or not conn.reading_paused:
            self.transport.resume_reading()

    def process_event(self, event: Event) -> None:
        """A data frame goes to the reader, and the message it completes to the inbox (which
        dispatches it now if nothing is under way); the rest is websockets' (the handshake
        request, pongs)."""
        inbox = self.gw_inbox
        if inbox is None or not isinstance(event, Frame) or event.opcode not in _DATA_OPCODES:
            if self.gw_head_timer is not None:  # the first event: the handshake request is in
                self._gw_stop_head_timer()
            super().process_event(event)
            return
        reader = self.gw_reader
        if reader is None:  # a message failed: the connection is closing, drop the rest
            return
        try:
            message = reader.feed(event)
        except ReadError as exc:  # as websockets' recv(): close with its code
            self.gw_fail(exc.code, exc.reason)
            return
        if message is not None:
            inbox.put(message)

    def data_received(self, data: bytes) -> None:
        """A read of whole data frames goes straight to the inbox (reader.whole_messages);
        any other, websockets handles (and answers pings). Then the queue's limit applies to
        what was written: a client that floods pings and never reads is stopped here."""
        inbox = self.gw_inbox
        messages = None
        # The state can change between reads (a close sent), the parser's position cannot.
        # ``_state``: what websockets' ``state`` property returns, without a Python call per
        # read (tests/test_server.py checks that they agree).
        if self.gw_between_frames and inbox is not None and self.protocol._state is _OPEN:
            messages = whole_messages(data, self.gw_max_frame)
        if messages is None:
            if self.gw_inbox is None and self._gw_head_too_large(data):  # before the upgrade
                return
            super().data_received(data)
            self.gw_between_frames = (self.gw_inbox is not None and self.gw_reader is not None
                                      and between_frames(self.protocol))
        else:
            assert inbox is not None
            for message in messages:
                inbox.put(message)
        # One C call on the common path (under the limit): this runs for every read.
        if self.transport.get_write_buffer_size() > self.gw_queue_limit:
            conn = self.gw_conn
            if conn is not None and conn.ws is self:
                conn.after_read(self.loop.time(), self.gw_queue_limit)

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is gone: break the reference cycles websockets leaves, so that the
        connection (its deflate buffers, its transport) is freed at once, not by a rare full
        garbage collection (cli.py sets the thresholds high)."""
        super().connection_lost(exc)
        self._gw_stop_head_timer()
        if self.gw_inbox is not None:
            self.gw_inbox.close()
        # serve() binds select_subprotocol to a closure that holds this connection.
        self.protocol.__dict__.pop("select_subprotocol", None)
        # The protocol's parser is a generator holding the protocol (and through it the
        # permessage-deflate zlib streams, ~60 KB); after EOF it stays suspended at its last
        # yield and is never stepped again: finish it.
        self.protocol.parser.close()


def _subprotocols(headers: Headers) -> list[str]:
    return [p.strip() for value in headers.get_all("Sec-WebSocket-Protocol") for p in value.split(",") if p.strip()]


_DEFAULT_PORTS = {"http": ":80", "https": ":443", "ws": ":80", "wss": ":443"}


def origin_key(origin: str) -> str:
    """``origin`` without its scheme's default port, as browsers send it.

    Browsers leave ``:443`` out of ``https://`` origins (and ``:80`` out of ``http://``), so
    an allowed origin written with one could never match without this.
    """
    scheme, sep, rest = origin.partition("://")
    default = _DEFAULT_PORTS.get(scheme)
    if sep and default and rest.endswith(default):
        return origin[: -len(default)]
    return origin


def _reject(ws: ServerConnection, status: int, text: str = "") -> Response:
    """A plain-text refusal with ``status`` (any from 300 to 599: $connect chooses it) and
    ``text``, which websockets' own refusal takes only for named statuses and UTF-8 text."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    text = (text or phrase or "Error") + "\n"
    if not text.isascii():
        text = text.encode("utf-8", "replace").decode()  # a lone surrogate is sent as "?"
    response = ws.respond(status if phrase else 500, text)
    if not phrase:
        response.status_code, response.reason_phrase = status, "Error"
    return response


class ClientServer:
    """The WebSocket listener of one node."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        config = gateway.config
        self._limits = config.limits
        self._paths = {"/", f"/{config.stage}", f"/{config.stage}/"}
        self._any_origin = False
        self._origins: frozenset[str] = frozenset()
        self.set_origins(config.limits.allowed_origins)
        self._warned_subprotocol = False
        self._health_details = config.listen.health_details
        # Slots of handshakes in flight; the handler takes its slot out of here (see _admission)
        self._reserved: dict[ServerConnection, Slot] = {}
        # Usage-plan places of handshakes in flight, taken after auth (see _plan_admission)
        self._holds: dict[ServerConnection, Hold] = {}
        self._server: Server | None = None
        self.port = 0

    def set_origins(self, origins: Sequence[str]) -> None:
        """Check new handshakes against ``origins`` (``limits.allowed_origins``; a SIGHUP
        reload calls it again)."""
        self._any_origin = "*" in origins
        self._origins = frozenset(origin_key(origin) for origin in origins)

    async def start(self, *, sock: socket.socket | None = None) -> int:
        """Listen (on ``sock`` if given, else on [listen] host/port); return the port."""
        cfg = self.gateway.config
        listen = cfg.listen
        kwargs: dict[str, Any] = {}
        if sock is not None:
            kwargs["sock"] = sock
        else:
            kwargs.update(host=listen.host, port=listen.port, backlog=listen.backlog)
        if listen.ssl_certfile:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(listen.ssl_certfile, listen.ssl_keyfile)
            kwargs["ssl"] = ctx
        self._server = await serve(
            self._handler,
            process_request=self._process_request,
            select_subprotocol=self._select_subprotocol,
            create_connection=GatewayConnection.with_limits(
                self._limits.max_handshake_bytes, self._limits.handshake_timeout_s, self._head_refused),
            compression="deflate" if listen.compression else None,
            extensions=_deflate_extensions(listen.compression_no_context_takeover),
            open_timeout=self._limits.handler_timeout_s + 10,
            ping_interval=listen.ping_interval_s or None,
            ping_timeout=listen.ping_timeout_s or None,
            close_timeout=self._limits.close_timeout_s,
            max_size=self._limits.max_message_bytes,
            write_limit=max(self._limits.max_queued_bytes, 2**15),
            server_header=None,
            **kwargs,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop accepting, close every client with 1001, wait for their ``$disconnect``."""
        server = self._server
        if server is None:
            return
        self._server = None
        for conn in self.gateway.hub:
            self.gateway.close(conn, CLOSE_GOING_AWAY, "Going away")
        server.close(close_connections=True, code=CLOSE_GOING_AWAY)
        try:
            async with asyncio.timeout(self._limits.shutdown_timeout_s):
                await server.wait_closed()
        except TimeoutError:
            log.warning("shutdown timed out: aborting %d connections", len(server.connections))
            for ws in server.connections:
                ws.transport.abort()
            for task in list(server.handler_tasks):
                task.cancel()

    # ---------------------------------------------------------------- handshake

    async def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        try:
            response = await self._handshake(ws, request)
        except MultipleValuesError as exc:  # e.g. two Origin or Upgrade headers
            log.info("handshake refused (400): header %s sent more than once", exc)
            response = _reject(ws, 400)
        except BaseException:  # websockets answers 500, or the open timeout cancelled us
            self._release(ws)
            raise
        if response is not None:  # refused: its slot is free at once
            self._release(ws)
        return response

    async def _handshake(self, ws: ServerConnection, request: Request) -> Response | None:
        assert isinstance(ws, GatewayConnection)
        started = time.perf_counter()
        path, _, raw_query = request.path.partition("?")
        headers = request.headers
        source_ip = _peer_ip(ws)
        user_agent = headers.get("User-Agent", "")
        gateway = self.gateway
        if path in ("/health", "/ready"):  # for load balancers that probe the client port
            health = await gateway.health()
            status = 200 if health["live" if path == "/health" else "ready"] else 503
            # The node id, its load and the registry's state are for operators, not the internet.
            return _to(request, _json_response(ws, status, health if self._health_details else {"status": health["status"]}))
        if path == "/client.js":
            return _to(request, _client_js_response())
        if path not in self._paths:
            return _reject(ws, 404)
        if "websocket" not in headers.get("Upgrade", "").lower():
            return None  # websockets answers 426 Upgrade Required
        status = self._admission(ws, headers)
        if status:
            gateway.log_handshake(status=status, request_id="", started=started, source_ip=source_ip, user_agent=user_agent)
            return _reject(ws, status)
        query_pairs = parse_qsl(raw_query, keep_blank_values=True)
        query: dict[str, str] = {}
        for name, value in query_pairs:
            query.setdefault(name, value)
        offered = _subprotocols(headers)
        raw_headers = list(headers.raw_items())
        host = headers.get("Host", "")
        # Drawn before auth: an authorizer's event carries the connection id, as on AWS.
        handshake = HandshakeRequest(gateway.new_connection_id(), raw_headers, query_pairs, source_ip, user_agent, host)
        try:
            principal = await gateway.auth.authenticate(headers, query, offered, handshake)
        except AuthError as exc:
            log.info("handshake refused (%d): %s from %s", exc.status, exc.reason, source_ip)
            gateway.log_handshake(status=exc.status, request_id="", started=started, source_ip=source_ip, user_agent=user_agent)
            return _reject(ws, exc.status)
        if not await self._plan_admission(ws, principal.tenant, principal.principal_id):
            gateway.log_handshake(status=429, request_id="", started=started, source_ip=source_ip, user_agent=user_agent)
            return _reject(ws, 429)
        reliable = gateway.sessions.offered(offered)
        resume = parse_resume(query) if reliable else None
        if resume is not None:
            session = await gateway.sessions.claim(resume, principal.tenant, principal.principal_id)
            if session is not None:  # no $connect: the session goes on
                assert gateway.lifetime is not None
                session.token_deadline = gateway.lifetime.deadline(principal.expires_at)
                ws.gw_conn, ws.gw_started, ws.gw_resume = session, started, resume.last_seq
                ws.gw_subprotocol = SUBPROTOCOL
                ws.gw_open_inbox()
                return None
        conn = gateway.new_connection(
            principal, source_ip=source_ip, user_agent=user_agent, domain_name=host,
            connection_id=handshake.connection_id, reliable=reliable,
        )
        outcome = await gateway.run_connect(conn, raw_headers, query_pairs)
        if not outcome.accepted:
            gateway.log_handshake(
                status=outcome.status, request_id=outcome.request_id, started=started,
                source_ip=source_ip, user_agent=user_agent, conn=conn,
            )
            return _reject(ws, outcome.status, outcome.body)
        ws.gw_conn = conn
        ws.gw_started = started
        ws.gw_open_inbox()
        ws.gw_subprotocol = SUBPROTOCOL if reliable else (
            outcome.subprotocol or gateway.auth.token_subprotocol(offered))
        ws.gw_request_id = outcome.request_id
        if offered and ws.gw_subprotocol not in offered and not self._warned_subprotocol:
            self._warned_subprotocol = True  # once per node: a misconfigured page repeats it
            log.warning(
                # Not the values: one of them may be a token.
                "a client offered %d subprotocol(s) and none was selected: browsers fail such a "
                "handshake (1006) after the gateway accepted it; return Sec-WebSocket-Protocol "
                "from $connect or use the auth source subprotocol:NAME", len(offered),
            )
        return None

    def _head_refused(self, status: int, source_ip: str, started: float) -> None:
        """A handshake refused before its request was read (408, 431): counted and
        access-logged as any refused handshake."""
        self.gateway.log_handshake(status=status, request_id="", started=started, source_ip=source_ip, user_agent="")

    def _admission(self, ws: ServerConnection, headers: Headers) -> int:
        """0 to go on, else the status that refuses the handshake before auth.

        Going on reserves a slot of ``limits.max_connections`` for ``ws`` now, before the
        awaited auth and ``$connect``: checking the hub alone let every handshake in flight
        through. The slot goes back when the handshake is refused (:meth:`_process_request`),
        when the socket is lost before the handler took it (a client gone mid-``$connect``,
        websockets refusing the upgrade itself, the open timeout), or when the handler ends.
        """
        if "Host" not in headers:  # RFC 6455 4.2.1 (and 9112 3.2): a handshake names its host
            return 400
        gateway = self.gateway
        if gateway.draining or not gateway.ready:
            return 503
        slot = gateway.slots.try_take()
        if slot is None:
            return 503
        origin = headers.get("Origin")
        allowed = not self._limits.require_origin if origin is None else (
            self._any_origin or origin_key(origin) in self._origins)
        if not allowed:
            slot.release()
            return 403
        self._reserved[ws] = slot
        ws.connection_lost_waiter.add_done_callback(lambda _: self._release(ws))
        return 0

    async def _plan_admission(self, ws: ServerConnection, tenant: str, principal_id: str) -> bool:
        """Take the tenant's place under its usage plan's caps, after auth (the tenant is known
        only then) and before the awaited ``$connect``; False: over a cap (429). The place goes
        back on the same paths as the node's slot (see :meth:`_admission`)."""
        if not self.gateway.usage.book:
            return True  # no plans: no places to take
        taking = asyncio.ensure_future(self.gateway.throttle.reserve_places(tenant, principal_id))
        try:
            hold = await asyncio.shield(taking)
        except asyncio.CancelledError:  # the open timeout: give the place back once it is taken
            taking.add_done_callback(_release_taken)
            raise
        if hold is None:
            return False
        self._holds[ws] = hold
        if ws.connection_lost_waiter.done():  # the client left while the place was being taken
            self._release(ws)
        return True

    def _release(self, ws: ServerConnection) -> None:
        """Free the slot (and plan place) of a handshake that did not become a connection
        (no-op if none)."""
        slot = self._reserved.pop(ws, None)
        if slot is not None:
            slot.release()
        hold = self._holds.pop(ws, None)
        if hold is not None:
            hold.release()

    def _select_subprotocol(self, ws: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        chosen = getattr(ws, "gw_subprotocol", None)
        return Subprotocol(chosen) if chosen is not None and chosen in offered else None

    # ---------------------------------------------------------------- connection

    async def _handler(self, ws: ServerConnection) -> None:
        """One accepted connection, from the end of the upgrade to its ``$disconnect``.

        Fails closed: whatever goes wrong is logged with the connection id, the socket is
        closed (1011) and the ``finally`` forgets the connection and runs ``$disconnect``.
        """
        assert isinstance(ws, GatewayConnection) and ws.gw_conn is not None and ws.gw_inbox is not None
        conn = ws.gw_conn
        inbox = ws.gw_inbox
        gateway = self.gateway
        assert gateway.dispatcher is not None
        if ws.request is not None:  # answered: its headers are not kept
            ws.request.headers = _NO_HEADERS
        ws.response = _HANDSHAKE_RESPONSE
        slot = self._reserved.pop(ws, None)  # now this connection's, until the finally
        hold = self._holds.pop(ws, None)  # likewise its usage plan's place
        dispatch = gateway.dispatcher.on_message
        conn.task = asyncio.current_task()
        ws.gw_queue_limit = self._limits.max_queued_bytes
        if isinstance(conn, ReliableConnection):
            # Everything in its socket's buffer is unacknowledged: that bound covers it.
            ws.gw_queue_limit += gateway.sessions.max_unacked
            dispatch = functools.partial(gateway.sessions.on_message, dispatch=dispatch)
            if not gateway.sessions.attach(conn, ws, self._limits.socket_send_buffer_bytes, ws.gw_resume):
                ws.gw_inbox = ws.gw_reader = None
                self._end_late_resume(ws, slot, hold)
                return
        else:
            conn.attach(ws, self._limits.socket_send_buffer_bytes)
        try:
            if ws.gw_resume is None:  # a resumed session is in the hub already
                await gateway.opened(conn)
            gateway.log_handshake(
                status=101, request_id=ws.gw_request_id, started=ws.gw_started,
                source_ip=conn.record.source_ip, user_agent=conn.record.user_agent, conn=conn,
            )
            if ws.gw_reader is None:  # frames it sent before the 101 did not read (_gw_take_early)
                ws.gw_fail(CLOSE_PROTOCOL_ERROR, "Invalid frames before the upgrade")
            await inbox.run(functools.partial(dispatch, conn))
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("connection failed: connectionId=%s", conn.id)
            gateway.close(conn, CLOSE_INTERNAL_ERROR, "Internal server error")
        finally:
            try:
                if conn.ws is ws:
                    code, reason = await conn.wait_closed(self._limits.close_timeout_s + 1)
                else:  # a resume took its session over (here or on another node)
                    ws.transport.abort()
                    code, reason = CLOSE_GOING_AWAY, ""
            finally:
                if slot is not None:  # freed as closed() takes it out of the hub: no await between
                    slot.release()
                if hold is not None:
                    hold.release()
            ws.gw_conn = None  # conn.ws points back: no cycle must outlive the connection
            ws.gw_inbox = ws.gw_reader = None
            if conn.ws is ws:  # else the session lives on with another socket
                await gateway.closed(conn, code, reason)

    def _end_late_resume(self, ws: ServerConnection, slot: Slot | None, hold: Hold | None) -> None:
        """The session ended between its resume and this socket's first frame (its window ran
        out): the client must start afresh, as after any refused resume."""
        if slot is not None:
            slot.release()
        if hold is not None:
            hold.release()
        ws.transport.abort()


def _release_taken(taking: asyncio.Future[Hold | None]) -> None:
    """A place taken for a handshake that was cancelled meanwhile goes back at once."""
    if not taking.cancelled() and taking.exception() is None and (hold := taking.result()) is not None:
        hold.release()


def _deflate_extensions(no_context_takeover: bool) -> list[ServerExtensionFactory] | None:
    """websockets' default permessage-deflate settings, plus server_no_context_takeover when
    configured: each message is compressed alone, so one compressed frame serves every
    connection of a fan-out (see Hub.fanout). None leaves websockets' defaults."""
    if not no_context_takeover:
        return None
    return [
        ServerPerMessageDeflateFactory(
            server_no_context_takeover=True,
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )
    ]


def _peer_ip(ws: ServerConnection) -> str:
    try:
        return str(ws.remote_address[0])
    except (TypeError, IndexError):
        return ""


@functools.cache
def _client_js() -> bytes:
    """The browser client (``wsgateway/reliable/wsgateway-client.js``), read once."""
    return resources.files("wsgateway.reliable").joinpath("wsgateway-client.js").read_bytes()


def _client_js_response() -> Response:
    """``GET /client.js``: the browser client, for pages on any origin (an ES module import
    from another origin needs CORS)."""
    data = _client_js()
    headers = Headers([
        ("Content-Type", "text/javascript; charset=utf-8"), ("Content-Length", str(len(data))),
        ("Access-Control-Allow-Origin", "*"), ("Cache-Control", "public, max-age=300"), ("Connection", "close"),
    ])
    return Response(200, "OK", headers, data)


def _to(request: Request, response: Response) -> Response:
    """``response`` as the answer to ``request``: a HEAD request's keeps its Content-Length and
    carries no content (RFC 9110 9.3.2), which a client would read as more than the answer."""
    if request.method != "HEAD":
        return response
    return Response(response.status_code, response.reason_phrase, response.headers, b"")


def _json_response(ws: ServerConnection, status: int, body: Any) -> Response:
    data = orjson.dumps(body)
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, data)
