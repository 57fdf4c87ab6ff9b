"""Reliable connections on one real node (``wsgateway.reliable.sessions`` and the client edge
around it): real websockets clients through a TCP link the tests cut, the management API
through boto3, ``$connect``/``$disconnect`` read from the handlers' event log. The last tests
run three nodes in this process on the private Redis, to hold a session's move between them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import aiohttp
import boto3
import pytest
import redis
import redis.asyncio
import websockets
from botocore.config import Config
from botocore.exceptions import ClientError
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests import handlers_for_tests as th
from tests.registry_support import RedisLink, wait_settled
from tests.reliable_support import CutLink, ReliableClient
from tests.support import endpoint, eventually, jwt_section, make_config, raw_get, running_node, token, ws_url
from wsgateway.connection import MAX_FANOUT_NAMES
from wsgateway.node import Node
from wsgateway.registry.redis import RedisRegistry
from wsgateway.registry.redis.keys import KeySpace
from wsgateway.registry.redis.scripts import KEEP_SESSION
from wsgateway.reliable import SUBPROTOCOL
from wsgateway.reliable.protocol import ResumeRequest

NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def _api(node: Node) -> Any:
    return boto3.client(
        "apigatewaymanagementapi", endpoint_url=endpoint(node), region_name="eu-west-1",
        aws_access_key_id="AKID", aws_secret_access_key="secret", config=NO_RETRY,
    )


async def _code(call: Any, **kwargs: Any) -> str:
    """Call a boto3 method in a thread (the node runs on this loop): "200" or its error code."""
    try:
        await asyncio.to_thread(call, **kwargs)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return "200"


def _disconnects(connection_id: str) -> list[int]:
    return [e["requestContext"]["disconnectStatusCode"] for e in th.events_of("$disconnect", connection_id)]


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    async with running_node(make_config(reliable={"resume_window_s": 2, "max_unacked_bytes": 4096},
                                        limits={"slow_consumer_grace_s": 0.3})) as running:
        yield running


@pytest.fixture
async def link(node: Node) -> AsyncIterator[CutLink]:
    async with CutLink(node.port) as cut_link:
        yield cut_link


async def _post(node: Node, cid: str, data: bytes | str) -> int:
    async with aiohttp.ClientSession() as http, http.post(f"{endpoint(node)}/@connections/{cid}", data=data) as resp:
        return resp.status


# ---------------------------------------------------------------- the protocol


async def test_a_plain_client_sees_no_change(node: Node) -> None:
    async with websockets.connect(ws_url(node, tenant="t1")) as ws:
        assert ws.subprotocol is None
        await ws.send('{"action": "whoami"}')
        cid = json.loads(await ws.recv())["connectionId"]
        assert await _post(node, cid, "hello") == 200
        assert await ws.recv() == "hello"  # the bytes posted, nothing around them
        assert await _post(node, cid, b"\xff\x00") == 200
        assert await ws.recv() == b"\xff\x00"


async def test_frames_are_numbered_envelopes_and_acks_are_never_routed(node: Node) -> None:
    client = ReliableClient()
    hello = await client.connect(ws_url(node, tenant="t1"))
    assert client.ws is not None and client.ws.subprotocol == SUBPROTOCOL
    cid = client.connection_id
    assert set(hello) == {"type", "connectionId", "reconnectionToken", "resumed"} and hello["resumed"] is False
    assert await _post(node, cid, "text") == 200
    assert await client.recv() == (1, "text")
    assert await _post(node, cid, b"\xff\x00\x01") == 200
    frame = json.loads(await client.ws.recv())
    assert frame == {"type": "message", "seq": 2, "data": base64.b64encode(b"\xff\x00\x01").decode(),
                     "encoding": "base64"}
    await client.ack(2)
    await client.send({"action": "whoami"})  # a route's reply is a message too
    client.last_seq = 2
    seq, data = await client.recv()
    assert seq == 3 and json.loads(data)["connectionId"] == cid
    await client.send({"action": "boom"})  # so is an error frame
    seq, data = await client.recv()
    assert seq == 4 and json.loads(data)["message"] == "Internal server error"
    before = len(th.events_of("$default", cid))
    await client.send({"type": "ack", "seq": 4})
    await client.send({"action": "nothing-here", "n": 1})  # $default echoes it
    assert json.loads((await client.recv())[1]) == {"action": "nothing-here", "n": 1}
    assert len(th.events_of("$default", cid)) == before + 1  # the ack never reached a route


async def test_a_bad_ack_gets_an_error_frame_and_loses_nothing(node: Node) -> None:
    client = ReliableClient(auto_ack=False)
    await client.connect(ws_url(node, tenant="t1"))
    assert await _post(node, client.connection_id, "one") == 200
    assert await client.recv() == (1, "one")
    stats = node.gateway.stats
    frames_out, traffic = stats.frames_out, stats.traffic["t1"]
    await client.send({"type": "ack", "seq": 99})
    seq, data = await client.recv()
    assert seq == 2 and "Invalid ack" in json.loads(data)["message"]
    await client.send({"type": "ack", "seq": "x"})
    assert "Invalid ack" in json.loads((await client.recv())[1])["message"]
    assert (stats.frames_out, stats.traffic["t1"]) == (frames_out + 2, traffic + 2)  # counted as error frames are


async def test_an_ack_however_long_or_whatever_its_number_never_reaches_a_route(node: Node) -> None:
    """Any text frame that is a JSON object of type "ack" is an ack: padded past any length,
    or with a seq orjson cannot read (1e400), it is answered as an ack is, never routed."""
    client = ReliableClient(auto_ack=False)
    await client.connect(ws_url(node, tenant="t1"))
    cid = client.connection_id
    assert await _post(node, cid, "one") == 200
    assert await client.recv() == (1, "one")
    assert client.ws is not None
    invalid = '{"message": "Invalid ack: seq must be an integer, at most the last seq sent"}'
    for frame in ('{"type":"ack","seq":1e400}', '{"type":"ack","seq":1e400}' + " " * 200,
                  '{"type":"ack","seq":99}' + " " * 200, '{"type":"\\u0061ck","seq":1.5}'):
        await client.ws.send(frame)
        assert (await client.recv())[1] == invalid
    await client.close(1001)  # nothing was acknowledged: a resume from 0 gets every message
    client.last_seq = 0
    assert (await client.connect(ws_url(node, tenant="t1"), resume=True))["resumed"] is True
    assert [data for _, data in await client.recv_many(5)] == ["one"] + [invalid] * 4
    await client.ws.send('{"type":"ack","seq":5}' + " " * 200)  # a padded ack acknowledges
    conn = node.gateway.hub.get(cid)
    assert conn is not None
    await eventually(lambda: conn.unacked_bytes == 0)  # type: ignore[attr-defined]
    assert th.events_of("$default", cid) == []


async def test_disabled_the_subprotocol_is_not_selected() -> None:
    async with running_node(make_config(reliable={"enabled": False})) as plain_node:
        async with websockets.connect(ws_url(plain_node, tenant="t1"), subprotocols=[SUBPROTOCOL]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol is None
            await ws.send('{"action": "whoami"}')
            assert "connectionId" in json.loads(await ws.recv())


async def test_it_is_selected_beside_a_token_subprotocol() -> None:
    config = make_config(auth=jwt_section(sources=["subprotocol:bearer"]))
    async with running_node(config) as jwt_node:
        client = ReliableClient()
        hello = await client.connect(ws_url(jwt_node), subprotocols=["bearer", token("u1", "p1")])
        assert hello["resumed"] is False and client.ws is not None and client.ws.subprotocol == SUBPROTOCOL


# ---------------------------------------------------------------- drops and resumes


async def test_a_dropped_session_keeps_its_id_posts_and_listing_until_resumed(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    await client.send({"action": "join", "group": "g"})
    assert await client.recv() == (1, "joined g")
    link.cut()
    await eventually(lambda: node.gateway.hub.get(cid) is not None and node.gateway.hub.get(cid).ws is None)
    api = _api(node)
    assert await _code(api.post_to_connection, ConnectionId=cid, Data=b"while away") == "200"
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{endpoint(node)}/@tenants/t1/groups/g/messages", data=b"to the group") as resp:
            assert resp.status == 200 and (await resp.json())["delivered"] == 1
        async with http.get(f"{endpoint(node)}/@tenants/t1/connections") as resp:
            assert cid in [c["connectionId"] for c in (await resp.json())["connections"]]
    assert "ConnectedAt" in await asyncio.to_thread(api.get_connection, ConnectionId=cid)
    hello = await client.connect(link.url(tenant="t1"), resume=True)
    assert hello == {"type": "connected", "connectionId": cid, "reconnectionToken": hello["reconnectionToken"],
                     "resumed": True}
    assert [await client.recv() for _ in range(2)] == [(2, "while away"), (3, "to the group")]
    assert _disconnects(cid) == [] and len(th.events_of("$connect", cid)) == 1


async def test_a_hundred_posts_over_ten_seconds_of_cut_link_arrive_once_in_order(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    api = _api(node)
    k = 5
    for i in range(1, k + 1):
        assert await _code(api.post_to_connection, ConnectionId=cid, Data=f"m{i}".encode()) == "200"
    assert [await client.recv() for _ in range(k)] == [(i, f"m{i}") for i in range(1, k + 1)]
    link.cut()
    statuses: list[str] = []

    async def backend() -> None:
        for i in range(k + 1, k + 101):
            statuses.append(await _code(api.post_to_connection, ConnectionId=cid, Data=f"m{i}".encode()))
            statuses.append(await _code(api.get_connection, ConnectionId=cid))
            await asyncio.sleep(0.1)

    posting = asyncio.ensure_future(backend())
    await asyncio.sleep(1.0)  # within the 2 s window of this node's config
    hello = await client.connect(link.url(tenant="t1"), resume=True)
    assert hello["resumed"] is True and hello["connectionId"] == cid
    got, _ = await asyncio.gather(client.recv_many(100), posting)
    assert got == [(i, f"m{i}") for i in range(k + 1, k + 101)]
    assert set(statuses) == {"200"}
    assert _disconnects(cid) == [] and len(th.events_of("$connect", cid)) == 1


async def test_unacknowledged_messages_are_replayed_after_last_seq(node: Node, link: CutLink) -> None:
    client = ReliableClient(auto_ack=False)
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    for i in range(1, 6):
        assert await _post(node, cid, f"m{i}") == 200
    got = [await client.recv() for _ in range(3)]  # 4 and 5 are lost in the cut (not read)
    assert got == [(1, "m1"), (2, "m2"), (3, "m3")]
    link.cut()
    await client.connect(link.url(tenant="t1"), resume=True)  # lastSeq=3: acknowledges 1..3
    assert [await client.recv() for _ in range(2)] == [(4, "m4"), (5, "m5")]
    session = node.gateway.hub.get(cid)
    assert session is not None and [seq for seq, _, _ in session.frames] == [4, 5]  # type: ignore[attr-defined]


async def test_resumes_that_cannot_be_honoured_start_afresh(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid, good = client.connection_id, client.token
    assert await _post(node, cid, "one") == 200
    assert await client.recv() == (1, "one")
    link.cut()
    cases = [
        {"resume": cid, "reconnectionToken": "wrong", "lastSeq": "1", "tenant": "t1"},  # bad token
        {"resume": cid, "reconnectionToken": good, "lastSeq": "1", "tenant": "t2"},  # another tenant
        {"resume": cid, "reconnectionToken": good, "lastSeq": "7", "tenant": "t1"},  # more than was sent
        {"resume": cid, "reconnectionToken": good, "lastSeq": "x", "tenant": "t1"},  # not a number
        {"resume": cid, "reconnectionToken": good, "lastSeq": "\u00b2", "tenant": "t1"},  # a digit to isdigit() only
        {"resume": "AAAAAAAAAAAAAAAA", "reconnectionToken": good, "lastSeq": "0", "tenant": "t1"},  # no such id
    ]
    for query in cases:
        other = ReliableClient()
        hello = await other.connect(link.url(**query))
        assert hello["resumed"] is False and hello["connectionId"] != cid, query
        assert len(th.events_of("$connect", hello["connectionId"])) == 1  # a fresh connection
        await other.close()
    hello = await client.connect(link.url(tenant="t1"), resume=True)  # the right one still works
    assert hello["resumed"] is True and hello["connectionId"] == cid


async def test_a_resume_id_no_connection_could_have_is_neither_looked_up_nor_logged(
    node: Node, caplog: pytest.LogCaptureFixture,
) -> None:
    forged = "x\n2026-01-01 00:00:00,000 ERROR wsgateway [1] FORGED"
    with caplog.at_level("DEBUG", logger="wsgateway"):
        for resume in (forged, "A" * 5000):
            client = ReliableClient()
            hello = await client.connect(ws_url(node, tenant="t1", resume=quote(resume), reconnectionToken="t", lastSeq="0"))
            assert hello["resumed"] is False
            await client.close()
    assert not [r for r in caplog.records if "FORGED" in r.getMessage() or "A" * 200 in r.getMessage()]


async def test_another_principal_cannot_resume_a_session() -> None:
    async with running_node(make_config(auth=jwt_section())) as jwt_node, CutLink(jwt_node.port) as link:
        client = ReliableClient()
        await client.connect(link.url(token=token("alice", "p1")))
        link.cut()
        thief = ReliableClient()
        thief.connection_id, thief.token = client.connection_id, client.token
        hello = await thief.connect(link.url(token=token("mallory", "p1")), resume=True)
        assert hello["resumed"] is False and hello["connectionId"] != client.connection_id
        hello = await client.connect(link.url(token=token("alice", "p1")), resume=True)
        assert hello["resumed"] is True


async def test_a_resume_takes_over_a_socket_not_yet_seen_dead(node: Node) -> None:
    client = ReliableClient()
    await client.connect(ws_url(node, tenant="t1"))
    old_ws = client.ws
    assert old_ws is not None
    cid = client.connection_id
    hello = await client.connect(ws_url(node, tenant="t1"), resume=True)
    assert hello["resumed"] is True
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(old_ws.recv(), 5)
    assert await _post(node, cid, "to the new socket") == 200
    assert await client.recv() == (1, "to the new socket")
    assert _disconnects(cid) == []


# ---------------------------------------------------------------- how a session ends


async def test_a_normal_close_ends_the_session_at_once(node: Node) -> None:
    client = ReliableClient()
    await client.connect(ws_url(node, tenant="t1"))
    cid = client.connection_id
    await client.close(1000)
    await eventually(lambda: _disconnects(cid) == [1000])
    assert await _post(node, cid, "x") == 410


async def test_a_going_away_close_keeps_the_session(node: Node) -> None:
    client = ReliableClient()
    await client.connect(ws_url(node, tenant="t1"))
    cid = client.connection_id
    await client.close(1001)  # a browser tab navigating away
    await asyncio.sleep(0.2)
    assert await _post(node, cid, "kept") == 200
    hello = await client.connect(ws_url(node, tenant="t1"), resume=True)
    assert hello["resumed"] is True
    assert await client.recv() == (1, "kept")


@pytest.mark.parametrize(("opcode", "payload", "code"), [
    (Opcode.CLOSE, struct.pack("!H", 1005), 1002),  # a code no close frame may carry
    (Opcode.CLOSE, struct.pack("!H", 999), 1002),
    (Opcode.CLOSE, b"\x03", 1002),  # one byte: no code at all
    (Opcode.CLOSE, struct.pack("!H", 1001) + b"\xff", 1007),  # "going away", with a reason not UTF-8
    (Opcode.TEXT, b"\xff", 1007),  # and frames the gateway fails the connection for, too
    (Opcode.TEXT, b"x" * 131073, 1009),
])
async def test_a_frame_the_gateway_fails_the_connection_for_ends_the_session(
    opcode: Opcode, payload: bytes, code: int
) -> None:
    """The client closed with a close frame the gateway refuses, or broke the protocol: not a
    network drop, so the session ends at once (within a window far longer than the test),
    its $disconnect with the code the connection closed with (a refused frame's is none)."""
    async with running_node(make_config(reliable={"resume_window_s": 60})) as node:
        client = ReliableClient()
        await client.connect(ws_url(node, tenant="t1"))
        cid = client.connection_id
        assert client.ws is not None
        client.ws.protocol.send_frame(Frame(opcode, payload))
        client.ws.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.ws.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
        await eventually(lambda: _disconnects(cid) == [code])
        assert node.gateway.hub.get(cid) is None and await _post(node, cid, "x") == 410
        assert (await client.connect(ws_url(node, tenant="t1"), resume=True))["resumed"] is False
        await client.close()
    assert _disconnects(cid) == [code]  # once, the node stopped since


async def test_a_client_gone_silent_is_a_drop_though_the_keepalive_closes_with_1011() -> None:
    """The gateway fails a connection whose pings go unanswered (1011, keepalive timeout):
    the network died, so the session is kept for its resume."""
    async with running_node(make_config(listen={"ping_interval_s": 0.2, "ping_timeout_s": 0.2},
                                        reliable={"resume_window_s": 60})) as node:
        client = ReliableClient()
        await client.connect(ws_url(node, tenant="t1"))
        cid = client.connection_id
        assert client.ws is not None
        client.ws.transport.pause_reading()  # reads nothing, answers no ping
        await eventually(lambda: (conn := node.gateway.hub.get(cid)) is not None and conn.ws is None)
        assert _disconnects(cid) == [] and await _post(node, cid, "kept") == 200
        client.ws.transport.abort()
        assert (await client.connect(ws_url(node, tenant="t1"), resume=True))["resumed"] is True
        assert await client.recv() == (1, "kept")
        await client.close()
        await eventually(lambda: _disconnects(cid) == [1000])


async def test_the_window_running_out_ends_the_session_once_with_the_drop_code(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    link.cut()
    await asyncio.sleep(1.0)
    assert _disconnects(cid) == [] and await _post(node, cid, "within") == 200
    await eventually(lambda: _disconnects(cid) == [1006], timeout=5)
    assert await _post(node, cid, "after") == 410
    assert await _code(_api(node).get_connection, ConnectionId=cid) == "GoneException"
    hello = await client.connect(link.url(tenant="t1"), resume=True)
    assert hello["resumed"] is False
    await asyncio.sleep(0.2)
    assert _disconnects(cid) == [1006]


async def test_deleting_a_dropped_session_ends_it_once(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    link.cut()
    await eventually(lambda: node.gateway.hub.get(cid) is not None and node.gateway.hub.get(cid).ws is None)
    api = _api(node)
    assert await _code(api.delete_connection, ConnectionId=cid) == "200"
    await eventually(lambda: _disconnects(cid) == [1006])
    assert await _code(api.delete_connection, ConnectionId=cid) == "GoneException"
    await asyncio.sleep(2.2)  # past the window: no second $disconnect
    assert _disconnects(cid) == [1006]


async def test_a_node_that_stops_ends_its_dropped_sessions() -> None:
    async with running_node(make_config()) as stopping, CutLink(stopping.port) as link:
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        cid = client.connection_id
        link.cut()
        await eventually(lambda: stopping.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
    assert _disconnects(cid) == [1006]


# ---------------------------------------------------------------- limits


async def test_an_attached_client_that_never_acknowledges_is_a_slow_consumer(node: Node) -> None:
    client = ReliableClient(auto_ack=False)
    await client.connect(ws_url(node, tenant="t1"))
    cid = client.connection_id
    statuses = [await _post(node, cid, "x" * 500) for _ in range(10)]  # 4096 bytes of envelopes at most
    assert statuses[:7] == [200] * 7 and statuses[-1] == 429
    assert client.ws is not None
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(client.ws.recv(), 5)
    await eventually(lambda: _disconnects(cid) == [1008])


async def test_posts_to_a_dropped_session_are_kept_up_to_the_limit(node: Node, link: CutLink) -> None:
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    link.cut()
    await eventually(lambda: node.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
    statuses = [await _post(node, cid, f"{i:03d}" + "x" * 497) for i in range(10)]
    kept = statuses.count(200)
    assert statuses == [200] * kept + [429] * (10 - kept) and kept >= 7
    await client.connect(link.url(tenant="t1"), resume=True)
    assert [(await client.recv())[1][:3] for _ in range(kept)] == [f"{i:03d}" for i in range(kept)]
    assert _disconnects(cid) == []


# ---------------------------------------------------------------- how many dropped sessions a node keeps


async def test_a_handover_carries_the_names_of_the_newest_fan_outs_only(node: Node, link: CutLink) -> None:
    """A session handed over tells its new node which fan-outs it took lately, by name, so
    that it takes each once there: however fast its tenant fans out, the newest
    ``MAX_FANOUT_NAMES`` (a handover stays small)."""
    client = ReliableClient()
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    conn = node.gateway.hub.get(cid)
    assert conn is not None
    link.cut()
    await eventually(lambda: conn.ws is None)
    names = [f"origin.{i}" for i in range(MAX_FANOUT_NAMES + 500)]
    for name in names:  # as the hub queues a fan-out from any node (most pass the session's bound)
        node.gateway.local_fanout("t1", b"x", False, fanout_id=name)
    claim = {"token": client.token, "lastSeq": client.last_seq, "tenant": "t1", "principal": conn.record.principal_id}
    state = node.gateway.sessions.take(cid, claim, "another-node")
    assert state["fanouts"] == names[-MAX_FANOUT_NAMES:]


@contextlib.asynccontextmanager
async def _bounded_node(request: pytest.FixtureRequest, registry: str, **reliable: Any) -> AsyncIterator[Node]:
    """A node whose tenant "capped" may hold 5 connections (a usage plan), on ``registry``."""
    sections: dict[str, Any] = {}
    if registry == "redis":
        port = request.getfixturevalue("private_redis").port
        sections["registry"] = {"backend": "redis", "redis_url": f"redis://127.0.0.1:{port}/0",
                                "key_prefix": request.getfixturevalue("key_prefix"), "heartbeat_s": 0.5}
    config = make_config(plans=[{"name": "small", "tenants": ["capped"], "max_connections": 5}],
                         reliable={"resume_window_s": 30, **reliable}, **sections)
    async with running_node(config) as running:
        if registry == "redis":
            assert isinstance(running.gateway.registry, RedisRegistry)
            await wait_settled(running.gateway.registry, 10)
        yield running


async def _connect_and_drop(node: Node, link: CutLink, tenant: str) -> ReliableClient:
    """A reliable client of ``tenant`` whose network dies once it is connected."""
    client = ReliableClient()
    await client.connect(link.url(tenant=tenant))
    cid = client.connection_id
    link.cut()
    await eventually(lambda: (conn := node.gateway.hub.get(cid)) is None or conn.ws is None)
    return client


async def _registered(request: pytest.FixtureRequest, node: Node, tenant: str) -> set[str]:
    """The ids the registry itself holds for ``tenant`` (in Redis: its sorted set, read there)."""
    if node.config.registry.backend == "memory":
        page = await node.gateway.registry.list_tenant(tenant, 1000, None)
        return {info.record.connection_id for info in page.connections}
    prefix, port = node.config.registry.key_prefix, request.getfixturevalue("private_redis").port
    async with redis.asyncio.Redis(port=port) as r:
        return {i.decode() for i in await r.zrange(f"{prefix}:{{t:{tenant}}}:conns", 0, -1)}


def _kept(node: Node, tenant: str) -> list[str]:
    return [c.id for c in node.gateway.hub if c.record.tenant == tenant and c.ws is None]


_REGISTRIES = ["memory", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.mark.parametrize("registry", _REGISTRIES)
async def test_a_tenant_keeps_no_more_dropped_sessions_than_its_plan_has_connections(
    request: pytest.FixtureRequest, registry: str
) -> None:
    """The probe: connect, drop, connect again, fifty times on a tenant capped at 5. Every
    connect succeeds (a dropped session holds no place), the node keeps the 5 newest dropped
    sessions, and each older one ended as its window running out ends it."""
    async with _bounded_node(request, registry) as node, CutLink(node.port) as link:
        clients = [await _connect_and_drop(node, link, "capped") for _ in range(50)]
        ids = [client.connection_id for client in clients]
        ended, kept = ids[:45], ids[45:]
        await eventually(lambda: all(_disconnects(cid) == [1006] for cid in ended), timeout=10)
        assert sorted(_kept(node, "capped")) == sorted(kept)
        assert all(_disconnects(cid) == [] for cid in kept)
        assert await _registered(request, node, "capped") == set(kept)
        assert await _post(node, ended[-1], "x") == 410
        assert (await clients[0].connect(link.url(tenant="capped"), resume=True))["resumed"] is False
        assert (await clients[-1].connect(link.url(tenant="capped"), resume=True))["resumed"] is True
        await asyncio.sleep(0.2)
        assert all(_disconnects(cid) == [1006] for cid in ended)  # once each


@pytest.mark.parametrize("registry", _REGISTRIES)
async def test_tenants_without_a_cap_share_the_node_wide_bound(request: pytest.FixtureRequest, registry: str) -> None:
    """``max_dropped_sessions`` bounds the uncapped tenants together; past it, the tenant
    holding the most loses its oldest, and a capped tenant's sessions do not count."""
    async with _bounded_node(request, registry, max_dropped_sessions=3) as node, CutLink(node.port) as link:
        a1, a2, a3 = [(await _connect_and_drop(node, link, "a")).connection_id for _ in range(3)]
        assert _kept(node, "a") == [a1, a2, a3]
        b1 = (await _connect_and_drop(node, link, "b")).connection_id
        await eventually(lambda: _disconnects(a1) == [1006])
        c1, c2 = [(await _connect_and_drop(node, link, "capped")).connection_id for _ in range(2)]
        a4 = (await _connect_and_drop(node, link, "a")).connection_id
        await eventually(lambda: _disconnects(a2) == [1006])
        await asyncio.sleep(0.2)
        assert (sorted(_kept(node, "a")), _kept(node, "b"), sorted(_kept(node, "capped"))) == (
            sorted([a3, a4]), [b1], sorted([c1, c2]))
        assert [cid for cid in (a3, a4, b1, c1, c2) if _disconnects(cid)] == []
        assert await _registered(request, node, "a") == {a3, a4}


# ---------------------------------------------------------------- the browser client


async def test_the_client_edge_serves_the_browser_client(node: Node) -> None:
    status, body = await raw_get(node.port, "/client.js")
    assert status == 200
    assert b"export class WsGatewayClient" in body and b"wsgateway.reliable.v1" in body


@pytest.mark.parametrize("no_context_takeover", [False, True])
async def test_compressed_sessions_and_a_fan_out_beside_plain_clients(no_context_takeover: bool) -> None:
    listen = {"compression": True, "compression_no_context_takeover": no_context_takeover}
    async with running_node(make_config(listen=listen)) as deflate_node, CutLink(deflate_node.port) as link:
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        assert client.ws is not None and client.ws.protocol.extensions  # permessage-deflate is on
        async with websockets.connect(ws_url(deflate_node, tenant="t1")) as plain:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"{endpoint(deflate_node)}/@tenants/t1/messages", data=b"to all") as resp:
                    assert (await resp.json())["delivered"] == 2
            assert await plain.recv() == "to all"
        assert await client.recv() == (1, "to all")
        link.cut()
        assert await _post(deflate_node, client.connection_id, "kept") == 200
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is True
        assert await client.recv() == (2, "kept")


# ---------------------------------------------------------------- posts while a session moves


@contextlib.asynccontextmanager
async def _three_nodes(private_redis: Any, key_prefix: str) -> AsyncIterator[tuple[Node, Node, Node, RedisLink]]:
    """Nodes a, b and c in this process, sharing the private Redis, a through a link the test
    slows; all three settled (a 410 is then vouched for)."""
    url = f"redis://127.0.0.1:{private_redis.port}/0"
    async with RedisLink(private_redis.port) as a_link:
        def config(redis_url: str) -> Any:
            return make_config(
                registry={"backend": "redis", "redis_url": redis_url, "key_prefix": key_prefix,
                          "heartbeat_s": 0.5, "node_ttl_s": 6, "outcome_wait_s": 0},
                reliable={"resume_window_s": 30, "max_unacked_bytes": 4096},
            )
        async with running_node(config(a_link.url)) as a, running_node(config(url)) as b, running_node(config(url)) as c:
            for node in (a, b, c):
                assert isinstance(node.gateway.registry, RedisRegistry)
                await wait_settled(node.gateway.registry, 10)
            yield a, b, c, a_link


async def _moved_to_a_and_dropped(a: Node, b: Node, link: CutLink, client: ReliableClient) -> str:
    """A session opened on b (its id names b), resumed on a, then dropped there: a posts to
    it by its id reach b first."""
    await client.connect(link.url(tenant="t1"))
    cid = client.connection_id
    assert b.gateway.hub.get(cid) is not None
    link.cut()
    link.target = a.port
    assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True
    assert a.gateway.hub.get(cid) is not None
    link.cut()
    link.target = b.port
    await eventually(lambda: a.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
    return cid


@pytest.mark.redis
@pytest.mark.parametrize("late_s", [0.5, 1.5])
async def test_posts_that_reach_a_node_while_a_session_moves_there_are_answered_once_queued(
    private_redis: Any, key_prefix: str, late_s: float
) -> None:
    """The resuming node keeps them within the session's limit (past it: 429 at once) and
    answers each 200 only once it is queued after the session's state. The holder's answer
    comes ``late_s`` late: within a post's 1 s deadline the kept posts are queued when it
    comes; past it they are not (their senders post them again), and none arrives twice."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        # Through b, which knows the session left for a (c knows nothing of it, and asks b first).
        assert await _code(_api(b).post_to_connection, ConnectionId=cid, Data=b"before") == "200"  # kept on a
        api = _api(c)
        a_link.delay_s = late_s  # a's answers, the session's state among them, now come late
        resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
        await eventually(lambda: cid in b.gateway.sessions._incoming)  # b asked a for it
        posts = [asyncio.ensure_future(_code(api.post_to_connection, ConnectionId=cid, Data=f"{i}".encode() * 1500))
                 for i in range(3)]
        if late_s > 1:
            done, _ = await asyncio.wait(posts, timeout=1.0)
            # Two fit in the session's 4,096 bytes and wait for it; the third is refused at once.
            assert [p.result() for p in done] == ["LimitExceededException"] and not resuming.done()
            a_link.delay_s = 0
        hello = await resuming
        a_link.delay_s = 0
        assert hello["resumed"] is True and hello["connectionId"] == cid
        statuses = await asyncio.gather(*posts)
        assert sorted(statuses) == ["200", "200", "LimitExceededException"], statuses
        accepted = {f"{i}" * 1500 for i, status in enumerate(statuses) if status == "200"}
        first, *kept = [data for _, data in await client.recv_many(3)]
        assert first == "before" and set(kept) == accepted
        assert await _code(api.post_to_connection, ConnectionId=cid, Data=b"after") == "200"
        assert await client.recv() == (4, "after")  # nothing twice
        assert b.gateway.sessions._incoming == {}


@pytest.mark.redis
async def test_a_post_kept_for_a_session_that_never_arrives_is_not_answered_200(
    private_redis: Any, key_prefix: str
) -> None:
    """The handover fails (the holder acts on the request, but its answer comes after the
    call's timeout, as when Redis loses it): the post kept for the session is queued
    nowhere, so its caller gets an error, not a 200 for a lost frame."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        a_link.delay_s = 3.0  # a hears b's request for the session; its answer comes too late
        resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
        await eventually(lambda: cid in b.gateway.sessions._incoming)
        status = await _code(_api(c).post_to_connection, ConnectionId=cid, Data=b"lost?")
        hello = await resuming
        assert hello["resumed"] is False and hello["connectionId"] != cid
        assert status == "ServiceUnavailableException"  # nobody can say it was queued: retriable
        assert b.gateway.sessions._incoming == {}
        a_link.delay_s = 0




@pytest.mark.redis
async def test_a_session_whose_move_never_landed_stays_with_its_holder(private_redis: Any, key_prefix: str) -> None:
    """The holder hands the session over, but its answer comes after the resuming node gave
    up (Redis lost it, or the holder stalled): the move never lands, so the holder keeps the
    session (the record decides, once), dropped, with its posts: nothing is lost and its
    ``$disconnect`` runs once, when it ends. Meanwhile calls about it get 503, never 410."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        token, last_seq = client.token, client.last_seq
        a_link.delay_s = 3.0  # a hands the session over; its answer comes too late
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is False and hello["connectionId"] != cid
        meanwhile = await _code(_api(c).post_to_connection, ConnectionId=cid, Data=b"meanwhile")
        assert meanwhile in ("ServiceUnavailableException", "200")  # 200 once a kept it
        a_link.delay_s = 0
        await client.close()
        await eventually(lambda: a.gateway.hub.get(cid) is not None, 20)  # a settled the move: kept (its links reconnect first)
        assert b.gateway.hub.get(cid) is None and b.gateway.sessions._incoming == {}
        record = redis.Redis(port=private_redis.port).hget(KeySpace(key_prefix).record(cid), "node")
        assert record == a.gateway.node_id.encode()
        registry = a.gateway.registry
        assert isinstance(registry, RedisRegistry)
        await asyncio.wait_for(registry._channel.ready(), 10)  # a's links, cut by the slow Redis, are back
        assert await _code(_api(c).post_to_connection, ConnectionId=cid, Data=b"still here") == "200"
        again = ReliableClient()
        again.connection_id, again.token, again.last_seq = cid, token, last_seq
        hello = await again.connect(ws_url(b, tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        expected = ["meanwhile", "still here"] if meanwhile == "200" else ["still here"]
        assert [data for _, data in await again.recv_many(len(expected))] == expected
        await again.close()
        await eventually(lambda: _disconnects(cid) == [1000])
        assert len(th.events_of("$connect", cid)) == 1


def _lose(port: int, key_prefix: str, what: str, cid: str) -> None:
    """Redis loses a session's record (``what`` = "record"), or every key of the cluster
    ("everything", as a restart without persistence would)."""
    client = redis.Redis(port=port)
    if what == "record":
        assert client.delete(KeySpace(key_prefix).record(cid)) == 1
        return
    keys = list(client.scan_iter(match=f"{key_prefix}:*", count=1000))
    assert keys
    client.delete(*keys)


@pytest.mark.redis
@pytest.mark.parametrize("what", ["record", "everything"])
async def test_a_session_whose_record_redis_lost_before_its_move_landed_stays_with_its_holder(
    private_redis: Any, key_prefix: str, what: str
) -> None:
    """Redis loses the record between the handover and the move: the resuming node's move
    finds no record and gives up (the client starts afresh), and the holder, settling, finds
    none either. The resuming node tells it that the move never landed there: the holder
    writes the record back and keeps the session, which can still be resumed and ends with
    one ``$disconnect``."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        token, last_seq = client.token, client.last_seq
        a_link.delay_s = 0.6  # a's answer, the session's state, comes late: Redis loses the record first
        resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
        await eventually(lambda: cid in a.gateway.sessions._leaving)  # a handed it over
        _lose(private_redis.port, key_prefix, what, cid)
        hello = await resuming
        a_link.delay_s = 0
        assert hello["resumed"] is False and hello["connectionId"] != cid
        await client.close()
        await eventually(lambda: a.gateway.hub.get(cid) is not None, 15)  # a settled the move: kept
        assert b.gateway.hub.get(cid) is None
        record = redis.Redis(port=private_redis.port).hget(KeySpace(key_prefix).record(cid), "node")
        assert record == a.gateway.node_id.encode()
        for node in (a, b, c):
            assert isinstance(node.gateway.registry, RedisRegistry)
            await wait_settled(node.gateway.registry, 15)
        again = ReliableClient()
        again.connection_id, again.token, again.last_seq = cid, token, last_seq
        hello = await again.connect(ws_url(c, tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        await again.close()
        await eventually(lambda: _disconnects(cid) == [1000])
        await asyncio.sleep(0.5)
        assert _disconnects(cid) == [1000] and len(th.events_of("$connect", cid)) == 1


@pytest.mark.redis
@pytest.mark.parametrize("then", ["ended", "lost"])
async def test_a_move_that_landed_is_not_undone_by_a_record_gone_at_its_settling(
    private_redis: Any, key_prefix: str, then: str
) -> None:
    """The move landed, then before the holder settles it the record is gone: the session
    ended on its new node (``$disconnect`` ran there), or Redis lost the record. The holder
    finds no record, as when Redis lost it before the move, but the new node says the move
    landed there: the holder lets the session go, and ``$disconnect`` runs once."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, _, _a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True  # a handed it to b
        assert cid in a.gateway.sessions._leaving  # not settled yet
        if then == "ended":
            await client.close()
            await eventually(lambda: _disconnects(cid) == [1000])
        else:
            _lose(private_redis.port, key_prefix, "record", cid)
        await eventually(lambda: cid not in a.gateway.sessions._leaving, 10)  # a settled the move
        assert a.gateway.hub.get(cid) is None
        if then == "lost":
            assert b.gateway.hub.get(cid) is not None
            await client.close()
        await eventually(lambda: _disconnects(cid) == [1000])
        await asyncio.sleep(0.5)
        assert _disconnects(cid) == [1000] and a.gateway.hub.get(cid) is None


@pytest.mark.redis
async def test_a_take_that_reaches_a_stopping_node_while_it_settles_is_settled_too(
    private_redis: Any, key_prefix: str
) -> None:
    """A node stops while a session it handed over is not settled: it settles it before it
    ends its dropped sessions. Another node's resume of a second session reaches it
    meanwhile, and it hands that one over too: that move is settled as well before the node
    is done (here neither lands: the holder's answers come after the resuming nodes gave
    up), so both sessions stay with it and end with it, one ``$disconnect`` each."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link):
        clients = [ReliableClient(), ReliableClient()]
        for client in clients:
            async with CutLink(a.port) as link:
                await client.connect(link.url(tenant="t1"))
                link.cut()
        first, second = (client.connection_id for client in clients)
        await eventually(lambda: all(a.gateway.hub.get(cid).ws is None for cid in (first, second)))  # type: ignore[union-attr]
        a_link.delay_s = 2.5  # a's answers (and its Redis calls) come after the resuming nodes gave up
        resuming = [asyncio.ensure_future(clients[0].connect(ws_url(b, tenant="t1"), resume=True))]
        await eventually(lambda: first in a.gateway.sessions._leaving)  # a handed it over
        stopping = asyncio.ensure_future(a.gateway.stop())  # settles the first move: its record is slow
        await asyncio.sleep(0.3)
        assert not stopping.done() and first in a.gateway.sessions._leaving
        resuming.append(asyncio.ensure_future(clients[1].connect(ws_url(c, tenant="t1"), resume=True)))
        await eventually(lambda: second in a.gateway.sessions._leaving)  # a handed this one over too
        hellos = await asyncio.gather(*resuming)
        assert [hello["resumed"] for hello in hellos] == [False, False]
        await asyncio.wait_for(stopping, 30)
        a_link.delay_s = 0
        assert a.gateway.sessions._leaving == {}
        for cid in (first, second):
            await eventually(lambda cid=cid: _disconnects(cid) == [1006], 10)
        await asyncio.sleep(0.5)
        assert _disconnects(first) == [1006] and _disconnects(second) == [1006]
        for client in clients:
            await client.close()


async def _fan_out(node: Node, tenant: str, data: bytes) -> int:
    async with aiohttp.ClientSession() as http, http.post(f"{endpoint(node)}/@tenants/{tenant}/messages", data=data) as resp:
        assert resp.status == 200
        return int((await resp.json())["delivered"])


@pytest.mark.redis
async def test_fan_outs_while_a_session_moves_reach_it_once(private_redis: Any, key_prefix: str) -> None:
    """A fan-out that reaches the holder after it handed the session over (and the new node
    before the session is there) is sent on by the holder; one that reaches both nodes once
    the session landed (the holder still sends fan-outs on until it settles the move) is
    taken once: the session gets each fan-out exactly once, in order. (A fan-out's count leaves
    out a session it is sent on to: the session may have had it already.)"""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        async with websockets.connect(ws_url(b, tenant="t1")) as other:  # b holds the tenant too
            assert await _fan_out(c, "t1", b"before") == 2  # the dropped session on a keeps it
            assert await other.recv() == "before"
            a_link.delay_s = 0.5  # a's answers (and what it sends on) come half a second late
            resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
            await eventually(lambda: cid in a.gateway.sessions._leaving)  # a handed it over
            assert b.gateway.hub.get(cid) is None
            assert await _fan_out(c, "t1", b"while moving") == 1  # other; sent on to the session by a
            hello = await resuming
            assert hello["resumed"] is True and hello["connectionId"] == cid
            assert cid in a.gateway.sessions._leaving  # a still sends fan-outs on: both reach it
            assert await _fan_out(c, "t1", b"landed") == 2
            a_link.delay_s = 0
            received = [data for _, data in await client.recv_many(3)]
            assert received == ["before", "while moving", "landed"]
            with pytest.raises(TimeoutError):
                await client.recv(timeout=1.0)  # nothing twice
            assert [await other.recv() for _ in range(2)] == ["while moving", "landed"]
            await eventually(lambda: cid not in a.gateway.sessions._leaving, 10)  # settled: it moved on
            assert b.gateway.hub.get(cid) is not None and a.gateway.hub.get(cid) is None


@pytest.mark.redis
async def test_a_session_that_comes_back_before_its_move_out_settled_stays_the_live_one(
    private_redis: Any, key_prefix: str
) -> None:
    """A session leaves a node and comes back to it within the seconds in which that node
    settles its move out: the move landed (the session could only come back from where it
    went), so the settling lets the old copy go; the copy that came back, attached to the
    client's socket, keeps receiving, and the next resume is granted."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, _a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        assert cid in b.gateway.sessions._leaving  # b has not settled its move to a yet
        assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True  # back on b
        await eventually(lambda: cid not in b.gateway.sessions._leaving, 10)  # the move to a settled
        assert await _code(_api(c).post_to_connection, ConnectionId=cid, Data=b"still live") == "200"
        assert await client.recv() == (1, "still live")
        link.cut()
        link.target = c.port
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        await client.close()
        await eventually(lambda: _disconnects(cid) == [1000])
        await asyncio.sleep(0.5)
        assert _disconnects(cid) == [1000]


@pytest.mark.redis
async def test_a_fan_out_from_the_resuming_node_reaches_a_session_once_though_it_moves_meanwhile(
    private_redis: Any, key_prefix: str
) -> None:
    """A node fans out to the other nodes first, then to its own hub. A session resumed on it
    meanwhile, from a node that had queued the fan-out already, comes with it among its
    messages: the fan-out's turn on this node's hub must not queue it a second time."""
    async with _three_nodes(private_redis, key_prefix) as (slow, holder, origin, slow_link), CutLink(holder.port) as link:
        async with websockets.connect(ws_url(slow, tenant="t1")) as other:  # the slow node holds the tenant too
            client = ReliableClient()
            await client.connect(link.url(tenant="t1"))
            cid = client.connection_id
            link.cut()
            await eventually(lambda: holder.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
            slow_link.delay_s = 1.0  # the slow node's count comes a second late
            fanning = asyncio.ensure_future(_fan_out(origin, "t1", b"once"))
            await eventually(lambda: holder.gateway.hub.get(cid).seq == 1)  # type: ignore[union-attr]
            link.target = origin.port
            hello = await client.connect(link.url(tenant="t1"), resume=True)
            assert hello["resumed"] is True and origin.gateway.hub.get(cid) is not None
            assert not fanning.done()  # the origin still waits for the slow node
            await fanning
            slow_link.delay_s = 0
            assert await other.recv() == "once"
            assert await client.recv() == (1, "once")
            with pytest.raises(TimeoutError):
                await client.recv(timeout=1.0)  # not twice


@pytest.mark.redis
async def test_a_resume_follows_a_session_past_the_nodes_it_left(private_redis: Any, key_prefix: str) -> None:
    """A node asks for a session where it last knew it to be (it handed it over there a
    moment ago); that node handed it on since: it answers where the session went, as it
    does for a post, and the resume follows the session there."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, _a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)  # b sent it to a: b asks a for it
        link.target = c.port
        assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True  # a sent it on to c
        link.cut()
        await eventually(lambda: c.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
        link.target = b.port
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        assert await _code(_api(a).post_to_connection, ConnectionId=cid, Data=b"here") == "200"
        assert await client.recv() == (1, "here")


@pytest.mark.redis
async def test_a_session_that_came_back_and_ended_is_gone_everywhere(private_redis: Any, key_prefix: str) -> None:
    """A session left b for a, came back to b and ended there: calls about it get 410 from
    every node at once (no node sends them on to where it once went)."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, _a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        assert (await client.connect(link.url(tenant="t1"), resume=True))["resumed"] is True  # back on b
        await client.close()
        await eventually(lambda: _disconnects(cid) == [1000])
        for node in (a, b, c):
            assert await _code(_api(node).post_to_connection, ConnectionId=cid, Data=b"x") == "GoneException"
            assert await _code(_api(node).get_connection, ConnectionId=cid) == "GoneException"


@pytest.mark.redis
async def test_a_node_restarted_with_its_node_id_names_its_fan_outs_afresh(private_redis: Any, key_prefix: str) -> None:
    """A session that just moved remembers the names of the fan-outs it took for a few
    seconds, to take each once. A node restarted meanwhile with the same configured node id
    must not name its fan-outs as its previous life did: the session takes each of them."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, _, _a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)  # a took it from b a moment ago
        config = make_config(registry={
            "backend": "redis", "redis_url": f"redis://127.0.0.1:{private_redis.port}/0", "key_prefix": key_prefix,
            "heartbeat_s": 0.5, "node_ttl_s": 6, "outcome_wait_s": 0, "node_id": "fixed",
        })
        for life in ("first life", "second life"):
            async with running_node(config) as fixed:
                assert await _fan_out(fixed, "t1", life.encode()) == 1
        hello = await client.connect(ws_url(a, tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        assert [data for _, data in await client.recv_many(2, timeout=2.0)] == ["first life", "second life"]


@pytest.mark.redis
async def test_calls_for_a_move_its_holder_settled_first_are_sent_back_to_the_holder(
    private_redis: Any, key_prefix: str
) -> None:
    """The holder's settling reaches the record before the resuming node's move (its answer
    came late): the session stays with the holder, so the resuming node sends calls for it
    back there (answered once queued there, or 503 while the holder settles): never 410 for
    a session a node holds."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, c, a_link), CutLink(a.port) as link:
        client = ReliableClient()
        await client.connect(link.url(tenant="t1"))
        cid = client.connection_id  # it names a, which holds it; b has never held it
        link.cut()
        link.target = b.port
        await eventually(lambda: a.gateway.hub.get(cid).ws is None)  # type: ignore[union-attr]
        a_link.delay_s = 0.6  # a's answers, the session's state first, come late
        resuming = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
        await eventually(lambda: cid in a.gateway.sessions._leaving)  # a handed it over
        registry = a.gateway.registry
        assert isinstance(registry, RedisRegistry)
        handover = registry._index.leaving[cid][1]
        keep = redis.Redis(port=private_redis.port).eval(  # a's settling, first to the record
            KEEP_SESSION, 1, KeySpace(key_prefix).record(cid), a.gateway.node_id, handover)
        assert keep == 1
        # c asks a (the id names it), which answers, late, that the session moved to b; by
        # then b's move has failed.
        post = asyncio.ensure_future(_code(_api(c).post_to_connection, ConnectionId=cid, Data=b"kept?"))
        assert (await resuming)["resumed"] is False
        a_link.delay_s = 0
        assert await post in ("ServiceUnavailableException", "200")  # not GoneException
        await eventually(lambda: a.gateway.hub.get(cid) is not None, 10)  # a keeps the session


@pytest.mark.redis
async def test_a_session_moving_here_lands_though_its_resume_was_given_up(private_redis: Any, key_prefix: str) -> None:
    """The resuming handshake is cancelled (the client edge's open timeout, which a long
    wait for the holder can pass) while the holder's answer is on its way: the holder has
    handed the session over, so it still lands here, dropped, for the client's next resume."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, _, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        assert await _code(_api(b).post_to_connection, ConnectionId=cid, Data=b"kept on a") == "200"
        principal = a.gateway.hub.get(cid).record.principal_id  # type: ignore[union-attr]
        a_link.delay_s = 1.0
        resume = ResumeRequest(cid, client.token, client.last_seq)
        claim = asyncio.ensure_future(b.gateway.sessions.claim(resume, "t1", principal))
        await eventually(lambda: cid in b.gateway.sessions._incoming)
        claim.cancel()  # as the edge's open timeout would
        with pytest.raises(asyncio.CancelledError):
            await claim
        await eventually(lambda: b.gateway.hub.get(cid) is not None)
        a_link.delay_s = 0
        assert a.gateway.hub.get(cid) is None and b.gateway.hub.get(cid).ws is None  # type: ignore[union-attr]
        hello = await client.connect(link.url(tenant="t1"), resume=True)
        assert hello["resumed"] is True and hello["connectionId"] == cid
        assert await client.recv() == (1, "kept on a")
        assert _disconnects(cid) == [] and len(th.events_of("$connect", cid)) == 1


@pytest.mark.redis
async def test_resumes_of_one_session_on_a_node_are_judged_one_at_a_time(private_redis: Any, key_prefix: str) -> None:
    """A stranger's resume with a wrong token, in flight on b, does not keep the client from
    resuming there (refused at once, anyone who knew the id could lock its client out); of
    two resumes with the same token, one is granted: the token is spent as it is."""
    async with _three_nodes(private_redis, key_prefix) as (a, b, _, a_link), CutLink(b.port) as link:
        client = ReliableClient()
        cid = await _moved_to_a_and_dropped(a, b, link, client)
        a_link.delay_s = 0.5  # each answer of a's comes half a second late
        stranger, twin = ReliableClient(), ReliableClient()
        stranger.connection_id, stranger.token = cid, "wrong"
        twin.connection_id, twin.token = cid, client.token
        strangers = asyncio.ensure_future(stranger.connect(ws_url(b, tenant="t1"), resume=True))
        await eventually(lambda: cid in b.gateway.sessions._incoming)  # b asked a, for the stranger
        mine = asyncio.ensure_future(client.connect(link.url(tenant="t1"), resume=True))
        twins = asyncio.ensure_future(twin.connect(ws_url(b, tenant="t1"), resume=True))
        assert (await strangers)["resumed"] is False
        hellos = [await mine, await twins]
        a_link.delay_s = 0
        assert sorted(hello["resumed"] for hello in hellos) == [False, True]
        assert [hello["connectionId"] for hello in hellos if hello["resumed"]] == [cid]
        for each in (stranger, twin, client):
            await each.close()
