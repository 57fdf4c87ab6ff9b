"""Usage plans end to end on one node (memory registry): real clients, real management calls.

Each status the plans add: the handshake's 429, AWS's throttled and quota frames on an open
socket, the management API's 429 LimitExceededException naming the limit, the usage endpoint,
the throttled metric; and one tenant's flood leaving another's latency and delivery alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import time
from typing import Any

import aiohttp
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support import connect, endpoint, jwt_section, make_config, running_node, token, whoami, ws_url
from wsgateway.node import Node

SMALL = {"name": "small", "tenants": ["p001", "p002"], "max_connections": 3, "messages_per_s": 5,
         "messages_burst": 10, "posts_per_s": 5, "posts_burst": 5, "quota_per_day": 0}
BIG = {"name": "big", "tenants": ["*"], "messages_per_s": 100_000, "messages_burst": 100_000,
       "posts_per_s": 100_000, "posts_burst": 100_000}


def plans_config(*plans: dict[str, Any], **sections: Any) -> Any:
    return make_config({"plans": list(plans or (SMALL, BIG)), **sections})


async def open_as(node: Node, tenant: str, **query: str) -> websockets.ClientConnection:
    return await connect(node, query={"tenant": tenant, **query})


async def refused_status(node: Node, **query: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        await websockets.connect(ws_url(node, **query), open_timeout=5)
    return caught.value.response.status_code


async def management(node: Node, method: str, path: str, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.request(method, endpoint(node) + path, data=body) as resp:
        return resp.status, dict(resp.headers), await resp.read()


async def test_connection_cap_refuses_the_handshake_with_429_and_frees_places_on_close() -> None:
    async with running_node(plans_config()) as node:
        clients = [await open_as(node, "p001") for _ in range(3)]
        assert await refused_status(node, tenant="p001") == 429
        other = await open_as(node, "p002")  # same plan, its own cap
        await clients[0].close()
        reopened = await _eventually_connect(node, "p001")
        assert await refused_status(node, tenant="p001") == 429
        rejected = await refused_status(node, tenant="p001")  # still full: $connect never ran
        assert rejected == 429
        for ws in (*clients[1:], other, reopened):
            await ws.close()


async def test_a_refused_tenant_is_logged_quoted(caplog: pytest.LogCaptureFixture) -> None:
    """The tenant is a client's text (``?tenant=`` with auth off, a token's claim): its 429
    line must not let a newline in it forge another log line."""
    one = {"name": "one", "tenants": ["*"], "max_connections": 1}
    async with running_node(plans_config(one)) as node:
        tenant = "t%0A2026-01-01 00:00:00,000 ERROR wsgateway FORGED".replace(" ", "%20")
        ws = await open_as(node, tenant)
        with caplog.at_level("INFO", logger="wsgateway"):
            assert await refused_status(node, tenant=tenant) == 429
        lines = [line for r in caplog.records for line in r.getMessage().splitlines()]
        assert any("FORGED" in line for line in lines)
        assert not [line for line in lines if line.startswith("2026-01-01")]
        await ws.close()


async def test_a_refused_connect_gives_its_place_back() -> None:
    plan = {**SMALL, "max_connections": 1}
    async with running_node(plans_config(plan)) as node:
        for _ in range(3):  # each $connect refusal (403) gives the place back
            assert await refused_status(node, tenant="p001", connect="403") == 403
        ws = await open_as(node, "p001")
        assert await refused_status(node, tenant="p001") == 429
        await ws.close()


async def test_per_principal_cap_counts_each_user_of_the_tenant() -> None:
    plan = {"name": "small", "tenants": ["practice-1"], "max_connections": 10, "max_connections_per_principal": 2}
    config = make_config({"plans": [plan]}, auth=jwt_section())
    async with running_node(config) as node:
        alice = [await connect(node, query={"token": token("alice")}) for _ in range(2)]
        assert await refused_status(node, token=token("alice")) == 429
        bob = await connect(node, query={"token": token("bob")})
        for ws in (*alice, bob):
            await ws.close()


async def test_throttled_message_gets_awss_frame_and_the_socket_stays_open() -> None:
    async with running_node(plans_config()) as node:
        ws = await open_as(node, "p001")
        connection_id = await whoami(ws)  # one token of ten
        for i in range(12):
            await ws.send(json.dumps({"action": "echo", "i": i}))
        replies = [await asyncio.wait_for(ws.recv(), 5) for _ in range(12)]
        echoed = [r for r in replies if '"i"' in r]
        throttled = [json.loads(r) for r in replies if r not in echoed]
        assert len(echoed) == 9 and len(throttled) == 3
        frame = throttled[0]
        assert frame["message"] == "Too Many Requests" and frame["connectionId"] == connection_id
        assert set(frame) == {"message", "connectionId", "requestId"}
        assert replies[-1].startswith('{"message": "Too Many Requests", "connectionId":"')  # AWS's spacing
        await asyncio.sleep(0.25)  # a token back
        await ws.send('{"action": "echo", "again": 1}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"action": "echo", "again": 1}
        await ws.close()


async def test_quota_sends_limit_exceeded_and_usage_reports_the_day() -> None:
    plan = {**SMALL, "messages_per_s": 1000, "messages_burst": 1000, "quota_per_day": 5}
    async with running_node(plans_config(plan)) as node:
        ws = await open_as(node, "p001")
        for i in range(4):
            await ws.send(f'{{"i": {i}}}')
            assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"i": i}
        status, _, _ = await management(node, "POST", "/@tenants/p001/messages", b"hi")
        assert status == 200
        assert await asyncio.wait_for(ws.recv(), 5) == "hi"
        await ws.send('{"i": 5}')
        frame = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert frame["message"] == "Limit Exceeded" and set(frame) == {"message", "connectionId", "requestId"}
        status, headers, body = await management(node, "POST", "/@tenants/p001/messages", b"hi")
        assert status == 429 and headers["x-amzn-ErrorType"] == "LimitExceededException"
        assert json.loads(body) == {"message": "Too Many Requests: tenant p001 used up its plan's quota_per_day"}
        status, _, body = await management(node, "GET", "/@tenants/p001/usage")
        assert status == 200
        assert json.loads(body) == {"plan": "small", "connections": 1, "messagesToday": 4, "postsToday": 1,
                                    "quotaPerDay": 5, "remainingToday": 0}
        await ws.close()


async def test_usage_of_a_tenant_without_a_quota_or_plan() -> None:
    async with running_node(plans_config(SMALL)) as node:
        ws = await open_as(node, "p002")
        await whoami(ws)
        await asyncio.sleep(0.7)  # one sync
        status, _, body = await management(node, "GET", "/@tenants/p002/usage")
        assert (status, json.loads(body)) == (200, {"plan": "small", "connections": 1, "messagesToday": 1,
                                                     "postsToday": 0, "quotaPerDay": 0, "remainingToday": None})
        status, _, body = await management(node, "GET", "/@tenants/nobody/usage")
        assert (status, json.loads(body)) == (200, {"plan": None, "connections": 0, "messagesToday": 0,
                                                     "postsToday": 0, "quotaPerDay": 0, "remainingToday": None})
        await ws.close()


async def test_management_posts_over_the_plan_get_429_naming_the_limit() -> None:
    async with running_node(plans_config()) as node:
        ws = await open_as(node, "p001")
        connection_id = await whoami(ws)
        statuses = [(await management(node, "POST", f"/@connections/{connection_id}", b"x"))[0] for _ in range(7)]
        assert statuses == [200] * 5 + [429] * 2
        status, headers, body = await management(node, "DELETE", f"/@connections/{connection_id}")
        assert status == 429 and headers["x-amzn-ErrorType"] == "LimitExceededException"
        assert json.loads(body) == {"message": "Too Many Requests: tenant p001 over its plan's posts_per_s"}
        status, _, _ = await management(node, "POST", "/@tenants/p001/messages", b"x")
        assert status == 429
        # another tenant's posts go through
        status, _, _ = await management(node, "POST", "/@tenants/p002/messages", b"x")
        assert status == 200
        status, _, metrics = await management(node, "GET", "/metrics")
        text = metrics.decode()
        assert 'wsgateway_throttled_total{kind="post",limit="posts_per_s",plan="small"} 4.0' in text
        assert "p001" not in text  # never a series per tenant
        await ws.close()


async def test_route_concurrency_and_per_connection_rate() -> None:
    config = make_config({"route_settings": {"slow": {"max_concurrency": 1}}},
                         limits={"messages_per_s_per_connection": 2, "messages_burst_per_connection": 3})
    async with running_node(config) as node:
        first, second = await open_as(node, "t"), await open_as(node, "t")
        await first.send('{"action": "slow"}')
        await asyncio.sleep(0.1)
        await second.send('{"action": "slow"}')
        frame = json.loads(await asyncio.wait_for(second.recv(), 5))
        assert frame["message"] == "Too Many Requests"
        await second.send('{"action": "echo"}')  # another route is not held up
        assert json.loads(await asyncio.wait_for(second.recv(), 5)) == {"action": "echo"}
        # second has used 2 of its 3 tokens: one more, then throttled
        await second.send('{"n": 1}')
        await second.send('{"n": 2}')
        assert json.loads(await asyncio.wait_for(second.recv(), 5)) == {"n": 1}
        assert json.loads(await asyncio.wait_for(second.recv(), 5))["message"] == "Too Many Requests"
        status, _, metrics = await management(node, "GET", "/metrics")
        assert status == 200
        assert 'wsgateway_throttled_total{kind="message",limit="max_concurrency",plan=""} 1.0' in metrics.decode()
        await first.close()
        await second.close()


async def test_one_tenants_flood_leaves_another_tenants_latency_and_delivery_alone() -> None:
    flooder_plan = {"name": "small", "tenants": ["flood"], "messages_per_s": 50, "messages_burst": 50,
                    "posts_per_s": 50, "posts_burst": 50}
    async with running_node(plans_config(flooder_plan, BIG)) as node:
        calm = await open_as(node, "calm")
        baseline = await _echo_latencies(calm, 200)
        floods = [await open_as(node, "flood") for _ in range(4)]
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_flood(ws, stop)) for ws in floods]
        posts = asyncio.create_task(_flood_posts(node, stop))
        await asyncio.sleep(0.3)
        during = await _echo_latencies(calm, 200)
        calm_posts = [(await management(node, "POST", "/@tenants/calm/messages", b"p"))[0] for _ in range(20)]
        delivered = [await asyncio.wait_for(calm.recv(), 5) for _ in range(20)]
        stop.set()
        flood_counts = await asyncio.gather(*tasks)
        flood_post_statuses = await posts
        assert len(during) == 200 and calm_posts == [200] * 20 and delivered == ["p"] * 20
        assert sum(throttled for _, throttled in flood_counts) > 0  # the flood did get 429s
        assert 429 in flood_post_statuses
        p99_before, p99_during = _p99(baseline), _p99(during)
        assert p99_during <= max(3 * p99_before, p99_before + 0.02), (p99_before, p99_during)
        closed = await asyncio.gather(*(_close_reading(ws) for ws in (calm, *floods)))
        assert closed == [1000] * 5


async def _eventually_connect(node: Node, tenant: str) -> websockets.ClientConnection:
    deadline = time.monotonic() + 5
    while True:
        try:
            return await open_as(node, tenant)
        except InvalidStatus:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.02)


async def _echo_latencies(ws: websockets.ClientConnection, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await ws.send(f'{{"i": {i}}}')
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"i": i}
        latencies.append(time.perf_counter() - started)
    return latencies


async def _flood(ws: websockets.ClientConnection, stop: asyncio.Event) -> tuple[int, int]:
    """Send as fast as replies come back; count echoes and throttled frames."""
    echoed = throttled = 0
    while not stop.is_set():
        await ws.send('{"f": 1}')
        reply = await asyncio.wait_for(ws.recv(), 5)
        if "Too Many Requests" in reply:
            throttled += 1
        else:
            echoed += 1
    return echoed, throttled


async def _flood_posts(node: Node, stop: asyncio.Event) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            async with http.post(endpoint(node) + "/@tenants/flood/messages", data=b"f") as resp:
                statuses.append(resp.status)
    return statuses


async def _close_reading(ws: websockets.ClientConnection) -> int | None:
    """Close, reading what still comes meanwhile: the flood's own posts to its tenant are still
    queued for the flood clients, who stopped reading, and a client that does not read never
    sees the node's close frame (its close waited out close_timeout, 10 s each, and ended 1006)."""

    async def read_out() -> None:
        with contextlib.suppress(ConnectionClosed):
            async for _ in ws:
                pass

    reading = asyncio.create_task(read_out())
    await ws.close()
    await reading
    return ws.close_code


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]
