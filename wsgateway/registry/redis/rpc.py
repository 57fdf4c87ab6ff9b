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
acted on, which it then never will. A sender whose links are down at its timeout (Redis
restarts, Sentinel fails over) holds the call, for at most ``wait_s`` more, and asks once
they are back; a reply the receiver could not publish by the deadline keeps its outcome
remembered that much longer. So a call answered 503 was not acted on, unless the links
stayed down for all of ``wait_s``, or the receiver died or stalled right after acting.

The channel traffic goes over the lean links of ``link`` (one connection subscribed,
one publishing), never through redis-py: it is the hot path of every cross-node call. The
publishing link coalesces what one event-loop iteration sends to one node (requests, replies,
asks) into one PUBLISH of a batch (``wire.encode_batch``), whose outcome goes to each
message's sink; a receiver splits a batch and handles its messages in order, one by one,
and answers the compact posts of a batch (``wire``) from one sender with one "ok" once it
has handled them all. A call costs no timer of its own (nor a future, unless awaited: see
:class:`Call`): calls all have the same timeout, so they expire in the order they were
opened, and :class:`PendingCalls` keeps one timer, for the oldest.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

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
    KIND_LANDED,
    KIND_POST,
    KIND_REPLY,
    KIND_SURVEY,
    KIND_TAKE,
    VERSION,
    decode_message,
    encode_batch,
    encode_message,
    encode_post,
    encode_reply,
    info_to_json,
    ok_reply,
    read_ok,
    read_post,
    split_batch,
)

