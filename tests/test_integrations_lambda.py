"""Lambda integrations: target parsing and start-up checks, then real Invoke calls through
aioboto3 to a local endpoint speaking Lambda's API (tests/lambda_endpoint.py), alone and
behind a real node."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from handlers import aws_lambda
from tests import handlers_for_tests as fns
from tests.lambda_endpoint import LambdaEndpoint
from tests.support import ACCESS_KEY, REGION, SECRET_KEY, connect, eventually, make_config, running_node, sigv4_section
from wsgateway.config import GatewayConfig
from wsgateway.errors import ConfigError, HandlerTimeout, IntegrationError
from wsgateway.integrations import HandlerContext, LambdaClients, LambdaIntegration, load_integration
from wsgateway.integrations.lambda_ import parse_target

ROOT = Path(__file__).resolve().parent.parent
POOL = ThreadPoolExecutor(1)
ARN = f"arn:aws:lambda:{REGION}:123456789012:function:echo"


def not_json(event: dict[str, Any], context: Any) -> bytes:
    return b"<html>oops</html>"


def payload_of(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Echoes what a function sees, so tests can check the event went through untouched."""
    return {"statusCode": 200, "body": json.dumps({"event": event, "version": context.function_version})}


FUNCTIONS = {
    "on_connect": fns.on_connect,
    "on_disconnect": fns.on_disconnect,
    "echo": fns.echo,
    "whoami": fns.whoami,
    "boom": fns.boom,
    "slow": fns.slow,
    "none": fns.returns_none,
    "throttled": fns.echo,
    "not_json": not_json,
    "payload_of": payload_of,
    "sendmessage": aws_lambda.handler,
}


