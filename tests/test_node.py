"""Node lifecycle: start order, idempotent stop, failure cleanup, the handlers' env."""

import os
import socket

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
