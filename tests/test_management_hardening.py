"""The management port against hostile or careless peers, black-box: a real node, real
sockets, requests signed by botocore itself. See docs/security.md, "Management port"."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    connect,
    exchange_raw,
    make_config,
    running_node,
    sigv4_section,
    whoami,
)
from wsgateway.config import parse_config
from wsgateway.errors import ConfigError

BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your "
                 "AWS Secret Access Key and signing method. Consult the service documentation for details.")


def signed_head(node, method: str, path: str, body: bytes, *, key: str = ACCESS_KEY, secret: str = SECRET_KEY,
                host: str | None = None) -> dict[str, str]:
    """The headers botocore signs for ``method path`` with ``body`` (Host included)."""
    host = host or f"127.0.0.1:{node.management_port}"
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body, headers={"Host": host})
    SigV4Auth(Credentials(key, secret), "execute-api", REGION).add_auth(request)
    return dict(request.headers.items())


def wire(method: str, path: str, headers: dict[str, str], body: bytes = b"", *, close: bool = True) -> bytes:
    head = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    if close:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def loopback(node) -> dict[str, str]:
    return {"Host": f"127.0.0.1:{node.management_port}"}


# -- SigV4 failures say nothing -------------------------------------------------------------


async def test_unknown_key_and_wrong_secret_get_the_same_answer_and_the_log_says_why(caplog):
    caplog.set_level(logging.INFO, logger="wsgateway.management")
    async with running_node(make_config(management=sigv4_section())) as node:
        path, answers = "/prod/@connections/L0SM9cOFvHcCIhw%3D", []
        for key, secret in ((ACCESS_KEY, "wrong"), ("AKIDNOSUCHKEY", SECRET_KEY), ("AKIDOTHER", "x")):
            status, headers, body = parse(await exchange_raw(node, wire("POST", path, signed_head(node, "POST", path, b"x",
                                                                                          key=key, secret=secret), b"x")))
            answers.append((status, headers["x-amzn-errortype"], json.loads(body)))
        assert answers == [(403, "InvalidSignatureException", {"message": BAD_SIGNATURE})] * 3
        text = caplog.text
        assert "signature does not match" in text and "unknown access key id 'AKIDNOSUCHKEY'" in text


async def test_unsigned_request_is_refused_before_its_body_is_read():
    async with running_node(make_config(management=sigv4_section())) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.management_port)
        writer.write(b"POST /prod/@tenants/t/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 120000\r\n\r\n")
        await writer.drain()  # the body is never sent, yet the answer comes
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"}")
        status, headers, body = parse(head)
        assert status == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
        assert headers["connection"] == "close" and json.loads(body) == {"message": "Missing Authentication Token"}
        writer.close()


# -- dot segments ---------------------------------------------------------------------------


async def test_a_signature_cannot_be_retargeted_through_dot_segments():
    async with running_node(make_config(management=sigv4_section())) as node:
        async with await connect(node, query={"tenant": "A"}) as ws:
            await whoami(ws)
            headers = signed_head(node, "POST", "/prod/@tenants/A/messages", b"hi")
            for path in ("/prod/@tenants/A/groups/../messages", "/prod/@tenants/A/./messages",
                         "/prod/@tenants/A/groups/%2E%2E/messages", "/prod//@tenants/A/groups/../messages"):
                status, info, body = parse(await exchange_raw(node, wire("POST", path, headers, b"hi")))
                assert (status, info["x-amzn-errortype"]) == (400, "BadRequestException"), path
                assert "segment" in json.loads(body)["message"]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # nothing was delivered
            # Empty segments are dropped by routing as by SigV4: the path signed, never another.
            for path in ("/prod/@tenants/A/messages", "/prod/@tenants//A/messages"):
                status, _, body = parse(await exchange_raw(node, wire("POST", path, headers, b"hi")))
                assert status == 200 and json.loads(body) == {"delivered": 1, "unreachableNodes": 0}, path
                assert await ws.recv() == "hi"


# -- Host and Origin (auth = "none") --------------------------------------------------------


async def test_auth_none_refuses_foreign_host_names_and_browser_origins():
    async with running_node() as node:
        async with await connect(node, query={"tenant": "A"}) as ws:
            await whoami(ws)
            port = node.management_port
            refused = [
                {"Host": f"rebound.attacker.example:{port}"},  # DNS rebinding
                {"Host": f"127.0.0.1:{port}", "Origin": "https://attacker.example"},  # a page's no-cors POST
                {"Host": f"localhost:{port}", "Origin": "null"},
            ]
            for headers in refused:  # a 403 as AWS's bare Forbidden; nothing runs
                status, info, body = parse(await exchange_raw(node, wire("POST", "/prod/@tenants/A/messages", headers, b"x")))
                assert (status, info["x-amzn-errortype"], json.loads(body)) == (403, "ForbiddenException",
                                                                                 {"message": "Forbidden"})
                status, _, _ = parse(await exchange_raw(node, wire("GET", "/metrics", headers)))
                assert status == 403
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "10.1.2.3", f"[::1]:{port}"):
                status, _, body = parse(await exchange_raw(node, wire("POST", "/@tenants/A/messages", {"Host": host}, b"ok")))
                assert status == 200 and json.loads(body) == {"delivered": 1, "unreachableNodes": 0}, host
                assert await ws.recv() == "ok"


async def test_a_repeated_host_header_is_refused():
    async with running_node() as node:
        raw = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n"
        status, headers, _ = parse(await exchange_raw(node, raw))
        assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException") and headers["x-amzn-requestid"]


async def test_a_request_without_host_is_a_bad_request_even_where_any_host_is_allowed():
    """RFC 9112 3.2: an HTTP/1.1 request without Host is a 400. With every Host allowed and
    no auth, one was served as if its Host were allowed; now nothing runs for it."""
    cfg = make_config(management={"allowed_hosts": ["*"]})
    async with running_node(cfg) as node:
        async with await connect(node, query={"tenant": "A"}) as ws:
            await whoami(ws)
            raw = b"POST /@tenants/A/messages HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi"
            status, headers, body = parse(await exchange_raw(node, raw))
            assert (status, headers["x-amzn-errortype"]) == (400, "BadRequestException") and headers["x-amzn-requestid"]
            assert json.loads(body) == {"message": "Host header is missing"}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # nothing was delivered
            # HTTP/1.0 needs no Host; "*" takes the request without one.
            raw = b"POST /@tenants/A/messages HTTP/1.0\r\nContent-Length: 2\r\n\r\nok"
            assert parse(await exchange_raw(node, raw))[0] == 200
            assert await ws.recv() == "ok"


async def test_configured_hosts_and_origins_are_let_through():
    cfg = make_config(management={"allowed_hosts": ["gw.internal"], "allowed_origins": ["https://ops.example"]})
    async with running_node(cfg) as node:
        ok = {"Host": "gw.internal:8081", "Origin": "https://ops.example"}
        assert parse(await exchange_raw(node, wire("GET", "/health", ok)))[0] == 200
        for headers in ({"Host": "127.0.0.1"}, {"Host": "gw.internal", "Origin": "https://other.example"}):
            assert parse(await exchange_raw(node, wire("GET", "/health", headers)))[0] == 403


async def test_an_open_console_beside_sigv4_refuses_foreign_host_names():
    """SigV4 signs the Host header, so by default the API takes any; the console is not
    signed. Open (loopback, no password), it was served to any Host: a page whose name was
    rebound to 127.0.0.1 got a session and read, posted to and closed every connection."""
    async with running_node(make_config(management=sigv4_section())) as node:
        assert node.management.console is not None
        port = node.management_port
        rebound = {"Host": f"rebound.attacker.example:{port}", "Origin": f"http://rebound.attacker.example:{port}"}
        for method, path in (("GET", "/console"), ("GET", "/console/api/session"), ("GET", "/console/api/tenants")):
            status, headers, _ = parse(await exchange_raw(node, wire(method, path, rebound)))
            assert status == 403 and "set-cookie" not in headers, path
        status, headers, _ = parse(await exchange_raw(node, wire("GET", "/console", loopback(node))))
        assert status == 200 and headers["set-cookie"].startswith(f"wsgw_console_{port}=")
        assert parse(await exchange_raw(node, wire("GET", "/console", {"Host": "10.1.2.3"})))[0] == 200  # an IP: no name to rebind
        assert parse(await exchange_raw(node, wire("GET", "/health", {"Host": rebound["Host"]})))[0] == 200  # the API: as before


async def test_head_requests_get_answers_without_content_on_a_kept_connection():
    """The API has no HEAD operation: its 404 (and a refusal from the head, a 403) carry no
    content, nor does a probe's 200, so a client's next request on the same connection reads
    its own answer."""
    async with running_node() as node, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{node.management_port}"
        for path, headers, status in (("/health", {}, 200), ("/prod/@tenants/t/usage", {}, 404),
                                      ("/prod/@connections/AAAAAAAAAAAAAAAA", {}, 404),
                                      ("/health", {"Origin": "https://attacker.example"}, 403)):
            async with http.head(base + path, headers=headers) as resp:
                assert resp.status == status and (status == 200 or resp.headers["x-amzn-ErrorType"])
                assert int(resp.headers["Content-Length"]) > 0 and await resp.read() == b""
            async with http.get(base + "/health") as resp:  # the same pooled connection when kept
                assert resp.status == 200 and (await resp.json())["status"] == "ok"


# -- /metrics --------------------------------------------------------------------------------


async def test_metrics_behind_a_bearer_token():
    token = "metrics-token-0123456789"
    cfg = make_config(management={"metrics_auth": "bearer", "metrics_token": token})
    async with running_node(cfg) as node:
        status, headers, _ = parse(await exchange_raw(node, wire("GET", "/metrics", loopback(node))))
        assert status == 401 and headers["www-authenticate"] == "Bearer"
        wrong = {**loopback(node), "Authorization": "Bearer metrics-token-0123456780"}
        assert parse(await exchange_raw(node, wire("GET", "/metrics", wrong)))[0] == 401
        right = {**loopback(node), "Authorization": f"Bearer {token}"}
        status, _, body = parse(await exchange_raw(node, wire("GET", "/prod/metrics", right)))
        assert status == 200 and b"wsgateway_" in body
        assert parse(await exchange_raw(node, wire("GET", "/health", loopback(node))))[0] == 200  # probes stay open


async def test_a_refused_metrics_bearer_is_counted_and_logged_as_other_refusals(tmp_path):
    """The 401 of /metrics without the right token is counted in the management metrics and
    written to the access log, named as a probe refused for its Host is (no operation:
    "Unknown" in the metrics, the method as routeKey); its answer is unchanged."""
    path = tmp_path / "access.log"
    cfg = make_config(management={"metrics_auth": "bearer", "metrics_token": "metrics-token-0123456789"},
                      log={"access_log": str(path)})
    async with running_node(cfg) as node:
        wrong = {**loopback(node), "Authorization": "Bearer metrics-token-0123456780"}
        for headers in (loopback(node), wrong):
            status, answer, body = parse(await exchange_raw(node, wire("GET", "/metrics", headers)))
            assert (status, answer["www-authenticate"], body) == (401, "Bearer", b'{"message":"Unauthorized"}')
        assert parse(await exchange_raw(node, wire("GET", "/metrics", {"Host": "attacker.example"})))[0] == 403
        assert node.gateway.stats.management == {("Unknown", 401): 2, ("Unknown", 403): 1}
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    logged = [(e["kind"], e["routeKey"], e["method"], e["status"], e["sourceIp"]) for e in entries]
    assert logged == [("management", "GET", "GET", 401, "127.0.0.1")] * 2 + [("management", "GET", "GET", 403, "127.0.0.1")]
    assert all(len(e["requestId"]) == 16 for e in entries)


async def test_a_long_user_agent_is_cut_in_a_management_line(tmp_path):
    """A caller's 8 KB User-Agent (here on a refused, unsigned request: anyone can send one)
    is cut to 256 characters in its access-log line, as on connect lines."""
    path = tmp_path / "access.log"
    async with running_node(make_config(management=sigv4_section(), log={"access_log": str(path)})) as node:
        headers = {**loopback(node), "User-Agent": "U" * 8000, "Content-Type": "application/json"}
        assert parse(await exchange_raw(node, wire("POST", "/prod/@tenants/A/messages", headers, b"hi")))[0] == 403
    (entry,) = (json.loads(line) for line in path.read_bytes().splitlines())
    assert (entry["kind"], entry["status"], entry["routeKey"]) == ("management", 403, "POST")
    assert entry["userAgent"] == "U" * (256 - len("...[truncated]")) + "...[truncated]"


async def test_metrics_behind_sigv4():
    async with running_node(make_config(management={**sigv4_section(), "metrics_auth": "sigv4"})) as node:
        status, headers, _ = parse(await exchange_raw(node, wire("GET", "/metrics", loopback(node))))
        assert (status, headers["x-amzn-errortype"]) == (403, "MissingAuthenticationTokenException")
        status, _, body = parse(await exchange_raw(node, wire("GET", "/metrics", signed_head(node, "GET", "/metrics", b""))))
        assert status == 200 and b"wsgateway_" in body


# -- slowloris, connection cap, pipelining ---------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"POST /prod/@tenants/A/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 100,
    b"POST /prod/@tenants/A/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n" + b"b" * 100,
])
async def test_slowloris_is_cut_off_at_the_deadline(raw):
    # A byte every 50 ms: the idle timeout (0.5 s) never fires, only the request deadlines can.
    cfg = make_config(management={"idle_timeout_s": 0.5, "header_timeout_s": 0.4, "request_timeout_s": 0.8})
    async with running_node(cfg) as node:
        reader, writer = await asyncio.open_connection("127.0.0.1", node.management_port)

        async def trickle() -> None:
            for i in range(len(raw)):
                writer.write(raw[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.05)

        task = asyncio.create_task(trickle())
        async with asyncio.timeout(3):
            data = await reader.read()
        task.cancel()
        assert data.startswith(b"HTTP/1.1 408 Request Timeout") and b"Connection: close" in data
        writer.close()


async def test_connections_past_the_cap_are_answered_503():
    async with running_node(make_config(management={"max_connections": 2})) as node:
        held = [await asyncio.open_connection("127.0.0.1", node.management_port) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert (await exchange_raw(node, b"")).startswith(b"HTTP/1.1 503 Service Unavailable")
        held[0][1].close()
        await asyncio.sleep(0.1)
        assert parse(await exchange_raw(node, wire("GET", "/health", loopback(node))))[0] == 200
        held[1][1].close()


async def test_a_malformed_pipelined_request_never_hides_the_answer_before_it():
    async with running_node() as node:
        async with await connect(node, query={"tenant": "A"}) as ws:
            cid = await whoami(ws)
            post = wire("POST", f"/prod/@connections/{cid.replace('=', '%3D')}", loopback(node), b"one", close=False)
            data = await exchange_raw(node, post + b"GARBAGE\r\n\r\n")
            assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"HTTP/1.1 ") == 2
            assert data.index(b"HTTP/1.1 200 OK") < data.index(b"HTTP/1.1 400 Bad Request")
            assert await ws.recv() == "one"


# -- the [management] keys that set all this -----------------------------------------------


@pytest.mark.parametrize(("section", "key", "problem"), [
    ({"metrics_auth": "bearer"}, "management.metrics_token", "needs metrics_token"),
    ({"metrics_auth": "sigv4"}, "management.metrics_auth", 'needs auth = "sigv4"'),
    ({"metrics_auth": "basic"}, "management.metrics_auth", '"none", "bearer" or "sigv4"'),
    ({"metrics_auth": "bearer", "metrics_token": "short"}, "management.metrics_token", "at least 16"),
    ({"header_timeout_s": 20, "request_timeout_s": 10}, "management.header_timeout_s", "<= request_timeout_s"),
    ({"max_connections": 0}, "management.max_connections", "> 0"),
    ({"allowed_hosts": ["gw.internal:8081"]}, "management.allowed_hosts[0]", "no port"),
    ({"allowed_origins": ["https://ops.example/path"]}, "management.allowed_origins[0]", "origin"),
])
def test_bad_hardening_settings_stop_start_up(section, key, problem):
    with pytest.raises(ConfigError) as info:
        make_config(management=section)
    assert info.value.key == key and problem in info.value.problem


def test_metrics_token_is_a_secret():
    cfg = parse_config({"management": {"metrics_auth": "bearer", "metrics_token_env": "MT"}},
                       env={"MT": "from-the-environment-0123"})
    assert cfg.management.metrics_token == "from-the-environment-0123"
    assert "from-the-environment" not in repr(cfg)
