"""The management edge against a real node, driven by the real boto3 and aioboto3 clients
and by raw HTTP for what SDKs never send. Exact statuses and AWS error shapes."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from urllib.parse import quote

import aioboto3
import aiohttp
import boto3
import pytest
import websockets
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests import handlers_for_tests as th
from tests.registry_support import RedisLink
from tests.support import (
    ACCESS_KEY,
    HS_SECRET,
    REGION,
    SECRET_KEY,
    connect,
    endpoint,
    eventually,
    exchange_raw,
    make_config,
    running_node,
    sigv4_section,
    token,
    whoami,
    ws_url,
)

# What AWS answers any SigV4 failure (the reason is only logged).
BAD_SIGNATURE = ("The request signature we calculated does not match the signature you provided. Check your "
                 "AWS Secret Access Key and signing method. Consult the service documentation for details.")
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})  # exactly one attempt


def boto_client(node, secret: str = SECRET_KEY, stage: bool = True, **kwargs):
    return boto3.client(
        "apigatewaymanagementapi",
        endpoint_url=endpoint(node, stage),
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=secret,
        config=kwargs.pop("config", NO_RETRY),
    )


@pytest.fixture(autouse=True)
def _clear_events():
    th.EVENTS.clear()


@pytest.fixture
def signed_config():
    return make_config(management=sigv4_section())


async def test_boto3_post_get_delete_and_gone(signed_config):
    async with running_node(signed_config) as node:
        client = boto_client(node)
        ws = await connect(node, user_agent_header="dash/1.0")
        cid = await whoami(ws)
        await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b'{"msg":"h\xc3\xa9llo"}')
        assert await ws.recv() == '{"msg":"héllo"}'  # a text frame
        await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"\xff\xfe")
        assert await ws.recv() == b"\xff\xfe"  # not UTF-8: a binary frame
        info = await asyncio.to_thread(client.get_connection, ConnectionId=cid)
        assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "dash/1.0"}
        assert isinstance(info["ConnectedAt"], datetime) and isinstance(info["LastActiveAt"], datetime)
        assert abs(info["ConnectedAt"].timestamp() - datetime.now(UTC).timestamp()) < 30
        resp = await asyncio.to_thread(client.delete_connection, ConnectionId=cid)
        assert resp["ResponseMetadata"]["HTTPStatusCode"] == 204
        await ws.wait_closed()
        assert ws.close_code == 1000
        ctx = (await eventually(lambda: th.events_of("$disconnect", cid)))[0]["requestContext"]
        assert ctx["disconnectStatusCode"] == 1000
        for call in (client.post_to_connection, client.get_connection, client.delete_connection):
            kwargs = {"ConnectionId": cid, "Data": b"x"} if call == client.post_to_connection else {"ConnectionId": cid}
            with pytest.raises(client.exceptions.GoneException) as info:
                await asyncio.to_thread(call, **kwargs)
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 410


async def test_boto3_without_stage_and_unknown_id(signed_config):
    async with running_node(signed_config) as node:
        client = boto_client(node, stage=False)
        async with await connect(node) as ws:
            cid = await whoami(ws)
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data="no stage")
            assert await ws.recv() == "no stage"
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId="L0SM9cOFvHcCIhw=", Data=b"x")


async def test_wrong_secret_gets_awss_invalid_signature_answer(signed_config):
    async with running_node(signed_config) as node:
        async with await connect(node) as ws:
            cid = await whoami(ws)
            client = boto_client(node, secret="wrong-secret")
            with pytest.raises(ClientError) as info:
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x")
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
            assert info.value.response["Error"] == {"Code": "InvalidSignatureException", "Message": BAD_SIGNATURE}
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)  # nothing was delivered


def signed_head(node, method: str, path: str, body: bytes) -> dict[str, str]:
    """Headers botocore's SigV4Auth signs for ``method path`` (as sent) with ``body``."""
    return signed_by_clock(node, method, path, body, datetime.now(UTC))


