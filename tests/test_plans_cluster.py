"""Usage plans across three ``wsgateway serve`` processes on a private Redis.

Caps are exact with handshakes racing on every node; a killed node's places stop counting
once it is swept; a message rate holds cluster-wide within 20%; a post throttled on the node
that holds the connection answers 429 naming the limit on the node that was asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import aiohttp
import pytest
import websockets
from botocore.exceptions import ClientError
from websockets.exceptions import InvalidStatus

from tests.cluster_support import HEARTBEAT_S, NODE_TTL_S, Cluster, GatewayProcess, settled, up_for

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def plan(**figures: object) -> str:
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in figures.items())
    return f'\n[[plans]]\nname = "small"\ntenants = ["t1"]\n{lines}\n'



async def try_connect(node: GatewayProcess, tenant: str = "t1") -> websockets.ClientConnection | int:
    """An open client, or the status that refused the handshake."""
    try:
        return await websockets.connect(f"ws://127.0.0.1:{node.port}/prod?tenant={tenant}", open_timeout=10)
    except InvalidStatus as exc:
        return exc.response.status_code


async def usage(node: GatewayProcess, tenant: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, http.get(f"{node.endpoint}/@tenants/{tenant}/usage") as resp:
        assert resp.status == 200
        body: dict[str, object] = await resp.json()
        return body


async def test_caps_are_exact_across_three_nodes_with_clients_racing(cluster: Cluster) -> None:
    nodes = await cluster.start_all("a", "b", "c", extra=plan(max_connections=5))
    results = await asyncio.gather(*(try_connect(node) for node in nodes for _ in range(6)))
    opened = [r for r in results if not isinstance(r, int)]
    assert len(opened) == 5
    assert sorted(r for r in results if isinstance(r, int)) == [429] * 13
    for node in nodes:
        assert (await usage(node, "t1"))["connections"] == 5
    await opened[0].close()
    async with asyncio.timeout(5):
        while (await usage(nodes[2], "t1"))["connections"] != 4:
            await asyncio.sleep(0.02)
    again = await try_connect(nodes[2])
    assert not isinstance(again, int)
    assert await try_connect(nodes[1]) == 429
    for ws in (*opened[1:], again):
        await ws.close()


async def test_a_killed_nodes_connections_stop_counting_after_the_sweep(cluster: Cluster) -> None:
    nodes = await cluster.start_all("a", "b", "c", extra=plan(max_connections=3))
    doomed, survivor = nodes[0], nodes[1]
    clients = [await try_connect(doomed) for _ in range(3)]
    assert all(not isinstance(c, int) for c in clients)
    await settled(survivor)
    assert await try_connect(survivor) == 429
    await up_for(NODE_TTL_S, *nodes[1:])  # survivors sweep only after being up for node_ttl_s
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    killed_at = time.monotonic()
    async with asyncio.timeout(NODE_TTL_S + 5):
        while (await usage(survivor, "t1"))["connections"] != 0:
            await asyncio.sleep(0.02)
    assert time.monotonic() - killed_at <= NODE_TTL_S + 2 * HEARTBEAT_S + 1.5
    fresh = [await try_connect(survivor) for _ in range(3)]
    assert all(not isinstance(c, int) for c in fresh)
    assert await try_connect(nodes[2]) == 429
    for ws in (*clients, *fresh):
        with contextlib.suppress(Exception):
            await ws.close()  # type: ignore[union-attr]


async def test_a_message_rate_holds_across_nodes_within_20_percent(cluster: Cluster) -> None:
    rate = 60
    nodes = await cluster.start_all("a", "b", "c", extra=plan(messages_per_s=rate, messages_burst=rate))
    clients = [await node.connect("t1") for node in nodes for _ in range(2)]
    echoed: list[float] = []
    stop = asyncio.Event()

    async def flood(ws: websockets.ClientConnection) -> None:
        while not stop.is_set():
            await ws.send('{"f": 1}')
            if "Too Many Requests" not in await asyncio.wait_for(ws.recv(), 5):
                echoed.append(time.monotonic())
            else:
                await asyncio.sleep(0.005)  # a client backing off a little, as SDKs do

    started = time.monotonic()
    tasks = [asyncio.create_task(flood(ws)) for ws, _ in clients]
    await asyncio.sleep(6.0)
    stop.set()
    await asyncio.gather(*tasks)
    # The first seconds hold the bursts and the shares settling; measure the steady state.
    steady = [t for t in echoed if started + 2.5 <= t < started + 5.5]
    measured = len(steady) / 3.0
    assert 0.8 * rate <= measured <= 1.2 * rate, measured
    for ws, _ in clients:
        await ws.close()


async def test_a_post_throttled_on_the_owning_node_answers_429_naming_the_limit(cluster: Cluster) -> None:
    nodes = await cluster.start_all("a", "b", extra=plan(posts_per_s=1, posts_burst=2))
    ws, connection_id = await nodes[0].connect("t1")
    await settled(nodes[1])
    api = nodes[1].management()
    api.post_to_connection(ConnectionId=connection_id, Data=b"1")
    api.post_to_connection(ConnectionId=connection_id, Data=b"2")
    with pytest.raises(ClientError) as caught:
        api.post_to_connection(ConnectionId=connection_id, Data=b"3")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert error["Error"]["Code"] == "LimitExceededException"
    assert error["Error"]["Message"] == "Too Many Requests: tenant t1 over its plan's posts_per_s"
    assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)] == ["1", "2"]
    await ws.close()


async def test_a_daily_quota_holds_across_nodes_overshooting_by_a_late_sync_at_most(cluster: Cluster) -> None:
    quota = 300
    extra = plan(messages_per_s=60, messages_burst=60, quota_per_day=quota)
    nodes = await cluster.start_all("a", "b", "c", extra=extra)
    clients = [await node.connect("t1") for node in nodes for _ in range(2)]  # whoami: 6 of the quota
    replies: dict[str, int] = {"echo": 0, "Too Many Requests": 0, "Limit Exceeded": 0}

    async def flood(ws: websockets.ClientConnection) -> None:
        deadline = time.monotonic() + 7.0
        while time.monotonic() < deadline:
            await ws.send('{"f": 1}')
            reply = await asyncio.wait_for(ws.recv(), 5)
            kind = next((k for k in ("Too Many Requests", "Limit Exceeded") if k in reply), "echo")
            replies[kind] += 1
            if kind != "echo":
                await asyncio.sleep(0.02)  # refused: do not starve the three nodes of CPU

    await asyncio.gather(*(flood(ws) for ws, _ in clients))
    used = replies["echo"] + len(clients)
    # The cluster overshoots by what the other nodes let through before their next sync
    # (docs/cluster.md), at this plan's 60 messages/s; on a machine whose cores also run six
    # flooding clients a sync may come late: a quarter of the quota is 1.25 s of the rate.
    assert quota <= used <= 1.25 * quota, replies
    assert replies["Limit Exceeded"] > 0
    await asyncio.sleep(1.0)  # every node's last counts synced
    report = await usage(nodes[0], "t1")
    assert report["messagesToday"] == used and report["remainingToday"] == 0 and report["quotaPerDay"] == quota
    for ws, _ in clients:
        await ws.close()
