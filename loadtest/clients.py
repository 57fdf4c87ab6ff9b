"""Client WebSocket connections of the load generator, in either dialect.

Call :func:`dial` to open one from a chosen loopback source address (``127.0.0.2``,
``127.0.0.3``, ... : each source address has its own ~28k ephemeral ports, so 50k+
connections to one server port do not run out). The returned :class:`ClientConn` sends
actions and receives application texts, or hands every pushed text to a callback once
:meth:`ClientConn.start_reader` was called. A *stalled* connection (the slow scenario) gets
a tiny receive buffer and is never read, so its TCP window closes within a few messages.

Each connection is websockets' sans-I/O ``ClientProtocol`` (the handshake request, the 101
check, pings and the closing handshake are all websockets') on one plain asyncio protocol,
:class:`_Wire`, with no task per connection. On two cores the generator must cost far less
than the servers it measures: websockets' asyncio ``connect()`` cost the client ~260 µs a
handshake, as much as the server's side of it, and capped the ``connect`` scenario.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import orjson
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import enable_client_permessage_deflate
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from loadtest import wire
from loadtest.wire import Dialect

__all__ = ["ClientConn", "DialError", "Endpoint", "dial", "scan_frames", "source_address"]

_PER_SOURCE = 10_000  # connections per source address; the kernel has ~28k ports for each
_IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), per 4-tuple
_STALLED_RCVBUF = 4096
_TCP_ESTABLISHED = 1  # linux/tcp_states.h: the first byte of struct tcp_info
_FIN_TEXT = 0x81  # FIN set, no RSV bits, opcode TEXT: a whole text message in one frame
_CONTROL = frozenset((0x8, 0x9, 0xA))  # close, ping, pong
_ACK_EVERY = 64  # a reliable client acknowledges every 64th message (cumulative)


class DialError(Exception):
    """A connection could not be opened; ``kind`` names the failure for the error counts."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass(frozen=True)
class Endpoint:
    """Where clients connect: ``path`` is ``/`` for plain servers (``/ws/`` for Channels)."""

    host: str
    port: int
    dialect: Dialect
    path: str = "/"
    compression: bool = False  # offer permessage-deflate

    def url(self, token: str) -> str:
        """Return the handshake URL carrying ``token``."""
        if self.dialect == "socketio":
            return f"ws://{self.host}:{self.port}/socket.io/?EIO=4&transport=websocket"
        # reliable: as plain, with the subprotocol offered (see dial)
        return f"ws://{self.host}:{self.port}{self.path}?token={token}"


def source_address(index: int) -> str:
    """Return the loopback source address for the ``index``-th connection of a run."""
    return f"127.0.0.{2 + index // _PER_SOURCE}"


def scan_frames(buf: bytes, start: int = 0) -> Iterator[tuple[int, int, int]]:
    """Yield ``(first_byte, payload_start, end)`` for each complete frame in ``buf[start:]``.

    RFC 6455 framing of *server* frames only: a masked frame (which a server never sends)
    ends the scan, as does an incomplete one; resume from the last ``end`` yielded.
    Pure; what the frames mean is left to the caller and to websockets.
    """
    n = len(buf)
    pos = start
    while n - pos >= 2:
        second = buf[pos + 1]
        if second & 0x80:
            return
        length = second & 0x7F
        head = 2
        if length == 126:
            if n - pos < 4:
                return
            length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
        elif length == 127:
            if n - pos < 10:
                return
            length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
        end = pos + head + length
        if end > n:
            return
        yield buf[pos], pos + head, end
        pos = end


