"""The handlers/ modules users copy, run end to end through a real node."""

from __future__ import annotations

import asyncio
import importlib
import json
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from handlers.dashboard import publish_call_event
from tests.support import (
    ACCESS_KEY,
    REGION,
    SECRET_KEY,
    endpoint,
    jwt_section,
    make_config,
    running_node,
    sigv4_section,
    token,
    ws_url,
)

ROOT = Path(__file__).resolve().parent.parent

DASHBOARD_ROUTES = {
    "$connect": "handlers.dashboard:on_connect",
    "$disconnect": "handlers.dashboard:on_disconnect",
    "$default": "handlers.echo:handler",
    "subscribe": "handlers.dashboard:subscribe",
    "sendmessage": "handlers.aws_lambda:handler",
}


@pytest.fixture
def aws_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("APIGW_ENDPOINT", raising=False)


def dashboard_config():
    return make_config(routes=DASHBOARD_ROUTES, auth=jwt_section(), management=sigv4_section())


async def test_practice_dashboard_gets_call_events_by_one_fanout(aws_env):
    async with running_node(dashboard_config()) as node:
        staff = [
            await websockets.connect(ws_url(node, token=token(f"u{i}", "practice-1", role="staff"))) for i in range(3)
        ]
        elsewhere = await websockets.connect(ws_url(node, token=token("x", "practice-2", role="staff")))
        for ws in [*staff, elsewhere]:
            await ws.send('{"action": "subscribe"}')
            reply = json.loads(await ws.recv())
            assert reply["type"] == "subscribed"
        call = {"status": "ringing", "from": "+44 20"}
        delivered = await publish_call_event(endpoint(node), "practice-1", call, region=REGION)
        assert delivered == 3
        for ws in staff:
            assert json.loads(await ws.recv()) == {"type": "call", "status": "ringing", "from": "+44 20"}
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(elsewhere.recv(), 0.2)
        for ws in [*staff, elsewhere]:
            await ws.close()


async def test_dashboard_refuses_other_roles():
    async with running_node(dashboard_config()) as node:
        with pytest.raises(InvalidStatus) as info:
            async with websockets.connect(ws_url(node, token=token(role="patient"))):
                pass
        assert info.value.response.status_code == 403


async def test_aws_lambda_handler_posts_back_through_aioboto3(aws_env):
    async with (
        running_node(dashboard_config()) as node,
        websockets.connect(ws_url(node, token=token(role="staff"))) as ws,
    ):
        await ws.send(json.dumps({"action": "sendmessage", "data": "hi from lambda"}))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10)) == {"echo": "hi from lambda"}


async def test_echo_handler_text_and_binary():
    async with (
        running_node(make_config(routes={"$default": "handlers.echo:handler"})) as node,
        websockets.connect(ws_url(node)) as ws,
    ):
        await ws.send("plain")
        assert await ws.recv() == "plain"
        await ws.send(b"\x01\x02")
        assert await ws.recv() == b"\x01\x02"


@pytest.mark.parametrize("name", ["echo", "dashboard", "aws_lambda"])
def test_the_installed_examples_are_the_handlers_directory(name):
    """One copy of the example code: the package the embedded defaults import is handlers/."""
    installed = importlib.import_module(f"wsgateway.examples.{name}")
    assert installed.__file__ is not None
    assert Path(installed.__file__).read_bytes() == (ROOT / "handlers" / f"{name}.py").read_bytes()
