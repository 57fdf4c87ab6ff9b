"""SIGHUP on a real ``wsgateway serve`` process: plans, route settings and allowed origins are
reloaded under traffic without dropping a connection; a bad file changes nothing."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import aiohttp
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.support import NodeProcess, node_process

BASE = """
[listen]
port = 0
[management]
port = 0
[log]
access_log = ""
[routes]
"$default" = "tests.handlers_for_tests:echo"
[limits]
close_timeout_s = 1
shutdown_timeout_s = 5
allowed_origins = [{origins}]
"""


def config(origins: str, plans: str) -> str:
    return BASE.format(origins=origins) + plans


BIG_PLAN = """
[[plans]]
name = "big"
tenants = ["t1"]
max_connections = 10
"""
SMALL_PLAN = """
[[plans]]
name = "small"
tenants = ["t1"]
max_connections = 1
[route_settings."$default"]
max_concurrency = 100
"""


async def open_client(node: NodeProcess, origin: str) -> websockets.ClientConnection:
    return await websockets.connect(f"ws://127.0.0.1:{node.port}/prod?tenant=t1", origin=origin,  # type: ignore[arg-type]
                                    open_timeout=5)


async def refused(node: NodeProcess, origin: str) -> int:
    with pytest.raises(InvalidStatus) as caught:
        await open_client(node, origin)
    return caught.value.response.status_code


async def plan_name(node: NodeProcess) -> object:
    url = f"http://127.0.0.1:{node.management_port}/prod/@tenants/t1/usage"
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert resp.status == 200
        return (await resp.json())["plan"]


async def traffic(ws: websockets.ClientConnection, stop: asyncio.Event) -> int:
    """Echo round trips until ``stop``; every one must come back (nothing dropped)."""
    sent = 0
    while not stop.is_set():
        await ws.send(json.dumps({"n": sent}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5)) == {"n": sent}
        sent += 1
        await asyncio.sleep(0.002)
    return sent


async def test_sighup_reloads_plans_and_origins_under_traffic(tmp_path: Path) -> None:
    a, b = '"https://a.example"', '"https://b.example"'
    async with node_process(tmp_path, config(a, BIG_PLAN)) as node:
        clients = [await open_client(node, "https://a.example") for _ in range(3)]
        assert await refused(node, "https://b.example") == 403
        stop = asyncio.Event()
        tasks = [asyncio.create_task(traffic(ws, stop)) for ws in clients]
        await asyncio.sleep(0.3)
        (tmp_path / "node.toml").write_text(config(b, SMALL_PLAN))
        node.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(5):
            while await plan_name(node) != "small":
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # traffic goes on across the reload
        # The tenant moved to a smaller plan: its three connections stay; new handshakes obey the cap.
        assert await refused(node, "https://b.example") == 429
        assert await refused(node, "https://a.example") == 403  # origins reloaded too
        # A bad file: logged, the old settings stay.
        (tmp_path / "node.toml").write_text(config(b, SMALL_PLAN + "\n[[plans]]\nname = \"x\"\ntenants = [\"t1\"]\n"))
        node.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(5):
            while "config not reloaded" not in node.log_text():
                await asyncio.sleep(0.02)
        assert "plans[1].tenants: 't1' is already in plan 'small'" in node.log_text()
        assert await plan_name(node) == "small"
        stop.set()
        counts = await asyncio.gather(*tasks)
        assert all(count > 10 for count in counts)
        for ws in clients:
            assert ws.close_code is None  # nothing was dropped
            await ws.close()
        assert node.process.returncode is None
