"""Several gateway nodes as real processes on a private Redis, driven as users drive them:
websockets clients, boto3's ``apigatewaymanagementapi`` client against one node for a
connection on another, SIGKILL and SIGTERM of a node, and Redis going away under traffic.

Every test that takes ``cluster`` runs on each Redis deployment of
``tests.redis_topologies.TOPOLOGIES``: one Redis, under Sentinel, and a three-master Redis
Cluster; the outage tests on one Redis and on the cluster (under Sentinel an outage is a
failover: tests/test_cluster_failover.py); the slots moving under traffic on the cluster only.

Handlers (``tests.cluster_handlers``) append every ``$connect``/``$disconnect`` to a file,
since the nodes are other processes. Timings are scaled down: heartbeat 0.2 s, node TTL 1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.crc import key_slot
from websockets.exceptions import ConnectionClosed

from tests.cluster_support import (
    HEARTBEAT_S,
    NODE_TTL_S,
    Cluster,
    GatewayProcess,
    error_code,
    settled,
    tenant_listing,
    up_for,
    wait_until,
)
from tests.redis_topologies import DownAndBack, Topology
from tests.support import HS_SECRET, token
from tests.topology_cluster import PrivateRedisCluster

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
async def cluster(tmp_path: Path, topology: Topology, key_prefix: str) -> AsyncIterator[Cluster]:
    """Gateway processes on each Redis deployment (the `topology` fixture: single, Sentinel,
    Redis Cluster); all killed at the end."""
    running = Cluster(tmp_path, topology.url, key_prefix, registry_toml=topology.registry_toml())
    try:
        yield running
    finally:
        running.stop_all()


# ---------------------------------------------------------------- the tests


async def test_any_node_serves_any_connection(cluster: Cluster) -> None:
    node_a, node_b = await cluster.start_all("a", "b")
    await settled(node_b)
    on_a = [await node_a.connect("t1") for _ in range(2)]
    on_b = [await node_b.connect("t1")]
    api_b = node_b.management()
    ws, cid = on_a[0]
    api_b.post_to_connection(ConnectionId=cid, Data=b"from b")
    assert await asyncio.wait_for(ws.recv(), 5) == "from b"
    info = api_b.get_connection(ConnectionId=cid)
    assert info["Identity"]["SourceIp"] == "127.0.0.1"
    assert "LastActiveAt" in info and "ConnectedAt" in info

    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{node_b.endpoint}/@tenants/t1/messages", data=b"to all") as resp,
    ):
        assert resp.status == 200
        assert await resp.json() == {"delivered": 3, "unreachableNodes": 0}
    for client, _ in on_a + on_b:
        assert await asyncio.wait_for(client.recv(), 5) == "to all"
    assert await tenant_listing(node_b, "t1") == sorted(c for _, c in on_a + on_b)

    api_b.delete_connection(ConnectionId=cid)
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 5)
    assert ws.close_code == 1000
    assert error_code(api_b.post_to_connection, ConnectionId=cid, Data=b"x") == "GoneException"
    assert error_code(api_b.get_connection, ConnectionId=cid) == "GoneException"


async def test_posts_across_nodes_keep_their_order(cluster: Cluster) -> None:
    node_a, node_b = await cluster.start_all("a", "b")
    ws, cid = await node_a.connect()
    api_b = node_b.management()
    for i in range(100):
        api_b.post_to_connection(ConnectionId=cid, Data=str(i).encode())
    assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(100)] == [str(i) for i in range(100)]


async def test_pipelined_posts_across_nodes_are_answered_exactly_and_in_order(cluster: Cluster) -> None:
    """Pipelined posts to connections of another node run together (each waits for the
    owner's answer): still delivered in the order sent, each answered on its own (a 410 for
    an id no node holds among them), the answers in the order of the requests."""
    node_a, node_b = await cluster.start("a"), await cluster.start("b")
    ws, cid = await node_a.connect()
    nobody = f"{'x' * 16}.{node_a.node_id}"
    targets = [cid] * 30 + [nobody] + [cid] * 30
    bodies = [b"%d" % i for i in range(len(targets))]
    reader, writer = await asyncio.open_connection("127.0.0.1", node_b.management_port)
    writer.write(b"".join(
        b"POST /prod/@connections/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
        % (target.encode(), len(body), body) for target, body in zip(targets, bodies, strict=True)
    ))
    data = b""
    async with asyncio.timeout(10):
        while data.count(b"HTTP/1.1 ") < len(targets):
            chunk = await reader.read(65536)
            assert chunk, "the management connection closed"
            data += chunk
    writer.close()
    statuses = [int(part[:3]) for part in data.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [200] * 30 + [410] + [200] * 30
    delivered = [await asyncio.wait_for(ws.recv(), 5) for _ in range(60)]
    assert delivered == [b.decode() for t, b in zip(targets, bodies, strict=True) if t == cid]


async def test_killed_node_is_cleaned_up_once_with_1006(cluster: Cluster) -> None:
    nodes = await cluster.start_all("a", "b", "c")
    doomed, survivors = nodes[0], nodes[1:]
    clients = [await doomed.connect("t1") for _ in range(3)]
    ids = sorted(c for _, c in clients)
    await settled(survivors[0])
    assert await tenant_listing(survivors[0], "t1") == ids
    await up_for(NODE_TTL_S, *survivors)  # survivors sweep only after being up for node_ttl_s
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    def disconnects() -> list[dict[str, Any]]:
        return [e for e in cluster.events("$disconnect") if e["connectionId"] in ids]

    took = await wait_until(lambda: len(disconnects()) >= 3, NODE_TTL_S + 5, "orphan $disconnect")
    assert took <= NODE_TTL_S + 2 * HEARTBEAT_S + 1.5
    await asyncio.sleep(5 * HEARTBEAT_S)  # a second run would show up by now
    events = disconnects()
    assert sorted(e["connectionId"] for e in events) == ids  # exactly once each
    assert {e["disconnectStatusCode"] for e in events} == {1006}
    assert {e["pid"] for e in events} <= {n.process.pid for n in survivors}
    for node in survivors:
        api = node.management()
        for cid in ids:
            assert error_code(api.post_to_connection, ConnectionId=cid, Data=b"x") == "GoneException"
        assert await tenant_listing(node, "t1") == []
    for ws, _ in clients:
        with contextlib.suppress(Exception):
            await ws.close()


async def test_paused_node_is_swept_once_and_closes_its_clients_with_1012(cluster: Cluster) -> None:
    """A node paused (SIGSTOP) for ~3x node_ttl_s is declared dead: the survivor runs each of
    its connections' $disconnect once (1006). Resumed (SIGCONT), it closes those clients with
    1012 and runs no second $disconnect; it serves new connections, reachable from the other.
    A client that leaves during the pause gets no second $disconnect either."""
    paused, survivor = await cluster.start_all("a", "b")
    await settled(survivor)
    clients = [await paused.connect("t1") for _ in range(3)]
    leaver, leaver_id = await paused.connect("t1")
    ids = sorted([*(c for _, c in clients), leaver_id])
    ws_b, cid_b = await survivor.connect("t1")
    assert await tenant_listing(survivor, "t1") == sorted([*ids, cid_b])
    await up_for(NODE_TTL_S, survivor)  # the survivor sweeps only after being up for node_ttl_s

    def disconnects() -> list[dict[str, Any]]:
        return [e for e in cluster.events("$disconnect") if e["connectionId"] in ids]

    paused.process.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        leaver.transport.abort()  # the node sees it go when it resumes
        await wait_until(lambda: len(disconnects()) >= 4, NODE_TTL_S + 5, "orphan $disconnect")
        assert {(e["disconnectStatusCode"], e["pid"]) for e in disconnects()} == {(1006, survivor.process.pid)}
        await asyncio.sleep(max(0.0, 3 * NODE_TTL_S - (time.monotonic() - stopped_at)))  # the pause itself
    finally:
        paused.process.send_signal(signal.SIGCONT)
    for ws, _ in clients:
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1012

    ws_new, cid_new = await paused.connect("t1")
    api_a, api_b = paused.management(), survivor.management()
    async with asyncio.timeout(5):  # the resumed node has re-registered by its next beat
        while error_code(api_b.post_to_connection, ConnectionId=cid_new, Data=b"from b") != "200":
            await asyncio.sleep(0.05)
    assert await asyncio.wait_for(ws_new.recv(), 5) == "from b"
    api_a.post_to_connection(ConnectionId=cid_b, Data=b"from a")
    assert await asyncio.wait_for(ws_b.recv(), 5) == "from a"
    # Back from a pause, the node vouches for a miss once it has beaten twice since its last
    # failed beat; until then it answers 503 (retriable), never 200 and never a late delivery.
    async with asyncio.timeout(4 * HEARTBEAT_S + 2):
        for cid in ids:
            while (code := error_code(api_a.post_to_connection, ConnectionId=cid, Data=b"x")) != "GoneException":
                assert code == "ServiceUnavailableException"
                await asyncio.sleep(0.05)
    await settled(survivor)
    assert await tenant_listing(survivor, "t1") == sorted([cid_b, cid_new])

    await asyncio.sleep(5 * HEARTBEAT_S)  # a second $disconnect would show up by now
    events = disconnects()
    assert sorted(e["connectionId"] for e in events) == ids  # exactly once each
    assert {(e["disconnectStatusCode"], e["pid"]) for e in events} == {(1006, survivor.process.pid)}
    assert [e for e in cluster.events("$disconnect") if e["connectionId"] in (cid_b, cid_new)] == []
    for ws in (ws_new, ws_b):
        await ws.close()


async def test_terminated_node_is_gone_at_once(cluster: Cluster) -> None:
    node_a, node_b = await cluster.start_all("a", "b")
    clients = [await node_a.connect("t1") for _ in range(2)]
    api_b = node_b.management()
    api_b.post_to_connection(ConnectionId=clients[0][1], Data=b"warm")  # B caches the owner
    node_a.process.send_signal(signal.SIGTERM)
    assert node_a.process.wait(timeout=15) == 0
    for ws, cid in clients:
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
        assert error_code(api_b.post_to_connection, ConnectionId=cid, Data=b"x") == "GoneException"
    events = [e for e in cluster.events("$disconnect") if e["connectionId"] in {c for _, c in clients}]
    assert sorted(e["disconnectStatusCode"] for e in events) == [1001, 1001]
    assert {e["pid"] for e in events} == {node_a.process.pid}
    assert await tenant_listing(node_b, "t1") == []


async def test_redis_outage_under_traffic(tmp_path: Path, down_and_back: DownAndBack, key_prefix: str) -> None:
    cluster = Cluster(tmp_path, down_and_back.url, key_prefix)
    try:
        await _outage_scenario(cluster, down_and_back)
    finally:
        cluster.stop_all()


async def _outage_scenario(cluster: Cluster, redis_server: DownAndBack) -> None:
    node_a, node_b = await cluster.start_all("a", "b")
    await settled(node_b)
    (ws_a, cid_a), (ws_b, cid_b) = await node_a.connect(), await node_b.connect()
    api_a, api_b = node_a.management(), node_b.management()
    api_b.post_to_connection(ConnectionId=cid_a, Data=b"before")
    assert await asyncio.wait_for(ws_a.recv(), 5) == "before"

    await asyncio.to_thread(redis_server.kill)
    outage_started = time.monotonic()
    codes: set[str] = set()
    sent_local = 0
    ws_new, cid_new = await node_a.connect()  # accepted during the outage
    while time.monotonic() - outage_started < 3.0:  # the outage, under traffic
        api_a.post_to_connection(ConnectionId=cid_a, Data=b"local")  # same node: no Redis needed
        sent_local += 1
        codes.add(await asyncio.to_thread(error_code, api_b.post_to_connection, ConnectionId=cid_a, Data=b"x"))
        await ws_b.send('{"action": "whoami"}')  # clients keep talking to their own node
        assert await asyncio.wait_for(ws_b.recv(), 5) == cid_b
        await asyncio.sleep(0.1)
    assert codes == {"ServiceUnavailableException"}  # never GoneException, never delivered late
    assert [await asyncio.wait_for(ws_a.recv(), 5) for _ in range(sent_local)] == ["local"] * sent_local
    assert node_a.process.poll() is None and node_b.process.poll() is None

    await asyncio.to_thread(redis_server.start)  # back, and empty
    restarted = time.monotonic()
    async with asyncio.timeout(10):
        while error_code(api_b.post_to_connection, ConnectionId=cid_new, Data=b"after") != "200":
            await asyncio.sleep(0.05)
    assert time.monotonic() - restarted <= 4 * HEARTBEAT_S + 2
    assert await asyncio.wait_for(ws_new.recv(), 5) == "after"
    api_b.post_to_connection(ConnectionId=cid_a, Data=b"after")
    assert await asyncio.wait_for(ws_a.recv(), 5) == "after"
    await settled(node_b)
    assert await tenant_listing(node_b, "t1") == sorted([cid_a, cid_b, cid_new])
    assert list(cluster.events("$disconnect")) == []  # nobody was taken for dead


async def test_node_terminated_during_a_redis_outage_runs_every_disconnect_and_exits(
    tmp_path: Path, down_and_back: DownAndBack, key_prefix: str
) -> None:
    """SIGTERM while Redis is down: the node does not wait for Redis to decide who runs a
    $disconnect (the one of a client that left during the outage included); it runs them all
    itself and exits 0 well within its shutdown timeout."""
    cluster = Cluster(tmp_path, down_and_back.url, key_prefix)
    try:
        node = await cluster.start("a")
        (leaver, leaver_id), (stayer, stayer_id) = await node.connect(), await node.connect()
        await asyncio.to_thread(down_and_back.kill)
        await leaver.close()  # its $disconnect waits for Redis: a sweep may have claimed it
        await asyncio.sleep(0.5)
        assert [e for e in cluster.events("$disconnect") if e["connectionId"] == leaver_id] == []
        started = time.monotonic()
        node.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(node.process.wait, 15) == 0
        assert time.monotonic() - started < 4  # shutdown_timeout_s is 5: nothing waited on it
        with pytest.raises(ConnectionClosed):
            while True:
                await asyncio.wait_for(stayer.recv(), 5)
        assert stayer.close_code == 1001
        events = {e["connectionId"]: e["disconnectStatusCode"] for e in cluster.events("$disconnect")}
        assert events == {leaver_id: 1000, stayer_id: 1001}
    finally:
        cluster.stop_all()


_JWT_AUTH = f"""
[auth]
type = "jwt"
algorithms = ["HS256"]
secret = "{HS_SECRET}"
tenant_claim = "practice_id"
"""


async def fanout(node: GatewayProcess, path: str, data: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{node.endpoint}/@tenants/p1/{path}", data=data) as resp:
        return resp.status, await resp.json()


async def test_fanout_past_a_paused_node_says_who_it_missed(cluster: Cluster) -> None:
    """One node paused (SIGSTOP): a fan-out answers 207 with the connections reached and the
    node that did not answer, within the request deadline, for a tenant, a user and a group;
    503 when nobody got it. The paused node drops the requests it finds on waking: they are
    past their deadline, so its clients never get them late."""
    # node_ttl_s 30: the pause must not get the node declared dead (that is another test).
    paused, awake = await cluster.start_all("a", "b", extra=_JWT_AUTH, node_ttl_s=30)
    await settled(awake)
    alice_a, bob_a = await paused.connect(jwt=token("alice", "p1")), await paused.connect(jwt=token("bob", "p1"))
    alice_b, carol_b = await awake.connect(jwt=token("alice", "p1")), await awake.connect(jwt=token("carol", "p1"))
    async with aiohttp.ClientSession() as http:
        for _, cid in (bob_a, carol_b):
            async with http.put(f"{awake.endpoint}/@connections/{cid}/groups/desk") as resp:
                assert resp.status == 204
    status, body = await fanout(awake, "messages", b"warm")
    assert (status, body) == (200, {"delivered": 4, "unreachableNodes": 0})
    for ws, _ in (alice_a, bob_a, alice_b, carol_b):
        assert await asyncio.wait_for(ws.recv(), 5) == "warm"

    paused.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            fanout(awake, "messages", b"all"),
            fanout(awake, "users/alice/messages", b"alice"),
            fanout(awake, "groups/desk/messages", b"desk"),
            fanout(awake, "users/bob/messages", b"bob"),
        )
        took = time.monotonic() - started
    finally:
        paused.process.send_signal(signal.SIGCONT)
    partial = {"delivered": 1, "unreachableNodes": 1}  # one connection on b, node a missed
    assert answers[:3] == [(207, {"delivered": 2, "unreachableNodes": 1}), (207, partial), (207, partial)]
    assert answers[3][0] == 503 and list(answers[3][1]) == ["message"]  # bob is only on the paused node
    assert took < 2.0 + 2.0  # the request timeout (2 s), not the node TTL
    assert sorted([await asyncio.wait_for(alice_b[0].recv(), 5) for _ in range(2)]) == ["alice", "all"]
    assert sorted([await asyncio.wait_for(carol_b[0].recv(), 5) for _ in range(2)]) == ["all", "desk"]
    # Awake again, the paused node finds the four requests and drops them (past their
    # deadline): what b posts now, behind them on a's channel, is the first thing its clients get.
    api_b = awake.management()
    for ws, cid in (alice_a, bob_a):
        async with asyncio.timeout(5):
            while error_code(api_b.post_to_connection, ConnectionId=cid, Data=b"after") != "200":
                await asyncio.sleep(0.05)
        assert await asyncio.wait_for(ws.recv(), 5) == "after"
    for ws, _ in (alice_a, bob_a, alice_b, carol_b):
        await ws.close()


async def test_posts_keep_flowing_while_the_channels_slots_move(
    tmp_path: Path, private_redis_cluster: PrivateRedisCluster, key_prefix: str
) -> None:
    """Redis Cluster: the slots of both nodes' channels move to another master (as a reshard
    moves them) while node b posts to a client of node a. Each post answers 200 and is
    delivered once, or answers 503 and is not delivered; posts answer 200 again at once
    after each move, and the nodes stay subscribed where the slots are now."""
    cluster = Cluster(tmp_path, private_redis_cluster.url, key_prefix)
    try:
        node_a, node_b = await cluster.start_all("a", "b")
        await settled(node_b)
        ws, cid = await node_a.connect()
        api_b = node_b.management()
        slots = [key_slot(f"{key_prefix}:node:{{{n.node_id}}}".encode()) for n in (node_a, node_b)]
        answers: list[tuple[str, str]] = []
        numbers = itertools.count()

        async def post() -> None:
            data = str(next(numbers))
            answers.append((data, await asyncio.to_thread(error_code, api_b.post_to_connection,
                                                          ConnectionId=cid, Data=data.encode())))

        for _ in range(20):
            await post()
        for _ in range(2):
            for slot in slots:
                elsewhere = next(p for p in private_redis_cluster.ports if p != private_redis_cluster.port_of_slot(slot))
                moving = asyncio.create_task(asyncio.to_thread(private_redis_cluster.move_slot, slot, elsewhere))
                while not moving.done():
                    await post()
                await moving
                moved_at = time.monotonic()
                while (await asyncio.to_thread(error_code, api_b.post_to_connection, ConnectionId=cid,
                                               Data=b"probe")) != "200":
                    assert time.monotonic() - moved_at < 3 * HEARTBEAT_S + 2, "posts did not come back"
                    await asyncio.sleep(0.02)
                answers.append(("probe", "200"))
                for _ in range(10):
                    await post()
        codes = Counter(code for _, code in answers)
        assert set(codes) <= {"200", "ServiceUnavailableException"}, codes
        assert codes["ServiceUnavailableException"] <= 8, answers  # a short gap per move, if any
        received = []
        with contextlib.suppress(TimeoutError):
            while True:
                received.append(await asyncio.wait_for(ws.recv(), 1))
        delivered = [data for data, code in answers if code == "200"]
        assert sorted(r for r in received if r != "probe") == sorted(d for d in delivered if d != "probe")
        assert received.count("probe") >= delivered.count("probe")
        # The record's and the tenant's slots move too: the nodes' own slot tables are stale
        # now, and what MOVED tells them is followed.
        for key in (f"{key_prefix}:{{c:{cid}}}", f"{key_prefix}:{{t:t1}}:conns"):
            slot = key_slot(key.encode())
            private_redis_cluster.move_slot(slot, next(
                p for p in private_redis_cluster.ports if p != private_redis_cluster.port_of_slot(slot)))
        for node in (node_a, node_b):
            assert await tenant_listing(node, "t1") == [cid]
        await ws.close()
    finally:
        cluster.stop_all()