def signed_by_clock(node, method: str, path: str, body: bytes, clock: datetime) -> dict[str, str]:
    """Headers of a request botocore's SigV4Auth signs as a client whose clock reads ``clock``
    (its public steps, with the timestamp given rather than read)."""
    request = AWSRequest(method, f"http://127.0.0.1:{node.management_port}{path}", data=body,
                         headers={"Host": f"127.0.0.1:{node.management_port}"})
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION)
    request.context["timestamp"] = request.headers["X-Amz-Date"] = clock.strftime("%Y%m%dT%H%M%SZ")
    signature = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    signed = auth.signed_headers(auth.headers_to_sign(request))
    request.headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={auth.scope(request)}, "
                                        f"SignedHeaders={signed}, Signature={signature}")
    return dict(request.headers)


async def test_a_sigv4_refusal_carries_date_so_an_sdk_can_correct_its_clock(signed_config):
    """A client whose clock is 10 minutes slow is refused 403 InvalidSignatureException; the
    answer's Date (as AWS sends it) is what the JS SDK v3 (and Java v2, Go v2, .NET) set their
    clock offset from before they sign the retry anew. The retry, dated by it, is delivered."""
    async with running_node(signed_config) as node, await connect(node) as ws:
        cid = await whoami(ws)
        path = f"/prod/@connections/{cid}"
        slow = datetime.now(UTC) - timedelta(minutes=10)
        status, got, body = await raw(node, "POST", path, b"late", signed_by_clock(node, "POST", path, b"late", slow))
        assert (status, got["x-amzn-ErrorType"], json.loads(body)["message"]) == (403, "InvalidSignatureException",
                                                                                BAD_SIGNATURE)
        server_time = parsedate_to_datetime(got["Date"])
        assert abs((server_time - datetime.now(UTC)).total_seconds()) < 2
        status, got, _ = await raw(node, "POST", path)  # unsigned: AWS's other SigV4 answer, dated too
        assert status == 403 and parsedate_to_datetime(got["Date"]).tzinfo is not None
        status, _, _ = await raw(node, "POST", path, b"again", signed_by_clock(node, "POST", path, b"again", server_time))
        assert status == 200 and await asyncio.wait_for(ws.recv(), 5) == "again"


async def test_an_endpoint_ending_in_a_slash_works_as_the_js_sdk_sends_it(signed_config):
    """The JS SDK v3 appends ``/@connections/{id}`` to the endpoint's path as it is: an
    endpoint ``http://host/prod/`` sends ``/prod//@connections/{id}``, signed (as botocore signs
    it) with the empty segment dropped. Routing drops it too: the call reaches the connection."""
    async with running_node(signed_config) as node, await connect(node) as ws:
        cid = await whoami(ws)
        for path in (f"/prod//@connections/{cid}", f"//@connections/{cid}"):
            status, got, body = await raw(node, "POST", path, b"slash", signed_head(node, "POST", path, b"slash"))
            assert (status, body) == (200, b""), (path, got.get("x-amzn-ErrorType"), body)
            assert await asyncio.wait_for(ws.recv(), 5) == "slash"
        path = f"/prod//@connections/{cid}"
        status, got, body = await raw(node, "GET", path, headers=signed_head(node, "GET", path, b""))
        assert status == 200 and set(json.loads(body)) == {"connectedAt", "identity", "lastActiveAt"}
        status, _, body = await raw(node, "POST", f"/prod/@connections/{cid}/", b"x",
                                    signed_head(node, "POST", f"/prod/@connections/{cid}/", b"x"))
        assert status == 200 and await asyncio.wait_for(ws.recv(), 5) == "x"


async def test_payload_too_large(signed_config):
    async with running_node(signed_config) as node:
        async with await connect(node) as ws:
            cid = await whoami(ws)
            client = boto_client(node)
            with pytest.raises(client.exceptions.PayloadTooLargeException) as info:
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x" * (200 * 1024))
            assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 413
            assert info.value.response["Error"]["Message"]
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"y" * 131072)
            assert len(await ws.recv()) == 131072


