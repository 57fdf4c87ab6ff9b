"""A soak under chaos: three gateway processes on one private redis-server, backends posting
to clients on every node through every node, clients coming and going, while nodes are
killed (SIGKILL) and replaced, paused (SIGSTOP/SIGCONT, shorter and longer than the node
TTL), and Redis is restarted empty or flushed (FLUSHALL). At the end:

- every post answered 200 to a client that is still connected reached it exactly once
  (and no post reached a client twice);
- no post answered with an error reached anyone;
- no connection still open at the end was ever answered 410;
- every connection a client got an id for ran its ``$disconnect`` exactly once.

A second soak runs the same on Redis under Sentinel (a master, a replica, three Sentinels),
where the master is SIGKILLed (Sentinel promotes the replica; the old master comes back,
empty, as its replica) or demoted while it runs (``SENTINEL FAILOVER``) between the nodes'
chaos, with the same checks at the end.

Its length is a parameter: ``WSGW_SOAK_S`` seconds of chaos. By default the soak on one Redis
goes once through its cycle of chaos events (each kind at least once: ~25 s of chaos) and the
one under Sentinel runs 20 s (the first three or four of its events); the suite's runs take
about 35 s each. A longer run by hand (at least one whole cycle, then until the time is up)::

    WSGW_SOAK_S=600 python -m pytest -q -p no:cacheprovider tests/test_soak.py

Timings are scaled down as in ``cluster_support``: heartbeat 0.2 s, node TTL 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp
import pytest
import redis
from pytest_redis.executor import RedisExecutor
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.cluster_support import NODE_TTL_S, Cluster, GatewayProcess, ready, wait_until
from tests.redis_topologies import SentinelTopology

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SOAK_S = float(os.environ.get("WSGW_SOAK_S", "0"))  # 0: once through the cycle of chaos events
SENTINEL_SOAK_S = float(os.environ.get("WSGW_SOAK_S", "20"))  # failovers are slow: fewer rounds in the suite
# Under Sentinel the node TTL must outlast a demoted master: nodes write to it until their
# next check of the Sentinels (2 s, the request timeout), and those beats are lost; with a
# shorter TTL the new master shows every node past its death line (docs/cluster.md).
SENTINEL_NODE_TTL_S = 3.0
CLIENTS_PER_NODE = 4
POSTERS = 8
# After each chaos event the cluster gets this long (plus the node TTL) before the next one: a
# dead node's sweep (node TTL plus a beat) ends before Redis may lose its data (a node that
# dies while Redis has lost its data loses its $disconnect calls: see docs/cluster.md, "Limits").
SPACING_S = 1.5


@dataclass
class Client:
    cid: str
    ws: ClientConnection
    node: GatewayProcess
    received: Counter[str] = field(default_factory=Counter)
    open: bool = True
    closed_at: float = float("inf")  # when the test closed it (monotonic); inf: not by the test
    ended_by_server: bool = False  # its node died, or closed it (swept after a long pause)

    async def close(self) -> None:
        if self.open and self.closed_at == float("inf"):
            self.closed_at = time.monotonic()
            with contextlib.suppress(Exception):
                await self.ws.close()


class RedisChaos(Protocol):
    """What the soak does to the Redis deployment, between what it does to the nodes."""

    def describe(self) -> str:
        """What happened, for the soak's summary line."""

    async def run(self, event: str) -> None:
        """Do ``event`` to Redis and return once it is done."""


@dataclass
class OneRedis:
    """One redis-server: restarted empty, or flushed."""

    server: RedisExecutor

    def describe(self) -> str:
        return "one Redis"

    async def run(self, event: str) -> None:
        if event == "redis restart":
            self.server.kill(sig=signal.SIGKILL)  # no save: it comes back empty
            self.server.start()
        elif event == "flushall":
            redis.Redis(port=self.server.port).flushall()


@dataclass
class Sentinels:
    """Redis under Sentinel: the master killed, or demoted while it runs."""

    topology: SentinelTopology
    promotions: list[tuple[str, float]] = field(default_factory=list)  # (event, seconds to the promotion)

    def describe(self) -> str:
        return "Sentinel, promoted in " + ", ".join(f"{s:.1f} s ({e})" for e, s in self.promotions)

    async def run(self, event: str) -> None:
        if event == "master killed":
            self.promotions.append((event, await self.topology.kill_master()))
        elif event == "master demoted":
            self.promotions.append((event, await self.topology.demote_master()))


