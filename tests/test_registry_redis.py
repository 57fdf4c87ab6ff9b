"""The registry contract against RedisRegistry on a private redis-server, then what only a
cluster has: two or three registries (node ids) on one Redis, cross-node calls, ordering,
node death, Redis losing its data, Redis going away and coming back.

Timings are scaled down (heartbeat 0.2 s, node TTL 1 s) so that the whole file stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
import redis.asyncio
from pytest_redis.executor import RedisExecutor
from redis.crc import key_slot

from wsgateway.errors import GoneError, LimitExceededError, RegistryUnavailableError
from wsgateway.fanout import FanoutResult
from wsgateway.ids import new_connection_id
from wsgateway.records import ConnectionInfo, ConnectionRecord
from wsgateway.registry import (
    create_registry,
)
from wsgateway.registry.redis import RedisRegistry
from wsgateway.registry.redis.keys import KeySpace
from wsgateway.registry.redis.sweep import TOMBSTONE_S
from wsgateway.registry.redis.wire import (
    KIND_POST,
    VERSION,
    decode_message,
    encode_batch,
    encode_message,
    encode_post,
    encode_reply,
    info_from_json,
    info_to_json,
    ok_reply,
    read_ok,
    read_post,
    split_batch,
)

from .free_ports import free_port
from .redis_topologies import Topology
from .registry_contract import CHECKS, Factory, RecordingNode, make_record, wait_for
from .registry_support import (
    HEARTBEAT_S,
    NODE_TTL_S,
    QUICK_HEARTBEAT_S,
    RedisLink,
    accept,
    registry_config,
    topology_config,
    wait_settled,
)
from .topology_cluster import PrivateRedisCluster

pytestmark = pytest.mark.redis


@pytest.fixture
def heartbeat_s(request: pytest.FixtureRequest) -> float:
    """The registries' heartbeat: HEARTBEAT_S, or what the test names with QUICK_BEATS."""
    return float(getattr(request, "param", HEARTBEAT_S))


# A test that waits on no heartbeat but the two in which a new cluster settles (every test
# starts one: its own key prefix) beats every 50 ms: it settles in 0.1 s instead of 0.4 s.
QUICK_BEATS = pytest.mark.parametrize("heartbeat_s", [QUICK_HEARTBEAT_S], ids=["quick"], indirect=True)


@pytest.fixture
async def make(redis_topology: Topology, key_prefix: str, heartbeat_s: float) -> AsyncIterator[Factory]:
    """Start registries on the test's Redis topology (one key prefix per test); close them after."""
    started: list[RedisRegistry] = []

    async def factory(node: RecordingNode) -> RedisRegistry:
        registry = RedisRegistry(topology_config(redis_topology, key_prefix, heartbeat_s), node.node_id)
        started.append(registry)
        await registry.start(node)
        await wait_settled(registry)
        return registry

    yield factory
    for registry in reversed(started):
        await registry.close()


def sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url)


# One Redis, under Sentinel, and a three-master Redis Cluster (tests/topology_cluster.py).
# The tests without it run on one Redis only, each saying why.
ON_EACH_TOPOLOGY = pytest.mark.parametrize("redis_topology", ["single", "sentinel", "cluster"], indirect=True)


def keys_matching(topology: Topology, pattern: str) -> set[bytes]:
    """KEYS on every master (a Redis Cluster's client asks one node only)."""
    return {key for master in topology.masters() for key in master.keys(pattern)}


class CommandCounts:
    """The commands Redis ran since this was made (CONFIG RESETSTAT), added over every master
    of the topology, each asked on one connection of its own. SPUBLISH is counted as PUBLISH:
    it is the same message on a Redis Cluster. Under Sentinel the hellos the Sentinels PUBLISH
    on the master (each, every 2 s) are not counted: they are read on their channel meanwhile,
    up to a PING sent there before and after the counts are read (its PONG comes after every
    message published before it; a hello between the two PINGs makes it read the counts again).
    Those PINGs count as PING calls."""

    def __init__(self, topology: Topology) -> None:
        self._masters = topology.masters()
        self._hellos: redis.client.PubSub | None = None
        self._hellos_seen = 0
        if topology.name == "sentinel":
            self._hellos = self._masters[0].pubsub()
            self._hellos.subscribe("__sentinel__:hello")
            assert self._hellos.get_message(timeout=2) is not None  # subscribed
        for master in self._masters:
            master.config_resetstat()

    def calls(self) -> dict[str, int]:
        while True:
            self._hellos_seen += self._hellos_until_pong()
            calls: Counter[str] = Counter()
            for master in self._masters:
                for name, stat in master.info("commandstats").items():
                    calls[name.removeprefix("cmdstat_").replace("spublish", "publish")] += stat["calls"]
            between = self._hellos_until_pong()
            self._hellos_seen += between  # published before the counts were read, or after
            if not between:
                calls["publish"] -= self._hellos_seen
                return {name: n for name, n in calls.items() if n}

    def _hellos_until_pong(self) -> int:
        if self._hellos is None:
            return 0
        self._hellos.ping()
        hellos = 0
        while (message := self._hellos.get_message(timeout=2)) is not None:
            if message["type"] == "pong":
                return hellos
            hellos += message["type"] == "message"
        raise AssertionError("no PONG on the hello channel's connection")


def publish(topology: Topology, channel: str, message: bytes) -> None:
    """What another node sends on ``channel``: PUBLISH, or SPUBLISH on a Redis Cluster."""
    client = topology.client()
    if isinstance(client, redis.RedisCluster):
        client.spublish(channel, message)
    else:
        client.publish(channel, message)


@QUICK_BEATS
@ON_EACH_TOPOLOGY
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
async def test_contract(check: Callable[[Factory], object], make: Factory) -> None:
    await check(make)  # type: ignore[misc]


def test_create_registry_builds_redis(redis_url: str) -> None:
    registry = create_registry(registry_config(redis_url, "x"), "n1")
    assert isinstance(registry, RedisRegistry)
    assert registry.kind == "redis"


async def test_configured_password_beats_the_urls(tmp_path: Path, key_prefix: str) -> None:
    """(One Redis: the rule of which password wins is the same on every topology.)"""
    executor = RedisExecutor(
        executable="redis-server", databases=1, redis_timeout=30, loglevel="warning", host="127.0.0.1",
        port=free_port(), password="right-one", datadir=tmp_path,
    )
    with executor:
        url = f"redis://:wrong-one@127.0.0.1:{executor.port}/0"
        config = registry_config(url, key_prefix)
        node = RecordingNode("na")
        good = RedisRegistry(dataclasses.replace(config, password="right-one"), "na")
        await good.start(node)
        assert (await good.health())["reachable"] is True
        await good.close()
        bad = RedisRegistry(config, "nb")  # the URL's wrong password, nothing configured
        await bad.start(RecordingNode("nb"))
        assert (await bad.health())["reachable"] is False
        await bad.close()


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_survey_asks_every_live_node_over_its_channel(make: Factory) -> None:
    nodes = [RecordingNode(name) for name in ("na", "nb", "nc")]
    registries = [await make(node) for node in nodes]
    await accept(registries[1], nodes[1])
    query = {"what": "tenants"}
    assert await registries[0].survey(query) == {
        node.node_id: {"node": node.node_id, "connections": len(node.connections), "query": query} for node in nodes
    }
    assert [n.surveys for n in nodes] == [[query]] * 3  # one request each, this node asked directly
    # A node that fails answering, or that is gone, is None: the others still answer.
    nodes[1].mute = True
    await registries[2].close()
    answers = await registries[0].survey(query)
    assert answers["na"] == {"node": "na", "connections": 0, "query": query}
    assert answers["nb"] is None
    assert answers.get("nc") is None
    with pytest.raises(ValueError):
        await registries[0].survey({"what": "bad"})  # this node's own answer fails first


