"""Requests between nodes over their pub/sub channels, and the answers (see ``wire``).

A node listens on one channel, ``P:node:{<node>}``, for both the requests other nodes send it
and the replies to its own requests. The sender publishes, then waits for one reply per
target node until its timeout; the receiver acts only before the deadline carried in the
request, which falls well before the sender's timeout, so a request answered with 503 is
never acted on later (assuming node clocks agree within ``timeout - budget``).

An error answer means not delivered. The receiver acts only while it can publish (a node
whose publishing link is down drops the request: nobody would learn the outcome), and it
remembers the outcome of each request that acts (post, delete, group, fan-out) by sender and
request id until well past the sender's timeout. A sender whose request got no reply by its
deadline (the reply was lost while the links reconnected, or the request's PUBLISH was lost
on the way) asks the target again (``KIND_ASK``) once both its links are up, until its
timeout: the target answers the outcome it remembers, or ``dropped`` for a request it never
acted on, which it then never will. So a call answered 503 was not acted on, unless the
links stayed down for the whole time between the deadline and the timeout.

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
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ...errors import GoneError, LimitExceededError, MovedError, RemoteNodeError
from .. import LocalNode
from .keys import KeySpace
from .link import LOST, UNSENT, Endpoint, Locator, PublishLink, SubscribeLink
from .shards import Locate, ShardedPublisher, ShardedSubscribeLink
from .wire import (
    KIND_ASK,
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
STATUS_DROPPED = "dropped"  # not acted on, and never will be (the answer to an ask)
STATUS_UNREACHABLE = "unreachable"  # never on the wire: no node took the message
STATUS_TIMEOUT = "timeout"  # never on the wire: no answer in time, or the request never left

# Shared and never mutated: callers only read them.
_UNREACHABLE: dict[str, Any] = {"s": STATUS_UNREACHABLE}
_TIMEOUT: dict[str, Any] = {"s": STATUS_TIMEOUT}

# A target that has not answered this long after the request's deadline is asked again.
_ASK_AFTER_S = 0.05
# Asked again this often until it answers or the call times out (an ask may be lost too).
_ASK_AGAIN_S = 0.1
# A call the timer reached only past its timeout (this process stalled) is asked about for this
# long more; the targets remember outcomes until _REMEMBER_SLACK_S past the timeout.
_LATE_ASK_S = 0.5
_LINKS_POLL_S = 0.02
# How long past a request's deadline the receiver remembers its outcome: past the sender's
# timeout (timeout - budget after the deadline), with room for clocks a little apart.
_REMEMBER_SLACK_S = 1.0
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
        "_published", "_waiting", "answered", "asking", "ask_at", "deadline", "expires_at", "failed", "future",
        "id", "replies", "targets",
    )

    def __init__(
        self, call_id: int, targets: tuple[str, ...], deadline: float, expires_at: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.id = call_id
        self.targets = targets
        self.deadline = deadline  # wall clock, as the receiver checks it
        self.expires_at = expires_at  # loop clock
        self.ask_at = expires_at  # loop clock: when unanswered targets are asked again
        self.asking = False  # handed to the asker
        self.replies: dict[str, dict[str, Any]] = {}
        self.answered = 0
        self.failed = 0
        self.future: asyncio.Future[None] = loop.create_future()
        self._waiting = len(targets)
        self._published = 0
        if not targets:
            self.future.set_result(None)

    def answer(self, node_id: str, header: dict[str, Any]) -> None:
        """A target's reply arrived (``dropped``: it did not act, and never will)."""
        if node_id in self.targets and node_id not in self.replies:
            self.answered += 1
            self._decide(node_id, _TIMEOUT if header.get("s") == STATUS_DROPPED else header)

    def unanswered(self) -> list[str]:
        """The targets still waited for."""
        return [t for t in self.targets if t not in self.replies]

    def outcome(self, reply: Any) -> None:
        """The outcome of the next target's PUBLISH: how many subscribers took it, or why it
        failed. Never delivered (UNSENT, refused): given up on at once. LOST (it may have
        reached the target): waited for, and asked again after the deadline."""
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
        if reply is not LOST:
            if reply is not UNSENT:
                log.warning("redis refused a request's PUBLISH: %r", reply)
            self._decide(target, _TIMEOUT)

    def expire(self) -> None:
        """Give up on every target that has not answered (the call timed out)."""
        for target in self.targets:
            if target not in self.replies:
                self._decide(target, _TIMEOUT)

    def _decide(self, target: str, reply: dict[str, Any]) -> None:
        self.replies[target] = reply
        self._waiting -= 1
        if not self._waiting and not self.future.done():
            self.future.set_result(None)


