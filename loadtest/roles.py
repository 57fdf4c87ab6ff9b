"""What one client worker process does in a run, and what it reports back.

A scenario is built from roles, each run by one or more worker processes:

``hold``     open connections and keep them (idle)
``dial``     open connections as fast as allowed, or at an offered rate (connect)
``echo``     send ``echo`` actions and time the replies (echo)
``unicast``  POST to its own connections through the management API; time POST-to-client
``listen``   sit in a tenant and time every pushed message; some may be ``stalled`` (slow)
``publish``  POST to the tenant; holds one *sentinel* listener that paces the closed loop

Without a rate a role runs a closed loop (the next operation starts when the last one is
done, per connection or per sender), which measures the most the target does. With a rate it
runs an open loop: operations start on a fixed schedule and carry their *intended* start
time, so a stalled server shows up in the latency instead of hiding it (no coordinated
omission). Every latency is measured from the timestamp the sender put in the message.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from websockets.exceptions import ConnectionClosed

from loadtest import wire
from loadtest.backend import UNCHECKED_KEYS, Backend, connection_path, tenant_path
from loadtest.clients import ClientConn, DialError, Endpoint, dial, source_address
from loadtest.metrics import Histogram

__all__ = ["ROLES", "Role", "WorkerResult", "WorkerSpec"]

_now = time.monotonic_ns
_REPLY_TIMEOUT_S = 5.0
_TOKEN_TTL_S = 3 * 3600


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; built by the runner, pickled to the worker."""

    index: int
    role: str
    endpoint: Endpoint
    connections: int
    first_conn: int = 0  # global index of this worker's first connection (source address)
    mgmt_url: str = ""
    sigv4: tuple[str, str] = UNCHECKED_KEYS  # every target's requests are signed alike
    jwt_secret: str = ""
    tenant: str = "t0"
    rate: float | None = None  # this worker's share of the offered rate; None = closed loop
    concurrency: int = 64  # dials / requests in flight
    duration: float = 5.0
    drain: float = 1.0  # seconds after the window to wait for late deliveries
    payload: int = 200
    stalled: int = 0  # connections that never read (slow)
    cpu: int | None = None  # core to pin the worker to
    connect_timeout: float = 60.0
    watch: tuple[int, ...] = ()  # publish: listener workers whose progress paces the closed loop


@dataclass
class WorkerResult:
    """What a worker measured; the runner merges these into one scenario result."""

    index: int
    role: str
    opened: int = 0
    held: int = 0
    ops: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    request_latency: Histogram = field(default_factory=Histogram)
    send_lag: Histogram = field(default_factory=Histogram)
    from_send: Histogram = field(default_factory=Histogram)
    last_by_seq: dict[int, tuple[int, int]] = field(default_factory=dict)
    receivers: int = 0
    stalled_closed: int = 0
    cpu_s: float = 0.0
    window_s: float = 0.0
    first_ns: int = 0
    last_ns: int = 0


def _token(secret: str, tenant: str, index: int) -> str:
    # One token per connection (a distinct "sub"), as real clients have.
    if not secret:
        return ""
    claims = {"tenant": tenant, "sub": f"lt{index}", "exp": int(time.time()) + _TOKEN_TTL_S}
    return jwt.encode(claims, secret, algorithm="HS256")


async def _paced(
    rate: float, start_ns: int, end_ns: int, fire: Callable[[int, int], Awaitable[None]], lags: array[int]
) -> int:
    """Call ``fire(k, due_ns)`` at ``rate`` per second from ``start_ns``; return the count.

    Timers fire with ~1 ms resolution; every operation already due is fired at once. How
    late each one left (``lags``, ns) is the generator's own share of every latency, since
    latency counts from the due time: the report shows it next to the figures.
    """
    interval = 1e9 / rate
    k = 0
    while True:
        due = start_ns + int(k * interval)
        if due >= end_ns:
            return k
        now = _now()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = _now()
        lags.append(now - due)
        await fire(k, due)
        k += 1


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
        tokens = [_token(spec.jwt_secret, spec.tenant, spec.first_conn + i) for i in range(count)]
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
                await asyncio.wait_for(conn.learn_id(), _REPLY_TIMEOUT_S)
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

    async def _sleep_until(self, ns: int) -> None:
        delay = (ns - _now()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)


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
        await self._sleep_until(end_ns)


class DialRole(Role):
    """connect: open ``connections`` handshakes inside the window; keep them open."""

    async def prepare(self) -> None:
        spec = self.spec
        self._tokens = [
            _token(spec.jwt_secret, spec.tenant, spec.first_conn + i) for i in range(spec.connections)
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
        await self._sleep_until(end_ns)  # hold them: closing inside the window would be measured

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
        await _paced(rate, start_ns, stop, fire, self.lag_samples)
        if tasks:
            await self._bounded(asyncio.wait(tasks), end_ns)
        await self._sleep_until(end_ns)

    async def _bounded(self, aw: Awaitable[object], end_ns: int) -> None:
        try:
            async with asyncio.timeout(max(0.0, (end_ns - _now()) / 1e9) + _REPLY_TIMEOUT_S):
                await aw
        except TimeoutError:
            self.errors["timeout"] += 1


class EchoRole(Role):
    """echo: round trips through the target's ``echo`` route.

    Closed loop: each connection has one message in flight; the reader callback that gets a
    reply sends that connection's next message (no task per round trip).
    """

    readers = True

    async def run(self, start_ns: int, end_ns: int) -> None:
        self.start_ns, self.end_ns = start_ns, end_ns
        if self.spec.rate:
            await _paced(self.spec.rate, start_ns, end_ns, self._send_paced, self.lag_samples)
            await self._sleep_until(end_ns + int(self.spec.drain * 1e9))
            return
        self._closed = True
        for conn in self.conns:
            self._send_next(conn, _now())
        await self._sleep_until(end_ns + int(self.spec.drain * 1e9))
        late = _now() - int(_REPLY_TIMEOUT_S * 1e9)
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
            await asyncio.wait(tasks, timeout=(end_ns - _now()) / 1e9 + 2 * _REPLY_TIMEOUT_S)
            for task in tasks:
                task.cancel()
        await self._sleep_until(end_ns + int(spec.drain * 1e9))

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
                    await asyncio.wait_for(conn.waiter, _REPLY_TIMEOUT_S)
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

        await _paced(self.spec.rate or 1.0, start_ns, end_ns, fire, self.lag_samples)
        if tasks:
            await asyncio.wait(tasks, timeout=_REPLY_TIMEOUT_S * 2)


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
        await self._sleep_until(end_ns + int(self.spec.drain * 1e9))

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
            await _paced(self.spec.rate, start_ns, end_ns, self._fire, self.lag_samples)
        else:
            await self._closed_loop(end_ns)
        await self._sleep_until(end_ns + int(self.spec.drain * 1e9))

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
            give_up = _now() + int(_REPLY_TIMEOUT_S * 1e9)
            while seq - self._slowest() >= self._WINDOW and _now() < end_ns:
                if _now() > give_up:
                    self.errors["not_delivered"] += 1
                    break
                await asyncio.sleep(0.0005)
            seq += 1


ROLES: dict[str, type[Role]] = {
    "hold": HoldRole,
    "dial": DialRole,
    "echo": EchoRole,
    "unicast": UnicastRole,
    "listen": ListenRole,
    "publish": PublishRole,
}
"""Role name -> class, as named in :class:`WorkerSpec`."""
