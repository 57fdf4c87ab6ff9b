"""A cluster that is exact from its first second: real gateway processes on a private Redis.

- A brand-new cluster (nodes starting together, or one by one) answers exactly as soon as
  its nodes report ready (``/ready`` 200): 200 for live connections, complete tenant
  listings, 410 for an id no node holds, deletes that take.
- A rolling restart (each node SIGTERMed and replaced, under traffic) makes no node answer
  503.
- While Redis restarts empty under cross-node posts, a post answered 200 was delivered once
  and a post answered with an error was not delivered (the owner remembers its outcomes; the
  asker asks again once its links are back).

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
from pathlib import Path

import aiohttp
import pytest
from pytest_redis.executor import RedisExecutor
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from tests.cluster_support import (
    HEARTBEAT_S,
    Cluster,
    GatewayProcess,
    management_call,
    ready,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

# Every node of a new cluster waits this long at most before it reports ready: the time in
# which a node that held connections before a data loss would beat (two heartbeats), plus
# a loaded machine's slack.
READY_WITHIN_S = 2 * HEARTBEAT_S + 3.0
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


async def test_fresh_cluster_is_exact_once_ready(cluster: Cluster) -> None:
    """Three nodes start together on an empty Redis; clients connect before the nodes are
    ready; within 200 ms of every node answering /ready 200, every answer is exact."""
    nodes = list(await asyncio.gather(*(cluster.start(n) for n in ("a", "b", "c"))))
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


async def test_rolling_restart_under_traffic_answers_no_503(cluster: Cluster) -> None:
    """Each of three nodes is SIGTERMed and replaced in turn while backends post to live
    clients, list the tenant and post to closed ids through the nodes a load balancer would
    use (those answering /ready, until they are told to stop): no answer is a 503; every post
    answered 200 reaches its client; closed ids answer 410."""
    serving: list[GatewayProcess] = [await cluster.start(n) for n in ("a", "b", "c")]
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
                status = await management_call(http, "POST", f"{via.endpoint}/@connections/{cid}", b"x")
                assert status == 410, (cid, via.name, status)
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
            new = await cluster.start(f"{old.name}{i}")
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


async def test_posts_while_redis_restarts_empty_are_delivered_or_refused(
    tmp_path: Path, restartable_redis: RedisExecutor, key_prefix: str
) -> None:
    """Cross-node posts in flight while redis-server is killed and started again empty, three
    times: each post answered 200 reached its client exactly once, and each post answered
    with an error reached nobody (a backend that retries the 503 does not deliver twice)."""
    cluster = Cluster(tmp_path, f"redis://127.0.0.1:{restartable_redis.port}/0", key_prefix)
    try:
        owner, asker = await cluster.start("a"), await cluster.start("b")
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
        seq = itertools.count()
        stop = asyncio.Event()

        async def poster(http: aiohttp.ClientSession) -> None:
            while not stop.is_set():
                cid = random.choice(list(clients))
                data = f"{cid}:{next(seq)}"
                answers[data] = await management_call(http, "POST", f"{asker.endpoint}/@connections/{cid}", data.encode())
                if answers[data] != 200:
                    await asyncio.sleep(0.01)

        async with aiohttp.ClientSession() as http:
            workers = [asyncio.create_task(poster(http)) for _ in range(16)]
            for _ in range(3):
                await asyncio.sleep(0.7)
                restartable_redis.kill(sig=signal.SIGKILL)
                restartable_redis.start()
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*workers)
        await asyncio.sleep(0.5)
        for ws in clients.values():
            await ws.close()
        await asyncio.gather(*readers)
        assert set(answers.values()) <= {200, 503}, Counter(answers.values())
        assert Counter(answers.values())[503] > 0  # the restarts did hit posts in flight
        wrong = {d: (s, received[d]) for d, s in answers.items() if received[d] != (1 if s == 200 else 0)}
        assert wrong == {}
    finally:
        cluster.stop_all()
