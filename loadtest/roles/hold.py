"""``hold`` (idle): open connections and keep them."""

from __future__ import annotations

import asyncio

from loadtest.roles.base import Role
from loadtest.roles.pacing import sleep_until

__all__ = ["HoldRole"]


class HoldRole(Role):
    """idle: open connections (their handshake latency is recorded) and hold them."""

    async def prepare(self) -> None:
        try:
            async with asyncio.timeout(self.spec.connect_timeout):
                await self._open(self.spec.connections, record=True)
        except TimeoutError:
            self.errors["connect_budget"] += 1
        self.ops = len(self.conns)

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        await sleep_until(end_ns)