async def test_aioboto3_round_trip(signed_config):
    async with running_node(signed_config) as node:
        session = aioboto3.Session()
        async with session.client(
            "apigatewaymanagementapi", endpoint_url=endpoint(node), region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, config=NO_RETRY,
        ) as client:
            ws = await connect(node)
            cid = await whoami(ws)
            await client.post_to_connection(ConnectionId=cid, Data=b"from aioboto3")
            assert await ws.recv() == "from aioboto3"
            info = await client.get_connection(ConnectionId=cid)
            assert info["Identity"]["SourceIp"] == "127.0.0.1"
            await client.delete_connection(ConnectionId=cid)
            await ws.wait_closed()
            with pytest.raises(client.exceptions.GoneException):
                await client.get_connection(ConnectionId=cid)
        async with session.client(
            "apigatewaymanagementapi", endpoint_url=endpoint(node), region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key="nope", config=NO_RETRY,
        ) as bad:
            with pytest.raises(ClientError) as info:
                await bad.get_connection(ConnectionId=cid)
            assert info.value.response["Error"]["Code"] == "InvalidSignatureException"


async def test_limit_exceeded_when_client_stops_reading():
    # Keepalive off: a client that stops reading also stops answering pings, and this test
    # is about the queue limit, not about half-open detection.
    cfg = make_config(limits={"max_queued_bytes": 65536, "slow_consumer_grace_s": 0.5}, listen={"ping_interval_s": 0})
    async with running_node(cfg) as node:
        client = boto_client(node)
        slow = await connect(node, max_size=None)
        cid = await whoami(slow)
        fast = await connect(node)
        fast_id = await whoami(fast)
        slow.transport.pause_reading()  # stops reading: the kernel buffers fill, then ours
        chunk = b"z" * 100_000
        statuses = []
        for _ in range(200):
            try:
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=chunk)
                statuses.append(200)
            except client.exceptions.LimitExceededException as exc:
                statuses.append(exc.response["ResponseMetadata"]["HTTPStatusCode"])
                break
        assert statuses[-1] == 429
        # Others are not delayed.
        await asyncio.to_thread(client.post_to_connection, ConnectionId=fast_id, Data=b"still fast")
        assert await asyncio.wait_for(fast.recv(), 2) == "still fast"
        # Staying over the limit past the grace period cuts the slow client off (1008).
        ctx = (await eventually(lambda: th.events_of("$disconnect", cid), timeout=10))[0]["requestContext"]
        assert ctx["disconnectStatusCode"] == 1008 and ctx["disconnectReason"] == "slow consumer"
        with pytest.raises(client.exceptions.GoneException):
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"x")
        slow.transport.abort()
        await fast.close()


