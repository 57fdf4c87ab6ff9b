"""Lean RESP connections for the node channels: the hot path of every cross-node call.

A cross-node post is two PUBLISHes (the request on the owner's channel, the reply on the
asker's) and two pushed messages. Through redis-py each PUBLISH cost a pipeline round
(Python packing, a timer per read, task wake-ups) and each message a PubSub read: 17-31% of
each node's CPU. Here a node keeps two plain connections of its own, with hiredis doing the
RESP (``hiredis.pack_command`` out, ``hiredis.Reader`` in) over an asyncio Protocol:

- :class:`SubscribeLink` SUBSCRIBEs to this node's channel and hands each pushed message to a
  callback straight from ``data_received``: no task, no await, no dict per message;
- :class:`PublishLink` queues PUBLISH commands as they are made and writes all those of one
  event-loop iteration at once; each reply (how many subscribers got the message) goes to
  the command's :class:`Sink`, in order, since Redis answers a connection in order. Given a
  ``join`` (the node channels' batch encoding, ``wire.encode_batch``), the messages of one
  iteration to one channel leave as ONE PUBLISH of their batch, whose reply goes to each of
  their sinks: under load a node pair's requests and replies cost Redis one PUBLISH and one
  pushed message per iteration instead of one per call.

Both reach the Redis the registry's redis-py client reaches, with its credentials and TLS
settings (see :func:`endpoint_of`). Where that is, a :class:`Locator` says, asked again at
every connect: always the same server for ``redis://``, ``rediss://`` and ``unix://``; the
master the Sentinels name now for ``redis+sentinel://`` (``connect``). Both reconnect with
backoff when the connection drops, is refused, or leaves a PING unanswered for ``check_s``,
and when the server stopped being the master (a failover demotes a master that still runs:
it keeps the connections open, answers PUBLISH and feeds its subscribers only what it
replicates). With an endpoint that says so (``master_only``), both links ask the locator at
every check whether the master moved (Sentinel names another one before it demotes the old,
which may take it seconds), and the publishing link asks ``ROLE`` instead of PING (the
subscribed one may only PING). On Redis Cluster they speak sharded pub/sub (``sharded``:
SSUBSCRIBE, SPUBLISH), one publish link per shard, and ``shards`` points them at the shard
serving each channel (:func:`moved_to` reads where a ``MOVED`` sends them).

A PUBLISH made while the link is down fails at once with :data:`UNSENT` (it never left);
one in flight when the connection drops gets :data:`LOST` (it may have reached Redis).
Everything else the registry sends (records, scripts, listings) still goes through redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import hiredis
from redis.asyncio import Redis
from redis.backoff import ExponentialWithJitterBackoff

__all__ = [
    "LOST", "UNSENT", "Endpoint", "Fixed", "Locator", "PublishLink", "Sink", "SubscribeLink", "endpoint_from",
    "endpoint_of", "moved_to",
]

log = logging.getLogger("wsgateway.registry")

_pack: Callable[[tuple[Any, ...]], bytes] = hiredis.pack_command  # type: ignore[assignment,unused-ignore]  # its stub says 1-tuple
_PING = _pack((b"PING",))
_ROLE = _pack((b"ROLE",))
_REDIRECTS_AT_ONCE = 4  # redirections followed in a row without backing off
# At close, how long a link waits for Redis to confirm what is in flight (see _Link.close).
_CLOSE_GRACE_S = 1.0


class _Outcome:
    """A command that got no reply from Redis, and why (see :data:`LOST`, :data:`UNSENT`)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


LOST = _Outcome("LOST")  # written, then the connection dropped: it may have reached Redis
UNSENT = _Outcome("UNSENT")  # the link was down: it never left this process


class Sink(Protocol):
    """Who waits for the replies to the commands sent with it."""

    def outcome(self, reply: Any) -> None:
        """Take one command's reply (an ``int`` for PUBLISH, ``hiredis.ReplyError`` if Redis
        refused it), or :data:`LOST` or :data:`UNSENT`. Called once per command, in the order
        the commands were sent on one link; must not raise."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom the links connect; built by :func:`endpoint_of`."""

    host: str
    port: int
    path: str | None  # a unix socket: host and port are ignored
    tls: ssl.SSLContext | None
    username: str | None
    password: str | None
    connect_timeout_s: float
    keepalive: tuple[tuple[int, int], ...] | None  # TCP keepalive options; None: keepalive off
    master_only: bool = False  # a failover may demote the server: check its ROLE


