"""Client WebSocket connections of the load generator, in either dialect.

Call :func:`dial` to open one from a chosen loopback source address (``127.0.0.2``,
``127.0.0.3``, ... : each source address has its own ~28k ephemeral ports, so 50k+
connections to one server port do not run out). The returned :class:`ClientConn` sends
actions, receives application texts, or runs a reader task that hands every pushed text to a
callback. A *stalled* connection (the slow scenario) gets a tiny receive buffer and a
one-message queue and is never read, so its TCP window closes within a few messages.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.protocol import State

from loadtest import wire
from loadtest.wire import Dialect

__all__ = ["ClientConn", "DialError", "Endpoint", "dial", "source_address"]

_PER_SOURCE = 10_000  # connections per source address; the kernel has ~28k ports for each
_IP_BIND_ADDRESS_NO_PORT = 24  # linux/in.h: pick the port at connect(), per 4-tuple
_STALLED_RCVBUF = 4096


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

    def url(self, token: str) -> str:
        """Return the handshake URL carrying ``token``."""
        if self.dialect == "socketio":
            return f"ws://{self.host}:{self.port}/socket.io/?EIO=4&transport=websocket"
        return f"ws://{self.host}:{self.port}{self.path}?token={token}"


def source_address(index: int) -> str:
    """Return the loopback source address for the ``index``-th connection of a run."""
    return f"127.0.0.{2 + index // _PER_SOURCE}"


class _Reader(asyncio.Protocol):
    """Takes over a connection's transport and feeds websockets' sans-I/O protocol directly.

    Pushed messages are the generator's hottest path (fan-out delivers 100k+ a second to one
    client core); reading them through the asyncio ``Connection`` costs a task wake-up per
    message, this costs a callback. Pings are answered by the protocol itself; server
    messages are single frames, so a fragment counts as an error instead of being joined.
    """

    def __init__(self, conn: ClientConn, on_text: Callable[[str | bytes, ClientConn], object]) -> None:
        self.conn = conn
        self.on_text = on_text
        self.open = True
        self.fragments = 0
        self.transport = conn.ws.transport

    def data_received(self, data: bytes) -> None:
        proto = self.conn.ws.protocol
        proto.receive_data(data)
        for event in proto.events_received():
            if event.opcode is Opcode.TEXT and event.fin:
                text = wire.payload(self.conn.dialect, event.data)
                if text is wire.PING:
                    proto.send_text(b"3")
                elif text is not None:
                    self.on_text(text, self.conn)  # type: ignore[arg-type]
            elif event.opcode in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT):
                self.fragments += 1
        self.flush()

    def flush(self) -> None:
        """Write what the protocol wants sent (pongs, close frames, EOF)."""
        for chunk in self.conn.ws.protocol.data_to_send():
            if chunk:
                self.transport.write(chunk)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.conn.ws.protocol.state is not State.OPEN:
            self.open = False

    def eof_received(self) -> bool | None:
        self.conn.ws.protocol.receive_eof()
        self.open = False
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False


class ClientConn:
    """One open client connection; ``conn_id`` is set when the server told it (whoami)."""

    __slots__ = ("conn_id", "dialect", "reader", "waiter", "ws")

    def __init__(self, ws: ClientConnection, dialect: Dialect) -> None:
        self.ws = ws
        self.dialect = dialect
        self.conn_id = ""
        self.reader: _Reader | None = None
        self.waiter: asyncio.Future[str | bytes] | None = None

    @property
    def is_open(self) -> bool:
        """Whether the connection is still open (not closing, not closed)."""
        if self.reader is not None:
            return self.reader.open
        return self.ws.state is State.OPEN

    async def send(self, action: str, text: str) -> None:
        """Send ``text`` to route ``action``; raises ``ConnectionClosed``."""
        frame = wire.action_frame(self.dialect, action, text)
        if self.reader is None:
            await self.ws.send(frame)
        elif self.reader.open:
            self.ws.protocol.send_text(frame.encode())
            self.reader.flush()
        else:
            raise ConnectionClosed(None, None)

    async def recv_text(self) -> str:
        """Return the next application text, answering Engine.IO pings on the way."""
        while True:
            text = wire.payload(self.dialect, await self.ws.recv())
            if text is wire.PING:
                await self.ws.send("3")
            elif text is not None:
                return text.decode() if isinstance(text, bytes) else str(text)

    def start_reader(self, on_text: Callable[[str | bytes, ClientConn], object]) -> None:
        """Hand every pushed text to ``on_text(text, self)`` from now on.

        After this only :meth:`send` and :meth:`close` may be used: the transport belongs to
        the reader (see :class:`_Reader`).
        """
        self.reader = _Reader(self, on_text)
        self.ws.transport.set_protocol(self.reader)

    async def learn_id(self) -> None:
        """Ask a plain server for this connection's id (``whoami``); socket.io knows it."""
        if self.dialect == "plain":
            await self.ws.send(wire.whoami_frame("plain"))
            self.conn_id = str(orjson.loads(await self.recv_text())["id"])

    async def close(self) -> None:
        """Close politely (a close frame, then the transport); never raises."""
        if self.reader is not None:
            if self.reader.open:
                self.ws.protocol.send_close(1000)
                self.reader.flush()
            self.ws.transport.close()
            return
        try:
            await self.ws.close()
        except Exception:  # noqa: BLE001 - the run is over; a failed close changes nothing
            self.ws.transport.abort()


async def dial(
    endpoint: Endpoint, token: str, source: str, *, stalled: bool = False, timeout: float = 10.0
) -> ClientConn:
    """Open a connection from ``source`` and finish the dialect's handshake.

    Raises :class:`DialError` (kind ``connect``, ``handshake``, ``refused``, ``timeout``).
    """
    try:
        async with asyncio.timeout(timeout):
            sock = await _connect_socket(endpoint, source, stalled)
            try:
                ws = await connect(
                    endpoint.url(token),
                    sock=sock,
                    compression=None,
                    ping_interval=None,  # servers ping; clients only answer
                    max_queue=1 if stalled else 256,
                    close_timeout=2,
                    open_timeout=None,
                    user_agent_header=None,
                )
            except Exception as exc:
                sock.close()
                status = getattr(getattr(exc, "response", None), "status_code", None)
                raise DialError("refused" if status else "handshake", f"{status or exc!r}") from exc
            conn = ClientConn(ws, endpoint.dialect)
            if endpoint.dialect == "socketio":
                await _socketio_connect(conn, token)
            return conn
    except TimeoutError as exc:
        raise DialError("timeout") from exc


async def _connect_socket(endpoint: Endpoint, source: str, stalled: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
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
        await conn.ws.recv()  # Engine.IO OPEN: "0{sid, pingInterval, ...}"
        await conn.ws.send("40" + orjson.dumps({"token": token}).decode())
        while True:
            frame = await conn.ws.recv()
            if frame == "2":
                await conn.ws.send("3")
                continue
            conn.conn_id = wire.connect_ack_sid(frame)
            return
    except (ValueError, ConnectionClosed) as exc:
        await conn.close()
        raise DialError("refused", repr(exc)) from exc
