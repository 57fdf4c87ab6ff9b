"""Requests between nodes over their pub/sub channels, and the answers (see ``wire``).

A node listens on one channel, ``P:node:{<node>}``, for both the requests other nodes send it
and the replies to its own requests. The sender publishes, then waits for one reply per
target node until its timeout; the receiver acts only before the deadline carried in the
request, which falls well before the sender's timeout, so a request answered with 503 is
never acted on later (assuming node clocks agree within ``timeout - budget``).

The channel traffic goes over the lean links of ``link`` (one connection subscribed,
one publishing), never through redis-py: it is the hot path of every cross-node call. A call
costs one future and no timer of its own: calls all have the same timeout, so they expire in
the order they were opened, and :class:`PendingCalls` keeps one timer, for the oldest.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable
from typing import Any

from ...errors import GoneError, LimitExceededError, MovedError, RemoteNodeError
from .. import LocalNode
from .keys import KeySpace
from .link import LOST, UNSENT, Endpoint, Locator, PublishLink, SubscribeLink
from .shards import Locate, ShardedPublisher, ShardedSubscribeLink
from .wire import (
    KIND_DELETE,
    KIND_FANOUT,
    KIND_GET,
    KIND_GROUP,
    KIND_POST,
    KIND_REPLY,
    KIND_SURVEY,
    KIND_TAKE,
    decode_message,
    encode_message,
    info_to_json,
)

__all__ = [
    "STATUS_GONE",
    "STATUS_LIMIT",
    "STATUS_MOVED",
    "STATUS_OK",
    "STATUS_TIMEOUT",
    "STATUS_UNREACHABLE",
    "Call",
    "NodeChannel",
    "PendingCalls",
    "raise_for_status",
]

log = logging.getLogger("wsgateway.registry")

STATUS_OK = "ok"
STATUS_GONE = "gone"
STATUS_LIMIT = "limit"
STATUS_FAIL = "fail"
STATUS_MOVED = "moved"  # "n": the node a reliable session moved to
STATUS_UNREACHABLE = "unreachable"  # never on the wire: no node took the message
STATUS_TIMEOUT = "timeout"  # never on the wire: no answer in time, or the request never left

# Shared and never mutated: callers only read them.
_UNREACHABLE: dict[str, Any] = {"s": STATUS_UNREACHABLE}
_TIMEOUT: dict[str, Any] = {"s": STATUS_TIMEOUT}

# A request whose PUBLISH was in flight when the link dropped may still be acted on until its
# deadline; its reply is awaited that much longer before the call gives up on it.
_LATE_REPLY_S = 0.05
# uvloop's clock and timers have a millisecond's resolution: a timer may fire that early.
_TIMER_SLACK_S = 0.001
_CHANNEL_CACHE_SIZE = 4096
# A reply no subscriber took is sent again this often, until the request's deadline.
_RESEND_S = 0.02


def raise_for_status(status: str, message: str = "") -> None:
    """Turn a reply status into the caller's error; ``ok`` returns. Raises GoneError,
    LimitExceededError (with the owner's ``message``: a usage plan's limit, else a full queue)
    or RemoteNodeError (the node failed handling the request)."""
    if status == STATUS_OK:
        return
    if status == STATUS_GONE:
        raise GoneError()
    if status == STATUS_LIMIT:
        raise LimitExceededError(message or "the connection's outbound queue is full")
    raise RemoteNodeError(f"remote node answered {status}")


class Call:
    """One request in flight: the replies by node; ``future`` is done once every target
    answered or was given up on (``unreachable``: no subscriber took the request;
    ``timeout``: no answer in time, or the request never left).

    It is also the sink of its own PUBLISHes (see ``link.Sink``): they are all made at
    once, in the order of ``targets``, on one link, so their outcomes come back in that order.
    ``failed`` counts the PUBLISHes that failed; ``answered`` the targets that answered.
    """

    __slots__ = (
        "_lost", "_published", "_waiting", "answered", "deadline", "expires_at", "failed", "future", "id",
        "replies", "targets",
    )

    def __init__(
        self, call_id: int, targets: tuple[str, ...], deadline: float, expires_at: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = call_id
        self.targets = targets
        self.deadline = deadline  # wall clock, as the receiver checks it
        self.expires_at = expires_at  # loop clock
        self.replies: dict[str, dict[str, Any]] = {}
        self.answered = 0
        self.failed = 0
        self.future: asyncio.Future[None] = loop.create_future()
        self._waiting = len(targets)
        self._published = 0
        self._lost: list[str] | None = None
        if not targets:
            self.future.set_result(None)

    def answer(self, node_id: str, header: dict[str, Any]) -> None:
        """A target's reply arrived."""
        if node_id in self.targets and node_id not in self.replies:
            self.answered += 1
            self._decide(node_id, header)

    def outcome(self, reply: Any) -> None:
        """The outcome of the next target's PUBLISH: how many subscribers took it, or why it
        failed. Never delivered (UNSENT, refused): given up on at once. LOST (it may have
        reached the target): its answer is awaited until the request's deadline."""
        target = self.targets[self._published]
        self._published += 1
        self.outcome_of(target, reply)

    def outcome_of(self, target: str, reply: Any) -> None:
        """The outcome of the PUBLISH to ``target`` (as :meth:`outcome`, for publishes whose
        outcomes may come back in any order: one link per shard on Redis Cluster)."""
        if reply.__class__ is int:
            if reply == 0 and target not in self.replies:
                self._decide(target, _UNREACHABLE)
            return
        self.failed += 1
        if target in self.replies:
            return  # answered before the PUBLISH's own reply came (or failed to)
        if reply is LOST:
            if self._lost is None:
                self._lost = []
                delay = max(0.0, self.deadline - time.time()) + _LATE_REPLY_S
                self.future.get_loop().call_later(delay, self._give_up_lost)
            self._lost.append(target)
        else:
            if reply is not UNSENT:
                log.warning("redis refused a request's PUBLISH: %r", reply)
            self._decide(target, _TIMEOUT)

    def expire(self) -> None:
        """Give up on every target that has not answered (the call timed out)."""
        for target in self.targets:
            if target not in self.replies:
                self._decide(target, _TIMEOUT)

    def _give_up_lost(self) -> None:
        for target in self._lost or ():
            if target not in self.replies:
                self._decide(target, _TIMEOUT)

    def _decide(self, target: str, reply: dict[str, Any]) -> None:
        self.replies[target] = reply
        self._waiting -= 1
        if not self._waiting and not self.future.done():
            self.future.set_result(None)