async def raw(node, method: str, path: str, body: bytes = b"", headers=None) -> tuple[int, dict, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.request(method, f"http://127.0.0.1:{node.management_port}{path}", data=body,
                                headers=headers or {}) as resp:
            return resp.status, dict(resp.headers), await resp.read()


async def test_unsigned_request_is_forbidden_with_aws_shape(signed_config):
    async with running_node(signed_config) as node:
        status, headers, body = await raw(node, "POST", "/prod/@connections/AAAAAAAAAAAAAAAA", b"x")
        assert status == 403 and headers["x-amzn-ErrorType"] == "MissingAuthenticationTokenException"
        assert json.loads(body) == {"message": "Missing Authentication Token"}


async def test_raw_paths_encodings_and_errors():
    async with running_node() as node:  # management auth off
        async with await connect(node, query={"tenant": "acme"}) as ws:
            cid = await whoami(ws)
            quoted = cid.replace("=", "%3D")
            for path in (f"/prod/@connections/{quoted}", f"/prod/%40connections/{quoted}", f"/@connections/{quoted}"):
                status, headers, body = await raw(node, "POST", path, b"p")
                assert status == 200 and body == b"" and "x-amzn-RequestId" in headers
                assert await ws.recv() == "p"
            status, headers, body = await raw(node, "GET", "/prod/@connections/bad%2Fid!")
            assert status == 400 and headers["x-amzn-ErrorType"] == "BadRequestException"
            assert json.loads(body)["message"]
            status, headers, body = await raw(node, "POST", "/prod/@connections/L0SM9cOFvHcCIhw%3D", b"x")
            assert status == 410 and headers["x-amzn-ErrorType"] == "GoneException" and body == b""
            status, headers, body = await raw(node, "PUT", f"/prod/@connections/{quoted}", b"x")
            assert status == 404 and headers["x-amzn-ErrorType"] == "NotFoundException"
            status, headers, body = await raw(node, "GET", "/prod/nothing/here")
            assert status == 404 and json.loads(body)["message"]
            status, headers, _ = await raw(node, "POST", f"/prod/@connections/{quoted}", b"x" * 131073)
            assert status == 413 and headers["x-amzn-ErrorType"] == "PayloadTooLargeException"


async def test_tenant_fanout_and_listing():
    async with running_node() as node:
        acme = [await connect(node, query={"tenant": "acme"}) for _ in range(5)]
        other = await connect(node, query={"tenant": "other"})
        ids = sorted([await whoami(ws) for ws in acme])
        await whoami(other)
        status, _, body = await raw(node, "POST", "/prod/@tenants/acme/messages", b'{"type":"call"}')
        assert status == 200 and json.loads(body) == {"delivered": 5, "unreachableNodes": 0}
        for ws in acme:
            assert await ws.recv() == '{"type":"call"}'
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.recv(), 0.2)  # another tenant sees nothing
        status, _, body = await raw(node, "POST", "/@tenants/nobody/messages", b"x")
        assert status == 200 and json.loads(body) == {"delivered": 0, "unreachableNodes": 0}
        seen, token = [], None
        while True:
            query = "?limit=2" + (f"&nextToken={token}" if token else "")
            status, _, body = await raw(node, "GET", f"/prod/@tenants/acme/connections{query}")
            assert status == 200
            page = json.loads(body)
            assert len(page["connections"]) <= 2
            seen += page["connections"]
            token = page["nextToken"]
            if not token:
                break
        assert sorted(c["connectionId"] for c in seen) == ids
        assert all(c["tenant"] == "acme" and c["identity"]["sourceIp"] == "127.0.0.1" for c in seen)
        for bad in ("?limit=0", "?limit=abc", "?limit=5000", "?nextToken=forged"):
            status, headers, _ = await raw(node, "GET", f"/prod/@tenants/acme/connections{bad}")
            assert status == 400 and headers["x-amzn-ErrorType"] == "BadRequestException"
        for ws in [*acme, other]:
            await ws.close()


async def test_health_needs_no_auth(signed_config):
    async with running_node(signed_config) as node:
        status, _, body = await raw(node, "GET", "/health")
        health = json.loads(body)
        assert status == 200 and health["node_id"] == node.node_id and health["connections"] == 0
        status, _, _ = await raw(node, "GET", "/prod/health")
        assert status == 200
        status, _, body = await raw(node, "GET", "/ready")
        assert status == 200 and json.loads(body)["registry"]["reachable"] is True
        for probe in ("/health", "/ready"):  # HEAD, as some load balancers check: the GET's status, no content
            status, headers, body = await raw(node, "HEAD", probe)
            assert (status, body) == (200, b"") and int(headers["Content-Length"]) > 0, probe
        status, headers, body = await raw(node, "HEAD", "/metrics")
        assert (status, body) == (200, b"") and headers["Content-Type"].startswith("text/plain")
        async with aiohttp.ClientSession() as http:  # the client port answers probes too
            async with http.get(f"http://127.0.0.1:{node.port}/health") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}


