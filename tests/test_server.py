"""The client edge against a real node: handshake order and statuses, close codes, frames."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests import handlers_for_tests as th
from tests.support import (
    connect,
    eventually,
    jwt_section,
    make_config,
    raw_get,
    running_node,
    token,
    whoami,
    ws_url,
)
from wsgateway.server import origin_key


@pytest.fixture(autouse=True)
def _clear_events():
    th.EVENTS.clear()


async def status_of(url: str, **kwargs) -> int:
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, open_timeout=5, **kwargs):
            pass
    return info.value.response.status_code


# ---------------------------------------------------------------- handshake


async def test_connect_at_root_and_stage_and_404_elsewhere():
    async with running_node() as node:
        for path in ("/", "/prod", "/prod/"):
            async with await connect(node, path) as ws:
                assert await whoami(ws)
        assert await status_of(ws_url(node, "/dev")) == 404


async def test_plain_get_answers_426():
    import aiohttp

    async with running_node() as node, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.port}/prod") as resp:
            assert resp.status == 426
    assert th.events_of("$connect") == []  # $connect never ran for it


async def test_origin_check():
    cfg = make_config(limits={"allowed_origins": ["https://app.example.com"]})
    async with running_node(cfg) as node:
        assert await status_of(ws_url(node), origin="https://evil.example.com") == 403
        async with websockets.connect(ws_url(node), origin="https://app.example.com") as ws:
            assert await whoami(ws)
        async with websockets.connect(ws_url(node)) as ws:  # no Origin: not a browser
            assert await whoami(ws)
    cfg = make_config(limits={"allowed_origins": ["https://app.example.com"], "require_origin": True})
    async with running_node(cfg) as node:
        assert await status_of(ws_url(node)) == 403


async def test_allowed_origin_with_default_port_matches_what_browsers_send():
    # Browsers leave :443 / :80 out of the Origin header.
    cfg = make_config(limits={"allowed_origins": ["https://app.example.com:443", "http://localhost:80"]})
    async with running_node(cfg) as node:
        for origin in ("https://app.example.com", "https://app.example.com:443", "http://localhost"):
            async with websockets.connect(ws_url(node), origin=origin) as ws:
                assert await whoami(ws)
        assert await status_of(ws_url(node), origin="http://app.example.com") == 403
        assert await status_of(ws_url(node), origin="https://app.example.com:8443") == 403


def test_origin_key_strips_only_the_scheme_default_port():
    assert origin_key("https://a.example:443") == "https://a.example"
    assert origin_key("http://a.example:80") == "http://a.example"
    assert origin_key("https://a.example:80") == "https://a.example:80"
    assert origin_key("http://a.example:8080") == "http://a.example:8080"
    assert origin_key("null") == "null"


async def test_offered_subprotocol_not_selected_is_warned_once_without_values(caplog):
    async with running_node() as node:
        with caplog.at_level("WARNING", logger="wsgateway.server"):
            for _ in range(2):
                async with websockets.connect(ws_url(node), subprotocols=["chat.v1", "secret-token-value"]) as ws:
                    assert ws.subprotocol is None
    warnings = [r.getMessage() for r in caplog.records if "subprotocol" in r.getMessage()]
    assert len(warnings) == 1 and "secret-token-value" not in warnings[0]


async def test_jwt_statuses():
    async with running_node(make_config(auth=jwt_section())) as node:
        url = ws_url(node)
        assert await status_of(url) == 401  # missing
        assert await status_of(url + "?token=garbage") == 401
        assert await status_of(url + "?token=" + token(secret="another-secret-entirely-0123456789")) == 401
        assert await status_of(url + "?token=" + token(ttl=-3600)) == 401  # expired
        assert await status_of(url + "?token=" + token(practice_id=None)) == 403  # no tenant
        assert th.events_of("$connect") == []  # auth runs before $connect
        async with websockets.connect(url, additional_headers={"Authorization": "Bearer " + token()}) as ws:
            await ws.send('{"action": "whoami"}')
            reply = json.loads(await ws.recv())
            assert reply["authorizer"] == {"principalId": "user-1", "tenant": "practice-1"}
        async with websockets.connect(url + "?token=" + token(role="staff")) as ws:
            await ws.send('{"action": "whoami"}')
            assert json.loads(await ws.recv())["authorizer"]["role"] == "staff"


async def test_hostile_claims_are_refused_before_connect():
    """A tenant the management API could never address (over 256 characters, a lone
    surrogate) is a 403, a non-string "sub" a 401: both before $connect, so nothing is
    registered for them."""
    async with running_node(make_config(auth=jwt_section())) as node:
        url = ws_url(node)
        assert await status_of(url, additional_headers={"Authorization": "Bearer " + token(practice_id="p" * 5000)}) == 403
        assert await status_of(url + "?token=" + token(practice_id="p" * 257)) == 403
        assert await status_of(url + "?token=" + token(sub=42)) == 401  # type: ignore[arg-type]
        # JSON a JWT may carry that the registry, the events and the access log cannot write
        # (orjson): a lone surrogate, an integer past 64 bits. Accepted, the connection failed
        # with 1011 and a traceback (memory registry), or broke a Redis pipeline.
        assert await status_of(url + "?token=" + token(practice_id="\ud800")) == 403
        assert await status_of(url + "?token=" + token(sub="\udcff")) == 401
        assert await status_of(url + "?token=" + token(role=2**64)) == 401
        assert await status_of(url + "?token=" + token(exp=10**400)) == 401  # was a 500 (OverflowError)
        assert th.events_of("$connect") == []
        assert len(node.gateway.hub) == 0
        async with websockets.connect(url + "?token=" + token(practice_id="p" * 256)) as ws:
            assert await whoami(ws)


async def test_jwt_from_subprotocol_is_echoed_by_name_not_token():
    cfg = make_config(auth=jwt_section(sources=["subprotocol:bearer"]))
    async with running_node(cfg) as node:
        async with websockets.connect(ws_url(node), subprotocols=["bearer", token()]) as ws:
            assert ws.subprotocol == "bearer"
            assert await whoami(ws)
        assert await status_of(ws_url(node), subprotocols=["bearer"]) == 401


@pytest.mark.parametrize(("mode", "status"), [("403", 403), ("400", 400), ("429", 429), ("raise", 500), ("slow", 500), ("bad_status", 500)])
async def test_connect_handler_rejections(mode, status):
    async with running_node(make_config(limits={"handler_timeout_s": 0.3})) as node:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(node, connect=mode), open_timeout=5):
                pass
        assert info.value.response.status_code == status
        assert b"secret internal detail" not in info.value.response.body
        await asyncio.sleep(0.05)
        assert th.events_of("$disconnect") == []  # never accepted: no $disconnect


@pytest.mark.parametrize(("mode", "status", "body"), [
    ("499", 499, b"go away\n"), ("599", 599, b"go away\n"), ("surrogate_body", 403, b"go ? away\n")])
async def test_connect_rejections_python_has_no_name_for_are_sent_as_asked(mode, status, body):
    """$connect may answer any status from 400 to 599 and any text: a status with no name in
    http.HTTPStatus, or a body holding a lone surrogate, is sent as well as it can be (the
    phrase "Error", the surrogate as "?"). websockets' own rejection refused both, answering
    500 with its own text and logging a traceback."""
    async with running_node() as node:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(node, connect=mode), open_timeout=5):
                pass
        assert (info.value.response.status_code, info.value.response.body) == (status, body)


@pytest.mark.parametrize(("mode", "status"), [("302", 302), ("304", 304), ("101", 500), ("199", 500)])
async def test_connect_accepts_only_a_2xx_status_as_aws_does(mode, status):
    """AWS accepts the upgrade for a 2xx statusCode only: a 3xx rejects the handshake with it;
    a 1xx is no final answer (101 would read as the upgrade itself), so it is malformed: 500.
    Either way the connection never opened, and its $disconnect never runs."""
    async with running_node() as node:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(node, connect=mode), open_timeout=5):
                pass
        assert info.value.response.status_code == status
        async with websockets.connect(ws_url(node, connect="204"), open_timeout=5) as ws:  # a 2xx accepts
            await whoami(ws)
    assert len(th.events_of("$disconnect")) == 1  # the accepted one's only


async def test_connect_event_shape_and_post_during_connect_is_410():
    async with running_node() as node:
        async with websockets.connect(
            ws_url(node, connect="post_self", tenant="t9"), additional_headers={"X-Custom": "v"}, user_agent_header="ua/1"
        ) as ws:
            cid = await whoami(ws)
        (event,) = th.events_of("$connect")
        ctx = event["requestContext"]
        assert ctx["connectionId"] == cid and len(cid) == 16
        assert ctx["eventType"] == "CONNECT" and ctx["routeKey"] == "$connect"
        assert ctx["stage"] == "prod" and ctx["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "ua/1"}
        assert ctx["authorizer"] == {"principalId": "", "tenant": "t9"}
        assert isinstance(ctx["connectedAt"], int) and isinstance(ctx["requestTimeEpoch"], int)
        assert event["headers"]["X-Custom"] == "v" and event["multiValueHeaders"]["X-Custom"] == ["v"]
        assert event["queryStringParameters"] == {"connect": "post_self", "tenant": "t9"}
        assert event["isBase64Encoded"] is False and "body" not in event


async def test_subprotocol_chosen_by_connect_handler():
    async with running_node() as node:
        async with websockets.connect(ws_url(node, connect="subprotocol"), subprotocols=["chat.v1", "chat.v2"]) as ws:
            assert ws.subprotocol == "chat.v2"


async def test_connection_ids_are_unique_and_aws_shaped():
    async with running_node() as node:
        ids = set()
        for _ in range(20):
            async with await connect(node) as ws:
                ids.add(await whoami(ws))
        assert len(ids) == 20
        assert all(len(i) == 16 and set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for i in ids)


# ---------------------------------------------------------------- closing


async def disconnect_event(cid: str) -> dict:
    events = await eventually(lambda: th.events_of("$disconnect", cid))
    assert len(events) == 1, events
    return events[0]["requestContext"]


async def test_client_close_runs_disconnect_once_with_code():
    async with running_node() as node:
        ws = await connect(node)
        cid = await whoami(ws)
        await ws.close(4001, "client says bye")
        ctx = await disconnect_event(cid)
        assert ctx["disconnectStatusCode"] == 4001 and ctx["disconnectReason"] == "client says bye"
        assert ctx["eventType"] == "DISCONNECT"


async def test_oversize_message_closes_1009():
    async with running_node(make_config(limits={"max_message_bytes": 1024})) as node:
        ws = await connect(node)
        cid = await whoami(ws)
        await ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1009
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 1009


async def test_fragments_with_pings_between_are_one_message_and_bad_utf8_closes_1007():
    """The gateway's reader over a real socket: a text message in three fragments with pings
    between them (a character split across two) is one message; messages are handled in
    order; invalid UTF-8 closes with 1007, what came before it handled, nothing after it."""
    async with running_node() as node:
        ws = await connect(node)
        cid = await whoami(ws)
        proto = ws.protocol
        proto.send_text(b"frag", fin=False)
        proto.send_ping(b"p1")
        proto.send_continuation(b"ment \xc3", fin=False)
        proto.send_ping(b"p2")
        proto.send_continuation(b"\xa9", fin=True)
        proto.send_text(b"second")
        ws.send_data()
        assert await asyncio.wait_for(ws.recv(), 5) == "fragment \u00e9"
        assert await asyncio.wait_for(ws.recv(), 5) == "second"
        proto.send_text(b"last good")
        proto.send_text(b"bad \xff")
        proto.send_text(b"never handled")
        ws.send_data()
        assert await asyncio.wait_for(ws.recv(), 5) == "last good"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1007
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 1007
        bodies = [e["body"] for e in th.events_of("$default", cid)]
        assert bodies == ["fragment \u00e9", "second", "last good"]


async def test_reads_of_whole_frames_and_reads_websockets_parses_keep_one_order(monkeypatch):
    """Reads of nothing but whole data frames skip websockets' parser (reader.whole_messages);
    a read with a ping, a frame cut across two reads, bad UTF-8 or an oversized frame goes to
    websockets: over a real socket, every message is handled once, in order, and the pong and
    the close codes are websockets' own."""
    import wsgateway.server as server_module

    shortcuts: list[int] = []
    real = server_module.whole_messages

    def counting(data: bytes, max_size: int | None) -> list[str | bytes] | None:
        messages = real(data, max_size)
        if messages is not None:
            shortcuts.append(len(messages))
        return messages

    monkeypatch.setattr(server_module, "whole_messages", counting)
    cfg = make_config(limits={"max_message_bytes": 1000})
    async with running_node(cfg) as node:
        ws = await connect(node)
        cid = await whoami(ws)
        proto = ws.protocol

        async def replies(count: int) -> list[str | bytes]:
            return [await asyncio.wait_for(ws.recv(), 5) for _ in range(count)]

        for body in ("one", "two", "three"):  # one read of three frames, twice
            proto.send_text(body.encode())
        ws.send_data()
        assert await replies(3) == ["one", "two", "three"]
        proto.send_text(b"x" * 300)  # a 16-bit length
        proto.send_binary(b"\x00\x01")  # $default echoes binary as binary
        ws.send_data()
        assert await replies(2) == ["x" * 300, b"\x00\x01"]
        assert sum(shortcuts) >= 5
        pong = await ws.ping(b"p")  # a ping between two frames: websockets' read
        proto.send_text(b"after ping")
        ws.send_data()
        await asyncio.wait_for(pong, 5)
        assert await replies(1) == ["after ping"]
        proto.send_text(b"cut in two")
        (data,) = proto.data_to_send()
        ws.transport.write(data[:4])  # a frame cut by the read
        await asyncio.sleep(0.05)
        ws.transport.write(data[4:])
        assert await replies(1) == ["cut in two"]
        # Past max_message_bytes in a read of whole frames: websockets closes with 1009 as it
        # parses the read, before the message ahead of it is handled (its reply goes nowhere).
        proto.send_text(b"last good")
        proto.send_text(b"x" * 1001)
        ws.send_data()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1009
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 1009
        bodies = [e["body"] for e in th.events_of("$default", cid)]
        assert bodies == ["one", "two", "three", "x" * 300, "AAE=", "after ping", "cut in two", "last good"]


