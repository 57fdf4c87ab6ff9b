"""wsgateway.authorizer: custom authorizers as AWS Lambda REQUEST authorizers.

Unit tests (policy matching, the event, the cache, each status) call the Authenticator as the
server does, with a real test authorizer function and an injected clock; they open no sockets.
The end-to-end tests run a real node with real clients: the seed article's authorizer
verbatim, and each status the issue lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests import authorizers_for_tests as ta
from tests import handlers_for_tests as th
from tests import seed_authorizer
from tests.cluster_support import NODE_TTL_S, Cluster, up_for, wait_until
from tests.support import eventually, make_config, running_node, whoami, ws_url
from wsgateway.auth import Authenticator, Principal
from wsgateway.authorizer import CACHE_ENTRIES, HandshakeRequest, evaluate_policy, load_authorizer, method_arn
from wsgateway.config import parse_config
from wsgateway.errors import AuthError, ConfigError
from wsgateway.events import authorizer_event
from wsgateway.gateway import Gateway

ARN = "arn:aws:execute-api:us-east-1:000000000000:wsgateway/prod/$connect"
DECIDE = "tests.authorizers_for_tests:decide"


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    ta.CALLS.clear()
    th.EVENTS.clear()


# ---------------------------------------------------------------- policy evaluation

def allow(resource: Any = ARN, action: Any = "execute-api:Invoke", effect: str = "Allow", **extra: Any) -> dict[str, Any]:
    return {"principalId": "user-1",
            "policyDocument": {"Version": "2012-10-17",
                               "Statement": [{"Action": action, "Effect": effect, "Resource": resource}]},
            **extra}


def status(result: Any, arn: str = ARN) -> int:
    try:
        evaluate_policy(result, arn)
    except AuthError as exc:
        return exc.status
    return 200


def test_method_arn_is_aws_connect_arn() -> None:
    assert method_arn("eu-west-2", "123456789012", "abc123", "live") == (
        "arn:aws:execute-api:eu-west-2:123456789012:abc123/live/$connect")


@pytest.mark.parametrize("resource", [
    ARN,
    "*",
    "arn:aws:execute-api:*:*:*",
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/*",
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/prod/*",
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/*/$connect",
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/pro?/$connect",
    ["arn:aws:execute-api:us-east-1:000000000000:other/prod/$connect", ARN],
])
def test_allow_matching_the_method_arn_is_accepted(resource: Any) -> None:
    assert status(allow(resource)) == 200


@pytest.mark.parametrize("resource", [
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/prod/*/*",  # REST's shape: no match on AWS
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/test/$connect",
    "arn:aws:execute-api:us-east-1:111111111111:wsgateway/prod/$connect",
    "arn:aws:execute-api:us-east-1:000000000000:wsgateway/prod/$CONNECT",  # ARNs compare exactly
    ARN + "x",
])
def test_allow_for_another_resource_is_403(resource: str) -> None:
    assert status(allow(resource)) == 403


@pytest.mark.parametrize(("action", "expected"), [
    ("execute-api:Invoke", 200), ("execute-api:*", 200), ("*", 200), ("Execute-API:invoke", 200),
    (["s3:GetObject", "execute-api:Invoke"], 200), ("execute-api:ManageConnections", 403), ("s3:*", 403),
])
def test_actions_match_with_wildcards_and_any_case(action: Any, expected: int) -> None:
    assert status(allow(action=action)) == expected


def test_deny_wins_over_allow_and_alone_is_403() -> None:
    assert status(allow(effect="Deny")) == 403
    both = allow()
    both["policyDocument"]["Statement"].append({"Action": "*", "Effect": "Deny", "Resource": "*"})
    assert status(both) == 403
    unrelated_deny = allow()
    unrelated_deny["policyDocument"]["Statement"].append(
        {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": "arn:aws:execute-api:*:*:other/*"})
    assert status(unrelated_deny) == 200


def test_single_statement_object_is_accepted_as_iam_does() -> None:
    result = allow()
    result["policyDocument"]["Statement"] = result["policyDocument"]["Statement"][0]
    assert status(result) == 200


def test_allowed_outcome_carries_principal_and_flat_context() -> None:
    context = {"tenant": "acme", "n": 3, "ratio": 0.5, "beta": False}
    allowed = evaluate_policy(allow(context=context), ARN)
    assert (allowed.principal_id, dict(allowed.context)) == ("user-1", context)
    assert dict(evaluate_policy(allow(), ARN).context) == {}
    assert dict(evaluate_policy(allow(context=None), ARN).context) == {}


@pytest.mark.parametrize("result", [
    None,
    "Allow",
    {"statusCode": 401},
    {**allow(), "principalId": 7},
    {k: v for k, v in allow().items() if k != "principalId"},
    {"principalId": "u", "policyDocument": "Allow"},
    {"principalId": "u", "policyDocument": {"Statement": []}},
    allow(effect="allow"),
    allow(action=7),
    allow(action=[]),
    allow(resource=None),
    allow(context={"tenant": "t", "roles": ["a"]}),  # AWS: no arrays or objects in context
    allow(context={"tenant": {"id": "t"}}),
    allow(context={"tenant": None}),
    allow(context={"n": float("nan")}),
    allow(context=["tenant"]),
    allow(context={"big": "x" * 9000}),  # over AWS's 8 KB result limit
])
def test_malformed_results_are_500(result: Any) -> None:
    assert status(result) == 500


def test_deny_with_a_malformed_context_is_still_403() -> None:
    assert status(allow(effect="Deny", context={"roles": ["a"]})) == 403


# ---------------------------------------------------------------- the event

def test_event_is_aws_request_authorizer_event_plus_authorization_token() -> None:
    event = authorizer_event(
        method_arn=ARN, token="Bearer abc", connection_id="CID0000000000001", stage="prod", api_id="wsgateway",
        domain_name="ws.example.com", source_ip="203.0.113.9", user_agent="ua/1",
        headers=[("Host", "ws.example.com"), ("Authorization", "Bearer abc"), ("X-Tag", "1"), ("X-Tag", "2")],
        query=[("a", "1"), ("a", "2")], request_id="REQ0000000000001", epoch_s=1_800_000_000.25,
    )
    ctx = event.pop("requestContext")
    assert event == {
        "type": "REQUEST",
        "methodArn": ARN,
        "authorizationToken": "Bearer abc",
        "headers": {"Host": "ws.example.com", "Authorization": "Bearer abc", "X-Tag": "2"},
        "multiValueHeaders": {"Host": ["ws.example.com"], "Authorization": ["Bearer abc"], "X-Tag": ["1", "2"]},
        "queryStringParameters": {"a": "2"},
        "multiValueQueryStringParameters": {"a": ["1", "2"]},
        "stageVariables": {},
    }
    assert ctx == {
        "routeKey": "$connect", "eventType": "CONNECT", "messageDirection": "IN",
        "connectionId": "CID0000000000001", "requestId": "REQ0000000000001", "extendedRequestId": "REQ0000000000001",
        "stage": "prod", "apiId": "wsgateway", "domainName": "ws.example.com",
        "identity": {"sourceIp": "203.0.113.9", "userAgent": "ua/1"},
        "connectedAt": 1_800_000_000_250, "requestTimeEpoch": 1_800_000_000_250,
        "requestTime": "15/Jan/2027:08:00:00 +0000",
    }


def test_event_without_query_string_has_empty_maps_as_aws() -> None:
    event = authorizer_event(
        method_arn=ARN, token="t", connection_id="c", stage="prod", api_id="a", domain_name="d", source_ip="1.2.3.4",
        user_agent="", headers=[], query=[], request_id="r", epoch_s=0,
    )
    assert (event["queryStringParameters"], event["multiValueQueryStringParameters"]) == ({}, {})
    assert event["requestContext"]["identity"] == {"sourceIp": "1.2.3.4"}


# ---------------------------------------------------------------- Authenticator with an authorizer

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def make_auth() -> AsyncIterator[Callable[..., Authenticator]]:
    """Authenticators as a gateway builds them, with the cache on an injected clock."""
    executors: list[ThreadPoolExecutor] = []

    def make(target: str = DECIDE, clock: Callable[[], float] = time.monotonic, **auth: Any) -> Authenticator:
        config = parse_config({"auth": {"type": "authorizer", "authorizer": target, **auth},
                               "limits": {"handler_timeout_s": 0.3}, "log": {"access_log": ""}}, env={})
        executor = ThreadPoolExecutor(2)
        executors.append(executor)
        calls = Gateway(config)  # unstarted: the handler context's calls, never made here
        return Authenticator(config.auth, authorizer=load_authorizer(config, executor=executor, calls=calls,
                                                                     clock=clock))

    yield make
    for executor in executors:
        executor.shutdown(wait=False, cancel_futures=True)


def handshake(authorization: str | None = None, query: list[tuple[str, str]] | None = None,
              connection_id: str = "CID0000000000001") -> HandshakeRequest:
    headers = [("Host", "ws.example.com"), ("User-Agent", "ua/1")]
    if authorization is not None:
        headers.append(("authorization", authorization))  # any case: header sources fold it
    return HandshakeRequest(connection_id, headers, query or [], "203.0.113.9", "ua/1", "ws.example.com")


async def principal_or_status(auth: Authenticator, request: HandshakeRequest) -> Principal | int:
    try:
        return await auth.authenticate({}, {}, [], request)
    except AuthError as exc:
        return exc.status


async def test_allow_becomes_the_principal_with_tenant_from_context(make_auth) -> None:
    principal = await make_auth().authenticate({}, {}, [], handshake("allow:acme"))
    assert principal == Principal("user-1", "acme", {"tenant": "acme", "role": "admin", "seats": 3, "beta": True})
    assert principal.authorizer() == {"principalId": "user-1", "tenant": "acme", "role": "admin", "seats": 3,
                                      "beta": True}
    [event] = ta.CALLS
    assert event["requestContext"]["connectionId"] == "CID0000000000001"
    assert event["methodArn"] == ARN


@pytest.mark.parametrize(("token", "expected"), [
    ("deny", 403), ("wrong-arn", 403), ("long-tenant", 403),
    ("unauthorized", 401),
    ("boom", 500), ("not-a-policy", 500), ("nested", 500), ("no-tenant", 500), ("slow", 500),
])
@pytest.mark.parametrize("target", [DECIDE, "tests.authorizers_for_tests:decide_sync"])
async def test_each_outcome_has_its_status(make_auth, target: str, token: str, expected: int) -> None:
    assert await principal_or_status(make_auth(target), handshake(token)) == expected


async def test_tenant_key_picks_the_tenant_and_numeric_ids_become_text(make_auth) -> None:
    principal = await make_auth(tenant_key="seats").authenticate({}, {}, [], handshake("allow:acme"))
    assert principal.tenant == "3"
    assert await principal_or_status(make_auth(tenant_key="beta"), handshake("allow:acme")) == 500  # a boolean


async def test_500_reasons_never_carry_the_exception_text(make_auth, caplog) -> None:
    with pytest.raises(AuthError) as info:
        await make_auth().authenticate({}, {}, [], handshake("boom"))
    assert info.value.reason == "authorizer raised RuntimeError"
    assert "CID0000000000001" in caplog.text  # the operator's log has the connection and traceback


async def test_missing_or_empty_identity_source_is_401_without_a_call(make_auth) -> None:
    auth = make_auth(identity_sources=["route.request.header.Authorization", "route.request.querystring.practice"])
    assert await principal_or_status(auth, handshake()) == 401
    assert await principal_or_status(auth, handshake("allow:acme")) == 401  # the query source is missing
    assert await principal_or_status(auth, handshake("allow:acme", [("practice", "")])) == 401
    assert await principal_or_status(auth, handshake("", [("practice", "p1")])) == 401
    assert ta.CALLS == []
    principal = await auth.authenticate({}, {}, [], handshake("allow:acme", [("practice", "p1")]))
    assert principal.tenant == "acme"
    assert ta.CALLS[0]["authorizationToken"] == "allow:acme"  # the first source's value


async def test_querystring_source_can_be_the_token(make_auth) -> None:
    auth = make_auth(identity_sources=["route.request.querystring.token"])
    principal = await auth.authenticate({}, {}, [], handshake(query=[("token", "allow:blue")]))
    assert principal.tenant == "blue"


async def test_results_are_cached_per_identity_value_for_the_ttl(make_auth) -> None:
    clock = Clock()
    auth = make_auth(clock=clock, cache_ttl_s=60)
    for n in range(3):  # a new connection id each time: the cache keys on the identity only
        assert (await auth.authenticate({}, {}, [], handshake("allow:acme", connection_id=f"C{n}"))).tenant == "acme"
        assert await principal_or_status(auth, handshake("deny", connection_id=f"D{n}")) == 403
    assert [e["authorizationToken"] for e in ta.CALLS] == ["allow:acme", "deny"]
    await auth.authenticate({}, {}, [], handshake("allow:blue"))
    assert len(ta.CALLS) == 3
    clock.now += 59.9
    await auth.authenticate({}, {}, [], handshake("allow:acme"))
    assert len(ta.CALLS) == 3
    clock.now += 0.1
    await auth.authenticate({}, {}, [], handshake("allow:acme"))
    assert await principal_or_status(auth, handshake("deny")) == 403
    assert len(ta.CALLS) == 5


async def test_errors_and_unauthorized_are_not_cached(make_auth) -> None:
    auth = make_auth(cache_ttl_s=60)
    for token in ("unauthorized", "boom", "not-a-policy"):
        for _ in range(2):
            await principal_or_status(auth, handshake(token))
    assert len(ta.CALLS) == 6


async def test_ttl_zero_calls_every_time(make_auth) -> None:
    auth = make_auth(cache_ttl_s=0)
    for _ in range(3):
        await auth.authenticate({}, {}, [], handshake("allow:acme"))
    assert len(ta.CALLS) == 3


async def test_cache_is_bounded_least_recently_used_first_out(make_auth) -> None:
    auth = make_auth(cache_ttl_s=3600)
    for n in range(CACHE_ENTRIES + 1):
        await auth.authenticate({}, {}, [], handshake(f"allow:t{n}"))
    assert len(ta.CALLS) == CACHE_ENTRIES + 1
    await auth.authenticate({}, {}, [], handshake(f"allow:t{CACHE_ENTRIES}"))  # still cached
    assert len(ta.CALLS) == CACHE_ENTRIES + 1
    await auth.authenticate({}, {}, [], handshake("allow:t0"))  # pushed out by the newest
    assert len(ta.CALLS) == CACHE_ENTRIES + 2


def test_unimportable_authorizer_stops_start_up_naming_the_key() -> None:
    config = parse_config({"auth": {"type": "authorizer", "authorizer": "tests.no_such_module:handler"}}, env={})
    with pytest.raises(ConfigError) as info:
        Gateway(config)
    assert info.value.key == "auth.authorizer"


# ---------------------------------------------------------------- end to end, real node and clients

def authorizer_section(target: str = DECIDE, **extra: Any) -> dict[str, Any]:
    return {"type": "authorizer", "authorizer": target, "tenant_key": "tenant", **extra}


async def handshake_status(node: Any, authorization: str | None = None, **query: str) -> int:
    headers = {"Authorization": authorization} if authorization is not None else {}
    try:
        async with websockets.connect(ws_url(node, **query), open_timeout=5, additional_headers=headers):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def test_seed_authorizer_verbatim_on_a_real_node() -> None:
    """The seed article's handler, configured as the issue writes it."""
    auth = {"type": "authorizer", "authorizer": "tests.seed_authorizer:handler",
            "identity_sources": ["route.request.header.Authorization"], "cache_ttl_s": 300,
            "tenant_key": "practice_id"}

    def seed_token(practice: str, ttl: float = 300) -> str:
        claims = {"sub": "user-7", "custom:practice_id": practice, "custom:role": "vet", "exp": int(time.time() + ttl)}
        return jwt.encode(claims, seed_authorizer.PRIVATE_KEY, algorithm="RS256")

    async with running_node(make_config(auth=auth)) as node:
        good = seed_token("practice-1")
        async with websockets.connect(ws_url(node), open_timeout=5,
                                      additional_headers={"Authorization": f"Bearer {good}"}) as ws:
            await ws.send('{"action": "whoami"}')
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["authorizer"] == {"principalId": "user-7", "tenant": "practice-1", "practice_id": "practice-1",
                                       "role": "vet"}
        [connect] = th.events_of("$connect", reply["connectionId"])
        assert connect["requestContext"]["authorizer"] == reply["authorizer"]
        # The seed turns every failure into Exception('Unauthorized'): 401, as on AWS.
        assert await handshake_status(node, f"Bearer {seed_token('practice-9')}") == 401  # inactive practice
        assert await handshake_status(node, f"Bearer {seed_token('practice-1', ttl=-60)}") == 401  # expired
        assert await handshake_status(node, "Bearer not-a-jwt") == 401
        assert await handshake_status(node) == 401  # no Authorization: the seed is not called


