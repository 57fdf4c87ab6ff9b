"""What every role shares: its connections, its counters and samples, and its result."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from time import monotonic_ns as _now
from typing import Any

import jwt
from websockets.exceptions import ConnectionClosed

from loadtest import wire
from loadtest.backend import Backend
from loadtest.clients import ClientConn, DialError, dial, source_address
from loadtest.metrics import Histogram
from loadtest.roles.spec import WorkerResult, WorkerSpec

__all__ = ["REPLY_TIMEOUT_S", "Role", "connection_token"]

REPLY_TIMEOUT_S = 5.0
_TOKEN_TTL_S = 3 * 3600


def connection_token(secret: str, tenant: str, index: int) -> str:
    """Return an HS256 JWT for connection ``index`` of ``tenant``, or "" with no secret."""
    # One token per connection (a distinct "sub"), as real clients have.
    if not secret:
        return ""
    claims = {"tenant": tenant, "sub": f"lt{index}", "exp": int(time.time()) + _TOKEN_TTL_S}
    return jwt.encode(claims, secret, algorithm="HS256")


class Role:
    """Base role: opens its connections in :meth:`prepare`, works in :meth:`run`."""

    learn_ids = False
    readers = False
    backend_concurrency = 0  # management requests in flight (0: the spec's concurrency)

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.conns: list[ClientConn] = []
        self.errors: Counter[str] = Counter()
        self.samples = array("q")
        self.request_samples = array("q")
        self.lag_samples = array("q")  # open loop: how late each operation left (ns)
        self.from_send_samples = array("q")  # unicast: delivery latency from the real send (ns)
        self.ops = 0
        self.requests = 0
        self.start_ns = 0
        self.end_ns = 0
        self.first_ns = 0
        self.last_ns = 0
        self.seq_max: dict[int, int] = {}
        self.seq_count: dict[int, int] = {}
        self.stalled: list[ClientConn] = []
        self.acked: Any = None  # shared array: per worker, highest seq all its listeners got
        self._acked_seq = -1
        self._backend: Backend | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def prepare(self) -> None:
        """Open this worker's connections (bounded by ``connect_timeout``)."""
        try:
            async with asyncio.timeout(self.spec.connect_timeout):
                await self._open(self.spec.connections, record=False)
        except TimeoutError:
            self.errors["connect_budget"] += 1

    async def run(self, start_ns: int, end_ns: int) -> None:
        """Do the role's work from ``start_ns`` to ``end_ns`` (monotonic nanoseconds)."""
        raise NotImplementedError

    async def _open_backend(self) -> None:
        """Connect to the management API before the window: its set-up (the pool, the signer's
        check against botocore) must not delay the first operations that are measured."""
        spec = self.spec
        backend = Backend(spec.mgmt_url, spec.sigv4, self.backend_concurrency or spec.concurrency)
        await backend.__aenter__()
        self._backend = backend

    async def close(self) -> None:
        """Close every connection, politely but in bounded time."""
        if self._backend is not None:
            await self._backend.__aexit__(None, None, None)
            self._backend = None
        conns = self.conns + self.stalled
        if not conns:
            return
        _, pending = await asyncio.wait(
            [asyncio.ensure_future(c.close()) for c in conns], timeout=5.0
        )
        for task in pending:
            task.cancel()
        for conn in conns:
            conn.abort()

    def result(self, cpu_s: float, window_s: float) -> WorkerResult:
        """Return what this worker measured."""
        return WorkerResult(
            index=self.spec.index,
            role=self.spec.role,
            opened=len(self.conns) + len(self.stalled),
            held=sum(c.is_open for c in self.conns),
            ops=self.ops,
            requests=self.requests,
            errors=dict(self.errors),
            latency=Histogram.from_samples(self.samples),
            request_latency=Histogram.from_samples(self.request_samples),
            send_lag=Histogram.from_samples(self.lag_samples),
            from_send=Histogram.from_samples(self.from_send_samples),
            last_by_seq={s: (m, self.seq_count[s]) for s, m in self.seq_max.items()},
            receivers=len(self.conns),
            stalled_closed=sum(c.peer_closed() for c in self.stalled),
            cpu_s=cpu_s,
            window_s=window_s,
            first_ns=self.first_ns,
            last_ns=self.last_ns,
        )

    # -- helpers -------------------------------------------------------------------------

    async def _open(self, count: int, *, record: bool, stalled: int = 0) -> None:
        spec = self.spec
        tokens = [connection_token(spec.jwt_secret, spec.tenant, spec.first_conn + i) for i in range(count)]
        sem = asyncio.Semaphore(spec.concurrency)

        async def one(i: int) -> None:
            async with sem:
                await self._dial_one(i, tokens[i], record=record, stalled=i < stalled)

        await asyncio.gather(*(one(i) for i in range(count)))

    async def _dial_one(self, i: int, token: str, *, record: bool, stalled: bool = False) -> None:
        source = source_address(self.spec.first_conn + i)
        t0 = _now()
        try:
            conn = await dial(self.spec.endpoint, token, source, stalled=stalled)
            if self.learn_ids and not stalled:
                await asyncio.wait_for(conn.learn_id(), REPLY_TIMEOUT_S)
        except DialError as exc:
            self.errors[exc.kind] += 1
            return
        except (ConnectionClosed, TimeoutError, OSError, ValueError, KeyError) as exc:
            self.errors[f"handshake_{type(exc).__name__}"] += 1
            return
        done = _now()
        if record:
            self.samples.append(done - t0)
            self.ops += 1 if done <= self.end_ns or not self.end_ns else 0
            self.last_ns = done
        if stalled:
            self.stalled.append(conn)
            return
        self.conns.append(conn)
        if self.readers:
            conn.start_reader(self._on_push)

    def _on_push(self, text: str | bytes, conn: ClientConn) -> int | None:
        """Time one pushed message and wake its waiter; return its seq (once per delivery)."""
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
        waiter = conn.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(text)
        return seq
