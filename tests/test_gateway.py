"""The gateway's push API and LocalNode side, on a real node (the edges are tested elsewhere)."""

from __future__ import annotations

import socket

import pytest

from tests import handlers_for_tests as th
from tests.support import connect, eventually, running_node, whoami
from wsgateway.errors import GoneError, PayloadTooLargeError
from wsgateway.records import ConnectionRecord

TCP_CLOSE = 7  # include/net/tcp_states.h: what an RST leaves; a FIN would leave CLOSE_WAIT (8)


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of ``sock`` (``tcpi_state``, the first byte of TCP_INFO)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@pytest.fixture(autouse=True)
def _clear():
    th.EVENTS.clear()


async def test_post_text_or_binary_and_limits():
    async with running_node() as node:
        gw = node.gateway
        async with await connect(node) as ws:
            cid = await whoami(ws)
            await gw.post_to_connection(cid, "text")
            assert await ws.recv() == "text"
            await gw.post_to_connection(cid, "é".encode())
            assert await ws.recv() == "é"
            await gw.post_to_connection(cid, b"\x80")
            assert await ws.recv() == b"\x80"
            with pytest.raises(PayloadTooLargeError):
                await gw.post_to_connection(cid, b"x" * 131073)
            info = await gw.get_connection(cid)
            assert set(info) == {"connectedAt", "lastActiveAt", "identity"}
        await eventually(lambda: gw.hub.get(cid) is None)
        for call in (gw.get_connection, gw.delete_connection):
            with pytest.raises(GoneError):
                await call(cid)
        with pytest.raises(GoneError):
            await gw.post_to_connection(cid, "late")


async def test_delete_twice_is_gone_the_second_time():
    async with running_node() as node:
        gw = node.gateway
        ws = await connect(node)
        cid = await whoami(ws)
        await gw.delete_connection(cid)
        with pytest.raises(GoneError):
            await gw.delete_connection(cid)
        await ws.wait_closed()
        assert ws.close_code == 1000


async def test_local_connections_and_orphan_disconnect_event():
    async with running_node() as node:
        gw = node.gateway
        async with await connect(node, query={"tenant": "t"}) as ws:
            cid = await whoami(ws)
            assert [i.record.connection_id for i in gw.local_connections()] == [cid]
            assert gw.local_fanout("t", b"all", False) == 1
            assert await ws.recv() == "all"
        record = ConnectionRecord("DeadNodeConn0001", "dead-node", "t", "u", 1000.0, "10.0.0.1", "ua",
                                  {"principalId": "u", "tenant": "t"}, "gw.example")
        await gw.run_orphan_disconnect(record, 1006, "node died")
        (event,) = th.events_of("$disconnect", "DeadNodeConn0001")
        ctx = event["requestContext"]
        assert ctx["disconnectStatusCode"] == 1006 and ctx["disconnectReason"] == "node died"
        assert ctx["connectedAt"] == 1000000 and ctx["identity"]["sourceIp"] == "10.0.0.1"
        assert ctx["authorizer"] == {"principalId": "u", "tenant": "t"}


async def test_abandon_closes_without_a_second_disconnect():
    async with running_node() as node:
        gw = node.gateway
        ws = await connect(node)
        cid = await whoami(ws)
        assert gw.abandon([cid, "NotHereAtAll0000"], 1012, "declared dead") == 1
        await ws.wait_closed()
        assert ws.close_code == 1012
        await eventually(lambda: gw.hub.get(cid) is None)
        assert th.events_of("$disconnect", cid) == []


async def test_reader_that_stops_is_cut_off_with_small_messages():
    """Small posts never push the queue past its limit (a refused write stops short of it):
    a client that stops reading is still cut off once its queue stays full past the grace
    period, while the others are not delayed."""
    import asyncio
    import time

    from tests.support import make_config
    from wsgateway.errors import LimitExceededError

    cfg = make_config(
        limits={"max_queued_bytes": 32768, "slow_consumer_grace_s": 0.3, "socket_send_buffer_bytes": 16384},
        listen={"ping_interval_s": 0},
    )
    async with running_node(cfg) as node:
        gw = node.gateway
        slow, fast = await connect(node), await connect(node)
        slow_id, fast_id = await whoami(slow), await whoami(fast)
        slow.transport.pause_reading()
        refused, deadline = 0, time.monotonic() + 10
        while time.monotonic() < deadline:  # a backend that keeps posting, as they do
            try:
                await gw.post_to_connection(slow_id, b"m" * 1000)
            except LimitExceededError:
                refused += 1
                assert gw.hub.get(slow_id).queued_bytes() <= 32768  # bounded
                await gw.post_to_connection(fast_id, "still fast")
                assert await asyncio.wait_for(fast.recv(), 2) == "still fast"
                await asyncio.sleep(0.01)
            except GoneError:
                break
        assert refused >= 1
        ctx = (await eventually(lambda: th.events_of("$disconnect", slow_id), timeout=5))[0]["requestContext"]
        assert ctx["disconnectStatusCode"] == 1008 and ctx["disconnectReason"] == "slow consumer"
        assert gw.stats.slow_consumers == 1
        # Cut off with an RST: the client learns it at once and the server's kernel drops the
        # queued data (a FIN would wait behind it for a window that never opens).
        client_sock = slow.transport.get_extra_info("socket")
        await eventually(lambda: tcp_state(client_sock) == TCP_CLOSE, timeout=5)
        slow.transport.abort()
        await fast.close()