async def test_every_event_of_the_connection_carries_the_authorizer_context() -> None:
    async with running_node(make_config(auth=authorizer_section())) as node:
        async with websockets.connect(ws_url(node), open_timeout=5,
                                      additional_headers={"Authorization": "allow:acme"}) as ws:
            conn_id = await whoami(ws)
            await ws.send('{"action": "event"}')  # a message route that records its event
            await asyncio.wait_for(ws.recv(), 5)
        [call] = ta.CALLS
        assert call["requestContext"]["connectionId"] == conn_id  # the id AWS passes is the connection's
        assert call["requestContext"]["domainName"] == f"127.0.0.1:{node.port}"
        assert call["headers"]["Authorization"] == "allow:acme"
        expected = {"principalId": "user-1", "tenant": "acme", "role": "admin", "seats": 3, "beta": True}
        await eventually(lambda: th.events_of("$disconnect", conn_id))
        for route in ("$connect", "event", "$disconnect"):
            [event] = th.events_of(route, conn_id)
            assert event["requestContext"]["authorizer"] == expected, route


async def test_statuses_on_a_real_node() -> None:
    async with running_node(make_config(auth=authorizer_section(cache_ttl_s=0))) as node:
        assert await handshake_status(node, "allow:acme") == 101
        assert await handshake_status(node, "deny") == 403
        assert await handshake_status(node, "wrong-arn") == 403
        assert await handshake_status(node, "long-tenant") == 403
        assert await handshake_status(node, "unauthorized") == 401
        for token in ("boom", "not-a-policy", "nested", "no-tenant", "slow"):
            assert await handshake_status(node, token) == 500, token
        calls = len(ta.CALLS)
        assert await handshake_status(node) == 401
        assert await handshake_status(node, "") == 401
        assert len(ta.CALLS) == calls  # a missing identity source never reaches the authorizer
        assert len(th.events_of("$connect")) == 1  # only the allowed handshake reached $connect