async def test_messages_behind_a_handler_that_awaits_wait_and_keep_their_order():
    """One read carries a message whose handler awaits (a sync handler, in a thread) and two
    after it: they are handled after it, in order, on the same connection."""
    async with running_node() as node:
        ws = await connect(node)
        cid = await whoami(ws)
        ws.protocol.send_text(b'{"action": "sync_echo"}')
        ws.protocol.send_text(b"after 1")
        ws.protocol.send_text(b"after 2")
        ws.send_data()
        replies = [await asyncio.wait_for(ws.recv(), 5) for _ in range(4)]
        assert replies == ["from thread", 'sync:{"action": "sync_echo"}', "after 1", "after 2"]
        assert [e["body"] for e in th.events_of("$default", cid)] == ["after 1", "after 2"]


async def test_idle_timeout_closes_1001_and_pings_do_not_reset_it():
    cfg = make_config(limits={"idle_timeout_s": 0.5}, listen={"ping_interval_s": 0.1, "ping_timeout_s": 1})
    async with running_node(cfg) as node:
        ws = await connect(node)
        cid = await whoami(ws)
        await ws.ping()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 1001


async def test_max_connection_duration_closes_1001():
    cfg = make_config(limits={"max_connection_s": 0.5})
    async with running_node(cfg) as node:
        ws = await connect(node)
        cid = await whoami(ws)
        with pytest.raises(ConnectionClosed):
            for _ in range(50):  # activity does not extend the maximum: closed within ~1 s
                await ws.send('{"action": "none"}')
                await asyncio.sleep(0.1)
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
        ctx = await disconnect_event(cid)
        assert ctx["disconnectStatusCode"] == 1001 and ctx["disconnectReason"] == "Maximum connection duration"