class PendingCalls:
    """This node's requests waiting for replies, by request id, in the order they were
    opened, which is the order they expire in: one timer, for the oldest, expires them."""

    def __init__(self, *, timeout_s: float, budget_s: float) -> None:
        self._timeout_s = timeout_s
        self._budget_s = budget_s
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def open(self, targets: tuple[str, ...]) -> Call:
        """Register a call before its request is published (a reply may come at once). The
        receiver acts only before ``call.deadline`` (now + budget); the call expires after
        the timeout. Close it with :meth:`close` when done."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        call = Call(next(self._ids), targets, time.time() + self._budget_s, loop.time() + self._timeout_s, loop)
        self._calls[call.id] = call
        if self._timer is None:
            self._timer = loop.call_at(call.expires_at, self._expire)
        return call

    def close(self, call: Call) -> None:
        """Forget a call: a reply that comes later is dropped."""
        self._calls.pop(call.id, None)

    def answer(self, header: dict[str, Any]) -> None:
        """Hand a reply to its call; a reply to no open call (too late) is dropped."""
        call = self._calls.get(header.get("r"))  # type: ignore[arg-type]
        if call is not None:
            call.answer(str(header.get("f")), header)

    def _expire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + _TIMER_SLACK_S
        expired = []
        for call in self._calls.values():  # oldest first: dicts keep insertion order
            if call.expires_at > now:
                self._timer = loop.call_at(call.expires_at, self._expire)
                break
            expired.append(call)
        for call in expired:
            del self._calls[call.id]
            call.expire()


class NodeChannel:
    """This node's end of the channels: publishes requests to other nodes, serves the
    requests on its own channel through the LocalNode, and hands the replies to
    :class:`PendingCalls`. Both links reconnect (and resubscribe) with backoff on their own."""

    def __init__(
        self, locator: Locator, keys: KeySpace, node_id: str, pending: PendingCalls,
        *, max_backoff_s: float, check_s: float, shards: tuple[list[Endpoint], Locate] | None = None,
    ) -> None:
        """``shards``: on Redis Cluster, the URL's hosts and where a channel's slot is served
        (sharded pub/sub, see ``shards``); ``locator`` is then unused."""
        self._keys = keys
        self._node_id = node_id
        self._pending = pending
        channel = keys.channel(node_id).encode()
        self._inbox: SubscribeLink
        self._outbox: PublishLink | ShardedPublisher
        if shards is None:
            self._inbox = SubscribeLink(locator, channel, self._on_message, max_backoff_s=max_backoff_s, check_s=check_s)
            self._outbox = PublishLink(locator, max_backoff_s=max_backoff_s, check_s=check_s)
        else:
            seeds, locate = shards
            self._inbox = ShardedSubscribeLink(
                seeds, channel, self._on_message, locate, max_backoff_s=max_backoff_s, check_s=check_s
            )
            self._outbox = ShardedPublisher(seeds, locate, max_backoff_s=max_backoff_s, check_s=check_s)
        self._channels: dict[str, bytes] = {}  # node id -> its channel name, encoded
        self._node: LocalNode | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs to running deletes
        self.subscribed = self._inbox.ready

    def start(self, node: LocalNode) -> None:
        """Connect both links in the background."""
        self._node = node
        self._inbox.start()
        self._outbox.start()

    async def ready(self) -> None:
        """Until this node listens on its channel and can publish."""
        await self._inbox.ready.wait()
        await self._outbox.wait_ready()

    async def close(self) -> None:
        """Stop listening; let running deletes answer (briefly); then stop publishing."""
        await self._inbox.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        await self._outbox.close()

    def request(self, call: Call, message: bytes) -> None:
        """Publish ``message`` (encoded once) to each of the call's targets; the outcomes go
        to the call."""
        publish, channel = self._outbox.publish, self._channel
        if self._outbox.in_order:
            for target in call.targets:
                publish(channel(target), message, call)
        else:
            for target in call.targets:
                publish(channel(target), message, _TargetSink(call, target))

    def _channel(self, node_id: str) -> bytes:
        name = self._channels.get(node_id)
        if name is None:
            if len(self._channels) >= _CHANNEL_CACHE_SIZE:
                self._channels.clear()  # node ids of long-gone processes
            name = self._channels[node_id] = self._keys.channel(node_id).encode()
        return name

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
            elif kind == KIND_TAKE:
                reply["i"] = node.local_take_session(header["c"], header["a"], header["f"])
            elif kind == KIND_SURVEY:
                reply["v"] = node.local_survey(header["q"])
            elif kind == KIND_DELETE:
                self._spawn(self._delete(node.local_delete(header["c"]), header["f"], reply, header["d"]))
                return
            else:
                raise ValueError(f"unknown request kind {kind!r}")
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            reply["s"] = _status_of(exc)
            if isinstance(exc, LimitExceededError) and exc.message:
                reply["m"] = exc.message  # which limit: a usage plan's names it
            elif isinstance(exc, MovedError):
                reply["n"] = exc.node_id
        self._reply(header["f"], reply, header["d"])

    async def _delete(self, closing: Awaitable[None], to: str, reply: dict[str, Any], deadline: float) -> None:
        try:
            await closing
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            reply["s"] = _status_of(exc)
            if isinstance(exc, LimitExceededError) and exc.message:
                reply["m"] = exc.message
        self._reply(to, reply, deadline)

    def _reply(self, to: str, reply: dict[str, Any], deadline: float) -> None:
        """Publish a reply; one that no subscriber took (the sender's subscription is being
        moved to another shard, or reconnects) is published again until the request's
        deadline, while the sender still waits (a reply twice is taken once)."""
        _ReplyPublish(self._outbox, self._channel(to), encode_message(reply), deadline).send()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _ReplyPublish:
    """One reply and its own sink: sent again every ``_RESEND_S`` until a subscriber took
    it or the request's deadline (wall clock) is near."""

    __slots__ = ("_channel", "_deadline", "_message", "_outbox")

    def __init__(self, outbox: PublishLink | ShardedPublisher, channel: bytes, message: bytes, deadline: float) -> None:
        self._outbox = outbox
        self._channel = channel
        self._message = message
        self._deadline = deadline

    def send(self) -> None:
        self._outbox.publish(self._channel, self._message, self)

    def outcome(self, reply: Any) -> None:
        if reply.__class__ is int and reply > 0:
            return
        if time.time() + _RESEND_S < self._deadline:
            asyncio.get_running_loop().call_later(_RESEND_S, self.send)
        elif reply.__class__ is not int and reply is not LOST and reply is not UNSENT:
            log.debug("redis refused a reply PUBLISH: %r", reply)


class _TargetSink:
    """The sink of one target's PUBLISH, when outcomes may come back in any order."""

    __slots__ = ("_call", "_target")

    def __init__(self, call: Call, target: str) -> None:
        self._call = call
        self._target = target

    def outcome(self, reply: Any) -> None:
        self._call.outcome_of(self._target, reply)


def _status_of(exc: Exception) -> str:
    if isinstance(exc, MovedError):
        return STATUS_MOVED
    if isinstance(exc, GoneError):
        return STATUS_GONE
    if isinstance(exc, LimitExceededError):
        return STATUS_LIMIT
    log.error("registry request failed on this node", exc_info=exc)
    return STATUS_FAIL
