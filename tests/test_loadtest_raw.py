"""The raw ceilings (``loadtest/peers/raw.py``): two relay nodes on a private redis-server.

A ceiling that answered differently from the gateway would compare unlike work: the acked
relay must answer a cross-node post 200 only once its owner wrote the frame, 410 when the
owner does not hold the id, in request order on a pipelined connection; the plain relay
answers 200 at once (publish and forget).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import websockets
from pytest_redis.executor import RedisExecutor

from loadtest.servers import ServerProcess, python_argv, start_server

pytest.importorskip("httptools")
pytest.importorskip("hiredis")

_BODY = b'{"n":%d}'


def _start(tmp_path: Path, module: str, node_id: str, redis_url: str) -> ServerProcess:
    ready = tmp_path / f"{node_id}.ready"
    argv = python_argv(module, "--ready-file", str(ready), "--node-id", node_id, "--redis-url", redis_url)
    return start_server(node_id, argv, tmp_path, ready_file=ready, timeout=30)


@pytest.fixture(params=["loadtest.peers.raw_acked", "loadtest.peers.raw"])
def relay(request: pytest.FixtureRequest, tmp_path: Path, private_redis: RedisExecutor) -> Iterator[
        tuple[str, ServerProcess, ServerProcess]]:
    url = f"redis://{private_redis.host}:{private_redis.port}/0"
    nodes: list[ServerProcess] = []
    try:
        nodes.append(_start(tmp_path, request.param, "n0", url))
        nodes.append(_start(tmp_path, request.param, "n1", url))
        yield request.param, nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.stop()


async def _pipelined(port: int, paths: list[str]) -> list[int]:
    """POST every path on one connection, pipelined; return the statuses in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(
            b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
            % (path.encode(), len(_BODY % i), _BODY % i)
            for i, path in enumerate(paths)
        ))
        statuses = []
        for _ in paths:
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            statuses.append(status)
        return statuses
    finally:
        writer.close()


async def test_a_cross_node_post_is_answered_as_the_relay_promises(relay: tuple[str, ServerProcess, ServerProcess]) -> None:
    module, n0, n1 = relay
    async with websockets.connect(f"ws://127.0.0.1:{n1.port}/?tenant=t0") as ws:
        await ws.send('{"action":"whoami"}')
        cid = orjson.loads(await ws.recv())["id"]
        assert cid.startswith("n1.")
        paths = [f"/@connections/{cid}", "/@connections/n1.nobody-here", f"/@connections/{cid}"]
        statuses = await asyncio.wait_for(_pipelined(n0.management_port, paths), 10)
        frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 5)) for _ in range(2)]
    assert frames == [{"n": 0}, {"n": 2}]
    if module.endswith("raw_acked"):
        assert statuses == [200, 410, 200]  # the owner's answers, in request order
    else:
        assert statuses == [200, 200, 200]  # publish and forget: no 410 from another node
