"""HTTP integrations against real backends on 127.0.0.1 (tests/http_backend.py), a real node
and real websockets clients: the event and its headers and signature, every kind of answer
and failure, ``$disconnect`` retries, time limits and per-connection ordering."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time

import pytest
import websockets

from tests.free_ports import free_port
from tests.http_backend import SECRET, running_backend
from tests.support import PROCESS_PORTS, connect, eventually, make_config, running_node
from wsgateway.errors import IntegrationError
from wsgateway.integrations.backoff import Backoff
from wsgateway.integrations.http import read_result
from wsgateway.integrations.signature import sign, verify

URL = "http://127.0.0.1:9/x"


def http_config(backend, *, limits=None, routes=None, **http):
    return make_config(
        routes=routes or {"$connect": backend.url("/connect"), "$disconnect": backend.url("/disconnect"),
                          "$default": backend.url("/message")},
        integrations={"http": {"signing_secret": SECRET, **http}},
        limits={"handler_timeout_s": 2, **(limits or {})},
    )


async def recv(ws, timeout: float = 5.0):
    return await asyncio.wait_for(ws.recv(), timeout)


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("status", "ctype", "body", "connect", "result"),
    [
        (200, "application/json", b'{"statusCode": 200, "body": "hi"}', False, {"statusCode": 200, "body": "hi"}),
        (200, "text/plain", b'{"statusCode": 201}', False, {"statusCode": 201}),  # JSON by its form
        (200, "text/plain", b"hello", False, {"statusCode": 200, "body": b"hello"}),
        (200, "application/json", b'{"no": "statusCode"}', False, {"statusCode": 200, "body": b'{"no": "statusCode"}'}),
        (200, "application/json", b"[1, 2]", False, {"statusCode": 200, "body": b"[1, 2]"}),
        (200, "application/json", b'{"a": ', False, {"statusCode": 200, "body": b'{"a": '}),  # names no statusCode
        (200, "text/plain", b'say "statusCode"', False, {"statusCode": 200, "body": b'say "statusCode"'}),
        (200, "application/json", b'["statusCode", 1]', False, {"statusCode": 200, "body": b'["statusCode", 1]'}),
        (204, "", b"", False, None),
        (200, "text/plain", b"", True, None),
        (403, "text/plain", b"nope", True, {"statusCode": 403}),
    ],
)
def test_answers_read_as_lambda_results(status, ctype, body, connect, result):
    assert read_result(status, ctype, body, connect=connect, url=URL) == result


@pytest.mark.parametrize(
    ("status", "ctype", "body", "connect", "reason", "retryable"),
    [
        (200, "application/json", b'{"statusCode": ', False, "invalid_json", False),
        (200, "application/problem+json", b'{"statusCode": 4', True, "invalid_json", False),
        (200, "text/plain", b' {"statusCode": 200, "body": "x"', False, "invalid_json", False),
        (302, "", b"", True, "redirect", False),
        (404, "", b"", False, "4xx", False),
        (500, "", b"", True, "5xx", True),
        (503, "", b"", False, "5xx", True),
        (101, "", b"", False, "status", False),
    ],
)
def test_failing_answers_raise_with_a_reason(status, ctype, body, connect, reason, retryable):
    with pytest.raises(IntegrationError) as info:
        read_result(status, ctype, body, connect=connect, url=URL)
    assert (info.value.kind, info.value.reason, info.value.retryable) == ("http", reason, retryable)


def test_signature_format_and_verification():
    body = b'{"a":1}'
    header = sign(b"k", body, 1_700_000_000.9)
    assert header.startswith("t=1700000000,v1=") and len(header.split("v1=")[1]) == 64
    assert verify(b"k", header, body, 1_700_000_100)
    assert not verify(b"k", header, body + b" ", 1_700_000_100)  # another body
    assert not verify(b"other", header, body, 1_700_000_100)  # another secret
    assert not verify(b"k", header, body, 1_700_000_000 + 301)  # older than 5 minutes
    assert not verify(b"k", "v1=" + header.split("v1=")[1], body, 1_700_000_000)  # no timestamp


def test_backoff_grows_with_jitter_and_stops_at_its_budget():
    backoff = Backoff(base_s=0.1, cap_s=1.0, budget_s=3.0, rng=random.Random(7))
    delays = [backoff.delay(n) for n in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(1.0, 0.1 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert backoff.delay(10_000) <= 1.0  # no overflow for a long series
    assert backoff.allows(2.0, 1.0) and not backoff.allows(2.5, 0.6)


# ---------------------------------------------------------------- against a node


async def test_event_headers_and_signature_on_every_route():
    async with running_backend() as backend, running_node(http_config(backend)) as node:
        async with await connect(node, query={"tenant": "acme"}) as ws:
            await ws.send('{"action": "x", "n": 1}')
            assert await recv(ws) == 'echo:{"action": "x", "n": 1}'
        await eventually(lambda: backend.of("$disconnect"))
    (conn,), (msg,), (bye,) = backend.of("$connect"), backend.of("$default"), backend.of("$disconnect")
    cid = conn.event["requestContext"]["connectionId"]
    for seen, path, route in ((conn, "/connect", "$connect"), (msg, "/message", "$default"),
                              (bye, "/disconnect", "$disconnect")):
        ctx = seen.event["requestContext"]
        assert seen.path == path and seen.signed and ctx["routeKey"] == route and ctx["connectionId"] == cid
        assert seen.headers["Content-Type"] == "application/json"
        assert seen.headers["X-Wsgateway-Connection-Id"] == cid
        assert seen.headers["X-Wsgateway-Request-Id"] == ctx["requestId"]
    assert conn.event["queryStringParameters"] == {"tenant": "acme"}
    assert msg.event["body"] == '{"action": "x", "n": 1}' and msg.event["isBase64Encoded"] is False
    assert bye.event["requestContext"]["eventType"] == "DISCONNECT"


async def test_requests_go_unsigned_without_a_secret_and_share_the_pool():
    async with running_backend(secret=None) as backend:
        config = make_config(routes={"$default": backend.url("/message"), "other": backend.url("/other")})
        async with running_node(config) as node, await connect(node) as ws:
            for action in ("x", "other", "x"):
                await ws.send(json.dumps({"action": action}))
                await recv(ws)
            routes = node.gateway.router
            assert routes is not None
            integrations = {integration for _, integration in (routes.select('{"action":"x"}'),
                                                                routes.select('{"action":"other"}'))}
            assert len({i.pool for i in integrations}) == 1  # type: ignore[attr-defined]
    assert [s.path for s in backend.seen] == ["/message", "/other", "/message"]
    assert not any("X-Wsgateway-Signature" in s.headers for s in backend.seen)


async def test_answers_reach_the_client_as_python_results_do():
    async with running_backend() as backend, running_node(http_config(backend)) as node:
        async with await connect(node) as ws:
            await ws.send('{"do": "plain"}')
            assert await recv(ws) == "plain reply"
            await ws.send('{"do": "binary"}')
            assert await recv(ws) == b"\x00\xff\xfe"
            await ws.send('{"do": "empty"}')
            with pytest.raises(TimeoutError):
                await recv(ws, 0.3)
            await ws.send(b"\x01\x02")  # binary in: base64 event, as for Python handlers
            assert await recv(ws) == 'echo:' + "AQI="
    assert node.gateway.stats.integration_failures == {}


@pytest.mark.parametrize(
    ("ask", "message", "reason"),
    [
        ("500", "Internal server error", "5xx"),
        ("502", "Internal server error", "5xx"),
        ("404", "Internal server error", "4xx"),
        ("redirect", "Internal server error", "redirect"),
        ("big", "Internal server error", "too_large"),
        ("badjson", "Internal server error", "invalid_json"),
        ("hang", "Endpoint request timed out", "timeout"),
    ],
)
async def test_message_failures_answer_aws_frames_and_name_nothing_of_the_backend(ask, message, reason):
    async with running_backend(max_message_bytes=4096) as backend:
        config = http_config(backend, limits={"max_message_bytes": 4096, "handler_timeout_s": 0.5})
        async with running_node(config) as node, await connect(node) as ws:
            await ws.send(json.dumps({"do": ask}))
            raw = await recv(ws)
            reply = json.loads(raw)
            assert reply["message"] == message and set(reply) == {"message", "connectionId", "requestId"}
            assert str(backend.port) not in raw and "backend" not in raw
            await ws.send('{"n": 2}')
            assert await recv(ws) == 'echo:{"n": 2}'  # the connection goes on
            assert node.gateway.stats.integration_failures == {("http", reason): 1}
            metrics = await _metrics(node)
            assert f'wsgateway_integration_failures_total{{kind="http",reason="{reason}"}} 1.0' in metrics
            assert str(backend.port) not in metrics


async def _metrics(node) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{node.management_port}/metrics") as resp:
            return await resp.text()


async def test_refused_connection_fails_the_message():
    config = make_config(routes={"$default": f"http://127.0.0.1:{free_port()}/message"})
    async with running_node(config) as node, await connect(node) as ws:
        await ws.send("hi")
        assert json.loads(await recv(ws))["message"] == "Internal server error"
        assert node.gateway.stats.integration_failures == {("http", "connect"): 1}


@pytest.mark.parametrize(
    ("ask", "status"),
    [("403", 403), ("404", 404), ("lambda401", 401), ("500", 500), ("502", 500), ("redirect", 500),
     ("hang", 500), ("big", 500), ("badjson", 500)],
)
async def test_connect_answers_and_failures_decide_the_handshake(ask, status):
    async with running_backend(max_message_bytes=4096) as backend:
        config = http_config(backend, limits={"max_message_bytes": 4096, "handler_timeout_s": 0.5})
        async with running_node(config) as node:
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(node, query={"connect": ask})
            assert info.value.response.status_code == status
            assert str(backend.port).encode() not in info.value.response.body
            async with await connect(node) as ws:  # the next handshake is accepted
                await ws.send("ok")
                assert await recv(ws) == "echo:ok"


async def test_connect_to_a_refused_backend_rejects_with_500():
    config = make_config(routes={"$connect": f"http://127.0.0.1:{free_port()}/connect", "$default": "handlers.echo:handler"})
    async with running_node(config) as node:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(node)
        assert info.value.response.status_code == 500
        assert node.gateway.stats.integration_failures == {("http", "connect"): 1}


async def test_disconnect_is_retried_after_5xx_with_the_same_request_id():
    async with running_backend(disconnect_failures=2) as backend, running_node(http_config(backend)) as node:
        async with await connect(node) as ws:
            await ws.send("hi")
            await recv(ws)
        await eventually(lambda: len(backend.of("$disconnect")) == 3)
        await asyncio.sleep(0.3)
        assert len(backend.of("$disconnect")) == 3  # delivered: no more attempts
        ids = {s.headers["X-Wsgateway-Request-Id"] for s in backend.of("$disconnect")}
        events = {json.dumps(s.event, sort_keys=True) for s in backend.of("$disconnect")}
        assert len(ids) == 1 and len(events) == 1  # the very same event every time
        assert node.gateway.stats.integration_failures == {}


async def test_disconnect_is_retried_while_the_backend_is_down():
    port = free_port()
    config = make_config(routes={"$disconnect": f"http://127.0.0.1:{port}/disconnect",
                                 "$default": "handlers.echo:handler"})
    async with running_node(config) as node:
        async with await connect(node) as ws:
            await ws.send("hi")
            await recv(ws)
        await asyncio.sleep(0.5)  # refused meanwhile
        async with running_backend(port=port, secret=None) as backend:
            await eventually(lambda: backend.of("$disconnect"), timeout=10)
            assert len(backend.of("$disconnect")) == 1


async def test_disconnect_retries_stop_at_their_budget():
    config = make_config(routes={"$disconnect": f"http://127.0.0.1:{free_port()}/disconnect",
                                 "$default": "handlers.echo:handler"},
                         integrations={"http": {"disconnect_retry_s": 0.5}})
    async with running_node(config) as node:
        async with await connect(node) as ws:
            await ws.send("hi")
            await recv(ws)
        started = time.monotonic()
        await eventually(lambda: node.gateway.stats.integration_failures == {("http", "connect"): 1})
        assert time.monotonic() - started < 3


async def test_a_hanging_disconnect_times_out_once_and_shutdown_is_bounded():
    async with running_backend(disconnect_hangs=True) as backend:
        config = http_config(backend, limits={"handler_timeout_s": 0.3})
        node_cm = running_node(config)
        node = await node_cm.__aenter__()
        try:
            ws = await connect(node)
            await ws.send("hi")
            await recv(ws)
        finally:
            started = time.monotonic()
            await node_cm.__aexit__(None, None, None)  # drains: the $disconnect runs now
        assert time.monotonic() - started < 3
        assert len(backend.of("$disconnect")) == 1  # a timeout is not retried: it may have landed
        assert node.gateway.stats.integration_failures == {("http", "timeout"): 1}


async def test_two_connections_interleave_each_in_its_own_order():
    async with running_backend() as backend, running_node(http_config(backend)) as node:
        async with await connect(node) as a, await connect(node) as b:
            for n in range(20):
                await a.send(json.dumps({"do": "slowly", "n": f"a{n}"}))
                await b.send(json.dumps({"do": "slowly", "n": f"b{n}"}))
            got_a = [await recv(a) for _ in range(20)]
            got_b = [await recv(b) for _ in range(20)]
    assert got_a == [f"a{n}" for n in range(20)] and got_b == [f"b{n}" for n in range(20)]
    sent = [json.loads(s.event["body"])["n"] for s in backend.of("$default")]
    assert [n for n in sent if n[0] == "a"] == got_a and [n for n in sent if n[0] == "b"] == got_b
    assert backend.overlapped == 0  # one request per connection at a time
    assert sent.index("b0") < sent.index("a19") and sent.index("a0") < sent.index("b19")  # they did interleave


async def test_the_pool_closes_at_stop():
    async with running_backend() as backend:
        async with running_node(http_config(backend)) as node, await connect(node) as ws:
            await ws.send("x")
            await recv(ws)
            router = node.gateway.router
        _, integration = router.select("x")
        with pytest.raises(IntegrationError) as info:
            await integration.pool.post(backend.url("/late"), b"{}", {}, 10)
        assert info.value.reason == "closed"


_NODE_TOML = PROCESS_PORTS + """
[routes]
"$connect" = "{url}/connect"
"$disconnect" = "{url}/disconnect"
"$default" = "handlers.echo:handler"
[integrations.http]
signing_secret = "{secret}"
[limits]
close_timeout_s = 1
shutdown_timeout_s = 5
[registry]
backend = "redis"
redis_url = "{redis_url}"
key_prefix = "{prefix}"
heartbeat_s = 0.2
node_ttl_s = 1.0
"""


@pytest.mark.redis
@pytest.mark.slow
async def test_dead_nodes_disconnect_reaches_the_backend_through_the_survivor(tmp_path, redis_url, key_prefix):
    import signal

    from tests.support import node_process

    async with running_backend(disconnect_failures=1) as backend:
        toml = _NODE_TOML.format(url=backend.url(""), secret=SECRET, redis_url=redis_url, prefix=key_prefix)
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        async with node_process(tmp_path / "a", toml) as doomed, node_process(tmp_path / "b", toml):
            ws = await websockets.connect(f"ws://127.0.0.1:{doomed.port}/prod", open_timeout=5)
            await ws.send("hi")
            assert await recv(ws) == "hi"
            (connect_seen,) = backend.of("$connect")
            cid = connect_seen.event["requestContext"]["connectionId"]
            await asyncio.sleep(1.5)  # survivors sweep only after being up for node_ttl_s
            doomed.process.send_signal(signal.SIGKILL)
            await doomed.process.wait()
            await eventually(lambda: len(backend.of("$disconnect")) == 2, timeout=10)  # a 503, then delivered
            await asyncio.sleep(0.5)
            seen = backend.of("$disconnect")
            assert len(seen) == 2 and all(s.signed for s in seen)
            assert {s.event["requestContext"]["connectionId"] for s in seen} == {cid}
            assert len({s.headers["X-Wsgateway-Request-Id"] for s in seen}) == 1
            assert {s.event["requestContext"]["disconnectStatusCode"] for s in seen} == {1006}
            with contextlib.suppress(Exception):
                await ws.close()


def _doc_block(language: str) -> str:
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "integrations.md").read_text()
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_documented_python_verifier_accepts_what_the_gateway_signs():
    namespace: dict = {}
    exec(_doc_block("python"), namespace)  # the docs' own example, run as users copy it
    body = b'{"requestContext": {"routeKey": "$default"}}'
    header = sign(SECRET.encode(), body, time.time())
    assert namespace["verify"](SECRET.encode(), header, body)
    assert not namespace["verify"](SECRET.encode(), header, body + b"x")
    assert not namespace["verify"](SECRET.encode(), sign(SECRET.encode(), body, time.time() - 301), body)


def test_the_documented_node_verifier_accepts_what_the_gateway_signs(tmp_path):
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    body = b'{"requestContext": {"routeKey": "$default"}, "body": "h\\u00e9"}'
    now = time.time()
    cases = [(sign(SECRET.encode(), body, now), body), (sign(SECRET.encode(), body, now), body + b" "),
             (sign(SECRET.encode(), body, now - 301), body), ("t=abc,v1=00", body)]
    script = _doc_block("js") + (
        "const cases = JSON.parse(process.argv[2]);\n"
        "console.log(JSON.stringify(cases.map(([h, b]) => verify(process.argv[3], h, Buffer.from(b, 'base64')))));\n"
    )
    (tmp_path / "verify.js").write_text(script)
    import base64

    arg = json.dumps([[h, base64.b64encode(b).decode()] for h, b in cases])
    out = subprocess.run([node, str(tmp_path / "verify.js"), arg, SECRET], capture_output=True, text=True, timeout=20)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [True, False, False, False]


async def test_access_log_and_metric_name_the_kind_and_reason_of_each_failure(tmp_path):
    path = tmp_path / "access.log"
    async with running_backend(disconnect_failures=99) as backend:
        config = make_config(
            routes={"$default": backend.url("/message"), "boom": "tests.handlers_for_tests:boom",
                    "$disconnect": backend.url("/disconnect")},
            integrations={"http": {"signing_secret": SECRET, "disconnect_retry_s": 0.2}},
            log={"access_log": str(path)},
        )
        async with running_node(config) as node:
            async with await connect(node) as ws:
                await ws.send('{"do": "500"}')
                await recv(ws)
                await ws.send('{"action": "boom"}')
                await recv(ws)
                await ws.send('{"n": 1}')
                await recv(ws)
            await eventually(lambda: node.gateway.stats.integration_failures[("http", "5xx")] == 2)
            assert dict(node.gateway.stats.integration_failures) == {("http", "5xx"): 2, ("python", "error"): 1}
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    messages = [e for e in entries if e["kind"] == "message"]
    assert [(e["status"], e["integration"], e.get("error")) for e in messages] == [
        (500, "http", "5xx"), (500, "python", "error"), (200, "http", None)]
    (bye,) = [e for e in entries if e["kind"] == "disconnect"]
    assert (bye["integration"], bye["error"]) == ("http", "5xx")
    assert str(backend.port) not in path.read_text()  # the backend's URL stays in the server log


async def test_shutdown_bounds_disconnect_retries_and_logs_the_abandoned_ones(caplog):
    config = make_config(routes={"$disconnect": f"http://127.0.0.1:{free_port()}/disconnect",
                                 "$default": "handlers.echo:handler"},
                         limits={"shutdown_timeout_s": 1})
    node_cm = running_node(config)
    node = await node_cm.__aenter__()
    try:
        ws = await connect(node)
        await ws.send("hi")
        await recv(ws)
    finally:
        started = time.monotonic()
        await node_cm.__aexit__(None, None, None)  # the $disconnect is refused, retried, then cut
    assert 1 <= time.monotonic() - started < 5
    assert any("$disconnect delivery abandoned at shutdown" in r.getMessage() for r in caplog.records)