async def test_handler_raising_disconnect_closes_with_its_code():
    async with running_node() as node:
        ws = await connect(node)
        cid = await whoami(ws)
        await ws.send('{"action": "bye"}')
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 4000 and ws.close_reason == "bye now"
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 4000


async def test_half_open_peer_is_detected_by_keepalive():
    cfg = make_config(listen={"ping_interval_s": 0.1, "ping_timeout_s": 0.3})
    async with running_node(cfg) as node:
        ws = await connect(node, ping_interval=None)
        cid = await whoami(ws)
        ws.transport.pause_reading()  # the peer stops answering pings, socket stays up
        ctx = await disconnect_event(cid)
        assert ctx["disconnectStatusCode"] in (1006, 1011)
        ws.transport.abort()


async def test_shutdown_closes_1001_and_runs_every_disconnect():
    node_cm = running_node()
    node = await node_cm.__aenter__()
    sockets = [await connect(node) for _ in range(5)]
    ids = [await whoami(ws) for ws in sockets]
    await node_cm.__aexit__(None, None, None)
    for ws in sockets:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
        assert ws.close_code == 1001
    for cid in ids:
        assert (await disconnect_event(cid))["disconnectStatusCode"] == 1001
    assert len(th.events_of("$disconnect")) == 5


# ---------------------------------------------------------------- listener options