async def test_boto3_retries_429_then_raises():
    """boto3's own retry loop sees 429 LimitExceededException as retriable (AWS semantics)."""
    cfg = make_config(limits={"max_queued_bytes": 16384, "slow_consumer_grace_s": 30}, listen={"ping_interval_s": 0})
    async with running_node(cfg) as node:
        client = boto_client(node, config=Config(retries={"total_max_attempts": 2, "mode": "standard"}))
        slow = await connect(node, max_size=None)
        cid = await whoami(slow)
        slow.transport.pause_reading()
        with pytest.raises(ClientError) as info:
            for _ in range(500):
                await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=b"q" * 65536)
        assert info.value.response["Error"]["Code"] == "LimitExceededException"
        assert info.value.response["ResponseMetadata"]["RetryAttempts"] == 1  # boto3 retried it itself
        slow.transport.abort()


async def test_user_and_group_fanout_and_membership():
    cfg = make_config(auth={"type": "jwt", "algorithms": ["HS256"], "secret": HS_SECRET, "tenant_claim": "practice_id"})
    async with running_node(cfg) as node:
        alice = [await websockets.connect(ws_url(node, token=token("alice", "p1"))) for _ in range(2)]
        bob = await websockets.connect(ws_url(node, token=token("bob", "p1")))
        mallory = await websockets.connect(ws_url(node, token=token("alice", "p2")))  # same sub, other tenant
        ids = [await whoami(ws) for ws in [*alice, bob, mallory]]
        status, _, body = await raw(node, "POST", "/prod/@tenants/p1/users/alice/messages", b"hi alice")
        assert status == 200 and json.loads(body) == {"delivered": 2, "unreachableNodes": 0}
        for ws in alice:
            assert await ws.recv() == "hi alice"
        # Groups: a backend adds bob, a handler adds alice's first tab.
        status, _, body = await raw(node, "PUT", f"/prod/@connections/{ids[2]}/groups/front-desk")
        assert status == 204 and body == b""
        await alice[0].send('{"action": "join", "group": "front-desk"}')
        assert await alice[0].recv() == "joined front-desk"
        await raw(node, "PUT", f"/prod/@connections/{ids[3]}/groups/front-desk")  # other tenant's group
        status, _, body = await raw(node, "POST", "/@tenants/p1/groups/front-desk/messages", b"ring")
        assert json.loads(body) == {"delivered": 2, "unreachableNodes": 0}
        assert await bob.recv() == "ring" and await alice[0].recv() == "ring"
        await bob.send('{"action": "tell_group", "group": "front-desk", "text": "from bob"}')
        got = [await bob.recv(), await bob.recv(), await bob.recv()]
        assert got[:2] == ["from bob", "to my tabs"] and json.loads(got[2]) == {"group": 2, "user": 1}
        assert await alice[0].recv() == "from bob"
        status, _, _ = await raw(node, "DELETE", f"/prod/@connections/{ids[2]}/groups/front-desk")
        assert status == 204
        status, _, body = await raw(node, "POST", "/@tenants/p1/groups/front-desk/messages", b"again")
        assert json.loads(body) == {"delivered": 1, "unreachableNodes": 0}
        assert await alice[0].recv() == "again"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(mallory.recv(), 0.2)  # never crosses tenants
        status, headers, _ = await raw(node, "PUT", "/prod/@connections/AAAAAAAAAAAAAAAA/groups/g")
        assert status == 410 and headers["x-amzn-ErrorType"] == "GoneException"
        status, headers, _ = await raw(node, "PUT", f"/prod/@connections/{ids[0]}/groups/{'x' * 200}")
        assert status == 400
        for ws in [*alice, bob, mallory]:
            await ws.close()


# ---------------------------------------------------------------- replay protection


def signed_post(node, cid: str, data: bytes) -> tuple[str, dict[str, str]]:
    """One PostToConnection signed by botocore, as raw path and headers to send as often as
    a test likes (an SDK signs each attempt anew; an attacker re-sends captured bytes)."""
    path = f"/prod/@connections/{quote(cid, safe='')}"
    request = AWSRequest("POST", f"http://127.0.0.1:{node.management_port}{path}", data=data,
                         headers={"Host": f"127.0.0.1:{node.management_port}"})
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "execute-api", REGION).add_auth(request)
    return path, dict(request.headers)


