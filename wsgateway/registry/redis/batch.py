"""Every command the registry sends through redis-py goes through one writer that pipelines
what queued up: records, scripts, lookups, listings. (The node channels' PUBLISHes and their
subscription have lean connections of their own, ``link``.)

redis-py costs 70-90 µs per awaited command; a pipeline of everything queued during the last
round trip costs about half per command and keeps one connection busy instead of many. The
queue is FIFO and only one pipeline is in flight, so commands reach Redis in the order they
were queued: a ``remove`` queued after a re-registration's writes cannot be undone by them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisClusterUnreachableError, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...errors import RegistryUnavailableError
from .shard_pipeline import ShardPipeline

__all__ = ["REDIS_FAILURES", "CommandBatcher"]

log = logging.getLogger("wsgateway.registry")

# Redis Cluster adds: no shard serves the slot, no shard answers, the cluster is down.
_UNREACHABLE = (
    RedisConnectionError, RedisTimeoutError, OSError, SlotNotCoveredError, RedisClusterUnreachableError,
    ClusterDownError,
)

# What a call through Redis may raise when Redis is away, slow or refuses a command.
REDIS_FAILURES = (RegistryUnavailableError, RedisError, OSError, TimeoutError)


class CommandBatcher:
    """Queue commands with :meth:`call`; one task sends them in pipelines of ``max_batch``.

    The client must not retry on its own (a retried pipeline could publish twice): every
    failure reaches the caller, which decides.
    """

    def __init__(self, client: Redis | RedisCluster, *, max_batch: int = 1024) -> None:
        self._client = client
        # Redis Cluster: one plain pipeline per shard (see shard_pipeline)
        self._shards = ShardPipeline(client) if isinstance(client, RedisCluster) else None
        self._max_batch = max_batch
        self._queue: deque[tuple[tuple[Any, ...], asyncio.Future[Any]]] = deque()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        """Start the writer task (call once, from the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-writer")

    def call(self, *args: Any) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply, RegistryUnavailableError when Redis
        cannot be reached, or the command's own error (e.g. ResponseError)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(RegistryUnavailableError("registry closed"))
            return future
        self._queue.append((args, future))
        self._wakeup.set()
        return future

    def send(self, *args: Any) -> None:
        """Queue one command whose reply nobody waits for (a reply to another node)."""
        self.call(*args).add_done_callback(_drop_result)

    async def close(self) -> None:
        """Stop the writer; whatever is still queued fails with RegistryUnavailableError."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._fail(list(self._queue), "registry closed")
        self._queue.clear()
        if self._shards is not None:
            await self._shards.aclose()

    async def _run(self) -> None:
        queue = self._queue
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while queue:
                count = min(len(queue), self._max_batch)
                batch = [queue.popleft() for _ in range(count)]
                try:
                    await self._send(batch)
                except asyncio.CancelledError:
                    self._fail(batch, "registry closed")
                    raise

    async def _send(self, batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        try:
            if self._shards is not None:
                replies = await self._shards.execute([args for args, _ in batch])
            else:
                pipe = self._client.pipeline(transaction=False)
                for args, _ in batch:
                    pipe.execute_command(*args)
                replies = await pipe.execute(raise_on_error=False)
        except _UNREACHABLE as exc:
            log.debug("redis unreachable: %r", exc)
            self._fail(batch, "registry unreachable")
            return
        except Exception as exc:
            log.exception("redis pipeline failed")
            # RedisClusterException is no RedisError: callers catch RegistryUnavailableError
            self._fail(batch, exc if isinstance(exc, RedisError) else RegistryUnavailableError(repr(exc)))
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, _UNREACHABLE):
                future.set_exception(RegistryUnavailableError("registry unreachable"))
            elif isinstance(reply, BaseException):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    @staticmethod
    def _fail(batch: list[tuple[tuple[Any, ...], asyncio.Future[Any]]], exc: BaseException | str) -> None:
        for _, future in batch:
            if not future.done():
                # a fresh error per caller: one shared instance would pile up tracebacks
                future.set_exception(RegistryUnavailableError(exc) if isinstance(exc, str) else exc)


def _drop_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("redis command failed: %r", future.exception())
