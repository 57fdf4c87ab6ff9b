"""`wsgateway serve --workers N`: N node processes sharing both ports, one Redis registry."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import pytest
import redis
import websockets
from websockets.exceptions import ConnectionClosed

pytestmark = [pytest.mark.redis, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent


def config(redis_url: str, key_prefix: str) -> str:
    return f"""
[listen]
port = 0
[management]
port = 0
[log]
access_log = ""
[registry]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{key_prefix}"
heartbeat_s = 0.2
node_ttl_s = 1.0
[routes]
"$connect" = "tests.cluster_handlers:on_connect"
"$disconnect" = "tests.cluster_handlers:on_disconnect"
"whoami" = "tests.cluster_handlers:whoami"
"""


def wait_ready(proc: subprocess.Popen, ready: Path, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.exists():
            return json.loads(ready.read_text())
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    raise AssertionError("workers not ready")


async def test_workers_share_ports_and_find_each_others_connections(tmp_path, redis_url, key_prefix):
    path = tmp_path / "gw.toml"
    path.write_text(config(redis_url, key_prefix))
    ready = tmp_path / "ready.json"
    events = tmp_path / "events.jsonl"
    events.touch()
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsgateway", "serve", "--workers", "3", "--config", str(path), "--ready-file", str(ready)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "WSGW_CLUSTER_EVENTS": str(events)},
    )
    try:
        info = await asyncio.to_thread(wait_ready, proc, ready)
        assert len(info["node_ids"]) == 3 and len(set(info["worker_pids"])) == 3
        clients = []
        for _ in range(30):
            ws = await websockets.connect(f"ws://127.0.0.1:{info['port']}/prod?tenant=w")
            await ws.send('{"action": "whoami"}')
            clients.append((ws, await ws.recv()))
        owners = {json.loads(line)["pid"] for line in events.read_text().splitlines()}
        assert len(owners) >= 2  # the kernel spread the connections over the workers
        base = f"http://127.0.0.1:{info['management_port']}/prod"
        async with aiohttp.ClientSession() as http:
            for ws, cid in clients:  # each POST reaches some worker, the owner is any worker
                async with http.post(f"{base}/@connections/{cid}", data=cid.encode()) as resp:
                    assert resp.status == 200, await resp.text()
                assert await asyncio.wait_for(ws.recv(), 5) == cid
            async with http.post(f"{base}/@tenants/w/messages", data=b"all") as resp:
                assert resp.status == 200 and (await resp.json())["delivered"] == 30
        for ws, _ in clients:
            assert await asyncio.wait_for(ws.recv(), 5) == "all"
        proc.send_signal(signal.SIGTERM)
        for ws, _ in clients:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 15)
            assert ws.close_code == 1001
        assert await asyncio.to_thread(proc.wait, 30) == 0
        closes = [json.loads(line) for line in events.read_text().splitlines() if '"$disconnect"' in line]
        assert len(closes) == 30 and {c["disconnectStatusCode"] for c in closes} == {1001}
    finally:
        if proc.poll() is None:
            proc.kill()


def _processes_of(config_path: Path) -> list[psutil.Process]:
    """This test's own gateway processes: their command line names its config file."""
    return [proc for proc in psutil.process_iter(["cmdline"]) if str(config_path) in (proc.info["cmdline"] or [])]


def test_a_ready_file_that_cannot_be_written_stops_the_workers_too(tmp_path, redis_url, key_prefix):
    """The supervisor fails after its workers started: they must not keep serving, orphaned."""
    path = tmp_path / "gateway.toml"
    path.write_text(config(redis_url, key_prefix))
    with (tmp_path / "stderr").open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "wsgateway", "serve", "--config", str(path), "--workers", "2",
                                 "--ready-file", str(tmp_path / "missing" / "ready.json")],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert proc.wait(90) == 1
        assert "cannot start" in (tmp_path / "stderr").read_text()
        assert _processes_of(path) == [], "workers outlived their supervisor"
        assert redis.Redis.from_url(redis_url).zrange(f"{key_prefix}:{{meta}}:alive", 0, -1) == []
    finally:
        for orphan in _processes_of(path):
            orphan.kill()