async def test_compression_can_be_turned_on():
    async with running_node(make_config(listen={"compression": True})) as node:
        async with websockets.connect(ws_url(node), compression="deflate") as ws:
            assert ws.protocol.extensions  # permessage-deflate negotiated
            await ws.send("x" * 5000)
            assert await ws.recv() == "x" * 5000
            cid = await whoami(ws)
            node.gateway.local_post(cid, b"pushed compressed", False)
            assert await ws.recv() == "pushed compressed"
    async with running_node() as node:  # off by default
        async with websockets.connect(ws_url(node), compression="deflate") as ws:
            assert not ws.protocol.extensions


async def test_max_connections_answers_503():
    async with running_node(make_config(limits={"max_connections": 2})) as node:
        a, b = await connect(node), await connect(node)
        assert await status_of(ws_url(node)) == 503
        await a.close()
        await eventually(lambda: len(node.gateway.hub) == 1)
        async with await connect(node) as c:
            assert await whoami(c)
        await b.close()


async def test_wss_with_configured_certificate(tmp_path):
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    cfg = make_config(listen={"ssl_certfile": str(tmp_path / "cert.pem"), "ssl_keyfile": str(tmp_path / "key.pem")})
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
    async with running_node(cfg) as node:
        async with websockets.connect(f"wss://localhost:{node.port}/prod", ssl=client_ctx) as ws:
            assert await whoami(ws)


