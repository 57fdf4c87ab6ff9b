"""``publish`` (fanout, slow): POST to the tenant, paced by a sentinel listener."""

from __future__ import annotations

import asyncio
from time import monotonic_ns as _now

from loadtest import wire
from loadtest.backend import tenant_path
from loadtest.roles.base import REPLY_TIMEOUT_S
from loadtest.roles.listen import ListenRole
from loadtest.roles.pacing import paced, sleep_until

__all__ = ["PublishRole"]


class PublishRole(ListenRole):
    """fanout / slow: POST to the tenant.

    The closed loop publishes message ``k`` once every listener (the listener workers in
    ``spec.watch`` and this worker's own sentinel connection) has received message
    ``k - _WINDOW`` (4), so the measured rate is what reaches the *last* client, not what the
    server accepts.
    """

    _WINDOW = 4

    backend_concurrency = 1  # one message at a time, in order

    async def prepare(self) -> None:
        await super().prepare()
        await self._open_backend()

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        if self.spec.rate:
            await paced(self.spec.rate, start_ns, end_ns, self._fire, self.lag_samples)
        else:
            await self._closed_loop(end_ns)
        await sleep_until(end_ns + int(self.spec.drain * 1e9))

    async def _publish(self, t: int, seq: int) -> None:
        data = wire.body(t, seq, self.spec.payload).encode()
        try:
            assert self._backend is not None, "prepare() opens the backend"
            status, _ = await self._backend.post(tenant_path(self.spec.tenant), data)
        except (OSError, TimeoutError) as exc:
            self.errors[f"http_{type(exc).__name__}"] += 1
            return
        self.request_samples.append(_now() - t)
        self.requests += 1
        if status != 200:
            self.errors[f"http_{status}"] += 1

    async def _fire(self, k: int, due: int) -> None:
        await self._publish(due, k)

    def _slowest(self) -> int:
        watched = (*self.spec.watch, self.spec.index)
        return min(self.acked[i] for i in watched) if self.acked is not None else self._acked_seq

    async def _closed_loop(self, end_ns: int) -> None:
        seq = 0
        while (t := _now()) < end_ns:
            await self._publish(t, seq)
            give_up = _now() + int(REPLY_TIMEOUT_S * 1e9)
            while seq - self._slowest() >= self._WINDOW and _now() < end_ns:
                if _now() > give_up:
                    self.errors["not_delivered"] += 1
                    break
                await asyncio.sleep(0.0005)
            seq += 1