async def test_500_body_leaks_nothing() -> None:
    async with running_node(make_config(auth=authorizer_section())) as node:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(node), open_timeout=5, additional_headers={"Authorization": "boom"}):
                pass
        assert info.value.response.status_code == 500
        assert info.value.response.body == b"Internal Server Error\n"


async def test_cache_on_a_real_node() -> None:
    async with running_node(make_config(auth=authorizer_section(cache_ttl_s=300))) as node:
        for _ in range(3):
            assert await handshake_status(node, "allow:acme") == 101
            assert await handshake_status(node, "deny") == 403
        assert len(ta.CALLS) == 2
    async with running_node(make_config(auth=authorizer_section(cache_ttl_s=0))) as node:
        for _ in range(3):
            assert await handshake_status(node, "allow:acme") == 101
        assert len(ta.CALLS) == 5


_CLUSTER_AUTH = """
[auth]
type = "authorizer"
authorizer = "tests.authorizers_for_tests:decide_sync"
identity_sources = ["route.request.querystring.token"]
"""



@pytest.mark.redis
@pytest.mark.slow
async def test_dead_nodes_disconnect_carries_the_authorizer_context(cluster: Cluster) -> None:
    """A survivor runs the $disconnect of a killed node's connection with the context the
    authorizer returned on the dead node, types kept."""
    doomed, survivor = await cluster.start_all("a", "b", extra=_CLUSTER_AUTH)
    ws, conn_id = await doomed.connect(jwt="allow:acme")  # ?token=allow:acme
    await up_for(NODE_TTL_S, survivor)  # survivors sweep only after being up for node_ttl_s
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()

    def disconnects() -> list[dict[str, Any]]:
        return [e for e in cluster.events("$disconnect") if e["connectionId"] == conn_id]

    await wait_until(lambda: disconnects(), NODE_TTL_S + 5, "orphan $disconnect")
    [event] = disconnects()
    assert event["pid"] == survivor.process.pid
    assert event["authorizer"] == {"principalId": "user-1", "tenant": "acme", "role": "admin", "seats": 3, "beta": True}
    [connect] = [e for e in cluster.events("$connect") if e["connectionId"] == conn_id]
    assert connect["authorizer"] == event["authorizer"]
    with contextlib.suppress(Exception):
        await ws.close()
