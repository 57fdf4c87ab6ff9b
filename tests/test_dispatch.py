"""Client messages against a real node: routing, events, two-way answers, AWS error frames."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
import websockets

from tests import handlers_for_tests as th
from tests.support import PROCESS_PORTS, TEST_ROUTES, connect, make_config, node_process, running_node, whoami


@pytest.fixture(autouse=True)
def _clear_events():
    th.EVENTS.clear()


async def test_routing_and_message_event():
    async with running_node() as node, await connect(node, query={"tenant": "acme"}) as ws:
        cid = await whoami(ws)
        await ws.send('{"action": "event", "x": 1}')
        event = json.loads(await ws.recv())
        ctx = event["requestContext"]
        assert ctx["routeKey"] == "event" and ctx["eventType"] == "MESSAGE" and ctx["connectionId"] == cid
        assert len(ctx["messageId"]) == 16 and ctx["requestId"] == ctx["extendedRequestId"]
        assert event["body"] == '{"action": "event", "x": 1}' and event["isBase64Encoded"] is False
        await ws.send("not json at all")
        assert await ws.recv() == "not json at all"  # $default
        await ws.send('{"action": "unknown"}')
        assert await ws.recv() == '{"action": "unknown"}'  # $default
        await ws.send(b"\x00\x01\xff")
        assert await ws.recv() == b"\x00\x01\xff"  # binary -> $default base64 -> binary back
        (binary_event,) = [e for e in th.events_of("$default") if e["isBase64Encoded"]]
        assert base64.b64decode(binary_event["body"]) == b"\x00\x01\xff"


async def test_no_route_and_no_default_sends_forbidden_and_keeps_socket():
    cfg = make_config(routes={"whoami": "tests.handlers_for_tests:whoami"})
    async with running_node(cfg) as node, await connect(node) as ws:
        cid = await whoami(ws)
        await ws.send('{"action": "nope"}')
        raw = await ws.recv()
        assert raw.startswith('{"message": "Forbidden", "connectionId":"' + cid + '", "requestId":"')
        assert await whoami(ws) == cid  # still open


async def test_handler_errors_never_leak_text():
    async with running_node(make_config(limits={"handler_timeout_s": 0.3})) as node, await connect(node) as ws:
        cid = await whoami(ws)
        await ws.send('{"action": "boom"}')
        reply = json.loads(await ws.recv())
        assert reply["message"] == "Internal server error" and reply["connectionId"] == cid
        assert "secret" not in json.dumps(reply)
        await ws.send('{"action": "slow"}')
        reply = json.loads(await ws.recv())
        assert reply["message"] == "Endpoint request timed out"
        assert await whoami(ws) == cid
        await ws.send('{"action": "sync_slow"}')  # a blocking (thread) handler too
        reply = json.loads(await ws.recv())
        assert reply["message"] == "Endpoint request timed out" and reply["connectionId"] == cid
        assert await whoami(ws) == cid  # the connection goes on after each timeout
        assert node.gateway.stats.handler_timeouts == 2


async def test_sync_handler_runs_off_loop_and_can_push():
    async with running_node() as node, await connect(node) as ws:
        await ws.send('{"action": "sync_echo"}')
        assert await ws.recv() == "from thread"
        assert await ws.recv() == 'sync:{"action": "sync_echo"}'


async def test_handler_context_push_and_get():
    async with running_node() as node:
        async with await connect(node, query={"tenant": "t1"}) as a, await connect(node, query={"tenant": "t1"}) as b:
            await ws_ready(a, b)
            await a.send('{"action": "push_self"}')
            assert await a.recv() == "pushed"
            info = json.loads(await a.recv())
            assert set(info) == {"connectedAt", "lastActiveAt", "identity"}
            await a.send('{"action": "push_tenant"}')
            assert await b.recv() == "tenant-wide"
            got = [await a.recv(), await a.recv()]
            assert "tenant-wide" in got
            assert json.loads(next(g for g in got if g != "tenant-wide")) == {"delivered": 2, "gone": True}


async def ws_ready(*sockets) -> None:
    for ws in sockets:
        await whoami(ws)


async def test_returning_none_sends_nothing():
    async with running_node() as node, await connect(node) as ws:
        await ws.send('{"action": "none"}')
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)


async def test_replies_count_as_their_tenants_traffic_out():
    """The console's messages in + out per tenant counts what the client sent and every frame
    it got: a handler's returned body (text or binary), an error frame, and a handler's post
    back to its caller; with one tenant on the node that is messagesIn + framesOut."""
    async with running_node() as node, await connect(node, query={"tenant": "acme"}) as ws:
        await whoami(ws)  # a returned {"body": str}: the dispatcher's common answer
        await ws.send(b"\x00\xff")
        assert await ws.recv() == b"\x00\xff"  # a returned base64 body, sent as a binary frame
        await ws.send('{"action": "boom"}')
        assert json.loads(await ws.recv())["message"] == "Internal server error"
        await ws.send('{"action": "push_self"}')  # two posts back, nothing returned
        assert await ws.recv() == "pushed"
        await ws.recv()
        await ws.send('{"action": "none"}')  # nothing returned, nothing sent
        await whoami(ws)  # the message above has been dispatched
        history, stats = node.gateway.history, node.gateway.stats
        history.sample()  # tenant() adds up the last minute's samples: take one of the rest
        assert (stats.messages, stats.frames_out) == (6, 6)
        assert history.tenant("acme")[1] == 12


_EXITING_ROUTES = PROCESS_PORTS + """
[routes]
"$connect" = "tests.handlers_for_tests:on_connect"
"$disconnect" = "tests.handlers_for_tests:exits"
"$default" = "tests.handlers_for_tests:echo"
whoami = "tests.handlers_for_tests:whoami"
exits = "tests.handlers_for_tests:exits"
sync_exits = "tests.handlers_for_tests:sync_exits"
"""


async def test_a_handler_that_exits_fails_its_call_not_the_node(tmp_path):
    """A Python handler raising SystemExit or KeyboardInterrupt (sys.exit() in it, or in a
    library it calls) fails that one call as any exception does: the message gets AWS's
    error frame and the socket stays open, $connect answers 500, $disconnect is logged.
    Left to propagate, it stopped the node's event loop: every client of the node was gone."""
    async with node_process(tmp_path, _EXITING_ROUTES) as node:
        url = f"ws://127.0.0.1:{node.port}/prod"
        async with websockets.connect(url) as ws:
            for message in ('{"action": "exits"}', '{"action": "exits", "mode": "interrupt"}',
                            '{"action": "sync_exits"}'):
                await ws.send(message)
                assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "Internal server error"
            await whoami(ws)  # still open
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url + "?connect=exit")
        assert refused.value.response.status_code == 500
        for _ in range(2):  # every close above ran a $disconnect that exits: the node serves on
            async with websockets.connect(url) as ws:
                await whoami(ws)
        assert node.process.returncode is None
        log = node.log_text()
        assert [log.count(f"handler failed: route={route} ") for route in ("exits", "sync_exits", "$connect")] == [2, 1, 1]
        assert log.count("handler failed: route=$disconnect ") >= 2 and "raised KeyboardInterrupt" in log


