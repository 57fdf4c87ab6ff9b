"""``unicast`` (and crossnode): POST to its own connections; time POST-to-client."""

from __future__ import annotations

import asyncio
from time import monotonic_ns as _now

from loadtest import wire
from loadtest.backend import connection_path
from loadtest.clients import ClientConn
from loadtest.roles.base import REPLY_TIMEOUT_S, Role
from loadtest.roles.pacing import paced, sleep_until
from loadtest.roles.spec import WorkerSpec

__all__ = ["UnicastRole"]


class UnicastRole(Role):
    """unicast / crossnode: POST to own connections via the management API.

    Its connections are its own, so each delivery is also timed from the moment the request
    really left (``from_send``): next to the latency from the intended time, that shows how
    much of a percentile the generator's own lag is.
    """

    learn_ids = True
    readers = True

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(spec)
        self._sent: dict[int, int] = {}  # seq -> when its request was written

    def _on_push(self, text: str | bytes, conn: ClientConn) -> int | None:
        seq = super()._on_push(text, conn)
        sent = self._sent.pop(seq, None) if seq is not None else None
        if sent is not None:
            self.from_send_samples.append(_now() - sent)
        return seq

    async def prepare(self) -> None:
        await super().prepare()
        await self._open_backend()

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        spec = self.spec
        if not self.conns:
            return
        if spec.rate:
            await self._run_paced(start_ns, end_ns)
        else:
            senders = min(spec.concurrency, len(self.conns))
            tasks = [asyncio.create_task(self._sender(j, senders, end_ns)) for j in range(senders)]
            await asyncio.wait(tasks, timeout=(end_ns - _now()) / 1e9 + 2 * REPLY_TIMEOUT_S)
            for task in tasks:
                task.cancel()
        await sleep_until(end_ns + int(spec.drain * 1e9))

    async def _post(self, conn: ClientConn, t: int, seq: int) -> bool:
        """POST one stamped message to ``conn``; return whether it was accepted (200)."""
        data = wire.body(t, seq, self.spec.payload).encode()
        try:
            assert self._backend is not None, "prepare() opens the backend"
            if t >= self.start_ns:
                self._sent[seq] = _now()
            status, _ = await self._backend.post(connection_path(conn.conn_id), data)
        except (OSError, TimeoutError) as exc:
            self.errors[f"http_{type(exc).__name__}"] += 1
            return False
        self.request_samples.append(_now() - t)
        self.requests += 1
        if status != 200:
            self.errors[f"http_{status}"] += 1
            return False
        return True

    async def _sender(self, j: int, step: int, end_ns: int) -> None:
        loop = asyncio.get_running_loop()
        mine = self.conns[j::step]
        seq = j
        while (t := _now()) < end_ns:
            conn = mine[seq // step % len(mine)]
            conn.waiter = loop.create_future()
            if await self._post(conn, t, seq):
                try:
                    await asyncio.wait_for(conn.waiter, REPLY_TIMEOUT_S)
                except TimeoutError:
                    self.errors["not_delivered"] += 1
            conn.waiter = None
            seq += step

    async def _run_paced(self, start_ns: int, end_ns: int) -> None:
        sem = asyncio.Semaphore(self.spec.concurrency * 4)
        tasks: set[asyncio.Task[bool]] = set()

        async def post(conn: ClientConn, due: int, k: int) -> bool:
            try:
                return await self._post(conn, due, k)
            finally:
                sem.release()

        async def fire(k: int, due: int) -> None:
            await sem.acquire()  # too many in flight: fall behind; latency keeps the truth
            task = asyncio.create_task(post(self.conns[k % len(self.conns)], due, k))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await paced(self.spec.rate or 1.0, start_ns, end_ns, fire, self.lag_samples)
        if tasks:
            await asyncio.wait(tasks, timeout=REPLY_TIMEOUT_S * 2)