async def test_duplicated_headers_are_a_400_not_a_500():
    import aiohttp

    async with running_node() as node, aiohttp.ClientSession() as http:
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"),
                   ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Origin", "https://a.example"),
                   ("Origin", "https://b.example")]
        from multidict import CIMultiDict

        async with http.get(f"http://127.0.0.1:{node.port}/prod", headers=CIMultiDict(headers)) as resp:
            assert resp.status == 400
    assert th.events_of("$connect") == []


async def test_a_handshake_without_host_is_a_400_and_runs_nothing():
    """RFC 6455 4.2.1: an opening handshake names its host. Without one it was upgraded, with
    an empty ``requestContext.domainName``; now it is refused before admission and auth."""
    async with running_node() as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(b"GET /prod HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400 ")
        async with websockets.connect(ws_url(node)) as ws:  # the node serves on; the slot came back
            assert await whoami(ws)
        assert node.gateway.slots.in_use == 1
    assert len(th.events_of("$connect")) == 1


async def test_a_handshake_request_past_max_handshake_bytes_is_a_431_and_runs_nothing():
    """websockets alone takes 128 header lines of 8 KB each (1 MB held per connection until the
    open timeout, 39 s): the whole request is capped at limits.max_handshake_bytes."""
    cfg = make_config(limits={"max_handshake_bytes": 4096})
    async with running_node(cfg) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        head = (f"GET /prod HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")
        writer.write(head.encode())
        for i in range(8):  # each line well under websockets' own 8 KB
            writer.write(f"X-Pad-{i}: {'p' * 1000}\r\n".encode())
        writer.write(b"\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # answered and closed: read to EOF
        writer.close()
        assert answer == b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        assert node.gateway.stats.rejected[431] == 1  # counted as a refused handshake
        # Under the cap (3 KB of headers), a handshake goes through as before.
        async with websockets.connect(ws_url(node), additional_headers={"X-Pad": "p" * 3000}) as ws:
            assert await whoami(ws)
        assert node.gateway.slots.in_use == 1
    assert len(th.events_of("$connect")) == 1


async def test_frames_sent_before_the_upgrade_past_max_handshake_bytes_drop_the_connection():
    """RFC 6455 4.1: a client waits for the 101 before sending frames. websockets parses and
    queues what comes early while auth and $connect run; past max_handshake_bytes in all,
    the connection is dropped, and the node serves on with its slot back."""
    from websockets.frames import Frame, Opcode

    cfg = make_config(limits={"max_handshake_bytes": 8192})
    async with running_node(cfg) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        head = (f"GET /prod?connect=pause HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        frame = Frame(Opcode.TEXT, b"x" * 4000).serialize(mask=True, extensions=[])
        writer.write(head.encode())
        await writer.drain()
        await asyncio.sleep(0.1)  # the request is read: $connect is running (it pauses 0.5 s)
        writer.write(frame * 4)  # 16 KB of early frames
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert not answer.startswith(b"HTTP/1.1 101")  # dropped, never upgraded
        await eventually(lambda: node.gateway.slots.in_use == 0)
        async with websockets.connect(ws_url(node)) as ws:  # a client that waits is served
            assert await whoami(ws)


def _early(node, frames: bytes, query: str = "") -> bytes:
    """A handshake request and, in the same write, frames that RFC 6455 says wait for the 101."""
    return (f"GET /prod{query} HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            ).encode() + frames


def _client_frame(data: bytes, opcode: int = 0x1, fin: bool = True) -> bytes:
    from websockets.frames import Frame, Opcode

    return Frame(Opcode(opcode), data, fin=fin).serialize(mask=True, extensions=[])


async def _server_frames(reader: asyncio.StreamReader, count: int, *, upgrade: bool = True) -> list[tuple[int, bytes]]:
    """The 101 (``upgrade``), then ``count`` unmasked frames from the server: (opcode, payload)."""
    if upgrade:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    frames = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readexactly(2), 5)
        length = head[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        frames.append((head[0] & 0x0F, await asyncio.wait_for(reader.readexactly(length), 5)))
    return frames


async def test_messages_sent_before_the_101_are_delivered_in_order_after_it():
    """A client that does not wait for the 101 (RFC 6455 says it must) had its first messages
    dropped without a word, and past 16 of them its connection stopped being read. They are
    dispatched once the connection is open, in order, and the connection reads on."""
    async with running_node() as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        early = [b'{"action": "whoami"}', *(f"m{i}".encode() for i in range(20))]
        fragmented = _client_frame(b"frag", fin=False) + _client_frame(b"ment", opcode=0x0)
        writer.write(_early(node, b"".join(_client_frame(m) for m in early) + fragmented))
        replies = await _server_frames(reader, len(early) + 1)
        assert json.loads(replies[0][1])["connectionId"]
        assert [data for _, data in replies[1:]] == [*early[1:], b"fragment"]
        writer.write(_client_frame(b"after"))  # still read
        assert await _server_frames(reader, 1, upgrade=False) == [(0x1, b"after")]
        writer.close()


async def test_an_invalid_message_sent_before_the_101_closes_the_connection_1002_after_it():
    """Early frames that do not read (invalid UTF-8 here): none of them is dispatched, and
    the connection, open, is closed with 1002 (a protocol error: they should have waited)."""
    async with running_node() as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
        frames = _client_frame(b"valid") + _client_frame(b"\xff\xfe") + _client_frame(b"dropped")
        writer.write(_early(node, frames))
        (opcode, data), = await _server_frames(reader, 1)  # none of the three is dispatched
        assert (opcode, int.from_bytes(data[:2], "big"), data[2:]) == (0x8, 1002, b"Invalid frames before the upgrade")
        writer.close()
        await eventually(lambda: th.events_of("$disconnect"))
        assert th.events_of("$disconnect")[0]["requestContext"]["disconnectStatusCode"] == 1002
        assert [e for e in th.EVENTS if e["requestContext"]["eventType"] == "MESSAGE"] == []


async def test_a_handshake_request_not_read_within_handshake_timeout_is_a_408():
    """A client that connects and sends its request slowly (or nothing) is answered 408 and
    closed after limits.handshake_timeout_s, not held for the open timeout (39 s)."""
    cfg = make_config(limits={"handshake_timeout_s": 0.3})
    async with running_node(cfg) as node:
        silent = await asyncio.open_connection("127.0.0.1", node.port)
        slow = await asyncio.open_connection("127.0.0.1", node.port)
        slow[1].write(b"GET /prod HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: webso")  # and no more
        refused = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        started = asyncio.get_running_loop().time()
        for reader, writer in (silent, slow):
            assert await asyncio.wait_for(reader.read(), 5) == refused
            writer.close()
        assert asyncio.get_running_loop().time() - started < 2
        assert node.gateway.stats.rejected[408] == 2  # counted as refused handshakes
        # A handshake whose request came in time is not cut when $connect takes longer (0.5 s).
        async with websockets.connect(ws_url(node, connect="pause")) as ws:
            assert await whoami(ws)
    assert len(th.events_of("$connect")) == 1


# ---------------------------------------------------------------- admission


async def _open_or_status(url: str) -> websockets.ClientConnection | int:
    """The open connection, or the status that refused the handshake."""
    try:
        return await websockets.connect(url, open_timeout=10)
    except InvalidStatus as exc:
        return exc.response.status_code


async def _raw_handshake(node, target: str, *, key: bool = True) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Send an upgrade request by hand (``key=False``: without Sec-WebSocket-Key, which
    websockets refuses with 400 after our process_request accepted it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{node.port}", "Upgrade: websocket",
             "Connection: Upgrade", "Sec-WebSocket-Version: 13"]
    if key:
        lines.append("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    return reader, writer


async def test_max_connections_holds_for_concurrent_handshakes_and_never_leaks():
    """The slot is reserved at admission, before the awaited auth and $connect: 20 handshakes
    racing through a slow $connect against a limit of 5 get exactly 5 upgrades and 15 503s.
    Every slot comes back: after the connections close, and after handshakes refused by auth,
    by $connect, by a raising $connect, by websockets itself, or abandoned by the client."""
    cfg = make_config(auth=jwt_section(), limits={"max_connections": 5})
    async with running_node(cfg) as node:
        url = ws_url(node, connect="pause", token=token())
        results = await asyncio.gather(*(_open_or_status(url) for _ in range(20)))
        opened = [r for r in results if not isinstance(r, int)]
        assert len(opened) == 5
        assert [r for r in results if isinstance(r, int)] == [503] * 15
        assert len(node.gateway.hub) == 5
        for ws in opened:
            await ws.close()
        await eventually(lambda: len(node.gateway.hub) == 0)

        # Refused and failed handshakes, each kind more often than the limit.
        for _ in range(6):
            assert await status_of(ws_url(node)) == 401  # no token
            assert await status_of(ws_url(node, connect="403", token=token())) == 403
            assert await status_of(ws_url(node, connect="raise", token=token())) == 500
        for _ in range(6):  # websockets answers 400 after our process_request said go on
            reader, writer = await _raw_handshake(node, f"/prod?token={token()}", key=False)
            assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 400")
            writer.close()
        before = len(th.events_of("$connect"))
        vanished = [await _raw_handshake(node, f"/prod?connect=pause&token={token()}") for _ in range(6)]
        await eventually(lambda: len(th.events_of("$connect")) == before + 5)  # the 6th got 503
        for _, writer in vanished:  # the clients leave while their $connect still runs
            writer.transport.abort()
        await eventually(lambda: node.gateway.slots.in_use == 0)

        again = await asyncio.gather(*(_open_or_status(url) for _ in range(5)))
        assert not [r for r in again if isinstance(r, int)]
        assert await status_of(url) == 503
        for ws in again:
            await ws.close()


# ---------------------------------------------------------------- health probes


async def test_client_port_health_is_private_unless_details_are_asked_for():
    """Load balancers probing the client port learn the status only; the node id, its load and
    the registry's state stay on the management port (or [listen] health_details = true)."""
    import aiohttp

    async with running_node() as node, aiohttp.ClientSession() as http:
        for path in ("/health", "/ready"):
            async with http.get(f"http://127.0.0.1:{node.port}{path}") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with http.get(f"http://127.0.0.1:{node.management_port}/health") as resp:
            assert (await resp.json())["node_id"] == node.node_id
        node.gateway.begin_drain()
        async with http.get(f"http://127.0.0.1:{node.port}/health") as resp:
            assert resp.status == 503 and await resp.json() == {"status": "unavailable"}
    async with running_node(make_config(listen={"health_details": True})) as node, aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{node.port}/health") as resp:
            health = await resp.json()
            assert resp.status == 200 and health["node_id"] == node.node_id and health["connections"] == 0


async def test_head_probes_of_the_client_port_get_no_content():
    """A load balancer may probe with HEAD: the answer keeps its Content-Length and carries no
    content (RFC 9110 9.3.2); sent, it broke clients (aiohttp: "Data after Connection: close")."""
    async with running_node() as node:
        for path in ("/health", "/ready", "/client.js"):
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
            writer.write(f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            async with asyncio.timeout(5):
                data = await reader.read()
            writer.close()
            head, _, content = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ") and content == b"", path
            assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) > 0, path
            assert (await raw_get(node.port, path))[1]  # a GET has it


# ---------------------------------------------------------------- control frames and memory


TCP_CLOSE = 7  # include/net/tcp_states.h: what an RST leaves


async def raw_upgrade(node, *, rcvbuf: int = 0, extensions: str = ""):
    """A bare TCP client that completed the upgrade; what it reads is up to the test."""
    import socket

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # a client that never reads: its kernel holds little, the gateway the rest
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", node.port))
    request = (
        f"GET /prod HTTP/1.1\r\nHost: 127.0.0.1:{node.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + (f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else "") + "\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 1), 5)  # byte by byte: no frame read
        assert chunk, response
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock, response


async def test_ping_flood_from_a_client_that_never_reads_is_cut_off_as_slow_consumer():
    """Pongs count against the outbound queue: a client that sends pings and never reads the
    pongs stops being read once its queue is over the limit, and is cut off (1008, RST)."""
    limit = 32768
    cfg = make_config(
        limits={"max_queued_bytes": limit, "slow_consumer_grace_s": 0.3, "socket_send_buffer_bytes": 16384},
        listen={"ping_interval_s": 0},
    )
    async with running_node(cfg) as node:
        gw = node.gateway
        loop = asyncio.get_running_loop()
        sock, _ = await raw_upgrade(node, rcvbuf=4096)
        cid = (await eventually(lambda: th.events_of("$connect")))[0]["requestContext"]["connectionId"]
        conn = await eventually(lambda: gw.hub.get(cid))
        ping = bytes([0x89, 0x80 | 125]) + b"\0\0\0\0" + b"p" * 125  # masked with a zero key
        chunk, sent, peak = ping * 100, 0, 0
        deadline = loop.time() + 10
        while not th.events_of("$disconnect", cid) and sent < 8 * 2**20 and loop.time() < deadline:
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, chunk), 0.5)
                sent += len(chunk)
            except TimeoutError:
                pass  # the gateway stopped reading from it
            except OSError:
                break  # reset
            peak = max(peak, conn.queued_bytes())
        # Bounded: at most one read's worth of pongs (asyncio reads 256 KiB at a time) past it.
        assert peak <= limit + 256 * 1024, peak
        ctx = (await eventually(lambda: th.events_of("$disconnect", cid), timeout=5))[0]["requestContext"]
        assert ctx["disconnectStatusCode"] == 1008 and ctx["disconnectReason"] == "slow consumer"
        assert gw.stats.slow_consumers == 1
        await eventually(lambda: sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0] == TCP_CLOSE)
        sock.close()


