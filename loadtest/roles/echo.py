"""``echo``: send ``echo`` actions and time the replies."""

from __future__ import annotations

from time import monotonic_ns as _now

from websockets.exceptions import ConnectionClosed

from loadtest import wire
from loadtest.clients import ClientConn
from loadtest.roles.base import REPLY_TIMEOUT_S, Role
from loadtest.roles.pacing import paced, sleep_until

__all__ = ["EchoRole"]


class EchoRole(Role):
    """echo: round trips through the target's ``echo`` route.

    Closed loop: each connection has one message in flight; the reader callback that gets a
    reply sends that connection's next message (no task per round trip).
    """

    readers = True

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        if self.spec.rate:
            await paced(self.spec.rate, start_ns, end_ns, self._send_paced, self.lag_samples)
            await sleep_until(end_ns + int(self.spec.drain * 1e9))
            return
        self._closed = True
        for conn in self.conns:
            self._send_next(conn, _now())
        await sleep_until(end_ns + int(self.spec.drain * 1e9))
        late = _now() - int(REPLY_TIMEOUT_S * 1e9)
        self.errors["timeout"] += sum(1 for c in self.conns if 0 < c.sent_ns < min(end_ns, late))
        if not self.errors["timeout"]:
            del self.errors["timeout"]

    _closed = False

    def _on_push(self, text: str | bytes, conn: ClientConn) -> int | None:
        now = _now()
        try:
            t, seq = wire.read_stamp(text)
        except (ValueError, KeyError, TypeError):
            self.errors["bad_frame"] += 1
            return None
        if t >= self.start_ns:
            self.samples.append(now - t)
            if now <= self.end_ns:
                self.ops += 1
        conn.sent_ns = 0
        if self._closed and now < self.end_ns:
            self._send_next(conn, now)
        return seq

    def _send_next(self, conn: ClientConn, t: int) -> None:
        conn.sent_ns = t
        try:
            conn.send_now("echo", wire.body(t, self.ops, self.spec.payload, "echo"))
        except ConnectionClosed:
            conn.sent_ns = 0
            self.errors["closed"] += 1

    async def _send_paced(self, k: int, due: int) -> None:
        conn = self.conns[k % len(self.conns)]
        try:
            conn.send_now("echo", wire.body(due, k, self.spec.payload, "echo"))
        except ConnectionClosed:
            self.errors["closed"] += 1