# ---------------------------------------------------------------- records in Redis


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_record_layout_is_hash_tagged(make: Factory, redis_topology: Topology, key_prefix: str) -> None:
    node = RecordingNode("na")
    registry = await make(node)
    record = await accept(registry, node)
    r = redis_topology.client()
    fields = r.hgetall(f"{key_prefix}:{{c:{record.connection_id}}}")
    assert fields[b"node"] == b"na"
    assert fields[b"tenant"] == b"tenant-a"
    assert fields[b"principal"] == b"user-1"
    assert float(fields[b"connectedAt"]) == record.connected_at
    assert float(fields[b"lastActiveAt"]) == record.connected_at
    assert fields[b"sourceIp"] == b"203.0.113.7"
    assert fields[b"userAgent"] == b"test-agent/1.0"
    assert fields[b"domainName"] == b"ws.example.com"
    assert r.zrange(f"{key_prefix}:{{t:tenant-a}}:conns", 0, -1) == [record.connection_id.encode()]
    assert r.smembers(f"{key_prefix}:{{t:tenant-a}}:nodes") == {b"na"}
    assert r.smembers(f"{key_prefix}:{{n:na}}:conns") == {record.connection_id.encode()}
    await registry.remove(record)
    assert not r.exists(f"{key_prefix}:{{c:{record.connection_id}}}")
    assert r.smembers(f"{key_prefix}:{{t:tenant-a}}:nodes") == set()


@ON_EACH_TOPOLOGY
async def test_last_active_is_flushed_on_the_heartbeat(make: Factory, redis_topology: Topology, key_prefix: str) -> None:
    node = RecordingNode("na")
    registry = await make(node)
    record = await accept(registry, node)
    r = redis_topology.client()
    key = f"{key_prefix}:{{c:{record.connection_id}}}"
    node.touch(record.connection_id, record.connected_at + 0.5)  # under activity_flush_s (1 s)
    await asyncio.sleep(3 * HEARTBEAT_S)
    assert float(r.hget(key, "lastActiveAt")) == record.connected_at  # not worth a write yet
    active_at = record.connected_at + 5.25
    node.touch(record.connection_id, active_at)
    await wait_for(lambda: r.hget(key, "lastActiveAt") == repr(active_at).encode(), 3 * HEARTBEAT_S + 1, "flush")


# ---------------------------------------------------------------- cross-node calls


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_cross_node_post_get_delete(make: Factory) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    record = await accept(reg_a, node_a)
    cid = record.connection_id
    await reg_b.post(cid, b"\x00\x01binary", True)
    await reg_b.post(cid, "héllo".encode(), False)
    assert node_a.posted[cid] == [(b"\x00\x01binary", True), ("héllo".encode(), False)]
    node_a.touch(cid, record.connected_at + 321.5)
    info = await reg_b.get(cid)
    assert info.record == record
    assert info.last_active_at == record.connected_at + 321.5
    await reg_b.delete(cid)
    assert node_a.deleted == [cid]
    for call in (reg_b.post(cid, b"x", False), reg_b.get(cid), reg_b.delete(cid)):
        with pytest.raises(GoneError):
            await call
    node_a.full.add((await accept(reg_a, node_a)).connection_id)
    with pytest.raises(LimitExceededError):
        await reg_b.post(next(iter(node_a.full)), b"x", False)


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_a_session_handed_over_takes_every_call_with_it(
    make: Factory, redis_topology: Topology, key_prefix: str
) -> None:
    node_a, node_b, node_c = RecordingNode("na"), RecordingNode("nb"), RecordingNode("nc")
    reg_a, reg_b, reg_c = await make(node_a), await make(node_b), await make(node_c)
    record = await accept(reg_a, node_a)
    cid = record.connection_id
    await reg_c.post(cid, b"1", False)  # c caches a as the owner
    with pytest.raises(GoneError):  # a wrong claim takes nothing
        await reg_b.take_session(cid, {"token": "wrong"})
    state = await reg_b.take_session(cid, {"token": "right", "lastSeq": 0})
    assert state == {"connectionId": cid, "claim": {"token": "right", "lastSeq": 0}}
    reg_a.handing_over(record, "nb", "h1")  # as the gateway's sessions do once they handed it over
    moved = dataclasses.replace(record, node_id="nb")
    node_b.open(moved)  # b holds it, and has not rewritten its record yet:
    await reg_b.post(cid, b"to b", False)  # the record names a, which says "moved" to b: b asks itself
    assert await reg_b.move_in(moved, "na", "h1")
    assert await reg_b.move_in(moved, "na", "h1")  # asked again (a reply lost): the same answer
    assert not await reg_a.settle_handover(record, "h1")  # it landed: a's sets forget it
    await reg_c.post(cid, b"2", False)  # a answers "moved": c follows the session to b
    await reg_a.post(cid, b"3", False)  # a itself sends it on
    assert node_b.posted[cid] == [(b"to b", False), (b"2", False), (b"3", False)]
    assert node_a.posted[cid] == [(b"1", False)]
    r = redis_topology.client()
    keys = KeySpace(key_prefix)
    await wait_for(lambda: not r.sismember(keys.node_conns("na"), cid), 2, "a forgets the session")
    assert r.sismember(keys.node_conns("nb"), cid) and r.hget(keys.record(cid), "node") == b"nb"
    assert (await reg_c.get(cid)).record.node_id == "nb"
    # A node that knows nothing asks the node the id names, which answers "moved" with where
    # the session went, to a delete as to a post; the delete reaches b.
    reg_d = await make(RecordingNode("nd"))
    await reg_d.delete(cid)
    assert node_b.deleted == [cid]


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_a_handover_is_settled_once_by_whichever_side_reaches_the_record_first(
    make: Factory, redis_topology: Topology, key_prefix: str
) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    r, keys = redis_topology.client(), KeySpace(key_prefix)
    record = await accept(reg_a, node_a)
    cid = record.connection_id
    moved = dataclasses.replace(record, node_id="nb")
    reg_a.handing_over(record, "nb", "h1")
    # The holder settles first (the resuming node never got its answer): the session stays
    # on a, and that move can no longer land on b, however late its answer comes.
    assert await reg_a.settle_handover(record, "h1")
    assert not await reg_b.move_in(moved, "na", "h1")
    assert r.hget(keys.record(cid), "node") == b"na" and r.sismember(keys.node_conns("na"), cid)
    assert not r.sismember(keys.node_conns("nb"), cid)
    await reg_b.post(cid, b"here", False)  # calls reach a again
    assert node_a.posted[cid] == [(b"here", False)]
    # A later move of the same session (another name) lands, and a's settling sees it.
    reg_a.handing_over(record, "nb", "h2")
    assert await reg_b.move_in(moved, "na", "h2")
    assert not await reg_a.settle_handover(record, "h2")
    assert r.hget(keys.record(cid), "node") == b"nb" and r.sismember(keys.node_conns("nb"), cid)
    await wait_for(lambda: not r.sismember(keys.node_conns("na"), cid), 2, "a forgets the session")
    # b holds it now: a move from a (which no longer holds it) cannot land anywhere.
    assert not await reg_a.move_in(record, "nc", "h3")
    # A record gone (the session ended where it went, or Redis lost it): the node it went to
    # says whether the move landed there. It did: it moved on, and nothing is written back.
    r.delete(keys.record(cid))
    reg_b.handing_over(moved, "na", "h4")
    node_a.landed.add("h4")
    assert not await reg_b.settle_handover(moved, "h4")
    assert not r.exists(keys.record(cid))
    # It did not (and never will: its own move found no record): the holder writes the record
    # back and keeps the session; that move can no longer land.
    reg_b.handing_over(moved, "na", "h5")
    assert await reg_b.settle_handover(moved, "h5")
    assert r.hget(keys.record(cid), "node") == b"nb" and r.hget(keys.record(cid), "handover") == b"h5"
    assert r.sismember(keys.node_conns("nb"), cid)
    assert not await reg_a.move_in(record, "nb", "h5")
    # Gone to a node that has left the cluster (nobody listens on its channel, no beat):
    # whatever it held ended with it; the holder keeps the session.
    r.delete(keys.record(cid))
    reg_b.handing_over(moved, "nc", "h6")
    assert await reg_b.settle_handover(moved, "h6")
    assert r.hget(keys.record(cid), "node") == b"nb"
    # A sweep claimed the record (its tombstone): its $disconnect ran there; not kept.
    r.delete(keys.record(cid))
    r.hset(keys.record(cid), "claimedBy", "nc")
    reg_b.handing_over(moved, "na", "h7")
    assert not await reg_b.settle_handover(moved, "h7")


