"""Helpers shared by the Redis registry test files: scaled-down timings, settling, a
connection accepted on a recording node, and a TCP relay that plays a network partition."""

from __future__ import annotations

import asyncio
from typing import Self

from wsgateway.config import RegistryConfig
from wsgateway.records import ConnectionRecord
from wsgateway.registry import Registry
from wsgateway.registry.redis import RedisRegistry

from .redis_topologies import Topology
from .registry_contract import RecordingNode, make_record

HEARTBEAT_S = 0.2
NODE_TTL_S = 1.0
# For the tests that wait on no beat, only on the two beats a new cluster settles in.
QUICK_HEARTBEAT_S = 0.05
SETTLE_TIMEOUT_S = 5.0


def registry_config(url: str, prefix: str) -> RegistryConfig:
    return RegistryConfig(
        backend="redis", redis_url=url, key_prefix=prefix, heartbeat_s=HEARTBEAT_S, node_ttl_s=NODE_TTL_S,
        activity_flush_s=1.0,
    )


def topology_config(topology: Topology, prefix: str, heartbeat_s: float = HEARTBEAT_S) -> RegistryConfig:
    """:func:`registry_config` for a topology of ``tests.redis_topologies``."""
    return topology.config(key_prefix=prefix, heartbeat_s=heartbeat_s, node_ttl_s=NODE_TTL_S, activity_flush_s=1.0)


async def wait_settled(registry: RedisRegistry, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Wait until the registry vouches for misses (a new cluster settles in two beats)."""
    async with asyncio.timeout(timeout):
        while not (await registry.health())["settled"]:
            await asyncio.sleep(0.02)


async def accept(
    registry: Registry, node: RecordingNode, tenant: str = "tenant-a", **overrides: object
) -> ConnectionRecord:
    record = node.open(make_record(node.node_id, tenant, **overrides))
    await registry.add(record)
    return record


class RedisLink:
    """A TCP relay between one registry and the private Redis: ``cut()`` is a network
    partition (every connection through it is reset, new ones are refused) until
    ``restore()``; ``delay_s`` (which may change at any time) delays what the registry sends
    (a slow network). Redis itself is the real one, untouched."""

    def __init__(self, redis_port: int, *, delay_s: float = 0.0) -> None:
        self._redis_port = redis_port
        self.delay_s = delay_s
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()
        self.is_cut = False
        self.url = ""

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        async with asyncio.timeout(5):  # the relays end once their transports are aborted
            await asyncio.gather(*self._relays, return_exceptions=True)

    def cut(self) -> None:
        self.is_cut = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.is_cut = False

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        if self.is_cut:
            client_w.transport.abort()
            return
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self._redis_port)
            self._writers |= {client_w, redis_w}
            await asyncio.gather(
                self._pipe(client_r, redis_w, delayed=True), self._pipe(redis_r, client_w, delayed=False), return_exceptions=True
            )
        finally:
            self._relays.discard(relay)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        try:
            while data := await reader.read(65536):
                if delayed and self.delay_s:
                    await asyncio.sleep(self.delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            writer.transport.abort()
            self._writers.discard(writer)
