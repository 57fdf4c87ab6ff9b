"""Python integrations: resolution at start-up, sync and async calls, time limits."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from wsgateway.errors import ConfigError
from wsgateway.integrations import HandlerContext, HandlerTimeout, load_integration

POOL = ThreadPoolExecutor(2)


class Calls:
    async def post_to_connection(self, connection_id, data):
        self.posted = (connection_id, data, threading.current_thread().name)


def context(gateway=None) -> HandlerContext:
    return HandlerContext(gateway or Calls(), asyncio.get_running_loop(), request_id="r", function_name="f",
                          connection_id="c", timeout=5)


def load(target: str, timeout: float = 1.0):
    return load_integration(target, key="routes.x", timeout=timeout, executor=POOL)


@pytest.mark.parametrize(
    ("target", "problem"),
    [("no_colon", "module:function"), ("tests.nope:f", "cannot import"), ("tests.handlers_for_tests:missing", "no attribute"),
     ("tests.handlers_for_tests:EVENTS", "not callable")],
)
def test_bad_targets_name_the_route_key(target, problem):
    with pytest.raises(ConfigError) as info:
        load(target)
    assert info.value.key == "routes.x" and problem in str(info.value)


async def test_async_and_sync_handlers():
    assert (await load("handlers.echo:handler").invoke({"body": "b"}, context()))["body"] == "b"
    calls = Calls()
    result = await load("tests.handlers_for_tests:sync_echo").invoke({"body": "s"}, context(calls))
    assert result == {"statusCode": 200, "body": "sync:s"}
    assert calls.posted[:2] == ("c", "from thread")  # context.run from the worker thread


async def test_timeouts_raise_handler_timeout_for_both_kinds():
    with pytest.raises(HandlerTimeout):
        await load("tests.handlers_for_tests:slow", timeout=0.05).invoke({}, context())

    def blocking(event, ctx):
        import time
        time.sleep(0.3)

    import sys
    import types
    mod = types.ModuleType("tests._blocking_mod")
    mod.blocking = blocking
    sys.modules["tests._blocking_mod"] = mod
    with pytest.raises(HandlerTimeout):
        await load("tests._blocking_mod:blocking", timeout=0.05).invoke({}, context())


async def test_handler_own_timeout_error_is_not_a_gateway_timeout():
    async def raises(event, ctx):
        raise TimeoutError("upstream")

    import sys
    import types
    mod = types.ModuleType("tests._raises_mod")
    mod.raises = raises
    sys.modules["tests._raises_mod"] = mod
    with pytest.raises(TimeoutError) as info:
        await load("tests._raises_mod:raises").invoke({}, context())
    assert not isinstance(info.value, HandlerTimeout)


async def test_lambda_context_attributes():
    ctx = context()
    assert ctx.aws_request_id == "r" and ctx.function_name == "f" and ctx.function_version == "$LATEST"
    assert 0 < ctx.get_remaining_time_in_millis() <= 5000


async def test_the_dispatchers_context_is_the_one_the_class_builds():
    """HandlerContext.for_message fills the slots __init__ fills, with the same values."""
    calls, loop = Calls(), asyncio.get_running_loop()
    built = HandlerContext(calls, loop, request_id="r", function_name="f", connection_id="c", timeout=5)
    fast = HandlerContext.for_message(calls, loop, "r", "f", "c", 5)
    assert type(fast) is HandlerContext
    for name in HandlerContext.__slots__:
        if name != "_deadline":
            assert getattr(fast, name) is getattr(built, name), name
    assert abs(fast._deadline - built._deadline) < 1.0
    assert 0 < fast.get_remaining_time_in_millis() <= 5000