__all__ = [
    "STATUS_GONE",
    "STATUS_LIMIT",
    "STATUS_MOVED",
    "STATUS_OK",
    "STATUS_TIMEOUT",
    "STATUS_UNREACHABLE",
    "Call",
    "CallDone",
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
# The target said it did not act, and never will (it got the request past its deadline: a
# stalled process): as a timeout, except that asking again cannot deliver twice.
_DROPPED: dict[str, Any] = {"s": STATUS_TIMEOUT, "dropped": True}
_OK: dict[str, Any] = {"s": STATUS_OK}  # a compact reply's

# A target that has not answered this long after the request's deadline is asked again.
_ASK_AFTER_S = 0.05
# Asked again this often until it answers or the call times out (an ask may be lost too).
_ASK_AGAIN_S = 0.1
# A call the timer reached only past its timeout (this process stalled) is asked about for this
# long more; the targets remember outcomes until _REMEMBER_SLACK_S past the timeout. It is also
# how long (at most: the time between the deadline and the timeout, less _ASK_AFTER_S) a call
# must have been asked, with Redis answering the asks, before its timeout may answer 503.
_LATE_ASK_S = 0.5
_LINKS_POLL_S = 0.02
# How long past a request's deadline the receiver remembers its outcome: past the sender's
# timeout (timeout - budget after the deadline), with room for clocks a little apart.
_REMEMBER_SLACK_S = 1.0
# uvloop's clock and timers have a millisecond's resolution: a timer may fire that early.
_TIMER_SLACK_S = 0.001
_CHANNEL_CACHE_SIZE = 4096
# Requests about one connection that wait for a reliable session on its way to the node.
_ABOUT_A_SESSION = frozenset({KIND_GET, KIND_DELETE, KIND_GROUP, KIND_TAKE, KIND_LANDED})
# What an owner remembers of a request it acted on: its reply, or _SAID_OK (a compact "ok").
_Outcome = dict[str, Any] | str
_SAID_OK = "compact ok"
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
    """One request in flight: the replies by node; ``done`` once every target answered or
    was given up on (``unreachable``: no subscriber took the request; ``timeout``: no answer
    in time, or the request never left). Then ``future`` (made when first asked for) is
    done, and ``then`` (if set) is told, at once: a caller that waits by callback costs no
    future, task or coroutine.

    It is also the sink of its own PUBLISHes (see ``link.Sink``): they are all made at
    once, in the order of ``targets``, on one link, so their outcomes come back in that order.
    ``failed`` counts the PUBLISHes that failed; ``answered`` the targets that answered.
    """

    __slots__ = (
        "_future", "_loop", "_published", "_waiting", "answered", "asking", "asking_since", "ask_at", "context",
        "deadline", "done", "expires_at", "failed", "hold_until", "id", "replies", "targets", "then",
    )

    def __init__(
        self, call_id: int, targets: tuple[str, ...], deadline: float, expires_at: float, ask_at: float,
        hold_until: float, loop: asyncio.AbstractEventLoop, then: CallDone | None, context: Any,
    ) -> None:
        self.id = call_id
        self.targets = targets
        self.deadline = deadline  # wall clock, as the receiver checks it
        self.expires_at = expires_at  # loop clock
        self.ask_at = ask_at  # loop clock: when unanswered targets are asked again
        self.hold_until = hold_until  # loop clock: the latest it may be held for its links
        self.asking = False  # handed to the asker
        self.asking_since: float | None = None  # loop clock: Redis took its asks since (links up)
        self.replies: dict[str, dict[str, Any]] = {}
        self.answered = 0
        self.failed = 0
        self.done = not targets
        # Told ``then.call_done(self)`` once done, with what it needs then in ``context``.
        self.then = then
        self.context = context
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._waiting = len(targets)
        self._published = 0

    @property
    def future(self) -> asyncio.Future[None]:
        """Done once the call is (see the class)."""
        future = self._future
        if future is None:
            future = self._future = self._loop.create_future()
            if self.done:
                future.set_result(None)
        return future

    def answer(self, node_id: str, header: dict[str, Any]) -> None:
        """A target's reply arrived (``dropped``: it did not act, and never will)."""
        if node_id in self.targets and node_id not in self.replies:
            self.answered += 1
            self._decide(node_id, _DROPPED if header.get("s") == STATUS_DROPPED else header)

    def answer_ok(self, node_id: str) -> None:
        """A target's compact "ok" arrived: :meth:`answer` and :meth:`_decide` in one call,
        since most replies are this one."""
        replies = self.replies
        if node_id in self.targets and node_id not in replies:
            self.answered += 1
            replies[node_id] = _OK
            self._waiting -= 1
            if not self._waiting:
                self._finish()

    def unanswered(self) -> list[str]:
        """The targets still waited for."""
        return [t for t in self.targets if t not in self.replies]

    def outcome(self, reply: Any) -> None:
        """The outcome of the next target's PUBLISH: how many subscribers took it, or why it
        failed. Never delivered (UNSENT, refused): given up on at once. LOST (it may have
        reached the target): waited for, and asked again after the deadline."""
        target = self.targets[self._published]
        self._published += 1
        if reply.__class__ is not int or not reply:  # else a subscriber took it: its answer comes
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
        if not self._waiting:
            self._finish()

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        future = self._future
        if future is not None and not future.done():
            future.set_result(None)
        then = self.then
        if then is not None:
            self.then = None
            then.call_done(self)


class CallDone(Protocol):
    """Who is told that a :class:`Call` is done (``Call.then``)."""

    def call_done(self, call: Call) -> None:
        """``call`` is done: read its replies. Called once; must not raise."""


class PendingCalls:
    """This node's requests waiting for replies, by request id, in the order they were
    opened, which is the order they are overdue in: one timer, for the oldest, hands the
    overdue ones to ``on_overdue`` (to be asked again) and expires them.

    A call being asked expires at its timeout only if its targets were asked with Redis
    answering for long enough (``asking_since``, kept by the asker); else it is held, for at
    most ``wait_s`` past the timeout, until they were (its links were down)."""

    def __init__(self, *, timeout_s: float, budget_s: float, wait_s: float = 0.0) -> None:
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self.wait_s = wait_s
        # How long asks must have gone out: the whole of the time they have in a call that
        # was never held (from the deadline's ask to the timeout), at most _LATE_ASK_S.
        self._ask_span_s = max(_ASK_AFTER_S, min(_LATE_ASK_S, timeout_s - budget_s - _ASK_AFTER_S))
        self._ask_after_s = min(timeout_s, budget_s + _ASK_AFTER_S)  # from the call's opening
        self._calls: dict[int, Call] = {}
        # From a random start: a node restarted with a configured node id must not repeat
        # the ids of its previous life, whose outcomes other nodes still remember by
        # (node id, request id) and would answer instead of acting (a post never delivered
        # answered 200). 2**62 leaves a u64 (``wire``) room for centuries of requests.
        self._ids = itertools.count(secrets.randbelow(2**62) + 1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_overdue: Callable[[Call], None] | None = None  # None: wait until the timeout

    def open(self, targets: tuple[str, ...], then: CallDone | None = None, context: Any = None) -> Call:
        """Register a call before its request is published (a reply may come at once). The
        receiver acts only before ``call.deadline`` (now + budget); the call expires after
        the timeout. Close it with :meth:`close` when done. ``then`` and ``context``: see
        :class:`Call`."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        now = loop.time()
        expires_at = now + self.timeout_s
        if self.on_overdue is not None:
            ask_at, hold_until = now + self._ask_after_s, expires_at + self.wait_s
        else:
            ask_at = hold_until = expires_at
        call = Call(next(self._ids), targets, time.time() + self.budget_s, expires_at, ask_at, hold_until, loop, then,
                    context)
        self._calls[call.id] = call
        if self._timer is None:
            self._timer = loop.call_at(call.ask_at, self._tick)
        if call.done and then is not None:  # no targets: done already, and told so at once
            call.then = None
            then.call_done(call)
        return call

    def close(self, call: Call) -> None:
        """Forget a call: a reply that comes later is dropped."""
        self._calls.pop(call.id, None)

    def answer(self, header: dict[str, Any]) -> None:
        """Hand a reply to its call; a reply to no open call (too late) is dropped."""
        call = self._calls.get(header.get("r"))  # type: ignore[arg-type]
        if call is not None:
            call.answer(str(header.get("f")), header)

    def answer_ok(self, request_ids: tuple[int, ...], node_id: str) -> None:
        """Hand a compact "ok" to each of its calls (as :meth:`answer`, without a header)."""
        get = self._calls.get
        for request_id in request_ids:
            call = get(request_id)
            if call is not None:
                call.answer_ok(node_id)

    def _tick(self) -> None:
        """Hand the overdue calls to ``on_overdue``, expire the timed-out ones (or hold them:
        see :meth:`_held`), and arm the timer for the next of either. Oldest first: the calls
        being asked again are the oldest ones still open, the others follow in the order
        they are due."""
        self._timer = None
        loop = self._loop
        assert loop is not None
        now = loop.time() + _TIMER_SLACK_S
        expired, overdue = [], []
        next_at = None
        for call in self._calls.values():  # oldest first: dicts keep insertion order
            if call.expires_at <= now:
                if self.on_overdue is not None and not call.asking:
                    # Never asked: this timer came late (the process was stopped or starved
                    # past the timeout). The targets still remember what they did: ask them
                    # once more before answering 503 without knowing.
                    call.asking = True
                    call.expires_at = now + _LATE_ASK_S
                    call.hold_until = max(call.hold_until, call.expires_at)
                    overdue.append(call)
                elif (later := self._held(call, now)) is not None:
                    call.expires_at = later
                else:
                    expired.append(call)
                    continue
                due = call.expires_at
            elif call.asking:
                due = call.expires_at
            elif call.ask_at <= now:
                call.asking = True
                overdue.append(call)
                due = call.expires_at
            else:
                next_at = call.ask_at if next_at is None else min(next_at, call.ask_at)
                break
            next_at = due if next_at is None else min(next_at, due)
        if next_at is not None:
            self._timer = loop.call_at(next_at, self._tick)
        for call in expired:
            del self._calls[call.id]
            call.expire()
        for call in overdue:
            if not call.done:
                assert self.on_overdue is not None  # ask_at is expires_at without it
                self.on_overdue(call)

    def _held(self, call: Call, now: float) -> float | None:
        """A call past its timeout: None to expire it (answer 503) now, else when to look at
        it again. It expires once its targets were asked for ``_ask_span_s`` with Redis
        answering the asks (they had their chance to answer), or at ``hold_until``; until
        then its links are down, or just back, and an answer may still come."""
        if not call.asking or now >= call.hold_until:
            return None
        since = call.asking_since
        if since is not None and now - since >= self._ask_span_s:
            return None
        return min(call.hold_until, (now if since is None else since) + self._ask_span_s)


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
            self._outbox = PublishLink(locator, max_backoff_s=max_backoff_s, check_s=check_s, join=encode_batch)
        else:
            seeds, locate = shards
            self._inbox = ShardedSubscribeLink(
                seeds, channel, self._on_message, locate, max_backoff_s=max_backoff_s, check_s=check_s
            )
            self._outbox = ShardedPublisher(seeds, locate, max_backoff_s=max_backoff_s, check_s=check_s,
                                            join=encode_batch)
        self._channels: dict[str, bytes] = {}  # node id -> its channel name, encoded
        # The nodes whose last reply said they read the compact forms (``wire.VERSION``).
        self._compact: set[str] = set()
        self._node: LocalNode | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # strong refs to running deletes
        self._asking: set[asyncio.Task[Any]] = set()  # strong refs to calls being asked again
        # Outcomes of the requests this node acted on (None: still acting) or dropped, by
        # (sender, request id), and when to forget each (wall clock), oldest first.
        # (A reply, or the bytes of a compact one.)
        self._outcomes: dict[tuple[str, int], _Outcome | None] = {}
        self._forget_at: deque[tuple[float, tuple[str, int]]] = deque()
        self._remember_s = pending.timeout_s - pending.budget_s + _REMEMBER_SLACK_S
        # The outcomes whose reply could not be published (Redis away, the sender's
        # subscription down): kept as long as a sender may hold its call (``wait_s``) more.
        self._kept: dict[tuple[str, int], _Outcome] = {}
        self._forget_kept_at: deque[tuple[float, tuple[str, int]]] = deque()
        self._keep_s = self._remember_s + pending.wait_s
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

    def request(self, call: Call, header: dict[str, Any], data: bytes) -> None:
        """Publish the request (``header`` gets the call's id, this node and the deadline) to
        each of the call's targets, encoded once (a post to one node: see :meth:`post`);
        the outcomes go to the call."""
        targets = call.targets
        if len(targets) == 1 and header["k"] == KIND_POST and "x" not in header:
            self.post(call, header["c"], header["b"], data)
            return
        header["r"] = call.id
        header["f"] = self._node_id
        header["d"] = call.deadline
        header["w"] = VERSION
        message = encode_message(header, data)
        publish, channel = self._outbox.publish, self._channel
        if len(targets) == 1:  # one outcome: the call takes it, in whatever order links answer
            publish(channel(targets[0]), message, call)
            return
        if self._outbox.in_order:
            for target in targets:
                publish(channel(target), message, call)
        else:
            for target in targets:
                publish(channel(target), message, _TargetSink(call, target))

    def post(self, call: Call, connection_id: str, binary: int, data: bytes) -> None:
        """Publish a post to the call's one target: compact if it is known to read it, else
        JSON saying that this node does (see ``wire``)."""
        target = call.targets[0]
        message = encode_post(call.id, self._node_id, call.deadline, connection_id, binary, data,
                              target in self._compact)
        self._outbox.publish(self._channels.get(target) or self._channel(target), message, call)

    def _channel(self, node_id: str) -> bytes:
        name = self._channels.get(node_id)
        if name is None:
            if len(self._channels) >= _CHANNEL_CACHE_SIZE:
                self._channels.clear()  # node ids of long-gone processes
            name = self._channels[node_id] = self._keys.channel(node_id).encode()
        return name

    def _on_message(self, payload: bytes) -> None:
        try:
            messages = split_batch(payload)
        except ValueError:
            log.exception("bad registry batch dropped")
            return
        # Read once per batch: its messages are handled in one go, within the same instant
        # as far as deadlines (a second apart from the sender's timeout) can tell, and no
        # link changes state meanwhile.
        now = time.time()
        self._forget(now)
        can_publish = self._outbox.ready.is_set()
        answer, serve, compact = self._pending.answer, self._serve, self._compact
        oks: dict[str, tuple[list[int], float]] = {}  # by sender: the posts owed a compact "ok"
        for message in messages:
            try:
                form = message[:1]
                if form == b"R":  # the compact forms: the cross-node post's, read without a header
                    sender, request_ids = read_ok(message)
                    if sender not in compact:
                        self._reads_compact(sender)
                    self._pending.answer_ok(request_ids, sender)
                    continue
                if form == b"P":
                    request_id, sender, deadline, connection_id, binary, data = read_post(message)
                    if self._serve_post(request_id, sender, deadline, connection_id, binary, data, now, can_publish,
                                        True):
                        owed = oks.get(sender)
                        if owed is None:  # a sender's requests come in the order it opened them:
                            oks[sender] = owed = ([], deadline)  # the first's deadline is the earliest
                        owed[0].append(request_id)
                    continue
                header, data = decode_message(message)
                if header["k"] == KIND_REPLY:
                    # what its sender reads: a node of an earlier release never says "w"
                    if "w" not in header:
                        compact.discard(header.get("f"))
                    elif header["f"] not in compact:
                        self._reads_compact(header["f"])
                    answer(header)
                else:
                    serve(header, data, now, can_publish)
            except Exception:
                log.exception("bad registry message dropped")
        for sender, (owed_ids, deadline) in oks.items():  # one "ok" to all of a sender's posts
            self._reply(sender, owed_ids, _SAID_OK, deadline)

    def _reads_compact(self, node_id: str) -> None:
        compact = self._compact
        if len(compact) >= _CHANNEL_CACHE_SIZE:
            compact.clear()  # node ids of long-gone processes
        compact.add(node_id)

    def _serve(self, header: dict[str, Any], data: bytes, now: float, can_publish: bool) -> None:
        """Act on one request (``now``: the wall clock; ``can_publish``: the publishing link is
        up) and answer it."""
        kind = header["k"]
        if kind == KIND_ASK:
            self._answer_ask(header)
            return
        if kind == KIND_POST:
            sender, request_id, deadline = header["f"], header["r"], header["d"]
            if self._serve_post(request_id, sender, deadline, header["c"], header["b"], data, now, can_publish,
                                "w" in header, header.get("x", "")):
                self._reply(sender, (request_id,), _SAID_OK, deadline)
            return
        key = (header["f"], header["r"])
        if key in self._outcomes or key in self._kept:
            return  # asked about before it came (it is dropped), or seen already
        if now > header["d"] or not can_publish:
            # Past its deadline the sender has answered 503 already; without a link to
            # publish on, nobody would learn the outcome: acting would break either answer.
            self._remember(key, header["d"], _dropped(header["r"], self._node_id, "w" in header))
            return
        node = self._node
        assert node is not None
        reply: dict[str, Any] = {"k": KIND_REPLY, "r": header["r"], "f": self._node_id, "s": STATUS_OK}
        if "w" in header:  # the sender reads compact replies
            reply["w"] = VERSION
        arriving = node.arriving(header["c"]) if kind in _ABOUT_A_SESSION else None
        if arriving is not None:  # a session on its way here: answered about once it landed, or did not
            self._remember(key, header["d"], None)  # acting: an ask is answered when it is done
            self._spawn(self._serve_once_landed(arriving, header, data, reply))
            return
        if kind not in (KIND_GET, KIND_SURVEY, KIND_LANDED):  # acting: remembered, so that a sender that lost the reply can ask
            self._remember(key, header["d"], reply if kind != KIND_DELETE else None)
        self._act(node, header, data, reply)

    def _act(self, node: LocalNode, header: dict[str, Any], data: bytes, reply: dict[str, Any]) -> None:
        """Do what a request (not a post) asks, and answer it: now, or for a delete once its
        connection closed."""
        kind = header["k"]
        try:
            if kind == KIND_GET:
                reply["i"] = info_to_json(node.local_info(header["c"]))
            elif kind == KIND_FANOUT:
                reply["n"] = node.local_fanout(
                    header["t"], data, bool(header["b"]), user=header.get("u"), group=header.get("g"),
                    fanout_id=header.get("x", ""),
                )
            elif kind == KIND_GROUP:
                if not node.local_group(header["c"], header["g"], join=bool(header["j"])):
                    reply["s"] = STATUS_GONE
            elif kind == KIND_TAKE:
                reply["i"] = node.local_take_session(header["c"], header["a"], header["f"])
            elif kind == KIND_SURVEY:
                reply["v"] = node.local_survey(header["q"])
            elif kind == KIND_LANDED:
                reply["v"] = int(node.local_landed(header["c"], header["h"]))
            elif kind == KIND_DELETE:
                self._spawn(self._answer_when_done(node.local_delete(header["c"]), header["f"], reply, header["d"]))
                return
            else:
                raise ValueError(f"unknown request kind {kind!r}")
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            _fail(reply, exc)
        self._reply(header["f"], (header["r"],), reply, header["d"])

    def _serve_post(
        self, request_id: int, sender: str, deadline: float, connection_id: str, binary: int, data: bytes,
        now: float, can_publish: bool, compact: bool, fanout_id: str = "",
    ) -> bool:
        """Act on a post (as :meth:`_serve`; ``compact``: the sender reads compact replies;
        ``fanout_id``: a fan-out sent on to a session that moved, see ``LocalNode.local_post``).
        True: delivered, and owed the compact "ok", which the caller sends (for all the posts
        of a batch at once); else answered or dropped here."""
        key = (sender, request_id)
        outcomes = self._outcomes
        if key in outcomes or key in self._kept:
            return False  # asked about before it came (it is dropped), or seen already
        if now > deadline or not can_publish:  # see _serve
            self._remember(key, deadline, _dropped(request_id, self._node_id, compact))
            return False
        node = self._node
        assert node is not None
        reply: _Outcome
        try:
            later = node.local_post(connection_id, data, bool(binary), fanout_id)
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            reply = _failed(request_id, self._node_id, compact, exc)
        else:
            if later is not None:  # kept for a session on its way here: answered once it is queued or not
                reply = {"k": KIND_REPLY, "r": request_id, "f": self._node_id, "s": STATUS_OK}
                if compact:
                    reply["w"] = VERSION
                self._remember(key, deadline, None)  # acting: an ask is answered when it is done
                self._spawn(self._answer_kept_post(later, sender, reply, deadline))
                return False
            if compact:  # remembered as _remember does, without a call: the common case
                outcomes[key] = _SAID_OK
                self._forget_at.append((deadline + self._remember_s, key))
                return True
            reply = {"k": KIND_REPLY, "r": request_id, "f": self._node_id, "s": STATUS_OK}
        self._remember(key, deadline, reply)
        self._reply(sender, (request_id,), reply, deadline)
        return False

    async def _serve_once_landed(
        self, arriving: Awaitable[object], header: dict[str, Any], data: bytes, reply: dict[str, Any]
    ) -> None:
        """Act on a request about a reliable session that was on its way here once it landed
        (or did not: then it is answered as not here), before the request's deadline; one
        still waiting then is answered as dropped (never acted on: its sender asks again)."""
        deadline = header["d"]
        try:
            await asyncio.wait_for(asyncio.shield(arriving), deadline - time.time())
        except TimeoutError:
            self._answer_late(header["f"], _dropped(header["r"], self._node_id, "w" in header), deadline)
            return
        except Exception:  # the move failed: the session is not here, as _act finds
            log.debug("a session's move here failed while a request about it waited", exc_info=True)
        node = self._node
        assert node is not None
        key = (header["f"], header["r"])
        if header["k"] != KIND_DELETE:
            self._outcomes[key] = reply  # done once _act returns (a delete: once it is answered)
        self._act(node, header, data, reply)

    async def _answer_when_done(self, acting: Awaitable[None], to: str, reply: dict[str, Any], deadline: float) -> None:
        """Answer a request whose action completes later (a delete closing its connection)
        once it has: ``reply``, or the failure."""
        try:
            await acting
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            _fail(reply, exc)  # a session that moved: where to (a caller follows it)
        self._answer_late(to, reply, deadline)

    async def _answer_kept_post(self, kept: Awaitable[None], to: str, reply: dict[str, Any], deadline: float) -> None:
        """Answer a post kept for a reliable session on its way here once it is queued, or
        refused. One still kept at its deadline is never queued (its sender may answer 503
        from then on): it is answered as dropped, and a sender still waiting posts it again."""
        try:
            await asyncio.wait_for(kept, deadline - time.time())  # on time out, cancelled: not queued
        except TimeoutError:
            reply = _dropped(reply["r"], self._node_id, "w" in reply)
        except Exception as exc:  # noqa: BLE001 - every failure is answered (and logged)
            _fail(reply, exc)
        self._answer_late(to, reply, deadline)

    def _answer_late(self, to: str, reply: dict[str, Any], deadline: float) -> None:
        """Send the reply of a request answered after it was served, and keep it for asks."""
        key = (to, reply["r"])
        if key in self._outcomes:
            self._outcomes[key] = reply  # done: an ask answers it from now on
        self._reply(to, (reply["r"],), reply, deadline)

    # ------------------------------------------------------------ outcome memory

    def _remember(self, key: tuple[str, int], deadline: float, reply: _Outcome | None) -> None:
        self._outcomes[key] = reply
        self._forget_at.append((deadline + self._remember_s, key))

    def _forget(self, now: float) -> None:
        forget_at, outcomes = self._forget_at, self._outcomes
        while forget_at and forget_at[0][0] < now:
            outcomes.pop(forget_at.popleft()[1], None)
        forget_at, kept = self._forget_kept_at, self._kept
        while forget_at and forget_at[0][0] < now:
            kept.pop(forget_at.popleft()[1], None)

    def _keep(self, key: tuple[str, int]) -> None:
        """The reply to ``key`` could not be published by its deadline: its sender may hold
        the call for ``wait_s`` past its timeout and ask then; remember it that long."""
        reply = self._outcomes.get(key)
        if reply is not None and key not in self._kept:
            self._kept[key] = reply
            self._forget_kept_at.append((time.time() + self._keep_s, key))

    def _answer_ask(self, header: dict[str, Any]) -> None:
        """A sender lost our reply (or its request): answer again what we did, or that we
        did not act, and never will."""
        key = (header["f"], header["r"])
        reply = self._kept.get(key)
        if reply is None:
            if key not in self._outcomes:
                self._remember(key, header["d"], _dropped(header["r"], self._node_id, "w" in header))
            reply = self._outcomes[key]
        if reply is not None:  # None: still acting (a delete closing, a kept post); its reply comes when done
            self._reply(header["f"], (header["r"],), reply, header["d"])

    def _ask_again(self, call: Call) -> None:
        task = asyncio.ensure_future(self._ask(call))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _ask(self, call: Call) -> None:
        """Ask each target that has not answered ``call`` for its outcome, once both links
        are up, and again every ``_ASK_AGAIN_S``, until they all answered or the call expired.
        ``call.asking_since`` says since when Redis has taken the asks (None while a link is
        down): :class:`PendingCalls` holds the call past its timeout until it has for long
        enough. Given up on (the node is closing): the call expires at once."""
        ask = encode_message({"k": KIND_ASK, "r": call.id, "f": self._node_id, "d": call.deadline})
        links = (self._inbox.ready, self._outbox.ready)
        sink = _AskSink(call)
        try:
            while not call.done:
                if all(link.is_set() for link in links):
                    for target in call.unanswered():
                        self._outbox.publish(self._channel(target), ask, sink)
                    await asyncio.wait([call.future], timeout=_ASK_AGAIN_S)
                else:  # a link is reconnecting: look again shortly
                    call.asking_since = None
                    await asyncio.wait([call.future], timeout=_LINKS_POLL_S)
        except asyncio.CancelledError:
            call.expire()
            raise

    def _reply(self, to: str, request_ids: Sequence[int], reply: _Outcome, deadline: float) -> None:
        """Publish the reply to ``request_ids`` (one, or any number for _SAID_OK); one that no
        subscriber took (the sender's subscription is being moved to another shard, or
        reconnects) is published again until the request's deadline, while the sender still
        waits (a reply twice is taken once); if it never was, the outcomes are kept for a
        sender that holds its call (:meth:`_keep`)."""
        message = ok_reply(self._node_id, request_ids) if isinstance(reply, str) else encode_reply(reply)
        _ReplyPublish(self._outbox, self._channel(to), message, deadline, to, request_ids, self._keep).send()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _ReplyPublish:
    """One reply and its own sink: sent again every ``_RESEND_S`` until a subscriber took
    it or the request's deadline (wall clock) is near; then, never taken, ``keep`` the
    outcome of each of its requests (by ``to`` and request id)."""

    __slots__ = ("_channel", "_deadline", "_keep", "_message", "_outbox", "_request_ids", "_to")

    def __init__(
        self, outbox: PublishLink | ShardedPublisher, channel: bytes, message: bytes, deadline: float,
        to: str, request_ids: Sequence[int], keep: Callable[[tuple[str, int]], None],
    ) -> None:
        self._outbox = outbox
        self._channel = channel
        self._message = message
        self._deadline = deadline
        self._to = to
        self._request_ids = request_ids
        self._keep = keep

    def send(self) -> None:
        self._outbox.publish(self._channel, self._message, self)

    def outcome(self, reply: Any) -> None:
        if reply.__class__ is int and reply > 0:
            return
        if time.time() + _RESEND_S < self._deadline:
            asyncio.get_running_loop().call_later(_RESEND_S, self.send)
            return
        for request_id in self._request_ids:
            self._keep((self._to, request_id))
        if reply.__class__ is not int and reply is not LOST and reply is not UNSENT:
            log.debug("redis refused a reply PUBLISH: %r", reply)


class _AskSink:
    """The sink of a call's asks: the first one Redis answers (however many subscribers
    took it: none means the target is not listening, and cannot answer) starts the time the
    call has been asked with its links up."""

    __slots__ = ("_call",)

    def __init__(self, call: Call) -> None:
        self._call = call

    def outcome(self, reply: Any) -> None:
        call = self._call
        if reply.__class__ is int and call.asking_since is None:
            call.asking_since = asyncio.get_running_loop().time()


class _TargetSink:
    """The sink of one target's PUBLISH, when outcomes may come back in any order."""

    __slots__ = ("_call", "_target")

    def __init__(self, call: Call, target: str) -> None:
        self._call = call
        self._target = target

    def outcome(self, reply: Any) -> None:
        self._call.outcome_of(self._target, reply)


def _dropped(request_id: int, node_id: str, compact: bool) -> dict[str, Any]:
    """The answer that this node did not act on a request, and never will (``compact``: its
    sender reads compact replies: the answer says this node does too)."""
    reply = {"k": KIND_REPLY, "r": request_id, "f": node_id, "s": STATUS_DROPPED}
    if compact:
        reply["w"] = VERSION
    return reply


def _failed(request_id: int, node_id: str, compact: bool, exc: Exception) -> dict[str, Any]:
    """The answer to a request that failed with ``exc`` (see :meth:`NodeChannel._serve`)."""
    reply: dict[str, Any] = {"k": KIND_REPLY, "r": request_id, "f": node_id, "s": STATUS_FAIL}  # "s": see _fail
    if compact:
        reply["w"] = VERSION
    return _fail(reply, exc)


def _fail(reply: dict[str, Any], exc: Exception) -> dict[str, Any]:
    """``reply`` saying that its request failed with ``exc``: the status, and which limit
    (a usage plan's names it) or where a moved session went."""
    reply["s"] = _status_of(exc)
    if isinstance(exc, LimitExceededError) and exc.message:
        reply["m"] = exc.message
    elif isinstance(exc, MovedError):
        reply["n"] = exc.node_id
    return reply


def _status_of(exc: Exception) -> str:
    if isinstance(exc, MovedError):
        return STATUS_MOVED
    if isinstance(exc, GoneError):
        return STATUS_GONE
    if isinstance(exc, LimitExceededError):
        return STATUS_LIMIT
    log.error("registry request failed on this node", exc_info=exc)
    return STATUS_FAIL
