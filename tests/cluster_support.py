"""Gateway nodes as real processes on one private Redis, for the multi-node tests
(test_cluster.py, test_plans_cluster.py, test_authorizer.py): start, kill, pause, stop, and the
waits those tests share. The ``cluster`` fixture (conftest.py) hands out a :class:`Cluster`.
Timings are scaled down: heartbeat 0.2 s, node TTL 1 s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import websockets
from botocore.config import Config
from botocore.exceptions import ClientError
from websockets.asyncio.client import ClientConnection

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT_S = 0.2
NODE_TTL_S = 1.0
START_TIMEOUT_S = 30.0


@dataclass
class GatewayProcess:
    """One ``wsgateway serve`` process and what its ready file said."""

    name: str
    process: subprocess.Popen[bytes]
    node_id: str = ""
    port: int = 0
    management_port: int = 0
    ready_at: float = 0.0  # monotonic time of its ready file: its registry had beaten by then

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.management_port}/prod"

    def management(self) -> Any:
        """boto3's client for this node; no retries, so that each status is seen as sent;
        boto3's default read timeout (60 s), past a call held for its outcome (42 s)."""
        return boto3.client(
            "apigatewaymanagementapi", endpoint_url=self.endpoint, region_name="eu-west-1",
            aws_access_key_id="AKIDTEST", aws_secret_access_key="secret",
            config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
        )

    async def connect(self, tenant: str = "t1", *, jwt: str = "") -> tuple[ClientConnection, str]:
        """A websockets client on this node (``jwt``: with that token), and its connection id."""
        query = f"token={jwt}" if jwt else f"tenant={tenant}"
        ws = await websockets.connect(f"ws://127.0.0.1:{self.port}/prod?{query}", open_timeout=5)
        await ws.send('{"action": "whoami"}')
        return ws, str(await asyncio.wait_for(ws.recv(), 5))


class Cluster:
    """Starts gateway nodes on free ports, sharing one Redis and one event file."""

    def __init__(self, tmp_path: Path, redis_url: str, key_prefix: str, *, registry_toml: str = "") -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.registry_toml = registry_toml  # more [registry] lines: passwords
        self.key_prefix = key_prefix
        self.events_file = tmp_path / "events.jsonl"
        self.events_file.touch()
        self.nodes: list[GatewayProcess] = []

    async def start(
        self, name: str, *, extra: str = "", node_ttl_s: float = NODE_TTL_S, redis_url: str = ""
    ) -> GatewayProcess:
        """Start a node; ``extra`` is TOML appended to its config (tables not in _CONFIG);
        ``redis_url``: its own way to Redis (a ``RedisLink`` that slows or cuts it)."""
        config = self.tmp_path / f"{name}.toml"
        url = redis_url or self.redis_url
        config.write_text(
            _CONFIG.format(url=url, prefix=self.key_prefix, node_ttl_s=node_ttl_s) + self.registry_toml + extra
        )
        ready = self.tmp_path / f"{name}.ready.json"
        log = open(self.tmp_path / f"{name}.log", "wb")  # noqa: SIM115, ASYNC230 - lives with the process
        process = subprocess.Popen(
            [sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "WSGW_CLUSTER_EVENTS": str(self.events_file)},
        )
        node = GatewayProcess(name, process)
        self.nodes.append(node)
        async with asyncio.timeout(START_TIMEOUT_S):
            while not ready.exists():
                assert process.poll() is None, (self.tmp_path / f"{name}.log").read_text()
                await asyncio.sleep(0.05)
        info = json.loads(ready.read_text())
        node.node_id, node.port, node.management_port = info["node_id"], info["port"], info["management_port"]
        node.ready_at = time.monotonic()
        return node

    async def start_all(self, *names: str, extra: str = "", node_ttl_s: float = NODE_TTL_S) -> list[GatewayProcess]:
        """Start several nodes at once (as :meth:`start`); they come up together, as a deploy's do."""
        return list(await asyncio.gather(*(self.start(n, extra=extra, node_ttl_s=node_ttl_s) for n in names)))

    def events(self, route_key: str) -> list[dict[str, Any]]:
        lines = self.events_file.read_text().splitlines()
        return [e for e in map(json.loads, lines) if e["routeKey"] == route_key]

    def stop_all(self) -> None:
        for node in self.nodes:
            if node.process.poll() is None:
                node.process.kill()
            node.process.wait()


_CONFIG = """
[listen]
host = "127.0.0.1"
port = 0
ping_interval_s = 5
ping_timeout_s = 5

[management]
host = "127.0.0.1"
port = 0

[log]
access_log = ""

[routes]
"$connect" = "tests.cluster_handlers:on_connect"
"$disconnect" = "tests.cluster_handlers:on_disconnect"
"$default" = "tests.cluster_handlers:echo"
whoami = "tests.cluster_handlers:whoami"

[limits]
close_timeout_s = 1
shutdown_timeout_s = 5

[registry]
backend = "redis"
redis_url = "{url}"
key_prefix = "{prefix}"
heartbeat_s = 0.2
node_ttl_s = {node_ttl_s}
"""


async def up_for(seconds: float, *nodes: GatewayProcess) -> None:
    """Until each of ``nodes`` has been up for ``seconds`` (a node sweeps dead nodes only once
    it has been connected to Redis for node_ttl_s)."""
    await asyncio.sleep(max(0.0, seconds - (time.monotonic() - max(n.ready_at for n in nodes))))


async def wait_until(predicate: Any, timeout: float, what: str) -> float:
    """Poll ``predicate`` (sync) every 20 ms; return the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    return time.monotonic() - started


def error_code(call: Any, *args: Any, **kwargs: Any) -> str:
    """Call a boto3 method; return "200" or the error code it raised."""
    try:
        call(*args, **kwargs)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "200"


async def tenant_listing(node: GatewayProcess, tenant: str) -> list[str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{node.endpoint}/@tenants/{tenant}/connections?limit=1000") as resp,
    ):
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    return sorted(c["connectionId"] for c in body["connections"])


async def settled(node: GatewayProcess) -> None:
    """Until the node's registry vouches for misses (a new cluster takes two beats)."""
    async with aiohttp.ClientSession() as http, asyncio.timeout(10):
        while True:
            async with http.get(f"http://127.0.0.1:{node.management_port}/health") as resp:
                if (await resp.json())["registry"].get("settled"):
                    return
            await asyncio.sleep(0.05)


async def ready(node: GatewayProcess, timeout: float = 10) -> float:
    """Until the node's ``/ready`` answers 200 (what a load balancer waits for); the seconds
    it took."""
    started = time.monotonic()
    async with aiohttp.ClientSession() as http, asyncio.timeout(timeout):
        while True:
            async with http.get(f"http://127.0.0.1:{node.management_port}/ready") as resp:
                if resp.status == 200:
                    return time.monotonic() - started
            await asyncio.sleep(0.01)


async def management_call(http: aiohttp.ClientSession, method: str, url: str, data: bytes = b"") -> int:
    """One management request without boto3 (fast enough for timed windows); its status."""
    async with http.request(method, url, data=data) as resp:
        await resp.read()
        return resp.status