@pytest.fixture
def aws_env(monkeypatch):
    """The standard credential chain reads these; the endpoint knows the same pair."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_LAMBDA", "APIGW_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def lam(aws_env):
    async with LambdaEndpoint(FUNCTIONS, {ACCESS_KEY: SECRET_KEY}, region=REGION, throttled={"throttled"}) as endpoint:
        yield endpoint


def context() -> HandlerContext:
    return HandlerContext(_NoCalls(), asyncio.get_running_loop(), request_id="r", function_name="f",
                          connection_id="c", timeout=5)


class _NoCalls:
    """Lambda functions run behind the endpoint: the integration never calls the gateway."""


# ---------------------------------------------------------------- targets and start-up checks


@pytest.mark.parametrize(
    ("target", "function", "qualifier", "region"),
    [
        ("lambda:echo", "echo", "", ""),
        ("lambda:echo:live", "echo", "live", ""),
        ("lambda:echo:$LATEST", "echo", "$LATEST", ""),
        (f"lambda:{ARN}", ARN, "", REGION),
        (f"lambda:{ARN}:7", ARN, "7", REGION),
        ("lambda:arn:aws-cn:lambda:cn-north-1:123456789012:function:f", "arn:aws-cn:lambda:cn-north-1:123456789012:function:f",
         "", "cn-north-1"),
    ],
)
def test_targets_parse_into_function_qualifier_and_region(target, function, qualifier, region):
    parsed = parse_target(target, "routes.x")
    assert (parsed.function, parsed.qualifier, parsed.region) == (function, qualifier, region)


@pytest.mark.parametrize("target", ["lambda:", "lambda:a b", "lambda:a:b:c", "lambda:arn:aws:lambda:eu-west-1:12:function:f",
                                    "lambda:" + "x" * 65, ARN, "echo"])
def test_malformed_targets_name_the_key(target):
    with pytest.raises(ConfigError) as info:
        parse_target(target, "routes.x")
    assert info.value.key == "routes.x" and "lambda:NAME[:QUALIFIER]" in str(info.value)


def test_a_name_without_a_region_stops_start_up_in_one_line():
    clients = LambdaClients(timeout=1)
    with pytest.raises(ConfigError) as info:
        load_integration("lambda:echo", key="routes.$default", timeout=1, executor=POOL, lambdas=clients)
    assert info.value.key == "routes.$default"
    assert "[integrations.lambda] region" in str(info.value) and "\n" not in str(info.value)
    # an ARN names its own region
    arn = load_integration(f"lambda:{ARN}", key="routes.x", timeout=1, executor=POOL, lambdas=clients)
    assert isinstance(arn, LambdaIntegration) and arn.region == REGION


def test_gateway_refuses_a_lambda_route_without_region():
    with pytest.raises(ConfigError) as info:  # the config's routes rule refuses it first
        make_config(routes={"$default": "lambda:echo"})
    assert info.value.key == "routes.$default"


def test_serve_stops_with_one_line_naming_the_route(tmp_path):
    """What an operator sees: ``wsgateway serve`` exits 2 with one line, no traceback."""
    config = tmp_path / "g.toml"
    config.write_text('[listen]\nport = 0\n[management]\nport = 0\n[routes]\n"$default" = "lambda:echo"\n')
    out = subprocess.run([sys.executable, "-m", "wsgateway", "serve", "--config", str(config)],
                         cwd=ROOT, capture_output=True, text=True, timeout=30)
    errors = [line for line in out.stderr.splitlines() if "WARNING" not in line]
    assert out.returncode == 2
    assert len(errors) == 1 and "routes.$default" in errors[0] and "region" in errors[0], out.stderr


def test_without_aioboto3_start_up_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "aioboto3", None)  # what `import aioboto3` meets when it is not installed
    with pytest.raises(ConfigError) as info:
        load_integration("lambda:echo", key="routes.echo", timeout=1, executor=POOL,
                         lambdas=LambdaClients(region=REGION, timeout=1))
    assert info.value.key == "routes.echo"
    assert "pip install 'wsgateway[aws]'" in str(info.value) and "\n" not in str(info.value)


def test_python_targets_are_untouched():
    integration = load_integration("tests.handlers_for_tests:echo", key="routes.x", timeout=1, executor=POOL,
                                   lambdas=LambdaClients(timeout=1))
    assert not isinstance(integration, LambdaIntegration)


# ---------------------------------------------------------------- Invoke against the local endpoint


def _clients(lam: LambdaEndpoint, timeout: float = 2.0) -> LambdaClients:
    return LambdaClients(region=REGION, endpoint_url=lam.url, timeout=timeout)


async def test_invoke_returns_the_functions_payload_and_shares_one_client(lam):
    clients = _clients(lam)
    echo = LambdaIntegration.load("lambda:echo", key="routes.a", timeout=2, clients=clients)
    versioned = LambdaIntegration.load(f"lambda:{ARN}:live", key="routes.b", timeout=2, clients=clients)
    payload = LambdaIntegration.load("lambda:payload_of:7", key="routes.c", timeout=2, clients=clients)
    none = LambdaIntegration.load("lambda:none", key="routes.d", timeout=2, clients=clients)
    await clients.start()
    try:
        assert clients.client(REGION) is clients.client(REGION)
        event = {"body": "hi", "isBase64Encoded": False, "requestContext": {"routeKey": "$default"}}
        assert await echo.invoke(event, context()) == {"statusCode": 200, "body": "hi", "isBase64Encoded": False}
        assert await versioned.invoke(event, context()) == {"statusCode": 200, "body": "hi", "isBase64Encoded": False}
        seen = await payload.invoke(event, context())
        assert json.loads(seen["body"]) == {"event": event, "version": "7"}
        assert await none.invoke(event, context()) is None
        assert [(c.name, c.qualifier) for c in lam.invocations] == [
            ("echo", ""), ("echo", "live"), ("payload_of", "7"), ("none", "")]
    finally:
        await clients.close()
    with pytest.raises(IntegrationError) as info:
        await echo.invoke({}, context())
    assert info.value.reason == "closed"
    await clients.close()  # idempotent


@pytest.mark.parametrize(
    ("function", "reason"),
    [("boom", "function_error"), ("throttled", "throttle"), ("not_json", "invalid_json"), ("nobody", "4xx")],
)
async def test_failures_raise_integration_errors(lam, function, reason):
    clients = _clients(lam)
    integration = LambdaIntegration.load(f"lambda:{function}", key="routes.x", timeout=2, clients=clients)
    await clients.start()
    try:
        with pytest.raises(IntegrationError) as info:
            await integration.invoke({"body": ""}, context())
    finally:
        await clients.close()
    assert (info.value.kind, info.value.reason) == ("lambda", reason)
    assert info.value.retryable is (reason == "throttle")  # the function did not run: trying again may work
    if reason == "function_error":  # what the log gets: Lambda's error type and message
        assert "Unhandled" in str(info.value) and "ValueError" in str(info.value)


async def test_a_function_past_the_limit_times_out(lam):
    clients = _clients(lam, timeout=0.3)
    integration = LambdaIntegration.load("lambda:slow", key="routes.x", timeout=0.3, clients=clients)
    await clients.start()
    try:
        with pytest.raises(HandlerTimeout):
            await asyncio.wait_for(integration.invoke({}, context()), 5)
    finally:
        await clients.close()


async def test_a_wrong_secret_is_refused_by_the_endpoint(lam, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    clients = _clients(lam)
    integration = LambdaIntegration.load("lambda:echo", key="routes.x", timeout=2, clients=clients)
    await clients.start()
    try:
        with pytest.raises(IntegrationError) as info:
            await integration.invoke({"body": "x"}, context())
    finally:
        await clients.close()
    assert info.value.reason == "4xx" and "403 InvalidSignatureException" in str(info.value)
    assert lam.refused == 1 and lam.invocations == []


async def test_an_endpoint_that_is_down_fails_the_call(aws_env):
    async with LambdaEndpoint(FUNCTIONS, {ACCESS_KEY: SECRET_KEY}, region=REGION) as gone:
        url = gone.url
    clients = LambdaClients(region=REGION, endpoint_url=url, timeout=2)
    integration = LambdaIntegration.load("lambda:echo", key="routes.x", timeout=2, clients=clients)
    await clients.start()
    try:
        with pytest.raises(IntegrationError) as info:
            await integration.invoke({}, context())
    finally:
        await clients.close()
    assert info.value.reason == "connect" and info.value.retryable


# ---------------------------------------------------------------- behind a real node

LAMBDA_ROUTES = {
    "$connect": "lambda:on_connect",
    "$disconnect": "lambda:on_disconnect",
    "$default": "lambda:echo",
    "whoami": "lambda:whoami",
    "boom": "lambda:boom",
    "slow": "lambda:slow",
    "throttled": "lambda:throttled",
    "sendmessage": "lambda:sendmessage",
}


def lambda_config(lam: LambdaEndpoint, **sections: Any) -> GatewayConfig:
    return make_config(routes=LAMBDA_ROUTES, management=sigv4_section(),
                       integrations={"lambda": {"region": REGION, "endpoint_url": lam.url}}, **sections)


def error_frame(reply: str | bytes) -> str:
    frame = json.loads(reply)
    assert set(frame) == {"message", "connectionId", "requestId"}
    return str(frame["message"])


async def test_connect_allows_denies_and_fails_closed(lam):
    async with running_node(lambda_config(lam, limits={"handler_timeout_s": 0.5})) as node:
        async with await connect(node) as ws:
            await ws.send("ping")
            assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        for query, status in [({"connect": "403"}, 403), ({"connect": "401"}, 401), ({"connect": "raise"}, 500),
                              ({"connect": "slow"}, 500)]:
            with pytest.raises(InvalidStatus) as info:
                await connect(node, query=query)
            assert info.value.response.status_code == status
            assert b"secret internal detail" not in info.value.response.body


async def test_messages_two_way_in_order_and_disconnect_exactly_once(lam):
    async with running_node(lambda_config(lam)) as node:
        ws = await connect(node)
        for i in range(5):
            await ws.send(f"m{i}")
        assert [await asyncio.wait_for(ws.recv(), 5) for _ in range(5)] == [f"m{i}" for i in range(5)]
        await ws.send(b"\x00\x01")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\x01"
        await ws.send('{"action": "whoami"}')
        connection_id = json.loads(await asyncio.wait_for(ws.recv(), 5))["connectionId"]
        await ws.close()

        def disconnects() -> list[Any]:
            return [c for c in lam.calls_of("on_disconnect")
                    if c.event["requestContext"]["connectionId"] == connection_id]

        await eventually(disconnects)
        await asyncio.sleep(0.2)  # a second $disconnect would come right after the first
        assert len(disconnects()) == 1
        assert disconnects()[0].event["requestContext"]["eventType"] == "DISCONNECT"


async def test_failures_answer_with_aws_error_frames(lam):
    async with running_node(lambda_config(lam, limits={"handler_timeout_s": 0.5})) as node:
        async with await connect(node) as ws:
            for action, message in [("boom", "Internal server error"), ("throttled", "Internal server error"),
                                    ("slow", "Endpoint request timed out")]:
                await ws.send(json.dumps({"action": action}))
                reply = await asyncio.wait_for(ws.recv(), 5)
                assert error_frame(reply) == message, action
                assert "secret internal detail" not in reply
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
        assert node.gateway.stats.handler_errors == 2
        assert node.gateway.stats.handler_timeouts == 1


async def test_aws_handler_posts_back_through_the_management_api(lam):
    async with running_node(lambda_config(lam)) as node, await connect(node) as ws:
        await ws.send(json.dumps({"action": "sendmessage", "data": "hi from lambda"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"echo": "hi from lambda"}
        assert [c.name for c in lam.invocations if c.name == "sendmessage"] == ["sendmessage"]


async def test_a_wrong_secret_rejects_the_handshake_with_500(lam, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    async with running_node(lambda_config(lam)) as node:
        with pytest.raises(InvalidStatus) as info:
            await connect(node)
        assert info.value.response.status_code == 500
    assert lam.refused >= 1 and lam.calls_of("on_connect") == []


async def test_websockets_client_sees_nothing_of_the_backend_on_500(lam):
    async with running_node(lambda_config(lam)) as node:
        with pytest.raises(InvalidStatus) as info:
            await websockets.connect(f"ws://127.0.0.1:{node.port}/prod?connect=raise", open_timeout=5)
        body = info.value.response.body or b""
        assert b"RuntimeError" not in body and b"on_connect" not in body