class _Wire(asyncio.Protocol):
    """A connection's transport protocol: the handshake, then every frame it receives.

    During the handshake every byte goes to websockets. Once open, a whole unfragmented text
    frame, which is every message a target pushes, is cut out of the stream by
    :func:`scan_frames` and handed to the connection as bytes; every other frame (ping,
    close, anything unexpected) is fed, whole, to websockets, which answers pings and runs
    the closing handshake; it always sees frame boundaries, so its parser state stays right.
    Pushed messages are the generator's hottest path (fan-out delivers 100k+ a second to one
    client core): routing text frames around websockets' generator-based parser saves ~2.5
    µs a frame. With permessage-deflate websockets reads every frame.
    """

    def __init__(self, conn: ClientConn, opened: asyncio.Future[None]) -> None:
        self.conn = conn
        self.proto = conn.protocol
        self.opened = opened
        self.open = False
        self.fragments = 0
        self.transport: asyncio.Transport | None = None
        self._rest = b""
        self._deflate = False
        # Bytes fed to websockets since the last frame boundary we know of: until they are
        # whole frames, websockets may be mid-frame and must keep reading (see _handshake).
        self._unsynced: bytes | None = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.conn.transport = self.transport
        self.proto.send_request(self.proto.connect())
        self.flush()

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self._handshake(data)
        elif self._deflate:
            self._all_to_protocol(data)
        elif self._unsynced is not None:
            self._resync(data)
        else:
            self._frames(self._rest + data if self._rest else data)

    def _handshake(self, data: bytes) -> None:
        if self.opened.done():  # closed during or after a failed handshake
            self._to_protocol(data)
            return
        assert self._unsynced is not None
        self._unsynced += data
        self.proto.receive_data(data)
        events = self.proto.events_received()
        if self.proto.state is State.OPEN:
            self.open = True
            self._deflate = bool(self.proto.extensions)
            self.opened.set_result(None)
            self._events([e for e in events if not isinstance(e, Response)])
            # websockets went on to parse what followed the 101: we take over at a frame
            # boundary only, so stay with websockets while that tail ends mid-frame.
            head_end = self._unsynced.find(b"\r\n\r\n")
            self._unsynced = self._unsynced[head_end + 4 :] if head_end >= 0 else b""
            self._resync(b"", fed=True)
        elif self.proto.handshake_exc is not None:
            self.opened.set_exception(self.proto.handshake_exc)
        self.flush()

    def _resync(self, data: bytes, *, fed: bool = False) -> None:
        """websockets reads until the bytes since the 101 are whole frames, then we do."""
        if not fed:
            self._all_to_protocol(data)
        pending = (self._unsynced or b"") + data
        end = max((stop for _, _, stop in scan_frames(pending)), default=0)  # frames come in order
        self._unsynced = None if end == len(pending) else pending

    def _frames(self, data: bytes) -> None:
        pos = 0
        conn = self.conn
        for first, body, end in scan_frames(data):
            if first == _FIN_TEXT:
                conn.deliver(data[body:end])
            elif first & 0x0F in _CONTROL:
                self._to_protocol(data[pos:end])
            else:
                self.fragments += 1  # servers push whole text messages; anything else is an error
            pos = end
        self._rest = data[pos:]
        if len(self._rest) >= 2 and self._rest[1] & 0x80:  # masked: no server's; websockets fails it
            self._to_protocol(self._rest)
            self._rest = b""

    def _all_to_protocol(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self._events(self.proto.events_received())
        self.flush()

    def _events(self, events: Sequence[object]) -> None:
        for event in events:
            opcode = getattr(event, "opcode", None)
            if opcode is Opcode.TEXT and event.fin:  # type: ignore[attr-defined]
                self.conn.deliver(event.data)  # type: ignore[attr-defined]
            elif opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.fragments += 1

    def _to_protocol(self, data: bytes) -> None:
        self.proto.receive_data(data)
        self.proto.events_received()  # control frames only; their replies are in data_to_send
        self.flush()

    def flush(self) -> None:
        """Write what the protocol wants sent (the request, pongs, close frames, EOF)."""
        transport = self.transport
        if transport is None:
            return
        for chunk in self.proto.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.open and self.proto.state is not State.OPEN:
            self.open = False
            self.conn.closed()

    def eof_received(self) -> bool | None:
        self.proto.receive_eof()
        self.flush()
        self._lost()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost()

    def _lost(self) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionResetError("closed during the handshake"))
        if self.open:
            self.open = False
            self.conn.closed()


