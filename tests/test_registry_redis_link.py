"""The lean RESP links of the node channels (``registry/redis/link``) against real private
redis-servers: reconnecting and resubscribing after a restart, noticing a Redis that stopped
answering, AUTH, TLS and unix sockets, ordering; and what the registry's calls make of them:
a reply after the call gave up is dropped, a request in flight when the link breaks is never
answered 503 before its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
import redis.asyncio
from mirakuru import TCPExecutor
from pytest_redis.executor import RedisExecutor

from tests.free_ports import free_port
from wsgateway.errors import RegistryUnavailableError
from wsgateway.registry.redis import RedisRegistry
from wsgateway.registry.redis.link import (
    LOST,
    UNSENT,
    Endpoint,
    Fixed,
    PublishLink,
    SubscribeLink,
    endpoint_of,
)
from wsgateway.registry.redis.rpc import Call, PendingCalls
from wsgateway.registry.redis.wire import (
    KIND_REPLY,
    VERSION,
    decode_message,
    encode_batch,
    encode_message,
    encode_post,
    ok_reply,
)

from .redis_topologies import RedisProcess, self_signed
from .registry_contract import RecordingNode, make_record, wait_for
from .registry_support import RedisLink, accept, registry_config, wait_settled

pytestmark = pytest.mark.redis

CHECK_S = 0.3  # PING interval of the links under test
BACKOFF_S = 0.1


class Replies:
    """A sink that keeps every outcome it is given, in order."""

    def __init__(self) -> None:
        self.replies: list[Any] = []

    def outcome(self, reply: Any) -> None:
        self.replies.append(reply)


async def endpoint(url: str, **kwargs: Any) -> Fixed:
    """The locator of the one server at ``url`` (``kwargs``: redis-py's settings)."""
    return Fixed(await endpoint_at(url, **kwargs))


async def endpoint_at(url: str, **kwargs: Any) -> Endpoint:
    client = redis.asyncio.Redis.from_url(url, **kwargs)
    try:
        return endpoint_of(client, 2.0)
    finally:
        await client.aclose()


Links = tuple[SubscribeLink, PublishLink, list[bytes]]


@contextlib.asynccontextmanager
async def open_links(url: str) -> AsyncIterator[Links]:
    """A subscriber on channel ``ch`` (what it receives is in the list) and a publisher, both
    ready; closed on the way out."""
    ep = await endpoint(url)
    received: list[bytes] = []
    sub = SubscribeLink(ep, b"ch", received.append, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    pub = PublishLink(ep, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    sub.start()
    pub.start()
    try:
        await both_ready(sub, pub)
        yield sub, pub, received
    finally:
        await sub.close()
        await pub.close()


@pytest.fixture
async def links(redis_url: str) -> AsyncIterator[Links]:
    async with open_links(redis_url) as opened:
        yield opened


async def both_ready(sub: SubscribeLink, pub: PublishLink, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        await sub.ready.wait()
        await pub.ready.wait()


# ---------------------------------------------------------------- calls, without I/O


async def test_a_call_settles_each_target_once() -> None:
    pending = PendingCalls(timeout_s=1.0, budget_s=0.2)
    call = pending.open(("a", "b", "c"))
    ok = {"k": KIND_REPLY, "r": call.id, "f": "a", "s": "ok"}
    pending.answer(ok)  # the reply may come before its PUBLISH's own reply
    call.outcome(1)  # a: one subscriber took it
    call.outcome(0)  # b: nobody listens on its channel
    assert not call.future.done()
    call.outcome(UNSENT)  # c: never left, nothing to wait for
    await asyncio.wait_for(call.future, 0.1)
    assert call.replies == {"a": ok, "b": {"s": "unreachable"}, "c": {"s": "timeout"}}
    assert (call.answered, call.failed) == (1, 1)
    pending.close(call)
    pending.answer({**ok, "s": "gone"})  # closed: dropped
    assert call.replies["a"] is ok


async def test_a_call_tells_its_then_once_it_is_done_and_makes_a_future_only_if_asked() -> None:
    """A caller waiting by callback (a cross-node post) is told at once, from the callback
    the last answer arrives in (a compact ok, a timeout), and once; no future is made for it."""
    told: list[dict[str, dict[str, str]]] = []

    class Then:
        def call_done(self, call: Call) -> None:
            told.append(dict(call.replies))

    pending = PendingCalls(timeout_s=0.1, budget_s=0.05)
    answered, silent = pending.open(("a",)), pending.open(("a",))
    for call in (answered, silent):
        call.then = Then()
        call.outcome(1)
    pending.answer_ok((answered.id,), "a")
    assert told == [{"a": {"s": "ok"}}] and answered.done and answered._future is None
    pending.answer_ok((answered.id,), "a")  # twice: told once
    assert len(told) == 1 and answered.future.done()  # asked for when done: made done
    waited = silent.future
    await asyncio.wait_for(waited, 1.0)  # the timeout tells it too
    assert told == [{"a": {"s": "ok"}}, {"a": {"s": "timeout"}}] and silent.then is None
    nobody = pending.open((), Then())  # no targets: done, and told, at once
    assert nobody.done and told[-1] == {} and len(told) == 3


async def test_a_lost_request_is_given_up_only_after_its_deadline() -> None:
    pending = PendingCalls(timeout_s=1.0, budget_s=0.2)
    call = pending.open(("a",))
    call.outcome(LOST)  # written, then the link dropped: the owner may act until the deadline
    await asyncio.wait_for(call.future, 1.0)
    assert time.time() >= call.deadline
    assert call.replies == {"a": {"s": "timeout"}} and call.failed == 1


async def test_calls_expire_in_the_order_they_were_opened() -> None:
    pending = PendingCalls(timeout_s=0.1, budget_s=0.05)
    calls = [pending.open(("a",)) for _ in range(3)]
    for call in calls:
        call.outcome(1)
    ok = {"k": KIND_REPLY, "r": calls[1].id, "f": "a", "s": "ok"}
    pending.answer(ok)
    await asyncio.wait_for(asyncio.gather(*(c.future for c in calls)), 1.0)
    assert [c.replies["a"]["s"] for c in calls] == ["timeout", "ok", "timeout"]
    pending.answer({**ok, "r": calls[0].id})  # too late: its call expired
    assert calls[0].replies["a"]["s"] == "timeout"
    later = pending.open(("a",))  # the timer is armed again for a new call
    await asyncio.wait_for(later.future, 1.0)
    assert later.replies == {"a": {"s": "timeout"}}


async def test_a_call_past_its_timeout_is_held_until_asked_with_redis_answering() -> None:
    """The asker (played here by ``on_overdue``) sets ``asking_since`` once Redis takes its
    asks: a call whose links were down at its timeout is held until they were taken for the
    ask span, or until ``wait_s`` past the timeout; calls behind a held one expire on time."""
    loop = asyncio.get_running_loop()
    pending = PendingCalls(timeout_s=0.2, budget_s=0.1, wait_s=0.5)  # ask span: 0.05 s
    links_up = False

    def overdue(call: Any) -> None:
        call.asking_since = loop.time() if links_up else None

    pending.on_overdue = overdue
    held = pending.open(("a",))
    held.outcome(1)
    await asyncio.sleep(0.3)  # past its timeout, the links down: held
    assert not held.future.done()
    held.asking_since = loop.time()  # the links are back: Redis takes the asks
    await asyncio.wait_for(held.future, 0.2)
    assert held.replies == {"a": {"s": "timeout"}}

    started = loop.time()
    never = pending.open(("a",))  # its links never come back
    never.outcome(1)
    await asyncio.sleep(0.2)  # asked (at 0.15 s) with its links down
    links_up = True
    on_time = pending.open(("a",))  # opened behind it, asked with the links up
    on_time.outcome(1)
    await asyncio.wait_for(on_time.future, 0.5)
    assert loop.time() - started < 0.2 + 0.2 + 0.05 and not never.future.done()
    await asyncio.wait_for(never.future, 1.0)
    assert 0.2 + 0.5 <= loop.time() - started + 0.002 < 0.2 + 0.5 + 0.1  # given up at the bound: 503


# ---------------------------------------------------------------- the links


async def test_a_thousand_publishes_arrive_in_order(links: Links) -> None:
    _, pub, received = links
    sink = Replies()
    messages = [b"%d" % i for i in range(1000)]
    for i, message in enumerate(messages):
        pub.publish(b"ch", message, sink)
        if i % 100 == 0:
            await asyncio.sleep(0)  # several writes, not one
    await wait_for(lambda: len(received) == 1000, 5, "1000 messages")
    assert received == messages
    await wait_for(lambda: len(sink.replies) == 1000, 5, "1000 replies")
    assert sink.replies == [1] * 1000  # one subscriber took each
    pub.publish(b"nobody-listens", b"x", sink)
    await wait_for(lambda: len(sink.replies) == 1001, 5, "the last reply")
    assert sink.replies[-1] == 0


async def test_a_closing_subscriber_hands_on_every_message_published_before_it_left(links: Links) -> None:
    """A node that stops unsubscribes and reads on until Redis confirms: a request Redis
    delivered to it is handed on (and answered), not lost with the connection (its sender
    would wait out its deadline and answer 503)."""
    sub, pub, received = links
    sink = Replies()
    transport = sub._conn._transport  # type: ignore[union-attr]  # a node too busy to read
    assert transport is not None
    transport.pause_reading()
    for i in range(200):
        pub.publish(b"ch", b"%d" % i, sink)
    await wait_for(lambda: len(sink.replies) == 200, 5, "200 publishes taken")
    assert sink.replies == [1] * 200 and received == []  # Redis pushed each to the subscriber...
    closing = asyncio.ensure_future(sub.close())  # ...which begins to close before it read them
    await asyncio.sleep(0.05)
    if not transport.is_closing():
        transport.resume_reading()  # its loop gets to the socket
    await closing
    assert received == [b"%d" % i for i in range(200)]
    assert not sub.ready.is_set()
    pub.publish(b"ch", b"after", sink)  # nobody listens any more
    await wait_for(lambda: len(sink.replies) == 201, 5, "the last reply")
    assert sink.replies[-1] == 0


async def test_a_closing_publisher_sends_what_it_queued_and_waits_for_redis(links: Links) -> None:
    """A node that stops publishes what it queued (the replies to the requests it served)
    before it disconnects, and waits for Redis to take them."""
    _, pub, received = links
    sink = Replies()
    for i in range(50):
        pub.publish(b"ch", b"%d" % i, sink)
    await pub.close()  # in the same iteration: nothing was written yet
    assert sink.replies == [1] * 50
    await wait_for(lambda: len(received) == 50, 5, "50 messages")
    pub.publish(b"ch", b"after", sink)
    assert sink.replies[-1] is UNSENT


async def test_a_joining_link_publishes_one_batch_per_channel_and_iteration(redis_url: str) -> None:
    """With a ``join``, the messages of one iteration to one channel leave as one PUBLISH of
    their batch, whose reply reaches every message's sink; a lone message leaves as itself."""
    ep = await endpoint(redis_url)
    received: list[bytes] = []
    sub = SubscribeLink(ep, b"ch", received.append, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    pub = PublishLink(ep, max_backoff_s=BACKOFF_S, check_s=CHECK_S, join=encode_batch)
    sub.start()
    pub.start()
    try:
        await both_ready(sub, pub)
        assert not pub.in_order
        r = redis.asyncio.Redis.from_url(redis_url)
        await r.config_resetstat()
        sinks = [Replies() for _ in range(4)]
        for i, sink in enumerate(sinks[:3]):
            pub.publish(b"ch", b"m%d" % i, sink)
        pub.publish(b"nobody-listens", b"x", sinks[3])
        await wait_for(lambda: all(sink.replies for sink in sinks), 5, "every reply")
        assert [sink.replies for sink in sinks] == [[1], [1], [1], [0]]
        assert received == [encode_batch([b"m0", b"m1", b"m2"])]
        pub.publish(b"ch", b"alone", None)
        await wait_for(lambda: len(received) == 2, 5, "the lone message")
        assert received[1] == b"alone"
        stats = await r.info("commandstats")
        await r.aclose()
        assert stats["cmdstat_publish"]["calls"] == 3
    finally:
        await sub.close()
        await pub.close()


async def test_links_come_back_after_redis_restarts(restartable_redis: RedisExecutor) -> None:
    sink = Replies()
    async with open_links(f"redis://127.0.0.1:{restartable_redis.port}/0") as (sub, pub, received):
        pub.publish(b"ch", b"before", sink)
        await wait_for(lambda: received == [b"before"], 2, "the first message")
        restartable_redis.kill(sig=signal.SIGKILL)
        await wait_for(lambda: not sub.ready.is_set() and not pub.ready.is_set(), 2, "both links down")
        pub.publish(b"ch", b"during", sink)
        assert sink.replies == [1, UNSENT]  # at once: it never left
        restartable_redis.start()
        await both_ready(sub, pub)  # resubscribed, with no call from us
        pub.publish(b"ch", b"after", sink)
        await wait_for(lambda: received == [b"before", b"after"], 2, "a message after the restart")
        await wait_for(lambda: len(sink.replies) == 3, 2, "its reply")
        assert sink.replies == [1, UNSENT, 1]
    assert not sub.ready.is_set() and not pub.ready.is_set()


async def test_links_reconnect_when_redis_stops_answering(restartable_redis: RedisExecutor) -> None:
    """A Redis that is there but silent (SIGSTOP: the connection stays open) is noticed by
    an unanswered PING; in-flight PUBLISHes get LOST, and the links come back after it."""
    sink = Replies()
    process = restartable_redis.process
    assert process is not None
    async with open_links(f"redis://127.0.0.1:{restartable_redis.port}/0") as (sub, pub, received):
        try:
            process.send_signal(signal.SIGSTOP)
            stopped = psutil.Process(process.pid)
            await wait_for(lambda: stopped.status() == psutil.STATUS_STOPPED, 2, "Redis stopped")
            pub.publish(b"ch", b"unanswered", sink)
            await wait_for(lambda: not sub.ready.is_set() and not pub.ready.is_set(), 3 * CHECK_S + 1, "both links down")
            # The link settles its pending replies as it goes down, possibly a beat after it
            # cleared `ready`: wait for the outcome, then check it is the right one.
            await wait_for(lambda: sink.replies, 2, "the in-flight publish settled")
            assert sink.replies == [LOST]  # it was written: it may have reached Redis
        finally:
            process.send_signal(signal.SIGCONT)
        await both_ready(sub, pub)
        pub.publish(b"ch", b"back", sink)
        await wait_for(lambda: b"back" in received, 2, "a message once Redis answers again")


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[RedisExecutor]:
    executor = RedisExecutor(
        executable="redis-server", databases=1, redis_timeout=30, loglevel="warning", host="127.0.0.1",
        port=free_port(), password="s3cret", datadir=tmp_path,
    )
    with executor:
        yield executor


async def test_links_authenticate(password_redis: RedisExecutor, caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://127.0.0.1:{password_redis.port}/0"
    received: list[bytes] = []
    good = await endpoint(url, password="s3cret")
    sub = SubscribeLink(good, b"ch", received.append, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    pub = PublishLink(good, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    wrong_password = SubscribeLink(
        await endpoint(url, password="wrong"), b"ch", received.append, max_backoff_s=BACKOFF_S, check_s=CHECK_S
    )
    no_password = PublishLink(await endpoint(url), max_backoff_s=BACKOFF_S, check_s=CHECK_S)
    caplog.set_level(logging.WARNING, logger="wsgateway.registry")

    def refusals(what: str) -> int:
        return sum(what in rec.getMessage() for rec in caplog.records)

    links = (sub, pub, wrong_password, no_password)
    for link in links:
        link.start()
    try:
        await both_ready(sub, pub)
        pub.publish(b"ch", b"authenticated", None)
        await wait_for(lambda: received == [b"authenticated"], 2, "the message")
        await wait_for(lambda: refusals("WRONGPASS") >= 2 and refusals("NOAUTH") >= 2, 5, "two refusals each")
        assert not wrong_password.ready.is_set() and not no_password.ready.is_set()
        sink = Replies()
        no_password.publish(b"ch", b"x", sink)
        assert sink.replies == [UNSENT]
        assert received == [b"authenticated"]
    finally:
        for link in links:
            await link.close()


async def test_cross_node_post_with_a_password(password_redis: RedisExecutor, key_prefix: str) -> None:
    url = f"redis://:wrong@127.0.0.1:{password_redis.port}/0"  # the configured password wins
    config = dataclasses.replace(registry_config(url, key_prefix), password="s3cret")
    await cross_node_post(config)


async def test_cross_node_post_over_a_unix_socket(private_redis: RedisExecutor, key_prefix: str) -> None:
    await cross_node_post(registry_config(f"unix://{private_redis.unixsocket}?db=0", key_prefix))


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server that speaks TLS only, and the certificate to trust it by."""
    cert, key = self_signed(tmp_path)
    port = free_port()
    command = [
        "redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
        "--save", "", "--dir", str(tmp_path), "--loglevel", "warning",
    ]
    with TCPExecutor(command, host="127.0.0.1", port=port, timeout=30):
        yield port, cert


async def test_cross_node_post_over_tls(tls_redis: tuple[int, Path], key_prefix: str) -> None:
    port, cert = tls_redis
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=required&ssl_ca_certs={cert}"
    await cross_node_post(registry_config(url, key_prefix))


async def cross_node_post(config: Any) -> None:
    """Two registries on ``config``'s Redis: a post from one reaches the other's connection."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = RedisRegistry(config, "na"), RedisRegistry(config, "nb")
    try:
        for reg, node in ((reg_a, node_a), (reg_b, node_b)):
            await reg.start(node)
            await wait_settled(reg)
            assert (await reg.health())["subscribed"] is True
        cid = (await accept(reg_a, node_a)).connection_id
        await reg_b.post(cid, b"across", False)
        assert node_a.posted[cid] == [(b"across", False)]
    finally:
        await reg_b.close()
        await reg_a.close()


# ---------------------------------------------------------------- what the registry makes of them


async def test_a_reply_after_the_call_gave_up_is_dropped(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An owner that answers after the caller's timeout: the caller has answered 503 at its
    timeout, and the late reply changes nothing (no error, no effect on later calls)."""
    timeout_s = 0.4
    node_b = RecordingNode("nb")
    reg_b = RedisRegistry(registry_config(redis_url, key_prefix), "nb", request_timeout_s=timeout_s)
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    try:
        await reg_b.start(node_b)
        await pubsub.subscribe(f"{key_prefix}:node:{{slow}}")  # a node that answers too late
        record = make_record("slow")
        await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "slow")  # its record
        caplog.set_level(logging.DEBUG, logger="wsgateway.registry")

        async def next_request() -> Any:
            """The next request on the slow node's channel; the caller's asks (after the
            deadline, for the reply it did not get) are skipped."""
            async with asyncio.timeout(5):
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                    if message is not None and orjson.loads(message["data"].partition(b"\n")[0])["k"] != "a":
                        return message

        posting = asyncio.ensure_future(reg_b.post(record.connection_id, b"late", False))
        message = await next_request()
        header, data = decode_message(message["data"])
        assert data == b"late"
        assert header["d"] <= time.time() + timeout_s / 2  # the owner acts only in the first half
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError):
            await asyncio.wait_for(posting, 2 * timeout_s)
        assert time.monotonic() - started <= timeout_s + 0.05  # at its timeout (timers: ms resolution)
        reply = {"k": KIND_REPLY, "r": header["r"], "f": "slow", "s": "ok"}
        assert await r.publish(f"{key_prefix}:node:{{nb}}", encode_message(reply)) == 1  # too late
        await asyncio.sleep(0.1)
        assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []
        # the node answers the next one in time: that call gets its own answer
        posting = asyncio.ensure_future(reg_b.post(record.connection_id, b"in time", False))
        message = await next_request()
        header = orjson.loads(message["data"].partition(b"\n")[0])
        await r.publish(f"{key_prefix}:node:{{nb}}", encode_message({**reply, "r": header["r"]}))
        await asyncio.wait_for(posting, 1)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg_b.close()


async def test_a_request_in_flight_when_the_link_breaks_is_answered_503_after_its_deadline(
    private_redis: RedisExecutor, redis_url: str, key_prefix: str
) -> None:
    """The PUBLISH left but the connection broke before Redis answered: the owner may still
    act until the request's deadline, so the caller's 503 must not come before it; and with
    its links down at its timeout, the caller holds the call for ``outcome_wait_s`` before
    answering 503 without knowing."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a = RedisRegistry(registry_config(redis_url, key_prefix), "na")
    await reg_a.start(node_a)
    async with RedisLink(private_redis.port, delay_s=0.2) as link:
        # its link is slow; the owner acts only in the first half of the timeout: 0.5 s
        config = dataclasses.replace(registry_config(link.url, key_prefix), outcome_wait_s=0.5)
        reg_b = RedisRegistry(config, "nb", request_timeout_s=1.0)
        try:
            await reg_b.start(node_b)
            await wait_settled(reg_b)
            cid = (await accept(reg_a, node_a)).connection_id
            await reg_b.post(cid, b"warm", False)  # the owner is cached: no lookup below
            started = time.time()
            posting = asyncio.ensure_future(reg_b.post(cid, b"cut off", False))
            await asyncio.sleep(0.05)
            link.cut()  # the request is in the relay: it never reaches Redis
            with pytest.raises(RegistryUnavailableError):
                await asyncio.wait_for(posting, 5)
            # held for outcome_wait_s, no longer (timers fire up to a millisecond early)
            assert 1.0 + 0.5 - 0.01 <= time.time() - started < 1.0 + 0.5 + 0.3
            assert node_a.posted[cid] == [(b"warm", False)]
            with pytest.raises(RegistryUnavailableError):  # and while cut off: at once
                await asyncio.wait_for(reg_b.post(cid, b"x", False), 0.5)
        finally:
            await reg_b.close()
            await reg_a.close()


class Named:
    """A Locator naming one of several servers, as Sentinel names the master: ``current`` is
    the index of the one it names now. A test's own implementation of the protocol."""

    def __init__(self, endpoints: list[Endpoint]) -> None:
        self.endpoints = endpoints
        self.current = 0

    async def locate(self) -> Endpoint:
        return self.endpoints[self.current]

    async def moved(self, endpoint: Endpoint) -> bool:
        return endpoint != self.endpoints[self.current]


async def test_links_leave_a_demoted_master_that_keeps_them_connected(tmp_path: Path) -> None:
    """A failover demotes a master that still runs: made a replica (REPLICAOF), it keeps its
    clients connected, answers PUBLISH and PING as before. The publishing link notices at its
    next check (ROLE answers "slave"); both links move when the locator names another
    server, and messages flow again without a call from us."""
    servers = [RedisProcess(tmp_path / name, []) for name in ("a", "b")]
    for server in servers:
        server.start()
    try:
        locator = Named([
            dataclasses.replace(await endpoint_at(f"redis://127.0.0.1:{s.port}/0", password=s.password), master_only=True)
            for s in servers
        ])
        received: list[bytes] = []
        sub = SubscribeLink(locator, b"ch", received.append, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
        pub = PublishLink(locator, max_backoff_s=BACKOFF_S, check_s=CHECK_S)
        sub.start()
        pub.start()
        try:
            await both_ready(sub, pub)
            pub.publish(b"ch", b"on a", None)
            await wait_for(lambda: received == [b"on a"], 2, "a message through a")
            a, b = (s.client() for s in servers)
            a.execute_command("CONFIG", "SET", "masterauth", servers[1].password)
            a.execute_command("REPLICAOF", "127.0.0.1", str(servers[1].port))  # no client is killed
            # Before Sentinel names b, the publishing link finds a is no master (ROLE) and
            # will not publish there; the subscribed link stays until the locator moves.
            await wait_for(lambda: not pub.ready.is_set(), 3 * CHECK_S + 2, "pub off the demoted a")
            sink = Replies()
            pub.publish(b"ch", b"lost", sink)
            assert sink.replies == [UNSENT] and sub.ready.is_set()
            await asyncio.sleep(3 * CHECK_S)
            assert not pub.ready.is_set()  # it reconnects, and leaves again at ROLE
            locator.current = 1
            demoted = time.monotonic()
            await wait_for(lambda: b.pubsub_numsub("ch") == [("ch", 1)], 3 * CHECK_S + 2, "the subscriber on b")
            await wait_for(lambda: pub.ready.is_set() and b.client_list(_type="normal") and any(
                c["cmd"] in ("role", "publish") for c in b.client_list(_type="normal")), 3 * CHECK_S + 2, "pub on b")
            assert time.monotonic() - demoted < 3 * CHECK_S + 2
            pub.publish(b"ch", b"on b", None)
            await wait_for(lambda: received == [b"on a", b"on b"], 2, "a message through b")
            assert a.pubsub_numsub("ch") == [("ch", 0)]
        finally:
            await sub.close()
            await pub.close()
    finally:
        for server in servers:
            server.kill()


# ---------------------------------------------------------------- outcomes when a reply is lost


async def _next_header(pubsub: Any, *, skip_asks: bool = False) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                header, _ = decode_message(message["data"])
                if not (skip_asks and header["k"] == "a"):
                    return header


async def test_the_owner_answers_an_ask_from_what_it_did(redis_url: str, key_prefix: str) -> None:
    """A sender that lost a reply asks again: the owner answers the outcome it remembers and
    does not act twice; asked about a request it never got, it answers ``dropped`` and then
    never acts on that request; a request past its deadline is dropped and asked ``dropped``."""
    owner = RecordingNode("nb")
    reg = RedisRegistry(registry_config(redis_url, key_prefix), "nb")
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    try:
        await reg.start(owner)
        record = await accept(reg, owner)
        await pubsub.subscribe(f"{key_prefix}:node:{{na}}")  # the sender, played by hand
        to_owner = f"{key_prefix}:node:{{nb}}"

        async def send(header: dict[str, Any], data: bytes = b"") -> None:
            assert await r.publish(to_owner, encode_message({"f": "na", "d": time.time() + 1, **header}, data)) == 1

        post = {"k": "p", "c": record.connection_id, "b": 0}
        await send({**post, "r": 1}, b"once")
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 1, "f": "nb", "s": "ok"}
        await send({"k": "a", "r": 1})  # the reply was lost: ask
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 1, "f": "nb", "s": "ok"}
        assert owner.posted[record.connection_id] == [(b"once", False)]  # acted once

        await send({"k": "a", "r": 2})  # asked before the request arrives
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 2, "f": "nb", "s": "dropped"}
        await send({**post, "r": 2}, b"never")
        await send({**post, "r": 3, "d": time.time() - 0.1}, b"too late")
        await send({"k": "a", "r": 3})
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 3, "f": "nb", "s": "dropped"}
        assert owner.posted[record.connection_id] == [(b"once", False)]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg.close()


@contextlib.asynccontextmanager
async def _sender_and_hand_played_owner(
    redis_url: str, key_prefix: str
) -> AsyncIterator[tuple[RedisRegistry, redis.asyncio.Redis, Any]]:
    """A sender, node "na" (timeout 1 s), and the channel of node "nb", whose part the test
    plays by hand: the registry, a client to publish with, and a pubsub on nb's channel."""
    reg = RedisRegistry(registry_config(redis_url, key_prefix), "na", request_timeout_s=1.0)
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    try:
        await reg.start(RecordingNode("na"))
        await pubsub.subscribe(f"{key_prefix}:node:{{nb}}")
        yield reg, r, pubsub
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg.close()


async def test_a_sender_that_lost_the_reply_asks_and_gets_the_outcome(redis_url: str, key_prefix: str) -> None:
    """The owner (played by hand) acts but its reply never comes: after the deadline the
    sender asks, and answers from the owner's second answer: delivered (no 503), or, when
    the owner says ``dropped`` (to the request sent once more too), 503."""
    async with _sender_and_hand_played_owner(redis_url, key_prefix) as (reg, r, pubsub):
        to_sender = f"{key_prefix}:node:{{na}}"
        for outcome in ("ok", "dropped"):
            record = make_record("nb")
            await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")
            posting = asyncio.ensure_future(reg.post(record.connection_id, b"x", False))
            request = await _next_header(pubsub, skip_asks=True)  # acted on; its reply "lost"
            ask = await _next_header(pubsub)
            assert ask == {"k": "a", "r": request["r"], "f": "na", "d": request["d"]}
            assert time.time() >= request["d"]  # asked only once the owner could no longer act
            reply = {"k": KIND_REPLY, "r": request["r"], "f": "nb", "s": outcome}
            await r.publish(to_sender, encode_message(reply))
            if outcome == "ok":
                await asyncio.wait_for(posting, 0.3)  # at once, well before the timeout
            else:  # not acted on: sent once more (see the next test), and dropped again: 503
                again = await _next_header(pubsub, skip_asks=True)
                dropped = {"k": KIND_REPLY, "r": again["r"], "f": "nb", "s": "dropped"}
                await r.publish(to_sender, encode_message(dropped))
                with pytest.raises(RegistryUnavailableError):
                    await asyncio.wait_for(posting, 2)


async def test_a_sender_stopped_past_its_timeout_asks_before_answering(redis_url: str, key_prefix: str) -> None:
    """The sender's own loop stalls (stopped, starved) from just after its request left until
    past its timeout, and the owner's reply was lost: on waking it asks once more, and
    answers from the owner's answer instead of a 503 given without knowing."""
    async with _sender_and_hand_played_owner(redis_url, key_prefix) as (reg, r, pubsub):
        record = make_record("nb")
        await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")
        posting = asyncio.ensure_future(reg.post(record.connection_id, b"x", False))
        request = await _next_header(pubsub, skip_asks=True)  # acted on; its reply "lost"
        time.sleep(1.3)  # noqa: ASYNC251 - the whole loop stalls past the 1 s timeout: no timer runs
        ask = await _next_header(pubsub)
        assert ask == {"k": "a", "r": request["r"], "f": "na", "d": request["d"]}
        reply = {"k": KIND_REPLY, "r": request["r"], "f": "nb", "s": "ok"}
        await r.publish(f"{key_prefix}:node:{{na}}", encode_message(reply))
        await asyncio.wait_for(posting, 1)  # delivered: no 503


async def test_a_request_the_owner_got_too_late_is_sent_once_more(redis_url: str, key_prefix: str) -> None:
    """The owner got the request past its deadline (its process, or the sender's, stalled)
    and answers the ask "dropped": it did not act and never will. The sender sends the
    request once more, with a new deadline, instead of answering 503; a second "dropped"
    is a 503."""
    async with _sender_and_hand_played_owner(redis_url, key_prefix) as (reg, r, pubsub):
        record = make_record("nb")
        await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")
        for answer_again, outcome in (("ok", None), ("dropped", RegistryUnavailableError)):
            posting = asyncio.ensure_future(reg.post(record.connection_id, b"x", False))
            first = await _next_header(pubsub, skip_asks=True)  # came too late: not acted on
            ask = await _next_header(pubsub)
            assert ask["k"] == "a" and ask["r"] == first["r"]
            dropped = {"k": KIND_REPLY, "r": first["r"], "f": "nb", "s": "dropped"}
            await r.publish(f"{key_prefix}:node:{{na}}", encode_message(dropped))
            second = await _next_header(pubsub, skip_asks=True)
            assert second["k"] == first["k"] and second["c"] == first["c"]
            assert second["r"] != first["r"] and second["d"] > first["d"]
            reply = {"k": KIND_REPLY, "r": second["r"], "f": "nb", "s": answer_again}
            await r.publish(f"{key_prefix}:node:{{na}}", encode_message(reply))
            if outcome is None:
                await asyncio.wait_for(posting, 2)  # delivered by the second request: no 503
            else:
                with pytest.raises(outcome):
                    await asyncio.wait_for(posting, 2)  # asked once more only


async def test_a_sender_whose_links_are_down_at_its_timeout_holds_the_call_and_asks_when_back(
    private_redis: RedisExecutor, key_prefix: str
) -> None:
    """The owner (played by hand) acts and replies while the sender is cut off from Redis
    (its reply is lost, as when the master dies), and the sender's links stay down past its
    timeout: it holds the call, asks once they are back, and answers from the owner's
    answer, delivered (no 503 for a delivered post), or ``dropped`` (twice: the request is
    sent once more): 503."""
    r = redis.asyncio.Redis(port=private_redis.port)
    pubsub = r.pubsub()
    async with RedisLink(private_redis.port) as link:
        reg = RedisRegistry(registry_config(link.url, key_prefix), "na", request_timeout_s=1.0)
        try:
            await reg.start(RecordingNode("na"))
            await pubsub.subscribe(f"{key_prefix}:node:{{nb}}")
            to_sender = f"{key_prefix}:node:{{na}}"
            for outcome in ("ok", "dropped"):
                record = make_record("nb")
                await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")
                started = time.monotonic()
                posting = asyncio.ensure_future(reg.post(record.connection_id, b"x", False))
                request = await _next_header(pubsub, skip_asks=True)
                link.cut()  # the sender's links go down; the owner acts, and its reply finds nobody
                reply = {"k": KIND_REPLY, "r": request["r"], "f": "nb", "s": outcome}
                assert await r.publish(to_sender, encode_message(reply)) == 0
                await asyncio.sleep(1.5)  # past the timeout (1 s), the links still down
                assert not posting.done()
                link.restore()
                ask = await _next_header(pubsub)
                assert ask == {"k": "a", "r": request["r"], "f": "na", "d": request["d"]}
                assert await r.publish(to_sender, encode_message(reply)) == 1
                if outcome == "ok":
                    await asyncio.wait_for(posting, 1)  # delivered: no 503
                else:  # not acted on: sent once more, and dropped again: 503
                    again = await _next_header(pubsub, skip_asks=True)
                    dropped = {"k": KIND_REPLY, "r": again["r"], "f": "nb", "s": "dropped"}
                    await r.publish(to_sender, encode_message(dropped))
                    with pytest.raises(RegistryUnavailableError):
                        await asyncio.wait_for(posting, 2)
                assert time.monotonic() - started < 1.0 + 5.0
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await r.aclose()
            await reg.close()


async def test_the_owner_keeps_an_outcome_whose_reply_it_could_not_publish(redis_url: str, key_prefix: str) -> None:
    """A reply nobody took by the request's deadline (the sender's links are down) is kept
    for ``outcome_wait_s`` past the usual memory, so that a sender that held its call can
    ask after its timeout; a reply that was taken is forgotten at the usual time."""
    owner = RecordingNode("nb")
    config = dataclasses.replace(registry_config(redis_url, key_prefix), outcome_wait_s=3.0)
    reg = RedisRegistry(config, "nb", request_timeout_s=1.0)  # usual memory: 1.5 s past the deadline
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    try:
        await reg.start(owner)
        record = await accept(reg, owner)
        to_owner = f"{key_prefix}:node:{{nb}}"

        async def send(header: dict[str, Any], data: bytes = b"") -> None:
            assert await r.publish(to_owner, encode_message({"f": "na", **header}, data)) == 1

        deadline = time.time() + 0.3
        post = {"k": "p", "c": record.connection_id, "b": 0, "d": deadline}
        await send({**post, "r": 1}, b"reply lost")  # nobody listens on na's channel yet
        await asyncio.sleep(0.4)  # past the deadline: the owner gave up publishing the reply
        await pubsub.subscribe(f"{key_prefix}:node:{{na}}")
        await send({**post, "r": 2, "d": time.time() + 0.3}, b"reply taken")
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 2, "f": "nb", "s": "ok"}
        await asyncio.sleep(deadline + 2.5 - time.time())  # past the usual memory of both
        await send({"k": "a", "r": 1, "d": deadline})
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 1, "f": "nb", "s": "ok"}
        await send({"k": "a", "r": 2, "d": deadline})
        assert await _next_header(pubsub) == {"k": KIND_REPLY, "r": 2, "f": "nb", "s": "dropped"}
        assert owner.posted[record.connection_id] == [(b"reply lost", False), (b"reply taken", False)]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg.close()


async def _next_payload(pubsub: Any) -> bytes:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                return bytes(message["data"])


async def test_a_sender_writes_compact_posts_only_to_a_node_that_said_it_reads_them(
    redis_url: str, key_prefix: str
) -> None:
    """Rolling upgrades: a post goes out as JSON saying that its sender reads the compact
    forms ("w"), until a reply with "w" says the owner does too; a reply without "w" (a
    node of an earlier release, played here by hand, under the same node id) makes the
    sender write JSON again, and the earlier release's JSON answers are taken as before."""
    reg = RedisRegistry(registry_config(redis_url, key_prefix), "na")
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    to_sender = f"{key_prefix}:node:{{na}}"
    try:
        await reg.start(RecordingNode("na"))
        await pubsub.subscribe(f"{key_prefix}:node:{{nb}}")
        record = make_record("nb")
        await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")

        async def post(data: bytes, answer: Any) -> bytes:
            posting = asyncio.ensure_future(reg.post(record.connection_id, data, False))
            request = await _next_payload(pubsub)
            header, body = decode_message(request)
            assert (header["k"], header["f"], header["c"], header["b"], header["w"], body) == (
                "p", "na", record.connection_id, 0, VERSION, data,
            )
            await r.publish(to_sender, answer(header["r"]))
            await asyncio.wait_for(posting, 1)
            return request

        def old(request_id: int) -> bytes:  # how a node of the earlier release answers
            return encode_message({"k": KIND_REPLY, "r": request_id, "f": "nb", "s": "ok"})

        def new(request_id: int) -> bytes:
            return ok_reply("nb", (request_id,))

        assert (await post(b"1", old)).startswith(b"{")  # nothing known of nb yet: JSON
        assert (await post(b"2", new)).startswith(b"{")  # still nothing: the answer says nb reads compact
        assert (await post(b"3", new)).startswith(b"P")  # so this one is compact
        assert (await post(b"4", old)).startswith(b"P")  # nb was replaced by an earlier release
        assert (await post(b"5", old)).startswith(b"{")  # which gets JSON from now on
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg.close()


async def test_the_owner_answers_compactly_only_a_sender_that_reads_it(redis_url: str, key_prefix: str) -> None:
    """A post without "w" (a node of an earlier release) gets the JSON reply it always got;
    one with "w", JSON or compact, gets the compact "ok", and an ask about it the same
    bytes; a failure is answered in JSON (with "w"), as every answer that is not a bare ok;
    the posts of one batch get one "ok"."""
    owner = RecordingNode("nb")
    reg = RedisRegistry(registry_config(redis_url, key_prefix), "nb")
    r = redis.asyncio.Redis.from_url(redis_url)
    pubsub = r.pubsub()
    try:
        await reg.start(owner)
        record = await accept(reg, owner)
        await pubsub.subscribe(f"{key_prefix}:node:{{na}}")
        to_owner = f"{key_prefix}:node:{{nb}}"
        post = {"k": "p", "f": "na", "c": record.connection_id, "b": 0}

        async def send(message: bytes) -> bytes:
            assert await r.publish(to_owner, message) == 1
            return await _next_payload(pubsub)

        old = encode_message({**post, "r": 1, "d": time.time() + 1}, b"old")
        assert orjson.loads(await send(old)) == {"k": KIND_REPLY, "r": 1, "f": "nb", "s": "ok"}
        json_v = encode_message({**post, "r": 2, "d": time.time() + 1, "w": VERSION}, b"json")
        assert await send(json_v) == ok_reply("nb", (2,))
        compact = encode_post(3, "na", time.time() + 1, record.connection_id, 0, b"compact")
        assert compact.startswith(b"P")
        assert await send(compact) == ok_reply("nb", (3,))
        assert await send(encode_message({"k": "a", "r": 3, "f": "na", "d": time.time() + 1})) == ok_reply("nb", (3,))
        assert owner.posted[record.connection_id] == [(b"old", False), (b"json", False), (b"compact", False)]
        gone = encode_post(4, "na", time.time() + 1, make_record("nb").connection_id, 0, b"x")
        assert decode_message(await send(gone)) == (
            {"k": KIND_REPLY, "r": 4, "f": "nb", "s": "gone", "w": VERSION}, b"",
        )
        batch = [encode_post(r, "na", time.time() + 1, record.connection_id, 0, b"%d" % r) for r in (5, 6, 7)]
        assert await send(encode_batch(batch)) == ok_reply("nb", (5, 6, 7))  # one "ok" to all of a batch
        assert owner.posted[record.connection_id][-3:] == [(b"5", False), (b"6", False), (b"7", False)]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await r.aclose()
        await reg.close()


async def test_a_node_that_closes_answers_its_held_calls_at_once(private_redis: RedisExecutor, key_prefix: str) -> None:
    """A call held for its links (cut off past its timeout) is not kept waiting for
    ``outcome_wait_s`` by a node that stops: it answers 503 as the node closes."""
    r = redis.asyncio.Redis(port=private_redis.port)
    pubsub = r.pubsub()
    async with RedisLink(private_redis.port) as link:
        config = dataclasses.replace(registry_config(link.url, key_prefix), outcome_wait_s=30.0)
        reg = RedisRegistry(config, "na", request_timeout_s=1.0)
        try:
            await reg.start(RecordingNode("na"))
            await pubsub.subscribe(f"{key_prefix}:node:{{nb}}")
            record = make_record("nb")
            await r.hset(f"{key_prefix}:{{c:{record.connection_id}}}", "node", "nb")
            posting = asyncio.ensure_future(reg.post(record.connection_id, b"x", False))
            await _next_header(pubsub, skip_asks=True)  # the owner got it; its reply never comes
            link.cut()
            await asyncio.sleep(1.3)  # past the timeout: held
            assert not posting.done()
            closing = asyncio.ensure_future(reg.close())
            with pytest.raises(RegistryUnavailableError):
                await asyncio.wait_for(posting, 3)  # the close's own steps first (1 s timeouts), not 30 s
            await asyncio.wait_for(closing, 10)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await r.aclose()
            await reg.close()