class Locator(Protocol):
    """Where the links connect; asked at every (re)connect."""

    async def locate(self) -> Endpoint:
        """The endpoint to connect to now; raises (``redis.RedisError``, ``OSError``) when
        nobody can tell (the link retries after its backoff)."""

    async def moved(self, endpoint: Endpoint) -> bool:
        """Whether ``endpoint`` is no longer the server to use (a link connected there
        reconnects); False when that cannot be told now. Asked at every check."""


class Fixed:
    """The :class:`Locator` of one server that never moves."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint

    async def locate(self) -> Endpoint:
        return self._endpoint

    async def moved(self, endpoint: Endpoint) -> bool:
        return False


def endpoint_of(client: Redis, connect_timeout_s: float) -> Endpoint:
    """The endpoint ``client`` connects to, read from its pool's settings (so a password set
    on the pool, the URL's TLS parameters and its unix socket path all apply). Raises
    ``redis.RedisError`` for TLS settings redis-py rejects."""
    pool = client.connection_pool
    return endpoint_from(pool.connection_class(**pool.connection_kwargs), connect_timeout_s)


def endpoint_from(settings: Any, connect_timeout_s: float) -> Endpoint:
    """The endpoint of a redis-py connection object that was never connected (read only)."""
    tls = getattr(settings, "ssl_context", None)
    keepalive = None
    if getattr(settings, "socket_keepalive", False):
        keepalive = tuple(getattr(settings, "socket_keepalive_options", {}).items())
    return Endpoint(
        host=getattr(settings, "host", "127.0.0.1"),
        port=int(getattr(settings, "port", 6379)),
        path=getattr(settings, "path", None),
        tls=None if tls is None else tls.get(),
        username=settings.username,
        password=settings.password,
        connect_timeout_s=connect_timeout_s,
        keepalive=keepalive,
    )


class _Connection(asyncio.Protocol):
    """One connection's life. What arrives is parsed by hiredis; commands sent during one
    event-loop iteration leave in one ``transport.write``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._reader = hiredis.Reader()
        self._sinks: deque[Sink | None] = deque()  # one per command awaiting its reply
        self._out: list[bytes] = []
        self._scheduled = False  # a flush is due at the end of this event-loop iteration
        self._transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = loop.create_future()
        self.pongs = 0  # PINGs answered: the link's check that Redis still answers

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass it

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._out.clear()
        self._unsent()
        sinks, self._sinks = self._sinks, deque()
        for sink in sinks:
            if sink is not None:
                sink.outcome(LOST)
        if not self.closed.done():
            self.closed.set_result(None)

    def send(self, command: bytes, sink: Sink | None) -> None:
        """Queue a packed command whose reply goes to ``sink`` (None: nobody waits for it)."""
        if self._transport is None:  # dropped; the link has not noticed yet
            if sink is not None:
                sink.outcome(UNSENT)
            return
        self._sinks.append(sink)
        self.write(command)

    def write(self, command: bytes) -> None:
        """Queue a packed command whose reply is not matched to it (pushes, PINGs when
        subscribed); written at the end of this event-loop iteration."""
        self._out.append(command)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def flush(self) -> None:
        """Write what is queued now rather than at the end of this iteration."""
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        self._collect()
        out, transport = self._out, self._transport
        if transport is not None and out:
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        out.clear()

    def _collect(self) -> None:
        """Queue what was held back for the flush (a subclass's coalesced commands)."""

    def _unsent(self) -> None:
        """The connection dropped: tell what was held back that it never left."""

    def outcome(self, reply: Any) -> None:
        """The sink of this connection's own PINGs and ROLEs: a ROLE counts only if the
        server is still a master."""
        if reply == b"PONG" or (reply.__class__ is list and reply and reply[0] == b"master"):
            self.pongs += 1

    def ping(self, role: bool = False) -> None:
        self.send(_ROLE if role else _PING, self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _broken(self, exc: BaseException) -> None:
        log.warning("registry link: unexpected answer from Redis (%r); reconnecting", exc)
        self.abort()


class _PublishConnection(_Connection):
    """Replies are matched to sinks first in, first out. With a ``join``, the publishes of
    one iteration are held by channel and leave at the flush as one PUBLISH per channel (a
    lone message as itself, several as their ``join``), after the commands sent directly."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, command: bytes, join: Callable[[list[bytes]], bytes] | None
    ) -> None:
        super().__init__(loop)
        self._command = command
        self._join = join
        self._held: dict[bytes, tuple[list[bytes], list[Sink | None]]] = {}

    def publish(self, channel: bytes, message: bytes, sink: Sink | None) -> None:
        """Queue a PUBLISH of ``message`` on ``channel``; its reply goes to ``sink``."""
        if self._join is None or self._transport is None:
            self.send(_pack((self._command, channel, message)), sink)
            return
        held = self._held.get(channel)
        if held is None:
            self._held[channel] = ([message], [sink])
            self._schedule()
        else:
            held[0].append(message)
            held[1].append(sink)

    def _collect(self) -> None:
        held = self._held
        if not held:
            return
        join, command, sinks, out = self._join, self._command, self._sinks, self._out
        assert join is not None
        for channel, (messages, waiting) in held.items():
            if len(messages) == 1:
                out.append(_pack((command, channel, messages[0])))
                sinks.append(waiting[0])
            else:
                out.append(_pack((command, channel, join(messages))))
                sinks.append(_Each(waiting))
        held.clear()

    def _unsent(self) -> None:
        held, self._held = self._held, {}
        for _, waiting in held.values():
            for sink in waiting:
                if sink is not None:
                    sink.outcome(UNSENT)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        gets, sinks = reader.gets, self._sinks
        try:
            while (reply := gets()) is not False:
                sink = sinks.popleft()
                if sink is not None:
                    sink.outcome(reply)
                elif isinstance(reply, hiredis.ReplyError):
                    log.debug("redis refused a reply PUBLISH: %r", reply)
        except Exception as exc:  # noqa: BLE001 - a stream out of step cannot be trusted again
            self._broken(exc)


class _Each:
    """The sink of a batch's PUBLISH: its one reply goes to the sink of every message in it."""

    __slots__ = ("_sinks",)

    def __init__(self, sinks: list[Sink | None]) -> None:
        self._sinks = sinks

    def outcome(self, reply: Any) -> None:
        for sink in self._sinks:
            if sink is not None:
                sink.outcome(reply)


class _SubscribeConnection(_Connection):
    """The handshake's replies go to their sinks; once subscribed, everything is a push.

    Sharded (Redis Cluster): the pushes are ``smessage``/``ssubscribe``; a ``MOVED`` answer to
    SSUBSCRIBE names the shard serving the channel (kept in ``moved``), and a
    ``sunsubscribe`` push means the channel's slot moved away: both end the connection, so
    that the link subscribes again where the slot is now."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, on_message: Callable[[bytes], None], *, sharded: bool = False
    ) -> None:
        super().__init__(loop)
        self._on_message = on_message
        self._kinds = (b"smessage", b"ssubscribe", b"sunsubscribe") if sharded else (
            b"message", b"subscribe", b"unsubscribe")
        self.subscribed: asyncio.Future[None] = loop.create_future()
        # Set once Redis confirms the UNSUBSCRIBE of a closing link (see SubscribeLink._finish).
        self.unsubscribed: asyncio.Future[None] | None = None
        self.moved: tuple[str, int] | None = None  # ("", 0): moved, to a shard not named

    def data_received(self, data: bytes) -> None:
        if self.unsubscribed is not None and self.unsubscribed.done():
            return  # closing, and no longer subscribed: nothing more is ours
        reader = self._reader
        reader.feed(data)
        gets, sinks, on_message = reader.gets, self._sinks, self._on_message
        try:
            while (reply := gets()) is not False:
                if sinks:  # AUTH's reply: it comes before SUBSCRIBE is even sent
                    sink = sinks.popleft()
                    if sink is not None:
                        sink.outcome(reply)
                    continue
                if reply.__class__ is not list:  # MOVED, NOAUTH, anything a subscriber never gets
                    self.moved = moved_to(reply)
                    if self.moved is not None:  # the link subscribes where it was sent
                        self.abort()
                        return
                    raise ConnectionError(f"Redis answered {reply!r}")
                kind = reply[0]
                if kind == self._kinds[0]:
                    on_message(reply[2])
                elif kind == b"pong":
                    self.pongs += 1
                elif kind == self._kinds[1] and not self.subscribed.done():
                    self.subscribed.set_result(None)
                elif self.unsubscribed is not None and kind == self._kinds[2]:
                    self.unsubscribed.set_result(None)  # every message published before it came
                    return
                elif kind == b"sunsubscribe":  # the slot moved: subscribe where it is now
                    self.moved = ("", 0)
                    self.abort()
                    return
        except Exception as exc:  # noqa: BLE001 - a stream out of step cannot be trusted again
            self._broken(exc)

    def ping(self, role: bool = False) -> None:
        self.write(_PING)  # subscribed: only PING is allowed; the answer is a push, ["pong", ""]


class _Reply:
    """A sink a coroutine awaits (the commands of a handshake)."""

    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[Any] = loop.create_future()

    def outcome(self, reply: Any) -> None:
        if not self.future.done():
            self.future.set_result(reply)


_C = TypeVar("_C", bound=_Connection)


class _Link(Generic[_C]):
    """Keeps one connection open: connect, authenticate, set up, watch it (a PING every
    ``check_s``), and after a failure back off and start again, until :meth:`close`."""

    def __init__(self, locator: Locator, name: str, *, max_backoff_s: float, check_s: float) -> None:
        self._locator = locator
        self._name = name
        self._backoff = ExponentialWithJitterBackoff(cap=max_backoff_s, base=min(0.05, max_backoff_s))
        self._check_s = check_s
        self._task: asyncio.Task[None] | None = None
        self._conn: _C | None = None
        self._tried: _C | None = None  # the last connection opened or tried
        self._endpoint: Endpoint | None = None  # where the last attempt connected
        self.ready = asyncio.Event()  # connected and set up: commands go through

    def start(self) -> None:
        """Start connecting in the background (call once, from the event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._keep(), name=f"registry-{self._name}")

    async def close(self) -> None:
        """See what is in flight through (:meth:`_finish`, at most ``_CLOSE_GRACE_S``), then
        disconnect and stop reconnecting; idempotent."""
        if self._task is None:
            return
        conn = self._conn
        if conn is not None and self.ready.is_set() and not self._task.done():
            try:
                async with asyncio.timeout(_CLOSE_GRACE_S):
                    await self._finish(conn)
            except (TimeoutError, ConnectionError) as exc:
                log.info("registry %s link closed with work in flight (%r)", self._name, exc)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _finish(self, conn: _C) -> None:
        """Before the connection is dropped at close: let Redis confirm what is in flight."""

    def _new_connection(self, loop: asyncio.AbstractEventLoop) -> _C:
        raise NotImplementedError

    async def _set_up(self, conn: _C) -> None:
        """What the connection does once authenticated, before it is ready."""

    async def _where_next(self, failures: int) -> Endpoint:
        """Where the next attempt connects (after ``failures`` failed ones in a row)."""
        return await self._locator.locate()

    def _retry_at_once(self, conn: _C | None) -> bool:
        """Whether the failure of ``conn`` (the last connection tried) calls for no backoff
        (it was redirected elsewhere)."""
        return False

    async def _keep(self) -> None:
        failures = 0
        while True:
            conn, at_once = None, False
            try:
                conn, ep = await self._open(failures)
                self._conn = conn
                self.ready.set()
                failures = 0
                await self._watch(conn, ep)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Redis away, refusing or silent: retry
                at_once = self._retry_at_once(self._tried)
                (log.info if at_once else log.warning)("registry %s link down (%r); reconnecting", self._name, exc)
            finally:
                self.ready.clear()
                self._conn = None
                if conn is not None:
                    conn.abort()
            failures += 1
            if not at_once or failures > _REDIRECTS_AT_ONCE:  # shards that disagree: back off
                await asyncio.sleep(self._backoff.compute(failures))

    async def _open(self, failures: int) -> tuple[_C, Endpoint]:
        loop = asyncio.get_running_loop()
        ep = self._endpoint = await self._where_next(failures)
        conn = self._tried = self._new_connection(loop)
        try:
            async with asyncio.timeout(ep.connect_timeout_s):
                if ep.path is not None:
                    await loop.create_unix_connection(lambda: conn, ep.path)
                else:
                    transport, _ = await loop.create_connection(lambda: conn, ep.host, ep.port, ssl=ep.tls)
                    _keep_alive(transport, ep.keepalive)
                if ep.password is not None:
                    await self._auth(conn, ep)
                if ep.master_only:
                    await _expect_master(conn)
                await self._set_up(conn)
        except BaseException:
            conn.abort()
            raise
        return conn, ep

    @staticmethod
    async def _auth(conn: _Connection, ep: Endpoint) -> None:
        assert ep.password is not None
        command = (b"AUTH", ep.username, ep.password) if ep.username else (b"AUTH", ep.password)
        await _expect(conn, _pack(command), b"OK")

    async def _watch(self, conn: _Connection, ep: Endpoint) -> None:
        """Return when the connection drops; raise if Redis leaves a PING unanswered, or (a
        ``master_only`` endpoint) answers ROLE as a replica, or the locator moved away."""
        loop = asyncio.get_running_loop()
        while True:
            pongs, sent_at = conn.pongs, loop.time()
            conn.ping(ep.master_only)
            done, _ = await asyncio.wait({conn.closed}, timeout=self._check_s)
            if done:
                raise ConnectionError("connection lost")
            if ep.master_only and await self._locator.moved(ep):
                raise ConnectionError(f"the master moved away from {ep.host}:{ep.port}")
            # A loop that was itself paused (GC, SIGSTOP) has not read the answer yet: ask again.
            if conn.pongs == pongs and loop.time() - sent_at < 1.5 * self._check_s:
                raise ConnectionError(f"no answer to PING in {self._check_s:g}s, or not a master")


class PublishLink(_Link[_PublishConnection]):
    """The connection that PUBLISHes this node's requests and replies (SPUBLISH with
    ``sharded``, to one shard of a Redis Cluster). Replies come back in the order of the
    publishes (``in_order``, unless a ``join`` coalesces them by channel), so one sink may
    take several."""

    def __init__(
        self, locator: Locator, *, max_backoff_s: float, check_s: float, sharded: bool = False,
        join: Callable[[list[bytes]], bytes] | None = None,
    ) -> None:
        """``join``: how the messages of one iteration to one channel become one message
        (None: one PUBLISH per message)."""
        super().__init__(locator, "publish", max_backoff_s=max_backoff_s, check_s=check_s)
        self._command = b"SPUBLISH" if sharded else b"PUBLISH"
        self._join = join

    @property
    def in_order(self) -> bool:
        """Whether the outcomes come back in the order of the publishes (no ``join``)."""
        return self._join is None

    def publish(self, channel: bytes, message: bytes, sink: Sink | None) -> None:
        """Queue a PUBLISH; ``sink`` gets the number of subscribers that received it, or
        LOST, or UNSENT (at once, if the link is down, or if it drops before the message
        left). With a ``join``, the order of messages is kept per channel, not across them."""
        conn = self._conn
        if conn is None:
            if sink is not None:
                sink.outcome(UNSENT)
            return
        conn.publish(channel, message, sink)

    def send(self, command: tuple[bytes, ...], sink: Sink | None) -> None:
        """Queue any command (ASKING before a redirected SPUBLISH); UNSENT if the link is down."""
        conn = self._conn
        if conn is None:
            if sink is not None:
                sink.outcome(UNSENT)
            return
        conn.send(_pack(command), sink)

    async def wait_ready(self) -> None:
        await self.ready.wait()

    async def _finish(self, conn: _PublishConnection) -> None:
        """Write what is queued now and wait for Redis to answer it (a PING's answer comes
        after theirs): the replies to requests this node served leave before it disconnects."""
        conn.flush()
        await _expect(conn, _PING, b"PONG")

    def _new_connection(self, loop: asyncio.AbstractEventLoop) -> _PublishConnection:
        return _PublishConnection(loop, self._command, self._join)

    async def _set_up(self, conn: _PublishConnection) -> None:
        await _expect(conn, _PING, b"PONG")  # NOAUTH here, not on every PUBLISH


class SubscribeLink(_Link[_SubscribeConnection]):
    """The connection that listens on one channel; ``ready`` is set while subscribed (a
    message published from then on reaches ``on_message``, called from ``data_received``:
    it must not block and must not raise)."""

    def __init__(
        self, locator: Locator, channel: bytes, on_message: Callable[[bytes], None],
        *, max_backoff_s: float, check_s: float, sharded: bool = False,
    ) -> None:
        super().__init__(locator, "subscribe", max_backoff_s=max_backoff_s, check_s=check_s)
        self._channel = channel
        self._on_message = on_message
        self._sharded = sharded
        self.redirect: tuple[str, int] | None = None  # where the last MOVED sent the channel

    def _retry_at_once(self, conn: _SubscribeConnection | None) -> bool:
        moved = None if conn is None else conn.moved
        if moved is not None and moved[1]:
            self.redirect = moved
        return moved is not None

    def _new_connection(self, loop: asyncio.AbstractEventLoop) -> _SubscribeConnection:
        return _SubscribeConnection(loop, self._on_message, sharded=self._sharded)

    async def _finish(self, conn: _SubscribeConnection) -> None:
        """Unsubscribe and read on until Redis confirms it: every message published to the
        channel before that is handed on (a request Redis delivered to this node is served
        and answered, not lost with the connection, its sender waiting out its deadline)."""
        unsubscribed = conn.unsubscribed = asyncio.get_running_loop().create_future()
        conn.write(_pack((b"SUNSUBSCRIBE" if self._sharded else b"UNSUBSCRIBE", self._channel)))
        await asyncio.wait({unsubscribed, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        if not unsubscribed.done():
            raise ConnectionError("connection lost before UNSUBSCRIBE was confirmed")

    async def _set_up(self, conn: _SubscribeConnection) -> None:
        conn.write(_pack((b"SSUBSCRIBE" if self._sharded else b"SUBSCRIBE", self._channel)))
        await asyncio.wait({conn.subscribed, conn.closed}, return_when=asyncio.FIRST_COMPLETED)
        if not conn.subscribed.done():
            raise ConnectionError("connection lost before SUBSCRIBE was confirmed")


def moved_to(reply: Any) -> tuple[str, int] | None:
    """Where a ``MOVED <slot> <host>:<port>`` (or ``ASK``) error reply sends the command;
    None for any other reply. An empty host means the host the command went to (""): Redis
    leaves it out when the node does not know its own address."""
    if not isinstance(reply, hiredis.ReplyError):
        return None
    words = str(reply).split()
    if len(words) != 3 or words[0] not in ("MOVED", "ASK"):
        return None
    host, _, port = words[2].rpartition(":")
    return (host, int(port)) if port.isdigit() else None


async def _expect(conn: _Connection, command: bytes, expected: bytes) -> None:
    """Send one command and raise ConnectionError unless Redis answers ``expected``."""
    sink = _Reply(asyncio.get_running_loop())
    conn.send(command, sink)
    reply = await sink.future
    if reply != expected:
        raise ConnectionError(f"Redis answered {reply!r}")


async def _expect_master(conn: _Connection) -> None:
    """Raise ConnectionError unless the server answers ROLE as a master (a locator may name
    one that was demoted since)."""
    sink = _Reply(asyncio.get_running_loop())
    conn.send(_ROLE, sink)
    reply = await sink.future
    if not (isinstance(reply, list) and reply and reply[0] == b"master"):
        raise ConnectionError(f"not a master: ROLE answered {reply!r}")


def _keep_alive(transport: asyncio.BaseTransport, options: tuple[tuple[int, int], ...] | None) -> None:
    """TCP keepalive as redis-py sets it, so that a silent peer is noticed by the kernel too."""
    sock = transport.get_extra_info("socket")
    if sock is None or options is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in options:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
