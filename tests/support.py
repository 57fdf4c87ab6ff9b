"""Helpers for end-to-end tests: real nodes on port 0, real clients, tokens, waiting.

Nothing here mocks the gateway: :func:`running_node` starts the same ``Node`` that
``wsgateway serve`` runs, on free loopback ports, with the config a test asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
import psutil
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


# ---------------------------------------------------------------- a node as a subprocess

_ROOT = Path(__file__).resolve().parent.parent  # the checkout a subprocess node runs from


@dataclasses.dataclass
class NodeProcess:
    """A ``wsgateway serve`` subprocess and the ports its ready file named."""

    process: asyncio.subprocess.Process
    port: int
    management_port: int
    log_path: Path

    def rss(self) -> int:
        """The node's resident set size in bytes, now."""
        return int(psutil.Process(self.process.pid).memory_info().rss)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


# The start of a config for node_process: both ports on loopback, chosen by the system, no
# access log; a test adds its [routes] and whatever else it needs.
PROCESS_PORTS = """
[listen]
host = "127.0.0.1"
port = 0
[management]
host = "127.0.0.1"
port = 0
[log]
access_log = ""
"""


@contextlib.asynccontextmanager
async def node_process(tmp_path: Path, config_toml: str, start_timeout: float = 30.0) -> AsyncIterator[NodeProcess]:
    """Run ``wsgateway serve --config`` (``config_toml`` written to ``tmp_path``) until the
    block ends, then SIGTERM it and wait; kill it if it does not exit within 10 s."""
    root = _ROOT
    config, ready, log_path = tmp_path / "node.toml", tmp_path / "node.ready.json", tmp_path / "node.log"
    config.write_text(config_toml)
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - the child inherits it at once
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wsgateway", "serve", "--config", str(config), "--ready-file", str(ready),
            cwd=root, stdout=log, stderr=asyncio.subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(root)},
        )
    try:
        async with asyncio.timeout(start_timeout):
            while not ready.exists():
                assert process.returncode is None, log_path.read_text(errors="replace")
                await asyncio.sleep(0.05)
        info = json.loads(ready.read_text())
        yield NodeProcess(process, info["port"], info["management_port"], log_path)
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            async with asyncio.timeout(10):
                await process.wait()


# ---------------------------------------------------------------- a WebSocket client by hand

RawStreams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def raw_handshake(port: int, *, extensions: str = "", recv_buffer: int = 0) -> RawStreams:
    """Open a TCP connection to ``127.0.0.1:port`` and upgrade it to a WebSocket by hand.

    For tests that must write frames no well-behaved client would (or never read): the
    caller speaks raw frames on the returned streams. ``extensions`` is sent as
    Sec-WebSocket-Extensions; ``recv_buffer`` sets SO_RCVBUF before connecting. Raises
    AssertionError unless the answer is 101 (with the extension accepted, if one was asked).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if recv_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, recv_buffer)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    extra = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    writer.write(
        f"GET /prod HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert not extensions or b"sec-websocket-extensions: " + extensions.split(";")[0].encode() in head.lower(), head
    return reader, writer


async def read_raw_frame(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    """Read one unmasked (server) frame: (opcode, rsv1, payload); IncompleteReadError at EOF."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, bool(first & 0x40), await reader.readexactly(length)


async def raw_get(port: int, path: str = "/health") -> tuple[int, bytes]:
    """``GET path`` on ``127.0.0.1:port`` over a fresh connection (closed after): (status, body)."""
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            head, _, body = (await reader.read()).partition(b"\r\n\r\n")
        finally:
            writer.close()
    assert head.startswith(b"HTTP/1.1 "), head
    return int(head.split(b" ", 2)[1]), body


async def exchange_raw(node: Node, raw: bytes, *, limit_s: float = 5) -> bytes:
    """Write ``raw`` on a new connection to the node's management port; return all the node
    answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.management_port)
    writer.write(raw)
    await writer.drain()
    try:
        async with asyncio.timeout(limit_s):
            return await reader.read()
    finally:
        writer.close()