@dataclass
class Soak:
    cluster: Cluster
    redis_chaos: RedisChaos
    node_ttl_s: float = NODE_TTL_S
    serving: list[GatewayProcess] = field(default_factory=list)  # running and not paused
    clients: dict[str, Client] = field(default_factory=dict)
    # (client, payload, status, asked at, answered at): monotonic times
    answers: list[tuple[str, str, int, float, float]] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    seq: itertools.count[int] = field(default_factory=itertools.count)
    names: itertools.count[int] = field(default_factory=itertools.count)
    events: Counter[str] = field(default_factory=Counter)
    killed_at: dict[str, float] = field(default_factory=dict)  # node name -> when (monotonic)
    asked_via: dict[str, str] = field(default_factory=dict)  # payload -> node the post went to
    paused: list[tuple[str, float, float]] = field(default_factory=list)  # (node name, from, to)

    async def start_node(self) -> GatewayProcess:
        node = await self.cluster.start(f"n{next(self.names)}", node_ttl_s=self.node_ttl_s)
        await ready(node, 30)
        self.serving.append(node)
        for _ in range(CLIENTS_PER_NODE):
            await self.connect(node)
        return node

    async def connect(self, node: GatewayProcess) -> None:
        # A node killed mid-handshake fails it as a TCP error, a close, a timeout, or an
        # answer that is not one (InvalidHandshake): the chaos, not a gateway fault.
        with contextlib.suppress(OSError, ConnectionClosed, TimeoutError, InvalidHandshake):
            ws, cid = await node.connect("t1")
            client = self.clients[cid] = Client(cid, ws, node)
            self.readers.append(asyncio.create_task(self._read(client)))

    async def _read(self, client: Client) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in client.ws:
                client.received[str(message)] += 1
        client.open = False
        client.ended_by_server = client.closed_at == float("inf")

    async def post(self, http: aiohttp.ClientSession) -> None:
        if not self.serving or not self.clients:
            await asyncio.sleep(0.05)
            return
        via = random.choice(self.serving)
        open_ids = [c.cid for c in self.clients.values() if c.open]
        cid = random.choice(open_ids if open_ids and random.random() < 0.9 else list(self.clients))
        data = f"p{next(self.seq)}"
        asked = time.monotonic()
        self.asked_via[data] = via.name
        try:
            async with http.post(f"{via.endpoint}/@connections/{cid}", data=data.encode()) as resp:
                await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError):
            return  # no answer (the node died under the call): nothing to check
        self.answers.append((cid, data, status, asked, time.monotonic()))
        if status != 200:
            await asyncio.sleep(0.02)

    async def churn(self) -> None:
        """A client leaves (normal close) and another one comes, on a serving node."""
        open_clients = [c for c in self.clients.values() if c.open]
        if open_clients:
            await random.choice(open_clients).close()
        if self.serving:
            await self.connect(random.choice(self.serving))

    async def chaos(self, event: str) -> None:
        self.events[event] += 1
        if event == "kill":
            victim = random.choice(self.serving)
            self.serving.remove(victim)
            self.killed_at[victim.name] = time.monotonic()
            victim.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(victim.process.wait)
            await self.start_node()
        elif event in ("pause", "long pause"):
            victim = random.choice(self.serving)
            self.serving.remove(victim)
            stopped = time.monotonic()
            victim.process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(self.node_ttl_s / 2 if event == "pause" else 2.5 * self.node_ttl_s)
            victim.process.send_signal(signal.SIGCONT)
            self.paused.append((victim.name, stopped, time.monotonic()))
            self.serving.append(victim)
        else:
            await self.redis_chaos.run(event)


@pytest.mark.timeout(max(SOAK_S, 30) + 100)  # the suite's per-test limit, past the soak's own length
async def test_soak_under_chaos(tmp_path: Path, restartable_redis: RedisExecutor, key_prefix: str) -> None:
    cluster = Cluster(tmp_path, f"redis://127.0.0.1:{restartable_redis.port}/0", key_prefix)
    soak = Soak(cluster, OneRedis(restartable_redis))
    try:
        cycle = ["kill", "redis restart", "pause", "flushall", "long pause", "kill"]
        await _run(soak, cycle, SOAK_S, at_least=len(cycle))
    finally:
        cluster.stop_all()


@pytest.mark.timeout(SENTINEL_SOAK_S + 100)
async def test_soak_under_chaos_with_sentinel_failovers(
    tmp_path: Path, failing_over: SentinelTopology, key_prefix: str
) -> None:
    await failing_over.wait_ready()
    cluster = Cluster(tmp_path, failing_over.url, key_prefix, registry_toml=failing_over.registry_toml())
    soak = Soak(cluster, Sentinels(failing_over), SENTINEL_NODE_TTL_S)
    try:
        await _run(soak, ["kill", "master killed", "master demoted", "pause", "master killed", "long pause",
                          "master demoted"], SENTINEL_SOAK_S)
    finally:
        cluster.stop_all()