def replay_config(**registry):
    return make_config(management={**sigv4_section(), "replay_protection": True}, registry=registry)


FORBIDDEN = (403, "ForbiddenException", {"message": "Forbidden"})


async def test_a_replayed_signed_request_is_refused_403():
    async with running_node(replay_config()) as node, await connect(node) as ws:
        cid = await whoami(ws)
        path, headers = signed_post(node, cid, b"once")
        status, _, _ = await raw(node, "POST", path, b"once", headers)
        assert status == 200 and await ws.recv() == "once"
        status, got, body = await raw(node, "POST", path, b"once", headers)  # the captured bytes again
        assert (status, got["x-amzn-ErrorType"], json.loads(body)) == FORBIDDEN
        # SDK calls are signed anew each time: two posts are two requests, both delivered;
        # and the replay above delivered nothing (the next message is the SDK's first).
        client = boto_client(node)
        for data in (b"first", b"second"):
            await asyncio.to_thread(client.post_to_connection, ConnectionId=cid, Data=data)
        assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)] == ["first", "second"]


async def test_without_replay_protection_a_replay_is_delivered_again(signed_config):
    async with running_node(signed_config) as node, await connect(node) as ws:
        cid = await whoami(ws)
        path, headers = signed_post(node, cid, b"again")
        for _ in range(2):
            status, _, _ = await raw(node, "POST", path, b"again", headers)
            assert status == 200 and await asyncio.wait_for(ws.recv(), 5) == "again"


async def test_a_replay_to_another_node_sharing_redis_is_refused(redis_url, key_prefix):
    shared = {"backend": "redis", "redis_url": redis_url, "key_prefix": key_prefix}
    async with (
        running_node(replay_config(**shared)) as node_a,
        running_node(replay_config(**shared)) as node_b,
        await connect(node_a) as ws,
    ):
        cid = await whoami(ws)
        path, headers = signed_post(node_a, cid, b"once")
        status, _, _ = await raw(node_a, "POST", path, b"once", headers)
        assert status == 200 and await ws.recv() == "once"
        status, got, body = await raw(node_b, "POST", path, b"once", headers)  # signed Host is a's
        assert (status, got["x-amzn-ErrorType"], json.loads(body)) == FORBIDDEN
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)


async def test_replay_protection_fails_closed_when_redis_is_unreachable(private_redis, key_prefix):
    async with RedisLink(private_redis.port) as link:
        cfg = replay_config(backend="redis", redis_url=link.url, key_prefix=key_prefix)
        async with running_node(cfg) as node, await connect(node) as ws:
            cid = await whoami(ws)
            link.cut()
            path, headers = signed_post(node, cid, b"unchecked")
            status, got, body = await raw(node, "POST", path, b"unchecked", headers)
            assert (status, got["x-amzn-ErrorType"]) == (503, "ServiceUnavailableException")
            assert list(json.loads(body)) == ["message"]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)  # a local connection, yet not delivered


# ---------------------------------------------------------------- the HTTP server's own refusals


def aws_refusal(data: bytes, status: int, error_type: str, message: str) -> str:
    """Check ``data`` is exactly one answer in AWS's error shape, closing the connection;
    return its x-amzn-RequestId."""
    head, _, body = data.partition(b"\r\n\r\n")
    first, *lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    request_id = headers.pop("x-amzn-RequestId")
    assert len(request_id) == 16 and request_id.replace("-", "").replace("_", "").isalnum()
    assert abs(parsedate_to_datetime(headers.pop("Date")).timestamp() - time.time()) < 5  # as AWS's answers
    assert first == f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"
    assert headers == {"Content-Length": str(len(body)), "Content-Type": "application/json",
                       "x-amzn-ErrorType": error_type, "Connection": "close"}
    assert json.loads(body) == {"message": message}
    return request_id


MALFORMED = ("BadRequestException", "Malformed request")


