"""One accepted connection: who it is, when it was last active, and its bounded outbound queue.

The outbound queue is the connection's transport write buffer. Posts, fan-out and route
responses write finished WebSocket frames straight to the transport, without awaiting the
socket, so a slow client never delays anyone else. The buffer is bounded by
``limits.max_queued_bytes``: a write that would go past it raises LimitExceededError (the
management API answers 429), and the gateway's sweep cuts off a client that stays over the
limit for ``limits.slow_consumer_grace_s`` (close 1008, "slow consumer").

Frames are built once with websockets' own serializer; with permessage-deflate on, each
connection compresses through its protocol object instead (the cost of compression).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from websockets.frames import Frame, Opcode
from websockets.protocol import State

from .errors import GoneError, LimitExceededError
from .registry import ConnectionInfo, ConnectionRecord

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

__all__ = ["Connection", "as_payload", "encode_frame"]

_OPEN = State.OPEN


def as_payload(data: bytes | str) -> tuple[bytes, bool]:
    """Posted data -> (payload, binary): a text frame unless it is bytes that are not UTF-8."""
    if isinstance(data, str):
        return data.encode(), False
    try:
        data.decode()
    except UnicodeDecodeError:
        return bytes(data), True
    return bytes(data), False


def encode_frame(data: bytes, binary: bool) -> bytes:
    """Serialize one unmasked, uncompressed server frame carrying ``data``.

    Encode a fan-out message once with this and hand the bytes to every connection.
    """
    return Frame(Opcode.BINARY if binary else Opcode.TEXT, data).serialize(mask=False)


class Connection:
    """State of one connection from the end of ``$connect`` until ``$disconnect`` ran.

    ``last_active`` and ``opened`` are event-loop clock readings (monotonic seconds);
    ``record.connected_at`` is the wall clock at accept, for the AWS fields.
    """

    __slots__ = (
        "record",
        "ws",
        "context_base",
        "opened",
        "last_active",
        "over_since",
        "close_code",
        "close_reason",
        "compressed",
        "abandoned",
        "groups",
        "task",
        "deadline",
        "deadline_hit",
        "_wall_offset",
    )

    def __init__(self, record: ConnectionRecord, opened: float, context_base: dict[str, Any]) -> None:
        self.record = record
        self.ws: ServerConnection | None = None  # set once the upgrade completed
        self.context_base = context_base  # requestContext fields fixed for the lifetime
        self.opened = opened
        self.last_active = opened
        self.over_since: float | None = None  # when the queue first went over its limit
        self.close_code: int | None = None  # set when the gateway decides to close
        self.close_reason = ""
        self.compressed = False
        self.abandoned = False  # another node ran its $disconnect: close without one
        self.groups: set[str] | None = None  # groups of its tenant it was added to
        self.task: asyncio.Task[Any] | None = None  # its read loop, which runs its handlers
        self.deadline = 0.0  # loop time its running handler must finish by; 0: none runs
        self.deadline_hit = False  # the sweep cancelled ``task`` for passing ``deadline``
        self._wall_offset = record.connected_at - opened

    @property
    def id(self) -> str:
        return self.record.connection_id

    @property
    def tenant(self) -> str:
        return self.record.tenant

    @property
    def is_open(self) -> bool:
        ws = self.ws
        return ws is not None and ws.protocol.state is _OPEN and self.close_code is None

    def queued_bytes(self) -> int:
        """Bytes waiting in the outbound queue (the transport's write buffer)."""
        ws = self.ws
        return 0 if ws is None else ws.transport.get_write_buffer_size()

    def info(self) -> ConnectionInfo:
        """What GET @connections answers: the record and lastActiveAt (epoch seconds)."""
        return ConnectionInfo(self.record, self.last_active + self._wall_offset)

    def last_active_wall(self) -> float:
        return self.last_active + self._wall_offset

    def send(self, data: bytes, binary: bool, now: float, limit: int) -> None:
        """Queue one message; raise GoneError if not open, LimitExceededError if full."""
        if self.compressed:
            self._send_compressed(data, binary, now, limit)
        else:
            self.send_frame(encode_frame(data, binary), now, limit)

    def send_frame(self, frame: bytes, now: float, limit: int) -> None:
        """Queue one pre-encoded frame (see :func:`encode_frame`); same errors as send."""
        ws = self.ws
        if ws is None or ws.protocol.state is not _OPEN or self.close_code is not None:
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

    def check_queue(self, now: float, limit: int, grace: float) -> bool:
        """Called by the sweep once a write was refused: return True when the client has not
        drained its queue below half the limit within ``grace`` seconds of the first refusal
        and must be cut off as a slow consumer."""
        if self.queued_bytes() < limit // 2:  # drained: it keeps up again
            self.over_since = None
            return False
        if self.over_since is None:
            self.over_since = now
            return False
        return now - self.over_since >= grace
