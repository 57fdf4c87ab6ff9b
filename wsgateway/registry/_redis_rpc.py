"""Requests between nodes over their pub/sub channels, and the answers (see ``_redis_wire``).

A node listens on one channel, ``P:node:{<node>}``, for both the requests other nodes send it
and the replies to its own requests. The sender publishes, then waits for one reply per
target node until its timeout; the receiver acts only before the deadline carried in the
request, which falls well before the sender's timeout, so a request answered with 503 is
never acted on later (assuming node clocks agree within ``timeout - budget``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Collection
from typing import Any

from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from ..errors import GoneError, LimitExceededError
from . import LocalNode
from ._redis_batch import CommandBatcher
from ._redis_keys import KeySpace
from ._redis_wire import (
    KIND_DELETE,
    KIND_FANOUT,
    KIND_GET,
    KIND_GROUP,
    KIND_POST,
    KIND_REPLY,
    decode_message,
    encode_message,
    info_to_json,
)

__all__ = ["Call", "NodeChannel", "PendingCalls", "RemoteNodeError", "raise_for_status"]

log = logging.getLogger("wsgateway.registry")

STATUS_OK = "ok"
STATUS_GONE = "gone"
STATUS_LIMIT = "limit"
STATUS_FAIL = "fail"
STATUS_UNREACHABLE = "unreachable"  # never on the wire: no node took the message


class RemoteNodeError(RuntimeError):
    """The owning node failed while handling a request (its log has the details): a 500."""


def raise_for_status(status: str) -> None:
    """Turn a reply status into the caller's error; ``ok`` returns."""
    if status == STATUS_OK:
        return
    if status == STATUS_GONE:
        raise GoneError()
    if status == STATUS_LIMIT:
        raise LimitExceededError("the connection's outbound queue is full")
    raise RemoteNodeError(f"remote node answered {status}")


class Call:
    """One request in flight: the replies by node, complete when every target answered."""

    __slots__ = ("future", "id", "replies", "waiting")

    def __init__(self, call_id: int, targets: Collection[str]) -> None:
        self.id = call_id
        self.waiting = set(targets)
        self.replies: dict[str, dict[str, Any]] = {}
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.waiting:
            self.future.set_result(None)

    def answer(self, node_id: str, header: dict[str, Any]) -> None:
        if node_id in self.waiting:
            self.replies[node_id] = header
            self._forget(node_id)

    def unreachable(self, node_id: str) -> None:
        """No subscriber took the message for ``node_id``: stop waiting for it."""
        if node_id in self.waiting:
            self.replies[node_id] = {"s": STATUS_UNREACHABLE}
            self._forget(node_id)

    def _forget(self, node_id: str) -> None:
        self.waiting.discard(node_id)
        if not self.waiting and not self.future.done():
            self.future.set_result(None)


class PendingCalls:
    """This node's requests waiting for replies, by request id."""

    def __init__(self) -> None:
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)

    def open(self, targets: Collection[str]) -> Call:
        """Register a call before its request is published (a reply may come at once)."""
        call = Call(next(self._ids), targets)
        self._calls[call.id] = call
        return call

    def close(self, call: Call) -> None:
        self._calls.pop(call.id, None)

    def answer(self, header: dict[str, Any]) -> None:
        call = self._calls.get(header.get("r"))  # type: ignore[arg-type]
        if call is not None:
            call.answer(str(header.get("f")), header)


class NodeChannel:
    """Listens on this node's channel: serves requests through the LocalNode and hands
    replies to :class:`PendingCalls`. Resubscribes with backoff after Redis errors."""

    def __init__(
        self,
        client: Redis,
        keys: KeySpace,
        node_id: str,
        batcher: CommandBatcher,
        pending: PendingCalls,
        *,
        max_backoff_s: float,
    ) -> None:
        self._client = client
        self._keys = keys
        self._node_id = node_id
        self._channel = keys.channel(node_id)
        self._batcher = batcher
        self._pending = pending
        self._backoff = ExponentialWithJitterBackoff(cap=max_backoff_s, base=0.05)
        self._node: LocalNode | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs to running deletes
        self.subscribed = asyncio.Event()

    def start(self, node: LocalNode) -> None:
        self._node = node
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="registry-listener")

    async def close(self) -> None:
        """Unsubscribe and stop; running deletes are waited for briefly."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        self.subscribed.clear()

    async def _listen(self) -> None:
        failures = 0
        while True:
            pubsub = self._client.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                connection = pubsub.connection
                assert connection is not None
                on_message = self._on_message
                while True:
                    # Straight from the connection: PubSub.get_message adds a dict and several
                    # awaits per message on the hottest path of a cross-node call.
                    reply = await connection.read_response(timeout=math.inf)
                    if reply[0] == b"message":
                        on_message(reply[2])
                    elif reply[0] == b"subscribe":  # confirmed: messages published from now on reach us
                        self.subscribed.set()
                        failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis gone or broken: resubscribe after a pause
                log.warning("registry subscription lost (%r); resubscribing", exc)
            finally:
                self.subscribed.clear()
                await _quietly(pubsub.aclose())  # type: ignore[no-untyped-call]
            failures += 1
            await asyncio.sleep(self._backoff.compute(failures))

    def _on_message(self, message: bytes) -> None:
        try:
            header, data = decode_message(message)
            if header["k"] == KIND_REPLY:
                self._pending.answer(header)
            else:
                self._serve(header, data)
        except Exception:
            log.exception("bad registry message dropped")

    def _serve(self, header: dict[str, Any], data: bytes) -> None:
        if time.time() > header["d"]:
            return  # the sender has answered 503 already: acting now would break that answer
        node = self._node
        assert node is not None
        kind = header["k"]
        reply: dict[str, Any] = {"k": KIND_REPLY, "r": header["r"], "f": self._node_id, "s": STATUS_OK}
        try:
            if kind == KIND_POST:
                node.local_post(header["c"], data, bool(header["b"]))
            elif kind == KIND_GET:
                reply["i"] = info_to_json(node.local_info(header["c"]))
            elif kind == KIND_FANOUT:
                reply["n"] = node.local_fanout(
                    header["t"], data, bool(header["b"]), user=header.get("u"), group=header.get("g")
                )
            elif kind == KIND_GROUP:
                if not node.local_group(header["c"], header["g"], join=bool(header["j"])):
                    reply["s"] = STATUS_GONE
            elif kind == KIND_DELETE:
                self._spawn(self._delete(node.local_delete(header["c"]), header["f"], reply))
                return
            else:
                raise ValueError(f"unknown request kind {kind!r}")
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            reply["s"] = _status_of(exc)
        self._reply(header["f"], reply)

    async def _delete(self, closing: Awaitable[None], to: str, reply: dict[str, Any]) -> None:
        try:
            await closing
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            reply["s"] = _status_of(exc)
        self._reply(to, reply)

    def _reply(self, to: str, reply: dict[str, Any]) -> None:
        self._batcher.send("PUBLISH", self._keys.channel(to), encode_message(reply))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _status_of(exc: Exception) -> str:
    if isinstance(exc, GoneError):
        return STATUS_GONE
    if isinstance(exc, LimitExceededError):
        return STATUS_LIMIT
    log.error("registry request failed on this node", exc_info=exc)
    return STATUS_FAIL


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except (RedisError, OSError) as exc:  # closing a broken connection may fail again
        log.debug("closing the subscription failed: %r", exc)

