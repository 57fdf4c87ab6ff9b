"""``listen`` (fanout, slow): sit in a tenant and time every pushed message."""

from __future__ import annotations

import asyncio
from time import monotonic_ns as _now

from loadtest import wire
from loadtest.clients import ClientConn
from loadtest.roles.base import Role
from loadtest.roles.pacing import sleep_until

__all__ = ["ListenRole"]


class ListenRole(Role):
    """fanout / slow: sit in the tenant and time every pushed message."""

    readers = True

    async def prepare(self) -> None:
        try:
            async with asyncio.timeout(self.spec.connect_timeout):
                await self._open(self.spec.connections, record=False, stalled=self.spec.stalled)
        except TimeoutError:
            self.errors["connect_budget"] += 1

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        await sleep_until(end_ns + int(self.spec.drain * 1e9))

    def _on_push(self, text: str | bytes, conn: ClientConn) -> int | None:
        """Time one delivery and count it against its message (hot path: 100k+ a second)."""
        now = _now()
        try:
            t, seq = wire.read_stamp(text)
        except (ValueError, KeyError, TypeError):
            self.errors["bad_frame"] += 1
            return None
        if t < self.start_ns:
            return None
        self.samples.append(now - t)
        if now <= self.end_ns:
            self.ops += 1
        # The clock only moves forward, so a message's latest delivery here is its slowest.
        self.seq_max[seq] = now - t
        count = self.seq_count[seq] = self.seq_count.get(seq, 0) + 1
        if count == len(self.conns) and seq > self._acked_seq:
            self._acked_seq = seq
            if self.acked is not None:
                self.acked[self.spec.index] = seq
        return seq