class ClientConn:
    """One open client connection; ``conn_id`` is set when the server told it (whoami).

    Until :meth:`start_reader`, received texts queue up for :meth:`recv_text`.
    """

    __slots__ = (
        "_acked",
        "_inbox",
        "_inbox_waiter",
        "_on_text",
        "conn_id",
        "dialect",
        "protocol",
        "sent_ns",
        "transport",
        "waiter",
        "wire",
    )

    def __init__(self, protocol: ClientProtocol, dialect: Dialect) -> None:
        self.protocol = protocol
        self.dialect = dialect
        self.transport: asyncio.Transport | None = None
        self.wire: _Wire | None = None
        self.conn_id = ""
        self._on_text: Callable[[str | bytes, ClientConn], object] | None = None
        self._inbox: deque[bytes] = deque()
        self._inbox_waiter: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[str | bytes] | None = None
        self.sent_ns = 0  # echo: when the message now awaiting its reply was sent (0: none)
        self._acked = 0  # reliable: the last seq acknowledged

    @property
    def is_open(self) -> bool:
        """Whether the connection is still open (not closing, not closed)."""
        return self.wire is not None and self.wire.open

    @property
    def fragments(self) -> int:
        """Frames received that were not whole text messages (an error in these runs)."""
        return self.wire.fragments if self.wire is not None else 0

    def deliver(self, frame: bytes) -> None:
        """Called by the wire with each text frame's payload (hot path)."""
        on_text = self._on_text
        if on_text is None:
            self._inbox.append(frame)
            if self._inbox_waiter is not None and not self._inbox_waiter.done():
                self._inbox_waiter.set_result(None)
        elif self.dialect == "plain":
            on_text(frame, self)
        elif self.dialect == "reliable":
            seq, text = wire.envelope(frame)
            if seq - self._acked >= _ACK_EVERY:
                self._acked = seq
                self.send_raw(wire.ack_frame(seq))
            on_text(text, self)
        else:
            text = wire.payload("socketio", frame)
            if text is wire.PING:
                self.send_raw("3")
            elif text is not None:
                on_text(text, self)  # type: ignore[arg-type]

    def closed(self) -> None:
        """Called by the wire when the connection stops being open."""
        if self._inbox_waiter is not None and not self._inbox_waiter.done():
            self._inbox_waiter.set_result(None)

    def send_raw(self, text: str) -> None:
        """Write one text frame now; raises ``ConnectionClosed`` when not open."""
        if self.wire is None or not self.wire.open:
            raise ConnectionClosed(None, None)
        self.protocol.send_text(text.encode())
        self.wire.flush()

    def send_now(self, action: str, text: str) -> None:
        """Send ``text`` to route ``action`` without awaiting; raises ``ConnectionClosed``."""
        self.send_raw(wire.action_frame(self.dialect, action, text))

    async def send(self, action: str, text: str) -> None:
        """Send ``text`` to route ``action``; raises ``ConnectionClosed``."""
        self.send_now(action, text)

    async def recv_raw(self) -> str:
        """Return the next text frame as sent (before the dialect); raises ``ConnectionClosed``.

        Only before :meth:`start_reader`. Callers bound the wait with a timeout.
        """
        while not self._inbox:
            if not self.is_open:
                raise ConnectionClosed(None, None)
            self._inbox_waiter = asyncio.get_running_loop().create_future()
            await self._inbox_waiter
        return self._inbox.popleft().decode()

    async def recv_text(self) -> str:
        """Return the next application text, answering Engine.IO pings on the way."""
        while True:
            text = wire.payload(self.dialect, await self.recv_raw())
            if text is wire.PING:
                self.send_raw("3")
            elif text is not None:
                return text.decode() if isinstance(text, bytes) else str(text)

    def start_reader(self, on_text: Callable[[str | bytes, ClientConn], object]) -> None:
        """Hand every pushed text to ``on_text(text, self)`` from now on (a callback, no task)."""
        self._on_text = on_text

    def peer_closed(self) -> bool:
        """Whether the server has closed or reset this TCP connection, read from the kernel.

        For a stalled connection, whose transport no longer reads and so never learns of a
        close: TCP_INFO's state is ESTABLISHED (1) until the server's FIN or RST arrives.
        """
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return not self.is_open
        try:
            return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED
        except OSError:
            return True

    def stall(self) -> None:
        """Never read again: the server's writes fill the tiny receive buffer and stop."""
        if self.transport is not None:
            self.transport.pause_reading()

    async def learn_id(self) -> None:
        """Ask a plain server for this connection's id (``whoami``); socket.io knows it."""
        if self.dialect == "plain":
            self.send_raw(wire.whoami_frame("plain"))
            self.conn_id = str(orjson.loads(await self.recv_text())["id"])

    async def close(self) -> None:
        """Close politely (a close frame, then the transport); never raises."""
        if self.wire is not None and self.wire.open:
            self.protocol.send_close(1000)
            self.wire.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


