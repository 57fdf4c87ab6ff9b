"""One accepted connection: who it is, when it was last active, and its bounded outbound queue.

The outbound queue is the connection's transport write buffer. Posts, fan-out and route
responses write finished WebSocket frames straight to the transport, without awaiting the
socket, so a slow client never delays anyone else. The buffer is bounded by
``limits.max_queued_bytes``: a write that would go past it raises LimitExceededError (the
management API answers 429), and the gateway's sweep cuts off a client that stays over the
limit for ``limits.slow_consumer_grace_s`` (close 1008, "slow consumer"). What websockets
writes on its own (pongs, the close echo) counts too: a client whose frames take the buffer
past the limit is no longer read until it drains (see :meth:`Connection.after_read`).

Frames are built once with websockets' own serializer; with permessage-deflate on, each
connection compresses through its protocol object instead (the cost of compression), unless
it compresses each message alone (no context takeover): then one compressed frame serves
every such connection with the same window (see ``shared_deflate``).

The connection also owns its socket: the kernel send buffer it is given, a close bounded in
time, and the RST that drops a client that stopped reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING, Any

from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .errors import CLOSE_ABNORMAL, CLOSE_SLOW_CONSUMER, GoneError, LimitExceededError
from .records import ConnectionInfo, ConnectionRecord

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

__all__ = ["MAX_FANOUT_NAMES", "Connection", "as_payload", "encode_frame", "plain_frame", "reset"]

# How many fan-out names a reliable session that just moved keeps, and carries when it moves
# on (the newest): bounds its memory and its handover whatever its tenant's fan-out rate.
MAX_FANOUT_NAMES = 4096

_OPEN = State.OPEN
_TEXT, _BINARY = Opcode.TEXT, Opcode.BINARY
_LINGER_ABORT = struct.pack("ii", 1, 0)  # struct linger {l_onoff = 1, l_linger = 0}


def as_payload(data: bytes | str) -> tuple[bytes, bool]:
    """Posted data -> (payload, binary): a text frame unless it is bytes that are not UTF-8."""
    if isinstance(data, str):
        return data.encode(), False
    if not data.isascii():  # ASCII (most JSON) is UTF-8: no decoding to tell
        try:
            data.decode()
        except UnicodeDecodeError:
            return bytes(data), True
    return data if data.__class__ is bytes else bytes(data), False


# The header of an unmasked, final, uncompressed data frame: what Frame.serialize writes for
# it (tests/test_connection.py compares them), without its BytesIO and checks per frame.
_SHORT_HEADERS = (
    tuple(bytes((0x80 | _TEXT, length)) for length in range(126)),
    tuple(bytes((0x80 | _BINARY, length)) for length in range(126)),
)
_HEADER_16 = struct.Struct("!BBH").pack
_HEADER_64 = struct.Struct("!BBQ").pack


def plain_frame(data: bytes, binary: bool) -> bytes:
    """One unmasked, uncompressed server frame carrying ``data``, byte for byte what
    websockets' ``Frame(opcode, data).serialize(mask=False)`` returns."""
    length = len(data)
    if length < 126:
        return _SHORT_HEADERS[binary][length] + data
    head1 = 0x82 if binary else 0x81
    if length < 65536:
        return _HEADER_16(head1, 126, length) + data
    return _HEADER_64(head1, 127, length) + data


def encode_frame(data: bytes, binary: bool, deflate: PerMessageDeflate | None = None) -> bytes:
    """Serialize one unmasked server frame carrying ``data``, compressed by ``deflate`` if
    given (a connection's ``shared_deflate``: the frame then serves every connection whose
    ``shared_deflate`` has the same ``local_max_window_bits``).

    Encode a fan-out message once with this and hand the bytes to every connection.
    """
    if deflate is None:
        return plain_frame(data, binary)
    frame = Frame(Opcode.BINARY if binary else Opcode.TEXT, data)
    return frame.serialize(mask=False, extensions=[deflate])