async def _run(soak: Soak, cycle: list[str], seconds: float, at_least: int = 0) -> None:
    """``seconds`` of chaos, and ``at_least`` chaos events, from ``cycle`` in turn; then the checks."""
    for _ in range(3):
        await soak.start_node()
    stop = asyncio.Event()

    async def posting(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            await soak.post(http)

    async def churning() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.3)
            await soak.churn()

    timeout = aiohttp.ClientTimeout(total=60)  # past a call held for its outcome (2 s + outcome_wait_s)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        workers = [asyncio.create_task(posting(http)) for _ in range(POSTERS)]
        workers.append(asyncio.create_task(churning()))
        events = itertools.cycle(cycle)
        started = time.monotonic()
        while time.monotonic() - started < seconds or soak.events.total() < at_least:
            await asyncio.sleep(soak.node_ttl_s + SPACING_S)
            await soak.chaos(next(events))
        seconds = time.monotonic() - started
        await asyncio.sleep(soak.node_ttl_s + SPACING_S)
        stop.set()
        await asyncio.gather(*workers)

    # Quiet now: every client leaves; every connection's $disconnect runs somewhere.
    await asyncio.sleep(1.0)
    for client in soak.clients.values():
        await client.close()
    await asyncio.gather(*soak.readers)
    ids = set(soak.clients)
    # A node killed between a client's close and that connection's $disconnect loses it
    # (docs/cluster.md, "Limits"): the connections the test closed just before their node
    # was killed may have none (never two).
    may_lose = {c.cid for c in soak.clients.values() if 0 <= soak.killed_at.get(c.node.name, -9) - c.closed_at < 1.0}

    def disconnected() -> Counter[str]:
        return Counter(e["connectionId"] for e in soak.cluster.events("$disconnect") if e["connectionId"] in ids)

    try:
        await wait_until(lambda: ids - may_lose <= set(disconnected()), 20, "every $disconnect")
    except TimeoutError:
        raise AssertionError(f"no $disconnect for {ids - may_lose - set(disconnected())}") from None
    await asyncio.sleep(1.0)  # a second run would show by now
    _check(soak, disconnected(), seconds)


def _check(soak: Soak, disconnected: Counter[str], seconds: float) -> None:
    answers, clients = soak.answers, soak.clients
    statuses = Counter(status for *_, status, _, _ in answers)
    held = Counter(status for _, _, status, asked, answered in answers if answered - asked > 2.1)
    print(f"soak: {seconds:.0f}s on {soak.redis_chaos.describe()}, {len(answers)} posts {dict(statuses)}"
          f" ({dict(held)} answered past the 2 s timeout), chaos {dict(soak.events)}, {len(clients)} clients")
    assert set(statuses) <= {200, 410, 503}, statuses
    assert statuses[200] > 0.5 * len(answers), statuses  # most posts go to open clients
    received: Counter[str] = Counter()
    for client in clients.values():
        received.update(client.received)
    assert [d for d, n in received.items() if n > 1] == []  # nothing arrived twice
    # Where it cannot hold: the owner dies, or is stopped for longer than the caller waits,
    # right after delivering, before its reply leaves (docs/cluster.md, "Outcomes").
    delivered_errors = [a for a in answers if a[2] != 200 and received[a[1]] and not _owner_stopped(soak, a)]
    assert delivered_errors == [], ("error answer delivered", delivered_errors[:5], _about(soak, delivered_errors))
    # A client the test closed was live until then: each 200 answered before reached it once
    # and it was never answered 410. (A client whose node was killed may lose what that node
    # accepted a moment before it died; one swept during a long pause is gone for the cluster.)
    live_until = {c.cid: c.closed_at for c in clients.values() if not c.ended_by_server}
    # (A 200 is the owner's queue taking the message: one answered just before the client
    # closed may still have been on its way out.)
    missed = [a for a in answers if a[2] == 200 and a[4] < live_until.get(a[0], 0) - 0.5 and received[a[1]] != 1]
    assert missed == [], ("200 not delivered", missed[:5], _about(soak, missed))
    # (A node paused past the node TTL is declared dead: from then on its clients are gone
    # for the cluster, though they hear of it only when it wakes and closes them with 1012.)
    false_gone = [a for a in answers if a[2] == 410 and a[4] < live_until.get(a[0], 0) and not _swept_before(soak, a)]
    assert false_gone == [], ("410 for a live connection", false_gone[:5], _about(soak, false_gone))
    assert {cid: n for cid, n in disconnected.items() if n != 1} == {}  # every $disconnect exactly once


def _about(soak: Soak, answers: list[tuple[str, str, int, float, float]]) -> list[str]:
    """What the test knew about the clients of ``answers``, for a failure's message."""
    out = []
    for cid, data, *_ in answers[:5]:
        c = soak.clients[cid]
        out.append(
            f"{data} via {soak.asked_via[data]} to {cid} on {c.node.name} closed_at={c.closed_at} "
            f"by_server={c.ended_by_server} code={c.ws.close_code}"
        )
    return [*out, f"kills {soak.killed_at}", f"pauses {soak.paused}"]


def _owner_stopped(soak: Soak, answer: tuple[str, str, int, float, float]) -> bool:
    """Whether the node holding the answer's client was killed, or paused for longer than
    the request timeout (2 s), while the call ran."""
    node = soak.clients[answer[0]].node.name
    if answer[3] <= soak.killed_at.get(node, -1.0) <= answer[4]:
        return True
    return any(
        name == node and to - since > 2.0 and since < answer[4] and to > answer[3] for name, since, to in soak.paused
    )


def _swept_before(soak: Soak, answer: tuple[str, str, int, float, float]) -> bool:
    """Whether the node holding the answer's client began a pause longer than the node TTL
    before the answer came."""
    node = soak.clients[answer[0]].node.name
    return any(name == node and to - since > soak.node_ttl_s and since < answer[4] for name, since, to in soak.paused)
