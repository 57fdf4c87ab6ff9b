"""The ``context`` argument handlers receive: AWS Lambda's context plus gateway calls.

Handlers push without HTTP through the coroutines :meth:`HandlerContext.post_to_connection`,
:meth:`~HandlerContext.get_connection`, :meth:`~HandlerContext.delete_connection`,
:meth:`~HandlerContext.post_to_tenant`, ``post_to_user``, ``post_to_group``, ``join_group``
and ``leave_group``: the same semantics as the management API, raising
``wsgateway.GoneError`` for a gone connection. A sync handler (running in a worker thread)
calls them through :meth:`HandlerContext.run`.

The three fan-out calls return a :class:`wsgateway.fanout.FanoutResult`: ``.delivered``
(connections that took it) and ``.unreachable_nodes`` (nodes that did not confirm; > 0 is a
partial delivery, where retrying would duplicate it for the ``delivered`` ones).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from ..fanout import FanoutResult

__all__ = ["GatewayCalls", "HandlerContext"]

T = TypeVar("T")
_new = object.__new__


class GatewayCalls(Protocol):
    """The gateway's push API, as handlers see it."""

    async def post_to_connection(self, connection_id: str, data: bytes | str) -> None: ...
    async def get_connection(self, connection_id: str) -> dict[str, Any]: ...
    async def delete_connection(self, connection_id: str) -> None: ...
    async def post_to_tenant(self, tenant: str, data: bytes | str) -> FanoutResult: ...
    async def post_to_user(self, tenant: str, user: str, data: bytes | str) -> FanoutResult: ...
    async def post_to_group(self, tenant: str, group: str, data: bytes | str) -> FanoutResult: ...
    async def join_group(self, connection_id: str, group: str) -> None: ...
    async def leave_group(self, connection_id: str, group: str) -> None: ...


class HandlerContext:
    """Lambda-style context for one invocation (attributes named as in AWS's Python runtime)."""

    __slots__ = ("_gateway", "_loop", "aws_request_id", "function_name", "connection_id", "_deadline")

    function_version = "$LATEST"
    memory_limit_in_mb = "0"
    invoked_function_arn = ""
    log_group_name = "wsgateway"
    log_stream_name = "wsgateway"
    identity = None
    client_context = None

    def __init__(
        self,
        gateway: GatewayCalls,
        loop: asyncio.AbstractEventLoop,
        request_id: str,
        function_name: str,
        connection_id: str,
        timeout: float,
    ) -> None:
        self._gateway = gateway
        self._loop = loop
        self.aws_request_id = request_id
        self.function_name = function_name
        self.connection_id = connection_id
        self._deadline = time.monotonic() + timeout

    @staticmethod
    def for_message(
        gateway: GatewayCalls, loop: asyncio.AbstractEventLoop, request_id: str, function_name: str,
        connection_id: str, timeout: float,
    ) -> HandlerContext:
        """What ``HandlerContext(...)`` builds, for the dispatcher's per-message call: calling
        a class runs ``__init__`` through the type's C slot (a nested interpreter call, ~2k
        instructions on CPython 3.11), filling the slots here costs a fraction of that."""
        context = _new(HandlerContext)
        context._gateway = gateway
        context._loop = loop
        context.aws_request_id = request_id
        context.function_name = function_name
        context.connection_id = connection_id
        context._deadline = time.monotonic() + timeout
        return context

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))

    async def post_to_connection(self, connection_id: str, data: bytes | str) -> None:
        """Send ``data`` to a connection (text if str or valid UTF-8, else binary);
        raise GoneError, LimitExceededError, PayloadTooLargeError, RegistryUnavailableError."""
        await self._gateway.post_to_connection(connection_id, data)

    async def get_connection(self, connection_id: str) -> dict[str, Any]:
        """The GetConnection JSON (connectedAt, lastActiveAt, identity); raise GoneError."""
        return await self._gateway.get_connection(connection_id)

    async def delete_connection(self, connection_id: str) -> None:
        """Close a connection with 1000; raise GoneError."""
        await self._gateway.delete_connection(connection_id)

    async def post_to_tenant(self, tenant: str, data: bytes | str) -> FanoutResult:
        """Send ``data`` to every connection of ``tenant`` on every node; return how many took
        it and how many nodes did not confirm. Raise PayloadTooLargeError, and
        RegistryUnavailableError when nobody got it because a node did not answer."""
        return await self._gateway.post_to_tenant(tenant, data)

    async def post_to_user(self, tenant: str, user: str, data: bytes | str) -> FanoutResult:
        """Send ``data`` to every connection of one user (the token's ``sub``) of ``tenant``;
        result and errors as :meth:`post_to_tenant`."""
        return await self._gateway.post_to_user(tenant, user, data)

    async def post_to_group(self, tenant: str, group: str, data: bytes | str) -> FanoutResult:
        """Send ``data`` to every connection in a group of ``tenant``; result and errors as
        :meth:`post_to_tenant`."""
        return await self._gateway.post_to_group(tenant, group, data)

    async def join_group(self, connection_id: str, group: str) -> None:
        """Add a connection to a group of its tenant (e.g. the caller's own: a "subscribe"
        route); raise GoneError."""
        await self._gateway.join_group(connection_id, group)

    async def leave_group(self, connection_id: str, group: str) -> None:
        """Take a connection out of a group of its tenant; raise GoneError."""
        await self._gateway.leave_group(connection_id, group)

    def run(self, awaitable: Awaitable[T]) -> T:
        """From a sync handler's worker thread: run one of the coroutines above and wait."""
        async def _wrap() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(_wrap(), self._loop).result()
