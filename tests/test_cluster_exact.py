"""A cluster that is exact from its first second: real gateway processes on a private Redis.

- A brand-new cluster (nodes starting together, or one by one) answers exactly as soon as
  its nodes report ready (``/ready`` 200): 200 for live connections, complete tenant
  listings, 410 for an id no node holds, deletes that take.
- A rolling restart (each node SIGTERMed and replaced, under traffic) makes no node answer
  503.
- While Redis restarts empty under cross-node posts, a post answered 200 was delivered once
  and a post answered with an error was not delivered (the owner remembers its outcomes; the
  asker asks again once its links are back).

The fresh-cluster tests run on each topology (one Redis, Sentinel, Redis Cluster); the
restarts on one Redis and on Redis Cluster (under Sentinel a master going away is a
failover: tests/test_cluster_failover.py); the rolling restart on one Redis only, for the
CI budget (about 10 s a topology): nothing in it depends on where the records live.
Timings are scaled down as in ``cluster_support``: heartbeat 0.2 s, node TTL 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from pytest_redis.executor import RedisExecutor
from redis.crc import key_slot
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.cluster_support import (
    HEARTBEAT_S,
    Cluster,
    GatewayProcess,
    management_call,
    ready,
)
from tests.redis_topologies import TOPOLOGIES
from tests.topology_cluster import PrivateRedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]
# The `cluster` fixture on one Redis, under Sentinel, and on a three-master Redis Cluster.
ON_EACH_TOPOLOGY = pytest.mark.parametrize("redis_topology", TOPOLOGIES, indirect=True)

# Every node of a new cluster waits this long at most before it reports ready: the time in
# which a node that held connections before a data loss would beat (two heartbeats), plus
# a loaded machine's slack.
READY_WITHIN_S = 2 * HEARTBEAT_S + 3.0
_IN_FLIGHT_S = 0.5  # a post that took longer waited for Redis
WINDOW_S = 0.2  # what the fresh-cluster checks must fit in after the nodes report ready


async def _exact_window(
    nodes: list[GatewayProcess], clients: dict[str, tuple[ClientConnection, GatewayProcess]], victim: str
) -> None:
    """Post to every client, list, miss, and delete ``victim`` within WINDOW_S: every answer
    exact. ``victim`` is forgotten from ``clients``."""
    ids = list(clients)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()

        async def post(via: GatewayProcess, cid: str, data: bytes) -> int:
            return await management_call(http, "POST", f"{via.endpoint}/@connections/{cid}", data)

        async def listing(via: GatewayProcess) -> list[str]:
            async with http.get(f"{via.endpoint}/@tenants/t1/connections?limit=1000") as resp:
                assert resp.status == 200, await resp.text()
                return sorted(c["connectionId"] for c in (await resp.json())["connections"])

        # Each client is posted to from a node that does not hold it; every node lists.
        posts = [
            post(next(n for n in nodes if n is not owner), cid, f"hello {cid}".encode())
            for cid, (_, owner) in clients.items()
        ]
        results = await asyncio.gather(
            *posts,
            *(listing(n) for n in nodes),
            *(post(n, "bm9ib2R5LWhvbGRzLWl0", b"x") for n in nodes),  # an id no node holds
        )
        deleted = await management_call(http, "DELETE", f"{nodes[-1].endpoint}/@connections/{victim}")
        after = await asyncio.gather(*(post(n, victim, b"late") for n in nodes))
        took = time.monotonic() - started
    n = len(clients)
    assert results[:n] == [200] * n
    assert results[n : n + len(nodes)] == [sorted(ids)] * len(nodes)
    assert results[n + len(nodes) :] == [410] * len(nodes)
    assert (deleted, after) == (204, [410] * len(nodes))
    assert took <= WINDOW_S, f"the checks took {took:.3f}s"
    for cid, (ws, _) in clients.items():
        assert await asyncio.wait_for(ws.recv(), 5) == f"hello {cid}"
    ws, _ = clients.pop(victim)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)


@ON_EACH_TOPOLOGY
async def test_fresh_cluster_is_exact_once_ready(cluster: Cluster) -> None:
    """Three nodes start together on an empty Redis; clients connect before the nodes are
    ready; within 200 ms of every node answering /ready 200, every answer is exact."""
    nodes = await cluster.start_all("a", "b", "c")
    clients: dict[str, tuple[ClientConnection, GatewayProcess]] = {}
    for node in nodes:
        for _ in range(2):
            ws, cid = await node.connect("t1")
            clients[cid] = (ws, node)
    waits = await asyncio.gather(*(ready(n, READY_WITHIN_S) for n in nodes))
    assert max(waits) <= READY_WITHIN_S
    await _exact_window(nodes, clients, next(iter(clients)))
    for ws, _ in clients.values():
        await ws.close()


@ON_EACH_TOPOLOGY
async def test_nodes_started_one_by_one_are_exact_once_ready(cluster: Cluster) -> None:
    """The first node of a new cluster reports ready after at most two heartbeats; each node
    that joins a settled cluster reports ready at its first beat, and is exact at once."""
    clients: dict[str, tuple[ClientConnection, GatewayProcess]] = {}
    nodes: list[GatewayProcess] = []
    for name in ("a", "b", "c"):
        node = await cluster.start(name)
        took = await ready(node, READY_WITHIN_S)
        if nodes:
            assert took <= 1.0  # a join: no settling (a loaded machine's slack only)
        nodes.append(node)
        for _ in range(2):
            ws, cid = await node.connect("t1")
            clients[cid] = (ws, node)
        if len(nodes) >= 2:
            await _exact_window(nodes, clients, cid)
    for ws, _ in clients.values():
        await ws.close()


ROLLING_TTL_S = 3.0


async def test_rolling_restart_under_traffic_answers_no_503(cluster: Cluster) -> None:
    """Each of three nodes is SIGTERMed and replaced in turn while backends post to live
    clients, list the tenant and post to closed ids through the nodes a load balancer would
    use (those answering /ready, until they are told to stop): no answer is a 503; every post
    answered 200 reaches its client; closed ids answer 410.

    The nodes run a 3 s ``node_ttl_s``: what is checked is joining and leaving, not a node
    starved past its death line by a loaded machine (a 503 then is the truth)."""
    serving: list[GatewayProcess] = await cluster.start_all("a", "b", "c", node_ttl_s=ROLLING_TTL_S)
    await asyncio.gather(*(ready(n, READY_WITHIN_S) for n in serving))
    live: dict[str, ClientConnection] = {}
    received: Counter[str] = Counter()
    closed: set[str] = set()
    codes: Counter[tuple[str, int]] = Counter()
    delivered: list[tuple[str, bytes]] = []

    async def reader(cid: str, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                received[f"{cid}|{message!s}"] += 1
        live.pop(cid, None)
        closed.add(cid)

    readers: list[asyncio.Task[None]] = []

    async def connect(node: GatewayProcess, count: int) -> None:
        for _ in range(count):
            ws, cid = await node.connect("t1")
            live[cid] = ws
            readers.append(asyncio.create_task(reader(cid, ws)))

    for node in serving:
        await connect(node, 3)
    stop = asyncio.Event()
    seq = itertools.count()

    async def traffic(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            via = random.choice(serving)
            kind = random.choice(("post", "post", "list", "closed"))
            if kind == "post" and live:
                cid = random.choice(list(live))
                data = f"m{next(seq)}".encode()
                status = await management_call(http, "POST", f"{via.endpoint}/@connections/{cid}", data)
                if status == 200:
                    delivered.append((cid, data))
            elif kind == "list":
                status = await management_call(http, "GET", f"{via.endpoint}/@tenants/t1/connections")
            elif closed:
                cid = random.choice(list(closed))
                async with http.post(f"{via.endpoint}/@connections/{cid}", data=b"x") as resp:
                    status, body = resp.status, await resp.read()
                assert status == 410, (cid, via.name, status, body, time.time())
            else:
                continue
            codes[(kind, status)] += 1

    async with aiohttp.ClientSession() as http:
        workers = [asyncio.create_task(traffic(http)) for _ in range(4)]
        for i, old in enumerate(list(serving)):
            await asyncio.sleep(0.5)
            serving.remove(old)  # the load balancer stops sending to it first
            old.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(old.process.wait, 15) == 0
            new = await cluster.start(f"{old.name}{i}", node_ttl_s=ROLLING_TTL_S)
            await ready(new, READY_WITHIN_S)
            serving.append(new)
            await connect(new, 3)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*workers)
    assert not [k for k in codes if k[1] == 503], codes
    assert codes[("post", 200)] > 50 and codes[("list", 200)] > 20 and codes[("closed", 410)] > 20, codes
    assert set(codes) <= {("post", 200), ("post", 410), ("list", 200), ("closed", 410)}, codes
    for ws in list(live.values()):
        await ws.close()
    await asyncio.gather(*readers)
    for cid, data in delivered:
        assert received[f"{cid}|{data.decode()}"] == 1, (cid, data)


async def _posts_while_restarting(
    cluster: Cluster, restarts: list[Callable[[GatewayProcess], None]], after_s: float
) -> None:
    """Sixteen posters on node b to four clients of node a; each of ``restarts`` (run in a
    thread, given the owner) after 0.7 s of traffic; ``after_s`` more of traffic. Then: every
    post answered 200 reached its client exactly once, every post answered with an error
    reached nobody, and some posts were refused or waited out the restart (it hit them)."""
    owner, asker = await cluster.start_all("a", "b")
    await ready(owner, READY_WITHIN_S)
    await ready(asker, READY_WITHIN_S)
    clients = {cid: ws for ws, cid in [await owner.connect("t1") for _ in range(4)]}
    received: Counter[str] = Counter()

    async def reader(ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                received[str(message)] += 1

    readers = [asyncio.create_task(reader(ws)) for ws in clients.values()]
    answers: dict[str, int] = {}
    waited: list[int] = []  # the answers of posts that were in flight while Redis was away
    seq = itertools.count()
    stop = asyncio.Event()

    async def poster(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            cid = random.choice(list(clients))
            data = f"{cid}:{next(seq)}"
            started = time.monotonic()
            answers[data] = await management_call(http, "POST", f"{asker.endpoint}/@connections/{cid}", data.encode())
            if time.monotonic() - started > _IN_FLIGHT_S:
                waited.append(answers[data])
            if answers[data] != 200:
                await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as http:
        workers = [asyncio.create_task(poster(http)) for _ in range(16)]
        for restart in restarts:
            await asyncio.sleep(0.7)
            await asyncio.to_thread(restart, owner)
        await asyncio.sleep(after_s)
        stop.set()
        await asyncio.gather(*workers)
    await asyncio.sleep(0.5)
    for ws in clients.values():
        await ws.close()
    await asyncio.gather(*readers)
    assert set(answers.values()) <= {200, 503}, Counter(answers.values())
    # The restarts did hit posts (refused at once, or held while Redis was away and then
    # answered either way: if every post in flight was held, none was refused).
    assert Counter(answers.values())[503] + len(waited) > 0
    wrong = {d: (s, received[d]) for d, s in answers.items() if received[d] != (1 if s == 200 else 0)}
    assert wrong == {}


async def test_posts_while_redis_restarts_empty_are_delivered_or_refused(
    tmp_path: Path, restartable_redis: RedisExecutor, key_prefix: str
) -> None:
    """Cross-node posts in flight while redis-server is killed and started again empty, three
    times: each post answered 200 reached its client exactly once, and each post answered
    with an error reached nobody (a backend that retries the 503 does not deliver twice).
    Under Sentinel the master going away is a failover (tests/test_cluster_failover.py)."""

    def restart(_owner: GatewayProcess) -> None:
        restartable_redis.kill(sig=signal.SIGKILL)
        restartable_redis.start()

    cluster = Cluster(tmp_path, f"redis://127.0.0.1:{restartable_redis.port}/0", key_prefix)
    try:
        await _posts_while_restarting(cluster, [restart] * 3, after_s=2.0)
    finally:
        cluster.stop_all()


@pytest.mark.parametrize("pubsub_when_down", ["yes", "no"])
async def test_posts_while_redis_cluster_masters_restart_empty_are_delivered_or_refused(
    tmp_path: Path, request: pytest.FixtureRequest, key_prefix: str, pubsub_when_down: str
) -> None:
    """As above on a three-master Redis Cluster: first the master serving the owner's
    channel, then every master, SIGKILLed and started again empty (from their nodes.conf).
    A restarted master refuses key commands (CLUSTERDOWN) for 2 s after it is back (Redis's
    CLUSTER_WRITABLE_DELAY), but serves sharded pub/sub at once (Redis's default
    ``cluster-allow-pubsubshard-when-down yes``): the node-to-node channels are back as soon
    as the process is, as on one Redis, and the asks reach the owner within the call's
    timeout. (Were SPUBLISH refused too, a refused ask does not count as asked: the asker
    holds the call, see docs/cluster.md.) ``no``, on a cluster of the test's own: the asks
    are refused for those 2 s, longer than the second between a call's deadline and its
    timeout, and the asker holds its calls until Redis takes them. The session's cluster is
    up again at the end (each restart waits for it)."""
    own = pubsub_when_down == "no"
    redis_cluster: PrivateRedisCluster
    if own:
        redis_cluster = PrivateRedisCluster(tmp_path / "redis", options=("--cluster-allow-pubsubshard-when-down", "no"))
        redis_cluster.start()
    else:
        redis_cluster = request.getfixturevalue("private_redis_cluster")

    def owner_master(owner: GatewayProcess) -> None:
        slot = key_slot(f"{key_prefix}:node:{{{owner.node_id}}}".encode())
        redis_cluster.restart_master(redis_cluster.port_of_slot(slot))

    def every_master(_owner: GatewayProcess) -> None:
        redis_cluster.kill()
        redis_cluster.restart()

    cluster = Cluster(tmp_path, redis_cluster.url, key_prefix)
    try:
        restarts = [every_master] if own else [owner_master, every_master]  # own: 2 s of refused asks each
        await _posts_while_restarting(cluster, restarts, after_s=1.0)
    finally:
        cluster.stop_all()
        if own:
            redis_cluster.stop()
        elif not redis_cluster.running:
            redis_cluster.restart()