@pytest.mark.parametrize("code", [999, 1004, 1005, 1006, 1015, 2999, 5000, "4000", True])
async def test_a_disconnect_no_close_frame_can_carry_fails_the_handler_and_keeps_the_socket(code):
    """Disconnect with a code no close frame may carry is the handler's error (its text says
    which codes are allowed): the client gets AWS's error frame and the socket stays open.
    Before, the close failed inside websockets and the connection was left open, answering
    nothing, until the client went away."""
    cfg = make_config(routes={**TEST_ROUTES, "disconnects": "tests.handlers_for_tests:disconnects"})
    async with running_node(cfg) as node, await connect(node) as ws:
        await ws.send(json.dumps({"action": "disconnects", "code": code}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "Internal server error"
        await whoami(ws)


async def test_a_disconnect_reason_past_a_close_frames_room_is_cut_to_fit():
    """A close frame holds 123 bytes of reason: a longer one (built from user input, say) is
    cut to fit, at a character boundary, and the connection closes as the handler asked."""
    cfg = make_config(routes={**TEST_ROUTES, "disconnects": "tests.handlers_for_tests:disconnects"})
    async with running_node(cfg) as node, await connect(node) as ws:
        await ws.send(json.dumps({"action": "disconnects", "code": 4001, "reason": "é" * 100}))
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert (ws.close_code, ws.close_reason) == (4001, "é" * 61)


@pytest.mark.parametrize("kind", ["base64", "surrogate", "bare_surrogate", "set"])
async def test_a_reply_no_frame_can_carry_fails_the_handler_and_keeps_the_socket(kind):
    """A handler's answer that cannot become a frame (a body flagged base64 that is not, text
    holding a lone surrogate, an object with no JSON form) fails as a handler that raised:
    AWS's error frame, logged, the socket stays open. It used to fail the connection (1011)."""
    cfg = make_config(routes={**TEST_ROUTES, "unsendable": "tests.handlers_for_tests:unsendable"})
    async with running_node(cfg) as node, await connect(node) as ws:
        await ws.send(json.dumps({"action": "unsendable", "kind": kind}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 5))["message"] == "Internal server error"
        await whoami(ws)
        assert node.gateway.stats.handler_errors == 1