def _setsockopt(transport: asyncio.BaseTransport, option: int, value: int | bytes) -> None:
    """A SOL_SOCKET option on the transport's socket; best effort (the peer may be gone)."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, value)


def reset(transport: asyncio.Transport) -> None:
    """Drop a TCP connection with an RST, discarding what the kernel still holds for it.

    A plain close queues the FIN behind the unsent data; against a client that stopped
    reading (a zero window) it never leaves: the client never learns it was cut off and the
    kernel keeps the socket's send buffer (MBs with autotuning) while it probes the window.
    ``SO_LINGER`` on with a zero timeout makes the close an abortive one.
    """
    _setsockopt(transport, socket.SO_LINGER, _LINGER_ABORT)
    transport.abort()


class Connection:
    """State of one connection from the end of ``$connect`` until ``$disconnect`` ran.

    ``last_active`` and ``opened`` are event-loop clock readings (monotonic seconds);
    ``record.connected_at`` is the wall clock at accept, for the AWS fields.
    """

    __slots__ = (
        "record",
        "ws",
        "context_base",
        "message_context",
        "opened",
        "last_active",
        "over_since",
        "close_code",
        "close_reason",
        "compressed",
        "own_frames",
        "shared_deflate",
        "abandoned",
        "groups",
        "task",
        "deadline",
        "deadline_hit",
        "reading_paused",
        "token_deadline",
        "_wall_offset",
    )

    reliable = False  # a wsgateway.reliable.v1 session (wsgateway.reliable.session)

    def __init__(self, record: ConnectionRecord, opened: float, context_base: dict[str, Any]) -> None:
        self.record = record
        self.ws: ServerConnection | None = None  # set once the upgrade completed
        self.context_base = context_base  # requestContext fields fixed for the lifetime
        # Every MESSAGE event's requestContext copies it (events.message_context): made by the
        # dispatcher at the first message, so that an idle connection holds none.
        self.message_context: dict[str, Any] | None = None
        self.opened = opened
        self.last_active = opened
        self.over_since: float | None = None  # when the queue first went over its limit
        self.close_code: int | None = None  # set when the gateway decides to close
        self.close_reason = ""
        self.compressed = False
        # It encodes each message itself (compression with context takeover, a reliable
        # session's numbering): a fan-out hands it the data, not the shared frame.
        self.own_frames = False
        # Its permessage-deflate when that compresses each message alone: stateless, so a
        # frame encoded with it is valid for every connection with the same window bits.
        self.shared_deflate: PerMessageDeflate | None = None
        self.abandoned = False  # another node ran its $disconnect: close without one
        self.groups: set[str] | None = None  # groups of its tenant it was added to
        self.task: asyncio.Task[Any] | None = None  # its read loop, which runs its handlers
        self.deadline = 0.0  # loop time its running handler must finish by; 0: none runs
        self.deadline_hit = False  # the sweep cancelled ``task`` for passing ``deadline``
        self.reading_paused = False  # after_read stopped reading: its replies overflowed the queue
        # Wall clock (epoch s): its token's exp + leeway, past which the sweep closes it with
        # 1008 "Token expired" (auth.on_expiry = "close"); a token refresh moves it. None: never.
        self.token_deadline: float | None = None
        self._wall_offset = record.connected_at - opened

    @property
    def id(self) -> str:
        return self.record.connection_id

    @property
    def tenant(self) -> str:
        return self.record.tenant

    def attach(self, ws: ServerConnection, send_buffer: int) -> None:
        """The upgrade completed on ``ws``: from now on this connection writes to it.

        ``send_buffer`` (bytes, 0: the kernel's default) bounds what the kernel buffers for
        this client, so that a client that stops reading fills the gateway's own bounded
        queue (and is cut off) instead of megabytes of kernel memory (Linux autotunes a
        loopback socket's send buffer to several MB).
        """
        self.ws = ws
        extensions = ws.protocol.extensions
        self.compressed = bool(extensions)
        deflate = extensions[0] if len(extensions) == 1 else None
        if isinstance(deflate, PerMessageDeflate) and deflate.local_no_context_takeover:
            self.shared_deflate = deflate
        self.own_frames = self.compressed and self.shared_deflate is None
        if send_buffer:
            _setsockopt(ws.transport, socket.SO_SNDBUF, send_buffer)

    async def close_socket(self, timeout: float) -> None:
        """Send the close frame decided in ``close_code``/``close_reason``, or drop the TCP
        connection with an RST: at once for a slow consumer (1008 while its queue is over the
        limit), else after ``timeout`` seconds."""
        ws = self.ws
        assert ws is not None and self.close_code is not None
        # websockets' close() waits for the write buffer to drain, which never happens for
        # a client that stopped reading: bound it, then drop the TCP connection.
        # 1008 alone is not enough: an expired token or a handler's Disconnect(1008) closes a
        # client that still reads, and it should get its close frame.
        if self.close_code == CLOSE_SLOW_CONSUMER and self.over_since is not None:
            reset(ws.transport)
            return
        try:
            async with asyncio.timeout(timeout):
                await ws.close(self.close_code, self.close_reason)
        except TimeoutError:
            reset(ws.transport)

    async def wait_closed(self, timeout: float) -> tuple[int, str]:
        """Wait up to ``timeout`` seconds for the closing handshake, then abort the transport
        if it has not finished; return the (code, reason) that ``$disconnect`` reports."""
        ws = self.ws
        assert ws is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await ws.wait_closed()
        if ws.protocol.state is not State.CLOSED:
            ws.transport.abort()
        return self.close_info()

    def close_info(self) -> tuple[int, str]:
        """The (code, reason) that ``$disconnect`` reports, whoever closed first."""
        if self.close_code is not None:  # the gateway decided: delete, idle, slow, shutdown
            return self.close_code, self.close_reason
        if self.ws is None:
            return CLOSE_ABNORMAL, ""
        proto = self.ws.protocol
        rcvd, sent = proto.close_rcvd, proto.close_sent
        if rcvd is not None and (sent is None or proto.close_rcvd_then_sent):
            return rcvd.code, rcvd.reason
        if sent is not None:  # websockets closed it: 1009 too big, 1011 keepalive timeout, ...
            return sent.code, sent.reason
        return CLOSE_ABNORMAL, ""

    def queued_bytes(self) -> int:
        """Bytes waiting in the outbound queue (the transport's write buffer)."""
        ws = self.ws
        return 0 if ws is None else ws.transport.get_write_buffer_size()

    def info(self) -> ConnectionInfo:
        """What GET @connections answers: the record and lastActiveAt (epoch seconds)."""
        return ConnectionInfo(self.record, self.last_active + self._wall_offset)

    # The names of the fan-outs it took, oldest first, while it keeps track: only a reliable
    # session that just moved between nodes does (see ReliableConnection); None here, for
    # every other. At most MAX_FANOUT_NAMES, the newest.
    fanouts: dict[str, None] | None = None

    def already_took(self, fanout_id: str) -> bool:
        """Whether this connection was given the fan-out ``fanout_id`` before (from now on it
        was, while it keeps track: see ``fanouts``). Past ``MAX_FANOUT_NAMES`` names the
        oldest is forgotten: its fan-out is the one least likely to reach it again."""
        seen = self.fanouts
        if seen is None:
            return False
        if fanout_id in seen:
            return True
        seen[fanout_id] = None
        if len(seen) > MAX_FANOUT_NAMES:
            del seen[next(iter(seen))]
        return False

    def send(self, data: bytes, binary: bool, now: float, limit: int) -> None:
        """Queue one message; raise GoneError if not open, LimitExceededError if full."""
        if self.compressed:
            self._send_compressed(data, binary, now, limit)
        else:
            self.send_frame(plain_frame(data, binary), now, limit)

    def send_frame(self, frame: bytes, now: float, limit: int) -> None:
        """Queue one pre-encoded frame (see :func:`encode_frame`); same errors as send."""
        ws = self.ws
        # ``_state``: what websockets' ``state`` property returns, without a Python call per
        # frame (tests/test_connection.py checks that they agree).
        if ws is None or ws.protocol._state is not _OPEN or self.close_code is not None:
            raise GoneError()
        transport = ws.transport
        queued = transport.get_write_buffer_size()
        if queued and queued + len(frame) > limit:
            if self.over_since is None:
                self.over_since = now
            raise LimitExceededError("the connection's outbound queue is full")
        transport.write(frame)
        self.last_active = now

    def _send_compressed(self, data: bytes, binary: bool, now: float, limit: int) -> None:
        ws = self.ws
        if ws is None or ws.protocol.state is not _OPEN or self.close_code is not None:
            raise GoneError()
        queued = ws.transport.get_write_buffer_size()
        if queued and queued + len(data) > limit:
            if self.over_since is None:
                self.over_since = now
            raise LimitExceededError("the connection's outbound queue is full")
        if binary:
            ws.protocol.send_binary(data)
        else:
            ws.protocol.send_text(data)
        ws.send_data()
        self.last_active = now

    def after_read(self, now: float, limit: int) -> None:
        """Call each time websockets handled data from the client: it answers pings (and a
        close) by writing to the transport itself, past :meth:`send`'s check, so a client that
        sends pings and never reads would grow the queue without bound. Once the queue is over
        ``limit``, stop reading from the client (it cannot make the gateway write more) and
        start its slow-consumer clock, as a refused write does; :meth:`check_queue` reads it
        again once it drained."""
        ws = self.ws
        if ws is None or ws.transport.get_write_buffer_size() <= limit:
            return
        ws.transport.pause_reading()
        self.reading_paused = True
        if self.over_since is None:
            self.over_since = now

    def _resume_reading(self) -> None:
        ws = self.ws
        self.reading_paused = False
        # The inbox (and websockets) pause reading too, while too many messages wait to be
        # dispatched: leave that pause to them, or their bound on received messages is lost.
        if ws is None or ws.recv_messages.paused:
            return
        inbox = getattr(ws, "gw_inbox", None)
        if inbox is None or not inbox.paused:
            ws.transport.resume_reading()

    def check_queue(self, now: float, limit: int, grace: float) -> bool:
        """Called by the sweep once a write was refused: return True when the client has not
        drained its queue below half the limit within ``grace`` seconds of the first refusal
        and must be cut off as a slow consumer."""
        if self.queued_bytes() < limit // 2:  # drained: it keeps up again
            self.over_since = None
            if self.reading_paused:
                self._resume_reading()
            return False
        if self.over_since is None:
            self.over_since = now
            return False
        return now - self.over_since >= grace
