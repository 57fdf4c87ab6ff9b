"""Node lifecycle: start order, idempotent stop, failure cleanup, the handlers' env."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import make_config
from wsgateway.errors import ConfigError
from wsgateway.node import MANAGEMENT_URL_ENV, Node


async def test_stop_is_idempotent_and_env_names_the_management_url():
    node = Node(make_config())
    await node.start()
    assert os.environ[MANAGEMENT_URL_ENV] == f"http://127.0.0.1:{node.management_port}/prod"
    await node.stop()
    await node.stop()


async def test_start_failure_releases_what_started():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    node = Node(make_config(management={"port": port}))
    with pytest.raises(OSError):
        await node.start()
    # The client port it had opened is released: a new node can take any port again.
    assert node.gateway.draining and not node.gateway.ready
    busy.close()


async def test_bad_route_stops_start():
    node = Node(make_config(routes={"$default": "tests.handlers_for_tests:nope"}))
    with pytest.raises(ConfigError) as info:
        await node.start()
    assert info.value.key == "routes.$default"


# What a node imports to start: a separate process, as this one has imported everything.
_STARTED = """
import asyncio, json, sys
from wsgateway.config import parse_config
from wsgateway.node import Node

async def main():
    async with Node(parse_config(json.loads(sys.argv[1]))) as node:
        if sys.argv[2] == "scrape":
            reader, writer = await asyncio.open_connection("127.0.0.1", node.management_port)
            writer.write(b"GET /metrics HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n")
            assert (await reader.read()).startswith(b"HTTP/1.1 200 OK")
        print(json.dumps(sorted(name for name in json.loads(sys.argv[3]) if name in sys.modules)))

asyncio.run(main())
"""
_HEAVY = ["aiohttp", "jwt", "cryptography", "prometheus_client"]
_PORTS = {"listen": {"host": "127.0.0.1", "port": 0}, "management": {"host": "127.0.0.1", "port": 0}}


def _imported_by_a_started_node(config: dict, scrape: bool = False) -> list[str]:
    argv = [sys.executable, "-c", _STARTED, json.dumps({**_PORTS, **config}), "scrape" if scrape else "",
            json.dumps(_HEAVY)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_node_imports_only_what_its_config_needs():
    """aiohttp (HTTP routes, JWKS), PyJWT with cryptography (``auth.type = "jwt"``) and
    prometheus_client (a /metrics scrape) are a large share of a node's start-up: a node that
    uses none of them imports none; one configured for them imports them (and works: their
    own tests say so)."""
    assert _imported_by_a_started_node({}) == []
    jwt_auth = {"auth": {"type": "jwt", "algorithms": ["HS256"], "secret": "s" * 40, "tenant_claim": "t"}}
    assert _imported_by_a_started_node(jwt_auth) == ["cryptography", "jwt"]
    http_route = {"routes": {"$default": "http://127.0.0.1:9/events"},
                  "integrations": {"http": {"allow_plain_http": True}}}
    assert _imported_by_a_started_node(http_route) == ["aiohttp"]
    assert _imported_by_a_started_node({}, scrape=True) == ["prometheus_client"]
