"""One reliable connection: a :class:`~wsgateway.connection.Connection` that numbers what it
sends, keeps it until the client acknowledges it, and outlives its socket.

Every message (posts, fan-out, route replies, error frames) is wrapped in the envelope of
:mod:`.protocol` with the next ``seq`` and kept until acknowledged; while a socket is attached
it is written at once, while none is (the session is *dropped*) it only waits. What is kept
is bounded by ``[reliable] max_unacked_bytes``: past it a write is refused
(LimitExceededError: 429 to a post) and, while attached, the slow-consumer clock starts as
for a plain connection's full queue.

Each message is encoded per connection (its ``seq`` differs), so the hub hands it the data
rather than a shared frame (``own_frames``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from websockets.protocol import State

from ..connection import Connection
from ..errors import CLOSE_ABNORMAL, GoneError, LimitExceededError
from ..records import ConnectionRecord
from .protocol import connected_frame, message_frame, text_frame

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

__all__ = ["OVER_LIMIT", "ReliableConnection"]

OVER_LIMIT = "the connection's unacknowledged messages are over the limit"
_OPEN = State.OPEN


class ReliableConnection(Connection):
    """A connection of the ``wsgateway.reliable.v1`` subprotocol and its session state.

    ``ws`` is None while the session is dropped (between sockets); ``dropped`` says so,
    ``drop_code``/``drop_reason`` are what its ``$disconnect`` reports if it is never resumed.
    """

    __slots__ = (
        "drop_code",
        "drop_reason",
        "ending",
        "expiry",
        "fanouts",
        "frames",
        "max_unacked",
        "seq",
        "token",
        "total_bytes",
        "unacked_bytes",
    )

    reliable = True

    def __init__(
        self, record: ConnectionRecord, opened: float, context_base: dict[str, Any], *, token: str, max_unacked: int
    ) -> None:
        super().__init__(record, opened, context_base)
        self.own_frames = True
        self.token = token  # what a resume must show; a new one is issued at each resume
        self.max_unacked = max_unacked
        self.seq = 0  # the last seq sent (or buffered)
        # (seq, envelope, total_bytes once it was kept) not yet acknowledged; seqs are consecutive.
        # A list, not a deque: an empty deque costs 600 bytes on every idle connection, and an
        # ack removes its prefix in one slice.
        self.frames: list[tuple[int, bytes, int]] = []
        self.total_bytes = 0  # of every envelope kept so far
        self.unacked_bytes = 0
        self.drop_code = CLOSE_ABNORMAL
        self.drop_reason = ""
        self.expiry: asyncio.TimerHandle | None = None  # ends a dropped session when its window runs out
        self.ending = False  # its $disconnect is under way: no more resumes, no more drops
        # The fan-outs it was given, kept for a while after a move between nodes (a fan-out
        # may then reach it twice: directly, and sent on by the node it left); else None.
        self.fanouts = None

    @property
    def dropped(self) -> bool:
        return self.ws is None

    # ---------------------------------------------------------------- sending

    def send(self, data: bytes, binary: bool, now: float, limit: int) -> None:
        """Number, keep and (if a socket is attached) write one message. Raises GoneError
        once the session ended, LimitExceededError when the unacknowledged messages would
        pass ``max_unacked`` (``limit``, the plain queue limit, does not apply: everything in
        the socket's buffer is unacknowledged, so this bound covers it)."""
        if self.close_code is not None or self.ending:
            raise GoneError()
        seq = self.seq + 1
        envelope = message_frame(seq, data, binary)
        size = len(envelope)
        if self.unacked_bytes + size > self.max_unacked:
            if self.ws is not None and self.over_since is None:
                self.over_since = now  # the sweep cuts it off after the grace period
            raise LimitExceededError(OVER_LIMIT)
        self.seq = seq
        total = self.total_bytes = self.total_bytes + size
        self.unacked_bytes += size
        self.frames.append((seq, envelope, total))
        ws = self.ws
        if ws is not None and ws.protocol.state is _OPEN:  # else kept for the resume
            if self.compressed:
                ws.protocol.send_text(envelope)
                ws.send_data()
            else:
                ws.transport.write(text_frame(envelope))
            self.last_active = now

    def send_frame(self, frame: bytes, now: float, limit: int) -> None:
        """Not for reliable connections: each frame carries its own seq (see ``own_frames``)."""
        raise TypeError("a reliable connection encodes its own frames: use send()")

    def _write(self, envelope: bytes) -> None:
        """Write one envelope as a text frame; a socket already closing keeps it for the
        resume (it stays in ``frames``)."""
        ws = self.ws
        assert ws is not None
        if ws.protocol.state is not _OPEN:
            return
        if self.compressed:
            ws.protocol.send_text(envelope)
            ws.send_data()
        else:
            ws.transport.write(text_frame(envelope))

    # ---------------------------------------------------------------- acks and resumes

    def ack(self, seq: int) -> None:
        """The client has every message up to ``seq``: forget them. Raises ValueError for a
        seq never sent."""
        if seq > self.seq:
            raise ValueError(f"ack of seq {seq}, but the last message sent is {self.seq}")
        frames = self.frames
        if not frames or seq < frames[0][0]:
            return  # nothing new acknowledged
        count = seq - frames[0][0] + 1  # consecutive seqs: no compare per frame
        self.unacked_bytes = self.total_bytes - frames[count - 1][2]
        del frames[:count]

    def can_resume(self, last_seq: int) -> bool:
        """Whether every message after ``last_seq`` is still here (the client may not claim
        more than was sent, nor less than it acknowledged)."""
        first = self.frames[0][0] if self.frames else self.seq + 1
        return first - 1 <= last_seq <= self.seq

    def attach(self, ws: ServerConnection, send_buffer: int) -> None:
        """A socket (a new one after a resume) carries this session from now on."""
        self.over_since = None
        self.reading_paused = False
        self.deadline = 0.0
        self.deadline_hit = False
        super().attach(ws, send_buffer)
        self.own_frames = True

    def greet(self, resumed: bool, last_seq: int) -> None:
        """Write the ``connected`` frame, then (resuming) every message after ``last_seq``,
        all before any live message: call right after :meth:`attach`, with no await between.
        A resume's frame carries the new reconnection token its claim set (the old one is
        spent)."""
        assert self.ws is not None
        self.ack(last_seq)
        self._write(connected_frame(self.id, self.token, resumed))
        for _, frame, _ in self.frames:
            self._write(frame)

    def detach(self, code: int, reason: str) -> None:
        """The socket dropped: keep the session, and remember how it dropped."""
        self.ws = None
        self.task = None
        self.over_since = None  # kept messages wait for a resume: no slow-consumer clock meanwhile
        self.drop_code, self.drop_reason = code, reason

    def check_queue(self, now: float, limit: int, grace: float) -> bool:
        """As :meth:`Connection.check_queue`, on the unacknowledged messages: cut off when
        they stay over half of ``max_unacked`` for ``grace`` seconds."""
        if self.unacked_bytes < self.max_unacked // 2:
            return super().check_queue(now, limit, grace)
        if self.over_since is None:
            self.over_since = now
            return False
        return now - self.over_since >= grace

    # ---------------------------------------------------------------- handover

    def export(self) -> dict[str, Any]:
        """What another node needs to carry this session on (see :meth:`restore`)."""
        return {
            "seq": self.seq,
            "token": self.token,
            "frames": [[seq, frame.decode()] for seq, frame, _ in self.frames],
            "groups": sorted(self.groups or ()),
            "dropCode": self.drop_code,
            "dropReason": self.drop_reason,
        }

    def restore(self, state: dict[str, Any]) -> list[str]:
        """Take over an exported session; returns its groups (for the hub to join).
        Raises KeyError, TypeError or ValueError if ``state`` is malformed."""
        self.seq = int(state["seq"])
        self.token = str(state["token"])
        expected = self.seq - len(state["frames"]) + 1
        for seq, frame in state["frames"]:
            if int(seq) != expected:
                raise ValueError("a handed-over session's frames must have consecutive seqs")
            data = str(frame).encode()
            self.total_bytes += len(data)
            self.frames.append((expected, data, self.total_bytes))
            expected += 1
        self.unacked_bytes = self.total_bytes
        self.drop_code = int(state["dropCode"])
        self.drop_reason = str(state["dropReason"])
        return [str(group) for group in state["groups"]]