@pytest.mark.parametrize(("raw", "status", "error", "method"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400, MALFORMED, ""),
    (b"POST /prod/@connections/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12x\r\n\r\n", 400, MALFORMED, "POST"),
    (b"POST /prod/@connections/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
     400, MALFORMED, "POST"),
    (b"BREW /prod/@connections/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", 400, MALFORMED, ""),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: v\r\n\r\n", 400, MALFORMED, "GET"),
    (b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"p" * 70000 + b"\r\n\r\n", 431,
     ("RequestHeaderFieldsTooLargeException", "Request header fields too large"), "GET"),
    (b"GET /prod HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400,
     ("BadRequestException", "Upgrade is not supported"), "GET"),
])
async def test_requests_the_http_server_refuses_get_awss_error_shape_and_are_counted(tmp_path, raw, status, error,
                                                                                     method):
    """A request refused before it reaches the API (malformed: a bad Content-Length, an
    unknown method, a bad header; a head too large; an upgrade) is answered as the API's
    own refusals are: AWS's error shape with a fresh request id, then the connection closes;
    counted in the management metrics and written to the access log as they are."""
    path = tmp_path / "access.log"
    async with running_node(make_config(management=sigv4_section(), log={"access_log": str(path)})) as node:
        first = aws_refusal(await exchange_raw(node, raw), status, *error)
        second = aws_refusal(await exchange_raw(node, raw), status, *error)
        assert first != second
        assert node.gateway.stats.management == {("Unknown", status): 2}
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [(e["kind"], e["requestId"], e["routeKey"], e["method"], e["status"]) for e in entries] == [
        ("management", first, method, method, status), ("management", second, method, method, status)]


async def test_a_late_request_gets_awss_408_counted_under_its_operation():
    """A request whose head or body is late is answered 408 RequestTimeoutException and its
    connection closed; one whose head named an operation is counted under it."""
    cfg = make_config(management={"header_timeout_s": 0.3, "request_timeout_s": 0.5})
    async with running_node(cfg) as node:
        head_late = b"POST /prod/@tenants/A/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: p"
        body_late = b"POST /prod/@tenants/A/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\nabc"
        for raw in (head_late, body_late):
            aws_refusal(await exchange_raw(node, raw), 408, "RequestTimeoutException", "Request timed out")
        assert node.gateway.stats.management == {("Unknown", 408): 1, ("PostToTenant", 408): 1}


async def test_a_connection_past_the_cap_gets_awss_503():
    async with running_node(make_config(management={"max_connections": 1})) as node:
        held = await asyncio.open_connection("127.0.0.1", node.management_port)
        await asyncio.sleep(0.05)
        aws_refusal(await exchange_raw(node, b""), 503, "ServiceUnavailableException", "Too many connections")
        held[1].close()
        assert node.gateway.stats.management == {("Unknown", 503): 1}


def expect_continue(node, path: str, headers: dict[str, str], size: int) -> bytes:
    """A request head announcing ``size`` bytes of body with ``Expect: 100-continue``."""
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items() if k.lower() != "content-length"),
             f"Content-Length: {size}", "Expect: 100-continue"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_an_oversize_post_announced_with_expect_continue_gets_413_without_100(signed_config):
    """A client waiting for 100 Continue before it sends a body over ``max_post_bytes`` gets
    AWS's 413 at once instead, as a post whose body was sent answers it: after the head's
    checks (unsigned: 403 first), before the signature is checked. Counted as that post."""
    async with running_node(signed_config) as node, await connect(node) as ws:
        cid = await whoami(ws)
        big = b"x" * 131073
        path, headers = signed_post(node, cid, big)
        data = await exchange_raw(node, expect_continue(node, path, headers, len(big)))
        assert b"100 Continue" not in data
        aws_refusal(data, 413, "PayloadTooLargeException", "Message too long")
        wrong = {**headers, "Authorization": headers["Authorization"][:-4] + "0000"}
        data = await exchange_raw(node, expect_continue(node, path, wrong, len(big)))
        aws_refusal(data, 413, "PayloadTooLargeException", "Message too long")  # as when the body is sent
        status, got, body = await raw(node, "POST", path, big, wrong)
        assert (status, got["x-amzn-ErrorType"], json.loads(body)["message"]) == (413, "PayloadTooLargeException",
                                                                                "Message too long")
        unsigned = {"Host": f"127.0.0.1:{node.management_port}"}
        data = await exchange_raw(node, expect_continue(node, path, unsigned, len(big)))
        assert data.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"MissingAuthenticationTokenException" in data
        assert node.gateway.stats.management == {("PostToConnection", 413): 3, ("Unknown", 403): 1}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.2)  # nothing was delivered