class PendingCalls:
    """This node's requests waiting for replies, by request id, in the order they were
    opened, which is the order they are overdue and expire in: one timer, for the oldest,
    hands the overdue ones to ``on_overdue`` (to be asked again) and expires them."""

    def __init__(self, *, timeout_s: float, budget_s: float) -> None:
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self._calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_overdue: Callable[[Call], None] | None = None  # None: wait until the timeout

    def open(self, targets: tuple[str, ...]) -> Call:
        """Register a call before its request is published (a reply may come at once). The
        receiver acts only before ``call.deadline`` (now + budget); the call expires after
        the timeout. Close it with :meth:`close` when done."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        call = Call(next(self._ids), targets, time.time() + self.budget_s, now + self.timeout_s, loop)
        if self.on_overdue is not None:
            call.ask_at = min(call.expires_at, now + self.budget_s + _ASK_AFTER_S)
        self._calls[call.id] = call
        if self._timer is None:
            self._timer = loop.call_at(call.ask_at, self._tick)
        return call

    def close(self, call: Call) -> None:
        """Forget a call: a reply that comes later is dropped."""
        self._calls.pop(call.id, None)

    def answer(self, header: dict[str, Any]) -> None:
        """Hand a reply to its call; a reply to no open call (too late) is dropped."""
        call = self._calls.get(header.get("r"))  # type: ignore[arg-type]
        if call is not None:
            call.answer(str(header.get("f")), header)

    def _tick(self) -> None:
        """Hand the overdue calls to ``on_overdue``, expire the timed-out ones, and arm the
        timer for the next of either. Oldest first: the calls being asked again are the
        oldest ones still open, the others follow in the order they are due."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + _TIMER_SLACK_S
        expired, overdue = [], []
        next_at = None
        for call in self._calls.values():  # oldest first: dicts keep insertion order
            if call.expires_at <= now and not call.asking and self.on_overdue is not None:
                # Never asked: this timer came late (the process was stopped or starved past
                # the timeout). The targets still remember what they did: ask them once more
                # before answering 503 without knowing.
                call.asking = True
                call.expires_at = now + _LATE_ASK_S
                overdue.append(call)
                next_at = call.expires_at if next_at is None else min(next_at, call.expires_at)
            elif call.expires_at <= now:
                expired.append(call)
            elif call.asking:
                next_at = call.expires_at if next_at is None else min(next_at, call.expires_at)
            elif call.ask_at <= now:
                call.asking = True
                overdue.append(call)
                next_at = call.expires_at if next_at is None else min(next_at, call.expires_at)
            else:
                next_at = call.ask_at if next_at is None else min(next_at, call.ask_at)
                break
        if next_at is not None:
            self._timer = loop.call_at(next_at, self._tick)
        for call in expired:
            del self._calls[call.id]
            call.expire()
        for call in overdue:
            if not call.future.done():
                assert self.on_overdue is not None  # ask_at is expires_at without it
                self.on_overdue(call)


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
        self._asking: set[asyncio.Task[Any]] = set()  # strong refs to calls being asked again
        # Outcomes of the requests this node acted on (None: still acting) or dropped, by
        # (sender, request id), and when to forget each (wall clock), oldest first.
        self._outcomes: dict[tuple[str, int], dict[str, Any] | None] = {}
        self._forget_at: deque[tuple[float, tuple[str, int]]] = deque()
        self._remember_s = pending.timeout_s - pending.budget_s + _REMEMBER_SLACK_S
        pending.on_overdue = self._ask_again
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
        """Stop listening and asking; let running deletes answer (briefly); then stop
        publishing."""
        for task in self._asking:
            task.cancel()
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
        now = time.time()
        self._forget(now)
        kind = header["k"]
        if kind == KIND_ASK:
            self._answer_ask(header)
            return
        key = (header["f"], header["r"])
        if key in self._outcomes:
            return  # asked about before it came (it is dropped), or seen already
        if now > header["d"] or not self._outbox.ready.is_set():
            # Past its deadline the sender has answered 503 already; without a link to
            # publish on, nobody would learn the outcome: acting would break either answer.
            self._remember(key, header["d"], _dropped(header["r"], self._node_id))
            return
        node = self._node
        assert node is not None
        reply: dict[str, Any] = {"k": KIND_REPLY, "r": header["r"], "f": self._node_id, "s": STATUS_OK}
        if kind not in (KIND_GET, KIND_SURVEY):  # acting: remembered, so that a sender that lost the reply can ask
            self._remember(key, header["d"], reply if kind != KIND_DELETE else None)
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
        key = (to, reply["r"])
        if key in self._outcomes:
            self._outcomes[key] = reply  # done: an ask answers it from now on
        self._reply(to, reply, deadline)

    # ------------------------------------------------------------ outcome memory

    def _remember(self, key: tuple[str, int], deadline: float, reply: dict[str, Any] | None) -> None:
        self._outcomes[key] = reply
        self._forget_at.append((deadline + self._remember_s, key))

    def _forget(self, now: float) -> None:
        forget_at, outcomes = self._forget_at, self._outcomes
        while forget_at and forget_at[0][0] < now:
            outcomes.pop(forget_at.popleft()[1], None)

    def _answer_ask(self, header: dict[str, Any]) -> None:
        """A sender lost our reply (or its request): answer again what we did, or that we
        did not act, and never will."""
        key = (header["f"], header["r"])
        if key not in self._outcomes:
            self._remember(key, header["d"], _dropped(header["r"], self._node_id))
        reply = self._outcomes[key]
        if reply is not None:  # None: a delete still closing; its reply comes when done
            self._reply(header["f"], reply, header["d"])

    def _ask_again(self, call: Call) -> None:
        task = asyncio.ensure_future(self._ask(call))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _ask(self, call: Call) -> None:
        """Ask each target that has not answered ``call`` for its outcome, once both links
        are up, and again every ``_ASK_AGAIN_S``, until they all answered or the call expired."""
        ask = encode_message({"k": KIND_ASK, "r": call.id, "f": self._node_id, "d": call.deadline})
        links = (self._inbox.ready, self._outbox.ready)
        while not call.future.done():
            if all(link.is_set() for link in links):
                for target in call.unanswered():
                    self._outbox.publish(self._channel(target), ask, None)
                await asyncio.wait([call.future], timeout=_ASK_AGAIN_S)
            else:  # a link is reconnecting: look again shortly
                await asyncio.wait([call.future], timeout=_LINKS_POLL_S)

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


def _dropped(request_id: int, node_id: str) -> dict[str, Any]:
    return {"k": KIND_REPLY, "r": request_id, "f": node_id, "s": STATUS_DROPPED}


def _status_of(exc: Exception) -> str:
    if isinstance(exc, MovedError):
        return STATUS_MOVED
    if isinstance(exc, GoneError):
        return STATUS_GONE
    if isinstance(exc, LimitExceededError):
        return STATUS_LIMIT
    log.error("registry request failed on this node", exc_info=exc)
    return STATUS_FAIL
