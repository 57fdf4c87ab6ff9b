"""One client message: route it, run its handler, answer as AWS does.

A connection's messages are dispatched one at a time, in order (its read loop awaits each).
The answers a client may get besides a handler's own ``body`` are AWS's error frames:
``Forbidden`` (no route and no ``$default``), ``Internal server error`` (the handler raised;
its text stays in the log with the request id) and ``Endpoint request timed out``.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import orjson

from . import events
from .connection import Connection, as_payload
from .errors import Disconnect, GoneError, LimitExceededError
from .ids import new_request_id
from .integrations import HandlerTimeout, Integration
from .routing import Router

if TYPE_CHECKING:
    from .gateway import Gateway

__all__ = ["Dispatcher", "log_handler_failure"]

log = logging.getLogger("wsgateway")

# AWS's error frame, spacing included (aws-websocket-api.md §2.2, §2.3).
_ERROR_FRAME = '{{"message": "{}", "connectionId":"{}", "requestId":"{}"}}'


def log_handler_failure(exc: BaseException, route_key: str, request_id: str, connection_id: str) -> None:
    """Log a handler's failure with its request id; the client never sees the text."""
    if isinstance(exc, HandlerTimeout):
        log.warning("handler timed out: route=%s requestId=%s connectionId=%s", route_key, request_id, connection_id)
    else:
        log.error(
            "handler failed: route=%s requestId=%s connectionId=%s",
            route_key, request_id, connection_id, exc_info=exc,
        )


class Dispatcher:
    """Routes client messages of every connection of one gateway."""

    __slots__ = ("_gateway", "_router", "_access", "_loop", "_queue_limit", "_stats", "_timeout")

    def __init__(self, gateway: Gateway, router: Router[Integration]) -> None:
        self._gateway = gateway
        self._router = router
        self._access = gateway.access
        self._loop = gateway.loop
        self._queue_limit = gateway.config.limits.max_queued_bytes
        self._stats = gateway.stats
        self._timeout = gateway.config.limits.handler_timeout_s

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        """Route one message and run its handler; never raises for the handler's sake."""
        started = time.perf_counter()
        conn.last_active = self._loop.time()
        self._stats.messages += 1
        if isinstance(message, str):
            selected = self._router.select(message)
            body, is_b64 = message, False
        else:
            selected = self._router.select_binary()
            body, is_b64 = base64.b64encode(message).decode(), True
        request_id = new_request_id()
        if selected is None:
            self._stats.no_route += 1
            self._send_error(conn, "Forbidden", request_id)
            self._log(conn, "", 403, request_id, started)
            return
        route_key, integration = selected
        event = events.message_event(
            conn.context_base, route_key=route_key, body=body, is_base64=is_b64,
            request_id=request_id, epoch_s=time.time(),
        )
        status = 200
        try:
            result = await self._call(conn, integration, event, request_id)
        except Disconnect as exc:
            self._gateway.close(conn, exc.code, exc.reason)
        except HandlerTimeout as exc:
            status = 504
            self._stats.handler_timeouts += 1
            log_handler_failure(exc, route_key, request_id, conn.id)
            self._send_error(conn, "Endpoint request timed out", request_id)
        except Exception as exc:
            status = 500
            self._stats.handler_errors += 1
            log_handler_failure(exc, route_key, request_id, conn.id)
            self._send_error(conn, "Internal server error", request_id)
        else:
            if result is not None:
                self._reply(conn, result, request_id)
        self._log(conn, route_key, status, request_id, started)

    async def _call(self, conn: Connection, integration: Integration, event: dict[str, Any], request_id: str) -> Any:
        """Run the handler under the route's time limit, without a timer per message: the
        gateway's sweep cancels the connection's task once ``conn.deadline`` has passed."""
        context = self._gateway.handler_context(integration, request_id, conn.id)
        conn.deadline = self._loop.time() + self._timeout
        try:
            return await integration.call(event, context)
        except asyncio.CancelledError:
            if not conn.deadline_hit:
                raise  # the connection or the node is going away
            conn.deadline_hit = False
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            raise HandlerTimeout(integration.target) from None
        finally:
            conn.deadline = 0.0

    def _reply(self, conn: Connection, result: Any, request_id: str) -> None:
        """Two-way route: send the handler's ``body`` back as one frame."""
        if isinstance(result, Mapping):
            body = result.get("body")
            if body is None:
                return
            if result.get("isBase64Encoded"):
                data, binary = base64.b64decode(body), True
            elif isinstance(body, str):
                data, binary = body.encode(), False
            elif isinstance(body, bytes | bytearray):
                data, binary = as_payload(bytes(body))
            else:
                data, binary = orjson.dumps(body), False
        elif isinstance(result, str):
            data, binary = result.encode(), False
        else:
            log.warning("handler returned %s, not a dict: nothing sent (requestId=%s)", type(result).__name__, request_id)
            return
        self._send(conn, data, binary)

    def _send_error(self, conn: Connection, message: str, request_id: str) -> None:
        self._send(conn, _ERROR_FRAME.format(message, conn.id, request_id).encode(), False)

    def _send(self, conn: Connection, data: bytes, binary: bool) -> None:
        try:
            conn.send(data, binary, self._loop.time(), self._queue_limit)
        except (GoneError, LimitExceededError):
            pass  # the client is gone or not reading: the sweep deals with the latter

    def _log(self, conn: Connection, route_key: str, status: int, request_id: str, started: float) -> None:
        if not self._access.enabled:
            return
        rec = conn.record
        self._access.write(
            "message",
            requestId=request_id,
            connectionId=rec.connection_id,
            routeKey=route_key,
            status=status,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            tenant=rec.tenant,
            sourceIp=rec.source_ip,
            userAgent=rec.user_agent,
        )