async def test_the_access_log_names_the_connection_or_tenant_of_every_call(tmp_path):
    """Each management line names what the call addressed: the connection of PostToConnection,
    GetConnection, DeleteConnection and the group calls, the tenant of a fan-out, listing or
    usage (an operator greps the log for one connection id: its posts must be there)."""
    path = tmp_path / "access.log"
    async with running_node(make_config(log={"access_log": str(path)})) as node:
        async with await connect(node, query={"tenant": "acme"}) as ws:
            cid = await whoami(ws)
            calls = [("POST", f"/prod/@connections/{cid}", "PostToConnection"),
                     ("GET", f"/prod/@connections/{cid}", "GetConnection"),
                     ("PUT", f"/prod/@connections/{cid}/groups/desk", "JoinGroup"),
                     ("POST", "/prod/@tenants/acme/groups/desk/messages", "PostToGroup"),
                     ("POST", "/prod/@tenants/acme/users/u/messages", "PostToUser"),
                     ("POST", "/prod/@tenants/acme/messages", "PostToTenant"),
                     ("GET", "/prod/@tenants/acme/connections", "ListTenantConnections"),
                     ("GET", "/prod/@tenants/acme/usage", "GetTenantUsage"),
                     ("DELETE", f"/prod/@connections/{cid}/groups/desk", "LeaveGroup"),
                     ("DELETE", f"/prod/@connections/{cid}", "DeleteConnection")]
            for method, url, _ in calls:
                status, _, _ = await raw(node, method, url, b"x" if method == "POST" else b"")
                assert status < 300, (method, url, status)
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    logged = [(e["routeKey"], e["connectionId"], e["tenant"]) for e in lines if e["kind"] == "management"]
    assert logged == [(operation, "" if "tenants" in url else cid, "acme" if "tenants" in url else "")
                      for _, url, operation in calls]


async def test_an_oversize_fanout_is_counted_and_logged_under_its_operation(tmp_path):
    """A fan-out over ``max_post_bytes`` answers 413 as a post to a connection does, and is
    counted and logged under its operation and tenant as that post is (also a post through
    replay protection, which takes the longer way through the server)."""
    path = tmp_path / "access.log"
    big = b"x" * 131073
    async with running_node(make_config(log={"access_log": str(path)})) as node:
        for url in ("/prod/@tenants/acme/messages", "/prod/@tenants/acme/users/u/messages",
                    "/prod/@tenants/acme/groups/g/messages"):
            status, headers, _ = await raw(node, "POST", url, big)
            assert (status, headers["x-amzn-ErrorType"]) == (413, "PayloadTooLargeException")
        assert node.gateway.stats.management == {("PostToTenant", 413): 1, ("PostToUser", 413): 1,
                                                 ("PostToGroup", 413): 1}
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert [(e["routeKey"], e["tenant"], e["status"]) for e in lines] == [
        ("PostToTenant", "acme", 413), ("PostToUser", "acme", 413), ("PostToGroup", "acme", 413)]
    async with running_node(replay_config()) as node, await connect(node) as ws:
        cid = await whoami(ws)
        path, headers = signed_post(node, cid, big)
        status, _, _ = await raw(node, "POST", path, big, headers)
        assert status == 413
        assert node.gateway.stats.management == {("PostToConnection", 413): 1}