async def test_a_session_being_handed_over_outlives_a_re_registration(
    make: Factory, private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    """A write of the holder's fails (Redis restarted, a link broke) while a session of its is
    on its way to another node whose answer was lost: the re-registration at the holder's next
    beat, which drops the records its hub does not hold, leaves that session's record to the
    move, and keeps its tenant listed. The holder then keeps the session when it settles, and
    nobody ran a $disconnect. (One Redis: the link plays the failure.)"""
    async with cut_off_pair(make, private_redis, key_prefix) as (survivor, reg_b, holder, reg_a, link):
        r, keys = sync_client(redis_url), KeySpace(key_prefix)
        record = await accept(reg_a, holder, tenant="moving")
        cid = record.connection_id
        await reg_b.take_session(cid, {"token": "right", "lastSeq": 0})  # b never moves it in
        reg_a.handing_over(record, "nb", "h1")
        link.cut()
        other = await accept(reg_a, holder)  # its write fails: a re-registers once Redis answers
        link.restore()
        await wait_for(lambda: bool(r.exists(keys.record(other.connection_id))), 4 * HEARTBEAT_S + 2, "a's re-registration")
        assert r.hget(keys.record(cid), "node") == b"na"
        assert r.sismember(keys.node_conns("na"), cid) and r.sismember(keys.tenant_nodes("moving"), "na")
        assert await reg_a.settle_handover(record, "h1")  # the move never landed: it stays on a
        assert r.sismember(keys.tenant_nodes("moving"), "na")
        assert survivor.orphans == [] and holder.orphans == []


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_calls_about_a_session_on_its_way_to_a_node_wait_for_it_there(make: Factory) -> None:
    """A get, group change or delete that reaches the node a reliable session is moving to,
    before it landed, is acted on once it did; one whose session does not land by the
    request's deadline is answered as dropped (asked once more, then 503): never a 410 for a
    session in flight."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    record = await accept(reg_b, node_b)
    cid = record.connection_id
    info = node_b.connections.pop(cid)  # on its way to b (its id names b: b is asked)
    loop = asyncio.get_running_loop()
    landing = node_b.landing[cid] = loop.create_future()
    calls = [asyncio.ensure_future(call) for call in (reg_a.get(cid), reg_a.group(cid, "g1", join=True))]
    await asyncio.sleep(0.3)
    assert not any(call.done() for call in calls)
    node_b.connections[cid] = info  # it landed
    landing.set_result(None)
    got, _ = await asyncio.gather(*calls)
    assert got.record == record and node_b.groups[cid] == {"g1"}
    landing = node_b.landing[cid] = loop.create_future()  # on its way again, and never lands
    with pytest.raises(RegistryUnavailableError):
        await reg_a.delete(cid)
    assert node_b.deleted == [] and cid in node_b.connections


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_gone_after_remove_even_with_a_cached_owner(make: Factory) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    record = await accept(reg_a, node_a)
    await reg_b.post(record.connection_id, b"1", False)  # caches the owner
    del node_a.connections[record.connection_id]
    await reg_a.remove(record)
    with pytest.raises(GoneError):
        await reg_b.post(record.connection_id, b"2", False)
    assert node_a.posted[record.connection_id] == [(b"1", False)]


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_cross_node_fanout_and_listing(make: Factory) -> None:
    nodes = [RecordingNode(n) for n in ("na", "nb", "nc")]
    regs = [await make(n) for n in nodes]
    on_a = [await accept(regs[0], nodes[0]) for _ in range(3)]
    on_b = [await accept(regs[1], nodes[1]) for _ in range(2)]
    await accept(regs[1], nodes[1], "tenant-other")
    # nc holds no connection of tenant-a: it must not be asked
    assert await regs[2].fanout("tenant-a", b"news", False) == FanoutResult(5)
    assert await regs[0].fanout("tenant-a", b"more", True) == FanoutResult(2)
    assert [f[0] for f in nodes[0].fanouts] == ["tenant-a"]  # one message per node
    assert [f[0] for f in nodes[1].fanouts] == ["tenant-a", "tenant-a"]
    assert nodes[2].fanouts == []
    assert all(nodes[0].posted[r.connection_id] == [(b"news", False)] for r in on_a)
    assert all(nodes[1].posted[r.connection_id] == [(b"news", False), (b"more", True)] for r in on_b)
    expected = sorted(r.connection_id for r in on_a + on_b)
    seen: list[str] = []
    token = None
    while True:
        page = await regs[2].list_tenant("tenant-a", 2, token)
        seen += [i.record.connection_id for i in page.connections]
        token = page.next_token
        if token is None:
            break
    assert seen == expected


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_cross_node_user_and_group_audiences(make: Factory) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    alice = await accept(reg_a, node_a, principal_id="alice")
    bob = await accept(reg_a, node_a, principal_id="bob")
    await reg_b.group(bob.connection_id, "desk", join=True)  # through the owner, node a
    assert node_a.groups[bob.connection_id] == {"desk"}
    assert await reg_b.fanout("tenant-a", b"to alice", False, user="alice") == FanoutResult(1)
    assert await reg_b.fanout("tenant-a", b"to desk", False, group="desk") == FanoutResult(1)
    assert node_a.posted[alice.connection_id] == [(b"to alice", False)]
    assert node_a.posted[bob.connection_id] == [(b"to desk", False)]
    await reg_b.group(bob.connection_id, "desk", join=False)
    assert await reg_b.fanout("tenant-a", b"x", False, group="desk") == FanoutResult(0)
    with pytest.raises(GoneError):
        await reg_b.group("AAAAAAAAAAAAAAAA", "desk", join=True)


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_posts_from_one_caller_arrive_in_order(make: Factory) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    cid = (await accept(reg_a, node_a)).connection_id
    messages = [str(i).encode() for i in range(1000)]
    await asyncio.gather(*(reg_b.post(cid, m, False) for m in messages))
    assert [m for m, _ in node_a.posted[cid]] == messages


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_redis_commands_per_post(make: Factory, redis_topology: Topology) -> None:
    """One PUBLISH for the request and one for the reply (SPUBLISH on a Redis Cluster: no
    more than on one Redis); an id that names its node needs no lookup, not even the first time."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    cid = (await accept(reg_a, node_a)).connection_id
    counts = CommandCounts(redis_topology)
    for i in range(200):
        await reg_b.post(cid, b"%d" % i, False)
    calls = counts.calls()
    assert calls["publish"] == 400
    assert calls.get("hget", 0) == 0


@ON_EACH_TOPOLOGY
async def test_concurrent_posts_to_one_node_share_their_publishes(make: Factory, redis_topology: Topology) -> None:
    """Posts made in one event-loop iteration to one node leave as one PUBLISH of their
    batch, and their replies come back as one: each still answered on its own (410 for the
    closed connection among them), delivered once, in order."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    cid = (await accept(reg_a, node_a)).connection_id
    record = await accept(reg_a, node_a)
    closed = record.connection_id
    del node_a.connections[closed]
    await reg_a.remove(record)
    counts = CommandCounts(redis_topology)
    messages = [b"%d" % i for i in range(200)]
    posts = [reg_b.post(cid, m, False) for m in messages[:100]] + [reg_b.post(closed, b"x", False)]
    posts += [reg_b.post(cid, m, False) for m in messages[100:]]
    outcomes = await asyncio.gather(*posts, return_exceptions=True)
    assert outcomes[:100] + outcomes[101:] == [None] * 200
    assert isinstance(outcomes[100], GoneError)
    assert [m for m, _ in node_a.posted[cid]] == messages
    assert closed not in node_a.posted
    calls = counts.calls()
    assert calls["publish"] <= 4  # one batch each way (402 PUBLISHes without batching)


@ON_EACH_TOPOLOGY
async def test_ids_of_the_plain_form_are_looked_up_once(make: Factory, redis_topology: Topology) -> None:
    """Ids made before connection ids named their node: one HGET, then the owner is cached."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    cid = (await accept(reg_a, node_a, connection_id=new_connection_id())).connection_id
    assert len(cid) == 16
    counts = CommandCounts(redis_topology)
    for i in range(50):
        await reg_b.post(cid, b"%d" % i, False)
    calls = counts.calls()
    assert (calls["publish"], calls["hget"]) == (100, 1)
    assert [m for m, _ in node_a.posted[cid]] == [b"%d" % i for i in range(50)]


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_an_id_naming_no_live_node_is_looked_up(make: Factory) -> None:
    """The node part is only a hint: an id naming a node that does not listen (a made-up
    node, or a dead one whose record a sweep claimed) is 410 once the registry is sure
    that no node holds it, and reaches the holder if the record names another."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    with pytest.raises(GoneError):
        await reg_b.post(new_connection_id("nowhere"), b"x", False)
    # an id naming "nowhere" but held by node a (ids copied between deployments, say)
    record = await accept(reg_a, node_a, connection_id=new_connection_id("nowhere"))
    await reg_b.post(record.connection_id, b"found", False)
    assert node_a.posted[record.connection_id] == [(b"found", False)]


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_a_node_past_its_death_line_is_asked_until_a_sweep_takes_it(
    make: Factory, redis_topology: Topology, key_prefix: str
) -> None:
    """A node past its death line that no sweep has taken may be alive, its last beats lost
    with a master that died or was demoted before it replicated them, and so may its records
    be: a call for an id with no record names it among the nodes that may hold it, and
    answers 503 while it is silent, never a false 410 (seen in the Sentinel soak: a live
    connection answered 410 after a failover). Once a sweep has taken the node, 410."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    named, plain = new_connection_id("lost"), new_connection_id()
    for cid in (named, plain):  # misses are trusted: without the lost node, both are 410
        with pytest.raises(GoneError):
            await reg_a.post(cid, b"x", False)
    keys, r = KeySpace(key_prefix), redis_topology.client()
    r.set(keys.sweep_lease("lost"), "another node", px=60_000)  # a sweep of it waits
    seconds, micros = r.time()
    r.zadd(keys.alive, {"lost": seconds * 1000 + micros // 1000 - 1})  # its death line just passed
    r.hset(keys.nodes, "lost", "")  # listed (it registered long ago), its records lost
    for cid in (named, plain):
        with pytest.raises(RegistryUnavailableError):
            await reg_a.post(cid, b"x", False)
        with pytest.raises(RegistryUnavailableError):
            await reg_a.get(cid)
    held = await accept(reg_b, node_b)  # the live nodes still answer for what they hold
    await reg_a.post(held.connection_id, b"here", False)
    assert node_b.posted[held.connection_id] == [(b"here", False)]
    r.delete(keys.sweep_lease("lost"))
    await wait_for(lambda: not r.hexists(keys.nodes, "lost"), NODE_TTL_S + 10 * QUICK_HEARTBEAT_S + 2, "the sweep")
    for cid in (named, plain):
        with pytest.raises(GoneError):
            await reg_a.post(cid, b"x", False)


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_owner_ignores_requests_past_their_deadline(
    make: Factory, redis_topology: Topology, key_prefix: str
) -> None:
    """A request the sender has answered 503 for (its deadline passed) is never acted on."""
    node_a = RecordingNode("na")
    await make(node_a)
    cid = node_a.open(make_record("na")).connection_id
    channel = f"{key_prefix}:node:{{na}}"
    late = {"k": KIND_POST, "r": 1, "f": "nx", "c": cid, "b": 0, "d": time.time() - 0.001}
    publish(redis_topology, channel, encode_message(late, b"late"))
    publish(redis_topology, channel, encode_message({**late, "r": 2, "d": time.time() + 5}, b"in time"))
    await wait_for(lambda: cid in node_a.posted, 2, "the request in time")
    assert node_a.posted[cid] == [(b"in time", False)]


def test_node_messages_round_trip_without_io() -> None:
    header = {"k": KIND_POST, "r": 7, "f": "na", "c": "abc", "b": 1, "d": 1.5}
    data = b"\n\x00{not json}\n"
    assert decode_message(encode_message(header, data)) == (header, data)
    assert decode_message(encode_message({"k": "r", "r": 1, "s": "ok"})) == ({"k": "r", "r": 1, "s": "ok"}, b"")
    with pytest.raises(ValueError):
        decode_message(b"[1, 2]\nx")
    with pytest.raises(ValueError):
        decode_message(b"not json")
    batch = [encode_message(header, data), encode_message({"k": "r", "r": 1, "s": "ok"}), b"", b"*x"]
    assert split_batch(encode_batch(batch)) == batch
    assert split_batch(encode_message(header, data)) == [encode_message(header, data)]
    assert split_batch(b"") == [b""]
    for cut in (encode_batch(batch)[:-1], encode_batch(batch)[:3]):
        with pytest.raises(ValueError):
            split_batch(cut)
    info = ConnectionInfo(make_record("na", "t\u00e9nant"), 1_767_000_001.5)
    assert info_from_json(info_to_json(info)) == info


def test_compact_node_messages_round_trip_without_io() -> None:
    """The compact post and "ok" read back as the JSON forms would (with "w"); a reply is
    compact only for a sender that reads it and only when it says nothing but ok; one "ok"
    may answer several requests; names too long for a length byte: JSON for a post."""
    header = {"k": KIND_POST, "r": 2**40 + 7, "f": "n\u00e9", "d": 1_767_000_000.25, "c": "abc.n\u00e9", "b": 1}
    data = b"\n\x00{not json}\n"
    fields = (header["r"], header["f"], header["d"], header["c"], header["b"])
    message = encode_post(*fields, data)
    assert message.startswith(b"P")
    assert decode_message(message) == ({**header, "w": VERSION}, data)
    assert read_post(message) == (2**40 + 7, "n\u00e9", 1_767_000_000.25, "abc.n\u00e9", 1, data)
    assert decode_message(encode_post(*fields, b"")) == ({**header, "w": VERSION}, b"")
    reply = {"k": "r", "r": 9, "f": "nb", "s": "ok", "w": VERSION}
    assert encode_reply(reply) == ok_reply("nb", (9,))
    assert decode_message(ok_reply("nb", (9,))) == (reply, b"")
    assert read_ok(ok_reply("nb", (9,))) == ("nb", (9,))
    assert read_ok(ok_reply("n\u00e9", [1, 2, 2**64 - 1])) == ("n\u00e9", (1, 2, 2**64 - 1))
    for json_reply in ({**reply, "w": None}, {k: v for k, v in reply.items() if k != "w"}, {**reply, "s": "gone"},
                       {**reply, "n": 3}):
        assert encode_reply(json_reply) == encode_message(json_reply)
    long = {**header, "c": "x" * 256, "w": VERSION}
    assert encode_post(header["r"], header["f"], header["d"], "x" * 256, 1, data) == encode_message(long, data)
    with pytest.raises(ValueError):
        ok_reply("y" * 256, (1,))
    several = ok_reply("nb", (1, 2))
    for bad in (message[:5], message[:25], several, several[:-1], several + b"x", ok_reply("nb", (9,))[:4], b"P",
                b"R", b"R\x05nb"):
        with pytest.raises(ValueError):
            decode_message(bad)
    batch = [message, ok_reply("nb", (9,)), several, encode_message(reply)]
    assert split_batch(encode_batch(batch)) == batch


# ---------------------------------------------------------------- node death and shutdown

_DOOMED_NODE = """
import asyncio, sys
from wsgateway.config import RegistryConfig
from wsgateway.registry.redis.wire import KIND_POST, decode_message, encode_message, info_from_json, info_to_json
from wsgateway.registry.redis import RedisRegistry
from wsgateway.registry.redis.keys import KeySpace
from tests.registry_contract import RecordingNode, make_record

async def main(url, prefix, count, node_id, password, sentinel_password):
    node = RecordingNode(node_id)
    registry = RedisRegistry(RegistryConfig(backend="redis", redis_url=url, key_prefix=prefix,
                             heartbeat_s=0.2, node_ttl_s=1.0, password=password or None,
                             sentinel_password=sentinel_password or None), node_id)
    await registry.start(node)
    for _ in range(count):
        record = node.open(make_record(node_id))
        await registry.add(record)
        print(record.connection_id, flush=True)
    print("ready", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5], sys.argv[6]))
"""


def start_doomed_node(
    topology: Topology, prefix: str, count: int, node_id: str = "doomed"
) -> tuple[subprocess.Popen[str], list[str]]:
    """A registry in its own process (to be killed with SIGKILL); returns it and its ids."""
    root = Path(__file__).resolve().parent.parent
    config = topology.config()
    proc = subprocess.Popen(
        [sys.executable, "-c", _DOOMED_NODE, config.redis_url, prefix, str(count), node_id, config.password or "",
         config.sentinel_password or ""],
        cwd=root, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert proc.stdout is not None
    ids = []
    deadline = time.monotonic() + 20
    while (line := proc.stdout.readline().strip()) != "ready":
        assert line and time.monotonic() < deadline, "the doomed node did not start"
        ids.append(line)
    return proc, ids


@ON_EACH_TOPOLOGY
async def test_killed_node_is_swept_once_with_1006(make: Factory, redis_topology: Topology, key_prefix: str) -> None:
    survivors = [RecordingNode("nb"), RecordingNode("nc")]
    regs = [await make(n) for n in survivors]
    up_at = time.monotonic()
    proc, ids = await asyncio.to_thread(start_doomed_node, redis_topology, key_prefix, 5)
    try:
        await regs[0].post(ids[0], b"alive", False)  # reaches the doomed node
        assert len((await regs[0].list_tenant("tenant-a", 100, None)).connections) == 5
        # survivors must have been up for node_ttl_s to sweep (the doomed process took some)
        await asyncio.sleep(max(0.0, NODE_TTL_S - (time.monotonic() - up_at)))
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        proc.wait()
        # Its ids name it, but nobody listens there now, and its records still name it: 503
        # until the sweep has claimed them, never a false 410.
        with pytest.raises(RegistryUnavailableError):
            await regs[1].post(ids[2], b"x", False)

        def orphans() -> list[tuple[ConnectionRecord, int, str]]:
            return [o for n in survivors for o in n.orphans]

        await wait_for(lambda: len(orphans()) == 5, NODE_TTL_S + 4 * HEARTBEAT_S + 2, "orphan $disconnect")
        assert time.monotonic() - killed_at <= NODE_TTL_S + 2 * HEARTBEAT_S + 1.0
    finally:
        proc.kill()
        proc.wait()
    await asyncio.sleep(3 * HEARTBEAT_S)  # no second run
    assert sorted(o[0].connection_id for o in orphans()) == sorted(ids)
    assert {(o[1], o[0].node_id) for o in orphans()} == {(1006, "doomed")}
    assert all(o[0].authorizer == {"principalId": "user-1", "role": "admin", "n": 3, "ratio": 0.5, "beta": True}
               for o in orphans())
    for reg in regs:
        with pytest.raises(GoneError):
            await reg.post(ids[1], b"x", False)
        assert (await reg.list_tenant("tenant-a", 100, None)).connections == []
    r = redis_topology.client()
    # what is left of each record is a tombstone, for the node should it come back
    tombstones = keys_matching(redis_topology, f"{key_prefix}:{{c:*")
    assert sorted(tombstones) == sorted(f"{key_prefix}:{{c:{i}}}".encode() for i in ids)
    for key in tombstones:
        assert set(r.hgetall(key)) == {b"claimedBy"}
        assert 0 < r.ttl(key) <= TOMBSTONE_S
    assert set(r.hkeys(f"{key_prefix}:{{meta}}:nodes")) == {b"nb", b"nc"}


@QUICK_BEATS
@ON_EACH_TOPOLOGY
async def test_closed_node_is_gone_at_once(make: Factory) -> None:
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    records = [await accept(reg_a, node_a) for _ in range(3)]
    await reg_b.post(records[0].connection_id, b"cache the owner", False)
    node_a.connections.clear()  # the gateway closed its clients (1001) before closing the registry
    await reg_a.close()
    for record in records:
        with pytest.raises(GoneError):
            await reg_b.post(record.connection_id, b"x", False)
    assert (await reg_b.list_tenant("tenant-a", 10, None)).connections == []
    assert await reg_b.fanout("tenant-a", b"x", False) == FanoutResult(0)
    assert node_b.orphans == []


@QUICK_BEATS
async def test_a_node_restarted_with_its_node_id_is_not_taken_for_its_previous_life(make: Factory) -> None:
    """A node keeps the outcome of each request it acted on for a few seconds, by sender and
    request id, so that a sender that lost the reply can ask for it. A node restarted at once
    with the same fixed node id must not send the request ids of its previous life: each of
    its posts is acted on, not answered with the outcome of its previous life's post."""
    owner = RecordingNode("nb")
    record = await accept(await make(owner), owner)
    cid = record.connection_id
    for life in ("first", "second"):
        sender = await make(RecordingNode("na"))
        for i in range(3):
            await sender.post(cid, f"{life} {i}".encode(), False)
        await sender.close()
    assert [data.decode() for data, _ in owner.posted[cid]] == [f"{life} {i}" for life in ("first", "second") for i in range(3)]


@ON_EACH_TOPOLOGY
async def test_restarted_node_id_disconnects_its_previous_life(
    make: Factory, redis_topology: Topology, key_prefix: str
) -> None:
    """A node restarted with the same fixed node id before the sweep: the records of its
    previous process are orphans, disconnected (1006) once, by whichever node claims them."""
    survivor = RecordingNode("nb")
    await make(survivor)
    proc, ids = await asyncio.to_thread(start_doomed_node, redis_topology, key_prefix, 2, "na")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reborn = RecordingNode("na")
    await make(reborn)
    def orphans() -> list[tuple[ConnectionRecord, int, str]]:
        return reborn.orphans + survivor.orphans

    await wait_for(lambda: len(orphans()) == 2, NODE_TTL_S + 2, "orphans of the previous life")
    await asyncio.sleep(3 * HEARTBEAT_S)
    assert sorted(o[0].connection_id for o in orphans()) == sorted(ids)
    assert {o[1] for o in orphans()} == {1006}


# ---------------------------------------------------------------- declared dead, but alive


async def listed_ids(registry: RedisRegistry, tenant: str = "tenant-a") -> set[str]:
    """Every connection id of the tenant's listing, page after page."""
    ids: set[str] = set()
    token: str | None = None
    while True:
        page = await registry.list_tenant(tenant, 1000, token)
        ids |= {i.record.connection_id for i in page.connections}
        if (token := page.next_token) is None:
            return ids


async def check_each_connection_once(
    victim: RecordingNode, survivor: RecordingNode, reg_survivor: RedisRegistry, records: list[ConnectionRecord]
) -> set[str]:
    """Each of the victim's connections either got exactly one orphan ``$disconnect`` (1006,
    on the survivor) and was abandoned exactly once (1012), or neither and is still held,
    registered and reachable from the survivor. Returns the claimed ids."""
    orphaned = Counter(o[0].connection_id for o in survivor.orphans + victim.orphans)
    abandoned = Counter(cid for cid, _, _ in victim.abandoned)
    claimed = {cid for cid, n in orphaned.items() if n}
    assert set(orphaned) <= {r.connection_id for r in records}
    assert all(n == 1 for n in orphaned.values()), orphaned.most_common(3)
    assert abandoned == Counter(claimed)  # abandon() was called for exactly the claimed ones
    assert {(o[1], o[0].node_id) for o in survivor.orphans} <= {(1006, "na")}
    assert victim.orphans == []
    assert {(code, reason) for _, code, reason in victim.abandoned} <= {(1012, "node was declared dead")}
    kept = [r.connection_id for r in records if r.connection_id not in claimed]
    assert set(victim.connections) == set(kept)
    await asyncio.gather(*(reg_survivor.post(cid, b"still here", False) for cid in kept))
    assert all(victim.posted[cid][-1] == (b"still here", False) for cid in kept)
    gone = await asyncio.gather(*(reg_survivor.post(cid, b"x", False) for cid in claimed), return_exceptions=True)
    assert all(isinstance(g, GoneError) for g in gone)
    # A sweep still leasing the victim when it came back unlists it once more at its end: the
    # victim reconciles again (abandoning nothing), and listings wait for it (503) meanwhile.
    async with asyncio.timeout(10):
        while True:
            try:
                listed = await listed_ids(reg_survivor)
                break
            except RegistryUnavailableError:
                await asyncio.sleep(0.05)
    assert listed == set(kept)
    return claimed


async def settled_after_return(
    victim: RecordingNode, survivor: RecordingNode, reg_survivor: RedisRegistry, total: int, timeout: float
) -> None:
    """Until the survivor's orphan runs and the victim's abandons match, and the survivor
    lists exactly what the victim still holds (it re-registered)."""
    listed: set[str] | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                if len(victim.connections) + len(victim.abandoned) == total and len(survivor.orphans) == len(
                    victim.abandoned
                ):
                    try:
                        listed = await listed_ids(reg_survivor)
                    except RegistryUnavailableError:
                        listed = None  # the victim has not re-registered yet
                    if listed == set(victim.connections):
                        return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(
            f"not settled after {timeout}s: held {len(victim.connections)}, abandoned {len(victim.abandoned)}, "
            f"orphans {len(survivor.orphans)}, listed {None if listed is None else len(listed)}"
        ) from None


class CutOff(NamedTuple):
    """A survivor ("nb") on the private Redis and a victim ("na") on a link the test cuts.

    One Redis only: a :class:`RedisLink` relay is the network between one node and one
    redis-server, but Sentinels name the master's own address and a cluster's shards name
    theirs (CLUSTER SLOTS, MOVED), so a node on those topologies would reach Redis around
    the relay. Their outages are a failover (tests/test_cluster_failover.py) or a shard down."""

    survivor: RecordingNode
    reg_b: RedisRegistry
    victim: RecordingNode
    reg_a: RedisRegistry
    link: RedisLink


@contextlib.asynccontextmanager
async def cut_off_pair(make: Factory, private_redis: RedisExecutor, key_prefix: str) -> AsyncIterator[CutOff]:
    survivor = RecordingNode("nb")
    reg_b = await make(survivor)
    victim = RecordingNode("na")
    async with RedisLink(private_redis.port) as link:
        reg_a = RedisRegistry(registry_config(link.url, key_prefix), "na")
        try:
            await reg_a.start(victim)
            await wait_settled(reg_a)
            yield CutOff(survivor, reg_b, victim, reg_a, link)
        finally:
            await reg_a.close()


async def test_node_declared_dead_abandons_exactly_what_was_claimed(
    make: Factory, private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    """Cut off from Redis past node_ttl_s, a node is swept: one $disconnect (1006) per
    connection on the survivor. Back, it closes those with 1012 and no second $disconnect, and
    keeps the ones no sweep could claim: accepted during the outage (never written) or after."""
    async with cut_off_pair(make, private_redis, key_prefix) as (survivor, reg_b, victim, reg_a, link):
        before = [await accept(reg_a, victim) for _ in range(5)]
        link.cut()
        during = [await accept(reg_a, victim) for _ in range(2)]
        await wait_for(lambda: len(survivor.orphans) == len(before), NODE_TTL_S + 3, "the sweep")
        link.restore()
        after = [await accept(reg_a, victim)]  # written at once, most likely before the beat
        records = before + during + after
        await settled_after_return(victim, survivor, reg_b, len(records), timeout=5)
        await asyncio.sleep(3 * HEARTBEAT_S)  # a second $disconnect or abandon would show by now
        claimed = await check_each_connection_once(victim, survivor, reg_b, records)
        assert claimed == {r.connection_id for r in before}
        r = sync_client(redis_url)  # the tombstones were consumed by the reconciliation
        assert set(r.keys(f"{key_prefix}:{{c:*")) == {f"{key_prefix}:{{c:{cid}}}".encode() for cid in victim.connections}


async def test_concurrent_calls_to_an_owner_that_stopped_listening_answer_503(
    make: Factory, private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    """The owner's subscription is gone (cut off) but its record is there: every concurrent
    call that had its owner cached answers 503, none fails on the cache emptied under it."""
    async with cut_off_pair(make, private_redis, key_prefix) as (_, reg_b, victim, reg_a, link):
        cid = (await accept(reg_a, victim)).connection_id
        await reg_b.post(cid, b"cached", False)  # b caches the owner
        link.cut()
        r = sync_client(redis_url)
        channel = f"{key_prefix}:node:{{na}}"
        await wait_for(lambda: r.pubsub_numsub(channel)[0][1] == 0, 2, "the owner's subscription gone")
        results = await asyncio.gather(*(reg_b.post(cid, b"x", False) for _ in range(5)), return_exceptions=True)
        assert [type(r) for r in results] == [RegistryUnavailableError] * 5


async def test_connection_closed_while_cut_off_runs_its_disconnect_once(
    make: Factory, private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    """A connection that closes on a node cut off from Redis: remove() waits for Redis, then
    says False where the sweep claimed the record (its $disconnect ran on the survivor) and
    True where nobody could (accepted during the outage: never written)."""
    async with cut_off_pair(make, private_redis, key_prefix) as (survivor, _reg_b, victim, reg_a, link):
        swept, kept = await accept(reg_a, victim), await accept(reg_a, victim)
        link.cut()
        during = await accept(reg_a, victim)
        closing = [swept, during]
        for record in closing:
            del victim.connections[record.connection_id]
        removals = [asyncio.ensure_future(reg_a.remove(r)) for r in closing]
        await wait_for(lambda: len(survivor.orphans) == 2, NODE_TTL_S + 3, "the sweep")
        assert not any(r.done() for r in removals)  # undecided while Redis is out
        assert {o[0].connection_id for o in survivor.orphans} == {swept.connection_id, kept.connection_id}
        link.restore()
        assert await asyncio.wait_for(asyncio.gather(*removals), 4 * HEARTBEAT_S) == [False, True]
        await wait_for(lambda: bool(victim.abandoned), 4 * HEARTBEAT_S, "the reconciliation")
        assert [cid for cid, _, _ in victim.abandoned] == [kept.connection_id]
        await asyncio.sleep(3 * HEARTBEAT_S)  # a second $disconnect would show by now
        assert len(survivor.orphans) == 2 and victim.orphans == []
        r = sync_client(redis_url)  # no tombstone and no record of a closed connection is left
        assert not r.exists(*(f"{key_prefix}:{{c:{rec.connection_id}}}" for rec in closing))


async def test_node_back_while_it_is_swept_keeps_or_abandons_each_connection_once(
    private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    """The victim comes back as soon as the sweep claimed its first records, while the
    survivor (on a slow link) is still claiming: each record is decided once, by the claim or
    by the victim taking it back, whichever reaches Redis first."""
    survivor, victim = RecordingNode("nb"), RecordingNode("na")
    async with RedisLink(private_redis.port, delay_s=0.02) as slow, RedisLink(private_redis.port) as link:
        reg_b = RedisRegistry(registry_config(slow.url, key_prefix), "nb")
        reg_a = RedisRegistry(registry_config(link.url, key_prefix), "na")
        try:
            await reg_b.start(survivor)
            await reg_a.start(victim)
            await wait_settled(reg_a)
            before = await asyncio.gather(*(accept(reg_a, victim) for _ in range(2000)))
            link.cut()
            during = [await accept(reg_a, victim) for _ in range(3)]
            await wait_for(lambda: bool(survivor.orphans), NODE_TTL_S + 3, "the first claims")
            link.restore()
            after = [await accept(reg_a, victim) for _ in range(3)]
            records = [*before, *during, *after]
            await settled_after_return(victim, survivor, reg_b, len(records), timeout=10)
            await asyncio.sleep(3 * HEARTBEAT_S)  # a second $disconnect or abandon would show by now
            claimed = await check_each_connection_once(victim, survivor, reg_b, records)
            assert claimed.isdisjoint(r.connection_id for r in during + after)
            assert claimed  # it came back after the first claims (how many more: a race)
        finally:
            await reg_a.close()
            await reg_b.close()


@ON_EACH_TOPOLOGY
async def test_a_normal_beat_runs_one_script_and_no_lease_check(make: Factory, redis_topology: Topology) -> None:
    """Coming back from being declared dead costs nothing while a node is not: a beat is one
    EVAL, and the lease of a sweep of this node is not looked at. (On Redis Cluster, plus one
    SET per master: the node's marks, see registry/redis/shard_marks.py.)"""
    await make(RecordingNode("na"))
    stats = CommandCounts(redis_topology)
    # Under Sentinel the master also serves the Sentinels' PINGs and its replica's REPLCONF
    # ACKs (each, every second): not the registry's, which sends neither on one Redis or on
    # a cluster. (The Sentinels' hellos are not counted: see CommandCounts.)
    others = {"ping", "replconf"} if redis_topology.name == "sentinel" else set()

    def calls() -> dict[str, int]:
        return {k: n for k, n in stats.calls().items() if "info" not in k and k not in others}

    await wait_for(lambda: calls().get("eval", 0) >= 5, 10 * HEARTBEAT_S, "five beats")
    counts = calls()
    counts.pop("config|resetstat", None)
    beats = counts["eval"]
    if redis_topology.name == "cluster":  # the marks of the last beat may not all be in yet
        masters = len(redis_topology.masters())
        assert masters * (beats - 1) <= counts.pop("set") <= masters * beats
    # inside the script: GET epoch, HSETNX, ZADD, ZRANGEBYSCORE x2, EXISTS settle (and TIME)
    assert counts == {"eval": beats, "time": beats, "get": beats, "hsetnx": beats, "zadd": beats,
                      "zrangebyscore": 2 * beats, "exists": beats}


# ---------------------------------------------------------------- Redis losing data or going away


@ON_EACH_TOPOLOGY
async def test_flushall_reregisters_without_false_gone(make: Factory, redis_topology: Topology, key_prefix: str) -> None:
    """FLUSHALL (on every master of a Redis Cluster at once: the epoch's shard among them)."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    cached = await accept(reg_a, node_a)
    uncached = [await accept(reg_a, node_a) for _ in range(20)]
    await reg_b.post(cached.connection_id, b"warm", False)
    keys = [f"{key_prefix}:{{c:{rec.connection_id}}}" for rec in (cached, *uncached)]
    r = redis_topology.client()

    async def reregistered() -> float:
        while await asyncio.to_thread(r.exists, *keys) < len(keys):
            await asyncio.sleep(0.005)
        return time.monotonic() - flushed_at

    for master in redis_topology.masters():
        master.flushall()
    flushed_at = time.monotonic()
    watcher = asyncio.ensure_future(reregistered())
    delivered = 0
    while time.monotonic() - flushed_at < 2 * NODE_TTL_S:
        for record in (cached, *uncached):
            try:
                await reg_b.post(record.connection_id, b"during", False)
                delivered += 1
            except RegistryUnavailableError:
                pass  # allowed while refilling: never a GoneError for a live connection
        await asyncio.sleep(0.02)
    assert await asyncio.wait_for(watcher, 1) <= HEARTBEAT_S + 0.3  # re-registered within a beat
    assert delivered > 0
    with pytest.raises(GoneError):
        await reg_b.post(new_connection_id(), b"x", False)
    listed = await reg_b.list_tenant("tenant-a", 100, None)
    assert len(listed.connections) == 21


@pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)
async def test_a_shard_that_lost_its_data_is_refilled(
    make: Factory, private_redis_cluster: PrivateRedisCluster, key_prefix: str
) -> None:
    """Redis Cluster only (elsewhere one server holds everything, the epoch included): a
    master that does not hold the epoch restarts empty. Every node finds its mark on that
    shard gone, re-registers, and drops the epoch, so that the cluster settles as after any
    data loss: the tenant's listing and fan-out reach every connection again, within a few
    beats of the shard taking writes, in a new epoch."""
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    reg_a, reg_b = await make(node_a), await make(node_b)
    records = [await accept(reg_a, node_a) for _ in range(10)] + [await accept(reg_b, node_b) for _ in range(10)]
    ids = {r.connection_id for r in records}
    keys, cluster = KeySpace(key_prefix), private_redis_cluster
    for port in cluster.ports:  # each node's mark on each master
        marks = cluster.client(port).keys(f"{key_prefix}:{{m:*")
        assert sorted(m.decode().split(":")[2] for m in marks) == ["na", "nb"], (port, marks)
    epoch_port = cluster.port_of_slot(key_slot(keys.epoch.encode()))
    tenant_port = cluster.port_of_slot(key_slot(keys.tenant_nodes("tenant-a").encode()))
    victim = tenant_port if tenant_port != epoch_port else next(p for p in cluster.ports if p != epoch_port)
    epoch = cluster.client(epoch_port).get(keys.epoch)
    await asyncio.to_thread(cluster.restart_master, victim)
    restarted = time.monotonic()
    listed: set[str] = set()
    async with asyncio.timeout(10 * HEARTBEAT_S + 3):
        while listed != ids:
            with contextlib.suppress(RegistryUnavailableError):
                listed = await listed_ids(reg_b)
            await asyncio.sleep(0.02)
    assert time.monotonic() - restarted <= 4 * HEARTBEAT_S + 1
    assert cluster.client(epoch_port).get(keys.epoch) not in (None, epoch)
    # each node fans out to the other (its own connections are the hub's to reach)
    assert await reg_a.fanout("tenant-a", b"to b", False) == FanoutResult(10)
    assert await reg_b.fanout("tenant-a", b"to a", False) == FanoutResult(10)
    for node, data in ((node_a, b"to a"), (node_b, b"to b")):
        assert all(node.posted[r.connection_id] == [(data, False)] for r in records if r.node_id == node.node_id)


@pytest.mark.parametrize("how", ["killed", "stopped"])
async def test_redis_outage_and_recovery(restartable_redis: RedisExecutor, key_prefix: str, how: str) -> None:
    """killed: SIGKILL, back at once and empty. stopped: SIGTERM (it saves its data), back
    after more than node_ttl_s, so every node's liveness has expired when it loads.
    (One redis-server of the test's own, restarted: under Sentinel an outage is a failover,
    tests/test_cluster_failover.py.)"""
    url = f"redis://127.0.0.1:{restartable_redis.port}/0"
    node_a, node_b = RecordingNode("na"), RecordingNode("nb")
    regs = []
    for node in (node_a, node_b):
        reg = RedisRegistry(registry_config(url, key_prefix), node.node_id)
        await reg.start(node)
        regs.append(reg)
    reg_a, reg_b = regs
    try:
        for reg in regs:
            await wait_settled(reg)
        before = await accept(reg_a, node_a)
        await reg_b.post(before.connection_id, b"before", False)
        epoch_key = f"{key_prefix}:{{meta}}:epoch"
        epoch = sync_client(url).get(epoch_key)
        if how == "killed":
            restartable_redis.kill(sig=signal.SIGKILL)
        else:
            restartable_redis.stop()
        stopped_at = time.monotonic()
        async with asyncio.timeout(5):  # add never raises for an outage, and does not hang
            during = await accept(reg_a, node_a)
            closed = await accept(reg_a, node_a)
        del node_a.connections[closed.connection_id]
        # Who runs the $disconnect of a connection closed now is decided when Redis answers
        # (a sweep may claim its record meanwhile): remove waits, it does not raise.
        removal = asyncio.ensure_future(reg_a.remove(closed))
        await asyncio.sleep(0.3)
        assert not removal.done()
        assert (await reg_b.health())["reachable"] is False
        for cid in (before.connection_id, during.connection_id, new_connection_id()):
            with pytest.raises(RegistryUnavailableError):
                await reg_b.post(cid, b"x", False)
        with pytest.raises(RegistryUnavailableError):
            await reg_b.list_tenant("tenant-a", 10, None)
        with pytest.raises(RegistryUnavailableError):
            await reg_b.fanout("tenant-a", b"x", False)
        query = {"what": "overview"}  # the console still sees this node, and whom it cannot reach
        assert await reg_b.survey(query) == {"nb": {"node": "nb", "connections": 0, "query": query}, "na": None}
        if how == "stopped":  # the outage itself, not a wait for a condition
            await asyncio.sleep(max(0.0, NODE_TTL_S + 0.5 - (time.monotonic() - stopped_at)))
        restartable_redis.start()
        restarted = time.monotonic()
        assert (sync_client(url).get(epoch_key) == epoch) is (how == "stopped")  # kept its data or not
        async def delivered(cid: str) -> bool:
            try:
                await reg_b.post(cid, b"after", False)
            except RegistryUnavailableError:
                return False
            return True
        async with asyncio.timeout(HEARTBEAT_S * 4 + 3):
            while not (await delivered(during.connection_id) and await delivered(before.connection_id)):
                await asyncio.sleep(0.02)
        assert time.monotonic() - restarted <= 4 * HEARTBEAT_S + 2
        assert await asyncio.wait_for(removal, HEARTBEAT_S * 4) is True  # nobody claimed it
        await wait_settled(reg_b)
        # A listing answers 503 ("being refilled") until every live node registered in the new
        # epoch; an outage short enough that no beat failed leaves `settled` a beat behind.
        async with asyncio.timeout(NODE_TTL_S + 10 * HEARTBEAT_S):
            while True:
                try:
                    listed = await listed_ids(reg_b)
                    break
                except RegistryUnavailableError:
                    await asyncio.sleep(0.02)
        assert listed == {before.connection_id, during.connection_id}
        with pytest.raises(GoneError):
            await reg_b.post(closed.connection_id, b"x", False)
        await asyncio.sleep(NODE_TTL_S - (time.monotonic() - restarted) + 3 * HEARTBEAT_S)
        assert node_a.orphans == [] and node_b.orphans == []  # nobody was taken for dead
    finally:
        for reg in regs:
            await reg.close()


async def test_fanout_counts_a_node_that_does_not_answer(
    make: Factory, private_redis: RedisExecutor, key_prefix: str
) -> None:
    """A node holding the tenant but cut off from Redis gets nothing: the fan-out says so
    (unreachable 1) and counts only the connections of the nodes that answered, for the
    tenant, a user and a group alike."""
    async with cut_off_pair(make, private_redis, key_prefix) as (_, reg_b, victim, reg_a, link):
        node_c = RecordingNode("nc")
        reg_c = await make(node_c)
        await accept(reg_a, victim, principal_id="alice")
        await accept(reg_a, victim, principal_id="bob")
        alice_c = await accept(reg_c, node_c, principal_id="alice")
        await reg_b.group(alice_c.connection_id, "desk", join=True)
        link.cut()
        assert await reg_b.fanout("tenant-a", b"all", False) == FanoutResult(1, 1)
        assert await reg_b.fanout("tenant-a", b"alice", False, user="alice") == FanoutResult(1, 1)
        assert await reg_b.fanout("tenant-a", b"desk", False, group="desk") == FanoutResult(1, 1)
        assert victim.fanouts == []
        assert node_c.posted[alice_c.connection_id] == [(b"all", False), (b"alice", False), (b"desk", False)]


async def test_claims_are_cluster_wide_and_fail_closed(
    make: Factory, private_redis: RedisExecutor, key_prefix: str, redis_url: str
) -> None:
    async with cut_off_pair(make, private_redis, key_prefix) as (_, reg_b, _, reg_a, link):
        assert await reg_a.claim_once("sig", 30.0) is True
        assert await reg_b.claim_once("sig", 30.0) is False  # another node saw it first
        assert 0 < sync_client(redis_url).pttl(f"{key_prefix}:{{o:sig}}") <= 30_000
        link.cut()
        with pytest.raises(RegistryUnavailableError):
            await reg_a.claim_once("other", 30.0)  # cannot tell: refused, never guessed
        with pytest.raises(RegistryUnavailableError):
            await reg_a.release_once("sig")
        assert await reg_b.claim_once("sig", 30.0) is False
