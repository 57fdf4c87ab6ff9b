"""``dial`` (connect): open connections as fast as allowed, or at an offered rate."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from time import monotonic_ns as _now

from loadtest.roles.base import REPLY_TIMEOUT_S, Role, connection_token
from loadtest.roles.pacing import paced, sleep_until

__all__ = ["DialRole"]


class DialRole(Role):
    """connect: open ``connections`` handshakes inside the window; keep them open."""

    async def prepare(self) -> None:
        spec = self.spec
        self._tokens = [
            connection_token(spec.jwt_secret, spec.tenant, spec.first_conn + i) for i in range(spec.connections)
        ]

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        self.first_ns = start_ns
        spec = self.spec
        if spec.rate:
            await self._run_paced(start_ns, end_ns)
            return
        indexes = iter(range(spec.connections))

        async def dialer() -> None:
            for i in indexes:
                if _now() >= end_ns:
                    return
                await self._dial_one(i, self._tokens[i], record=True)

        await self._bounded(asyncio.gather(*(dialer() for _ in range(spec.concurrency))), end_ns)
        await sleep_until(end_ns)  # hold them: closing inside the window would be measured

    async def _run_paced(self, start_ns: int, end_ns: int) -> None:
        tasks: set[asyncio.Task[None]] = set()
        n = self.spec.connections

        async def fire(k: int, due: int) -> None:
            if k < n:
                task = asyncio.create_task(self._dial_one(k, self._tokens[k], record=True))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        rate = self.spec.rate or 1.0
        stop = min(end_ns, start_ns + int(n / rate * 1e9) + 1)
        await paced(rate, start_ns, stop, fire, self.lag_samples)
        if tasks:
            await self._bounded(asyncio.wait(tasks), end_ns)
        await sleep_until(end_ns)

    async def _bounded(self, aw: Awaitable[object], end_ns: int) -> None:
        try:
            async with asyncio.timeout(max(0.0, (end_ns - _now()) / 1e9) + REPLY_TIMEOUT_S):
                await aw
        except TimeoutError:
            self.errors["timeout"] += 1
