"""Helpers for end-to-end tests: real nodes on port 0, real clients, tokens, waiting.

Nothing here mocks the gateway: :func:`running_node` starts the same ``Node`` that
``wsgateway serve`` runs, on free loopback ports, with the config a test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import jwt
import websockets
from websockets.asyncio.client import ClientConnection

from wsgateway.config import GatewayConfig, parse_config
from wsgateway.node import Node

# Timing unit for tests; scale with WSGW_TEST_MS on a slow machine (websockets' tests/utils.MS).
MS = 0.001 * float(os.environ.get("WSGW_TEST_MS", "1"))

HS_SECRET = "test-secret-with-enough-entropy-0123456789"
ACCESS_KEY = "AKIDGATEWAYTEST"
SECRET_KEY = "gateway-test-secret-key"
REGION = "eu-west-1"

TEST_ROUTES = {
    "$connect": "tests.handlers_for_tests:on_connect",
    "$disconnect": "tests.handlers_for_tests:on_disconnect",
    "$default": "tests.handlers_for_tests:echo",
    "whoami": "tests.handlers_for_tests:whoami",
    "boom": "tests.handlers_for_tests:boom",
    "slow": "tests.handlers_for_tests:slow",
    "sync_echo": "tests.handlers_for_tests:sync_echo",
    "push_self": "tests.handlers_for_tests:push_self",
    "push_tenant": "tests.handlers_for_tests:push_tenant",
    "bye": "tests.handlers_for_tests:bye",
    "event": "tests.handlers_for_tests:event",
    "none": "tests.handlers_for_tests:returns_none",
    "join": "tests.handlers_for_tests:join",
    "sync_slow": "tests.handlers_for_tests:sync_slow",
    "tell_group": "tests.handlers_for_tests:tell_group",
}


def make_config(data: Mapping[str, Any] | None = None, **sections: Mapping[str, Any]) -> GatewayConfig:
    """A config on free loopback ports, access log off, test routes; ``sections`` override."""
    doc: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0, "ping_interval_s": 5, "ping_timeout_s": 5},
        "management": {"host": "127.0.0.1", "port": 0},
        "log": {"access_log": ""},
        "routes": dict(TEST_ROUTES),
        "limits": {"handler_timeout_s": 2, "close_timeout_s": 1, "shutdown_timeout_s": 5},
    }
    for name, values in {**(data or {}), **sections}.items():
        if isinstance(values, Mapping) and name != "routes":
            doc.setdefault(name, {}).update(values)
        else:
            doc[name] = values
    return parse_config(doc)


def sigv4_section() -> dict[str, Any]:
    return {
        "auth": "sigv4",
        "credentials": [{"access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY}],
    }


def jwt_section(**extra: Any) -> dict[str, Any]:
    return {"type": "jwt", "algorithms": ["HS256"], "secret": HS_SECRET, "tenant_claim": "practice_id",
            "context_claims": ["role"], **extra}


def token(
    sub: str = "user-1",
    practice_id: str | None = "practice-1",
    *,
    secret: str = HS_SECRET,
    ttl: float = 300,
    **claims: Any,
) -> str:
    body: dict[str, Any] = {"sub": sub, "exp": int(time.time() + ttl), **claims}
    if practice_id is not None:
        body["practice_id"] = practice_id
    return jwt.encode(body, secret, algorithm="HS256")


@contextlib.asynccontextmanager
async def running_node(config: GatewayConfig | None = None, **sections: Any) -> AsyncIterator[Node]:
    """Start a real node on free ports; stop (drain) it afterwards."""
    node = Node(config or make_config(**sections))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def ws_url(node: Node, path: str = "/prod", **query: str) -> str:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    return f"ws://127.0.0.1:{node.port}{path}" + (f"?{qs}" if qs else "")


def endpoint(node: Node, stage: bool = True) -> str:
    return f"http://127.0.0.1:{node.management_port}" + ("/prod" if stage else "")


async def connect(node: Node, path: str = "/prod", **kwargs: Any) -> ClientConnection:
    query = kwargs.pop("query", {})
    return await websockets.connect(ws_url(node, path, **query), open_timeout=5, **kwargs)


async def whoami(ws: ClientConnection) -> str:
    """Ask the test route for this connection's id."""
    await ws.send('{"action": "whoami"}')
    reply = await asyncio.wait_for(ws.recv(), 5)
    import json

    return str(json.loads(reply)["connectionId"])


async def eventually(check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns a truthy value (or raises no AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(20 * MS)