async def dial(
    endpoint: Endpoint, token: str, source: str, *, stalled: bool = False, timeout: float = 10.0
) -> ClientConn:
    """Open a connection from ``source`` and finish the dialect's handshake.

    Raises :class:`DialError` (kind ``connect``, ``handshake``, ``refused``, ``timeout``).
    """
    loop = asyncio.get_running_loop()
    extensions = enable_client_permessage_deflate(None) if endpoint.compression else None
    subprotocols = [Subprotocol(wire.RELIABLE_SUBPROTOCOL)] if endpoint.dialect == "reliable" else None
    protocol = ClientProtocol(parse_uri(endpoint.url(token)), extensions=extensions, subprotocols=subprotocols)
    conn = ClientConn(protocol, endpoint.dialect)
    opened: asyncio.Future[None] = loop.create_future()
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_socket(endpoint, source, stalled)
            try:
                _, conn.wire = await loop.create_connection(lambda: _Wire(conn, opened), sock=sock)
                await opened
            except InvalidStatus as exc:
                conn.abort()
                raise DialError("refused", str(exc.response.status_code)) from exc
            except Exception as exc:
                conn.abort()
                sock.close()
                raise DialError("handshake", repr(exc)) from exc
            if endpoint.dialect == "socketio":
                await _socketio_connect(conn, token)
            elif endpoint.dialect == "reliable":  # its first frame names it
                conn.conn_id = str(orjson.loads(await conn.recv_raw())["connectionId"])
            if stalled:
                conn.stall()
            return conn
    except TimeoutError as exc:
        conn.abort()
        raise DialError("timeout") from exc


async def _connect_socket(endpoint: Endpoint, source: str, stalled: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if stalled:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _STALLED_RCVBUF)
        sock.bind((source, 0))
        await asyncio.get_running_loop().sock_connect(sock, (endpoint.host, endpoint.port))
    except OSError as exc:
        sock.close()
        raise DialError("connect", exc.strerror or repr(exc)) from exc
    return sock


async def _socketio_connect(conn: ClientConn, token: str) -> None:
    """Finish Socket.IO's namespace CONNECT with the token; learn the socket id."""
    try:
        await conn.recv_raw()  # Engine.IO OPEN: "0{sid, pingInterval, ...}"
        conn.send_raw("40" + orjson.dumps({"token": token}).decode())
        while True:
            frame = await conn.recv_raw()
            if frame == "2":
                conn.send_raw("3")
                continue
            conn.conn_id = wire.connect_ack_sid(frame)
            return
    except (ValueError, ConnectionClosed) as exc:
        conn.abort()
        raise DialError("refused", repr(exc)) from exc