async def test_closed_deflate_connections_are_freed_without_garbage_collection():
    """A closed connection leaves no reference cycle behind: its websockets protocol and its
    permessage-deflate streams are freed when it closes, not by a full collection that
    cli.py's high GC thresholds make rare."""
    import gc

    from websockets.server import ServerProtocol

    from wsgateway.connection import Connection
    from wsgateway.server import GatewayConnection

    kinds = (GatewayConnection, ServerProtocol, Connection)

    def alive() -> dict[str, int]:
        counts = dict.fromkeys((kind.__name__ for kind in kinds), 0)
        for obj in gc.get_objects():
            for kind in kinds:  # a server's connections are of a subclass (with_limits)
                if issubclass(type(obj), kind):  # type(): a weak proxy's isinstance may raise
                    counts[kind.__name__] += 1
        return counts

    async with running_node(make_config(listen={"compression": True, "ping_interval_s": 0})) as node:
        gc.collect()
        before = alive()
        gc.disable()
        try:
            for i in range(30):
                async with websockets.connect(ws_url(node), compression="deflate") as ws:
                    assert ws.protocol.extensions
                    await ws.send("x" * 5000)
                    assert await asyncio.wait_for(ws.recv(), 5) == "x" * 5000
                    if i % 2:  # every other one closed by the gateway (a handler's Disconnect)
                        await ws.send('{"action": "bye"}')
                        await ws.wait_closed()
                        assert ws.close_code == 4000
                del ws
            await eventually(lambda: len(th.events_of("$disconnect")) == 30)
            await eventually(lambda: len(node.gateway.hub) == 0)
            # websockets' handler tasks finish on their own time on a loaded machine; with the
            # collector off, only reference counting can free what they leave
            await eventually(lambda: alive() == before)
        finally:
            gc.enable()


async def test_compression_without_context_takeover_shares_fanout_frames():
    cfg = make_config(listen={"compression": True, "compression_no_context_takeover": True})
    async with running_node(cfg) as node:
        gw = node.gateway
        clients = [await websockets.connect(ws_url(node), compression="deflate") for _ in range(3)]
        plain = await connect(node, compression=None)
        try:
            for ws in clients:
                assert "server_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
            ids = [await whoami(ws) for ws in (*clients, plain)]
            assert all(gw.hub.get(cid).shared_deflate is not None for cid in ids[:3])
            assert gw.hub.get(ids[3]).shared_deflate is None
            for n in range(3):  # frames written past the protocol and its own replies interleave
                message = f"update {n} " * 10000
                assert await gw.post_to_tenant("default", message) == 4
                for ws in (*clients, plain):
                    assert await asyncio.wait_for(ws.recv(), 5) == message
                    await ws.send("x" * 3000)
                    assert await asyncio.wait_for(ws.recv(), 5) == "x" * 3000
        finally:
            for ws in (*clients, plain):
                await ws.close()
