"""Runs a connection's routes: ``$connect``, its messages, ``$disconnect``; answers as AWS does.

A connection's messages are dispatched one at a time, in order (its read loop awaits each).
The answers a client may get besides a handler's own ``body`` are AWS's error frames:
``Forbidden`` (no route and no ``$default``), ``Internal server error`` (the handler raised;
its text stays in the log with the request id) and ``Endpoint request timed out``. A token
refresh (``auth.refresh_action``, see :mod:`wsgateway.lifetime`) is answered here, never by a
handler: ``Token refreshed`` with the new ``expiresAt``, or ``Unauthorized``.

The dispatcher sees the gateway only through :class:`RouteHost`: the calls handlers may make
and a way to close a connection.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from . import events
from .connection import Connection, as_payload
from .errors import (
    AuthError,
    Disconnect,
    GoneError,
    HandlerExit,
    HandlerTimeout,
    IntegrationError,
    LimitExceededError,
)
from .ids import new_request_id
from .integrations import HandlerContext, Integration
from .integrations.context import GatewayCalls
from .usage import TOO_MANY_REQUESTS

if TYPE_CHECKING:
    from .accesslog import AccessLog
    from .lifetime import TokenLifetime
    from .metrics import Stats
    from .records import ConnectionRecord
    from .routing import Router
    from .usage import RouteGate, Usage

__all__ = ["ConnectOutcome", "Dispatcher", "RouteHost"]

log = logging.getLogger("wsgateway")

_handler_context = HandlerContext.for_message  # a module global: one lookup per message

# AWS's error frame, spacing included (aws-websocket-api.md §2.2, §2.3).
_ERROR_FRAME = '{{"message": "{}", "connectionId":"{}", "requestId":"{}"}}'
# A token refresh's answers, spaced as AWS's frames.
_REFRESHED_FRAME = '{{"message": "Token refreshed", "expiresAt": {}}}'
_UNAUTHORIZED_FRAME = b'{"message": "Unauthorized"}'


class RouteHost(GatewayCalls, Protocol):
    """What running routes needs of the gateway: the push calls handlers make, and closing."""

    def close(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` from the gateway's side (a handler raised Disconnect)."""


@dataclass(slots=True)
class ConnectOutcome:
    """What ``$connect`` decided: accept (a 2xx status, as AWS) or reject with ``status``."""

    status: int = 200
    body: str = ""
    subprotocol: str | None = None  # Sec-WebSocket-Protocol the handler chose
    request_id: str = ""

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def _log_failure(exc: BaseException, route_key: str, request_id: str, connection_id: str) -> None:
    """Log a handler's failure with its request id; the client never sees the text."""
    if isinstance(exc, HandlerTimeout):
        log.warning("handler timed out: route=%s requestId=%s connectionId=%s", route_key, request_id, connection_id)
    elif isinstance(exc, IntegrationError):  # an expected failure of a backend: no traceback
        log.warning("%s integration failed (%s): route=%s requestId=%s connectionId=%s: %s",
                    exc.kind, exc.reason, route_key, request_id, connection_id, exc)
    else:
        log.error(
            "handler failed: route=%s requestId=%s connectionId=%s",
            route_key, request_id, connection_id, exc_info=exc,
        )


class Dispatcher:
    """Runs the routes of every connection of one gateway; built by the gateway at start."""

    __slots__ = ("_host", "_router", "_access", "_lifetime", "_loop", "_queue_limit", "_stats", "_timeout", "_usage")

    def __init__(
        self,
        host: RouteHost,
        router: Router[Integration],
        *,
        loop: asyncio.AbstractEventLoop,
        access: AccessLog,
        stats: Stats,
        queue_limit: int,
        timeout: float,
        lifetime: TokenLifetime | None = None,
        usage: Usage | None = None,
    ) -> None:
        self._host = host
        self._router = router
        self._access = access
        self._lifetime = lifetime  # None: tokens are checked at the handshake only
        self._loop = loop
        self._queue_limit = queue_limit  # limits.max_queued_bytes, for replies
        self._stats = stats
        self._timeout = timeout  # limits.handler_timeout_s
        self._usage = usage  # usage plans, route settings, per-connection rates

    def handler_context(self, integration: Integration, request_id: str, connection_id: str) -> HandlerContext:
        """The ``context`` argument of one handler invocation."""
        return HandlerContext(
            self._host,
            self._loop,
            request_id=request_id,
            function_name=integration.target,
            connection_id=connection_id,
            timeout=self._timeout,
        )

    # ---------------------------------------------------------------- $connect / $disconnect

    async def connect(
        self, conn: Connection, headers: Sequence[tuple[str, str]], query: Sequence[tuple[str, str]]
    ) -> ConnectOutcome:
        """Run ``$connect`` (the upgrade waits for it). Never raises: a handler that raises
        or times out rejects with 500, and its error text stays in the log."""
        integration = self._router.connect
        request_id = new_request_id()
        if integration is None:
            return ConnectOutcome(request_id=request_id)
        event = events.connect_event(
            conn.context_base, headers=headers, query=query, request_id=request_id, epoch_s=time.time()
        )
        try:
            result = await integration.invoke(event, self.handler_context(integration, request_id, conn.id))
        except Exception as exc:  # noqa: BLE001 - a handler's failure rejects, it never crashes the node
            _log_failure(exc, "$connect", request_id, conn.id)
            self._stats.integration_failed(integration.kind, exc, route="$connect", request_id=request_id)
            return ConnectOutcome(status=500, body="Internal server error", request_id=request_id)
        return _connect_outcome(result, request_id, conn.id)

    async def disconnect(
        self,
        record: ConnectionRecord,
        base: Mapping[str, Any],
        code: int,
        reason: str,
        *,
        started: float | None,
        **log_fields: Any,
    ) -> None:
        """Run ``$disconnect`` for ``record`` (its event built on ``base``, the connection's
        fixed ``requestContext``) and write its access-log line with ``log_fields``.
        Never raises for the handler's sake; ``started`` as in AccessLog.connection_event."""
        request_id = new_request_id()
        integration = self._router.disconnect
        if integration is not None:
            log_fields["integration"] = integration.kind
            event = events.disconnect_event(
                base, code=code, reason=reason, request_id=request_id, epoch_s=time.time()
            )
            context = self.handler_context(integration, request_id, record.connection_id)
            try:
                await integration.invoke(event, context)
            except Exception as exc:  # noqa: BLE001 - logged; the connection is gone anyway
                _log_failure(exc, "$disconnect", request_id, record.connection_id)
                log_fields["error"] = self._stats.integration_failed(
                    integration.kind, exc, route="$disconnect", request_id=request_id, status=0)
        self._access.connection_event(
            "disconnect", route_key="$disconnect", status=code, request_id=request_id,
            started=started, record=record, **log_fields,
        )

    # ---------------------------------------------------------------- messages

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        """Route one message and run its handler; never raises for the handler's sake.

        This runs for every message a client sends: one clock reading serves the activity
        stamp and the handler's deadline, and the handler is awaited here, not through a
        helper coroutine (each coroutine layer costs a frame per message). Its start is read
        for the access log only (once off, a log stays off: see AccessLog)."""
        started = time.perf_counter() if self._access.enabled else 0.0
        loop = self._loop
        now = loop.time()
        conn.last_active = now
        stats = self._stats
        stats.messages += 1
        stats.traffic[conn.record.tenant] += 1
        if isinstance(message, str):
            selected = self._router.select(message)
            body, is_b64 = message, False
        else:
            selected = self._router.select_binary()
            body, is_b64 = base64.b64encode(message).decode(), True
        request_id = new_request_id()
        usage = self._usage
        if usage is not None and not usage.active:
            usage = None  # nothing is limited: the rest of this message skips every check
        if usage is not None and self._throttled(usage, conn, None, request_id, started):
            return
        lifetime = self._lifetime
        if lifetime is not None and lifetime.is_refresh(message, None if selected is None else selected[0]):
            assert isinstance(message, str)  # binary frames never are refreshes
            await self._refresh(conn, lifetime, message, request_id, started)
            return
        if selected is None:
            self._stats.no_route += 1
            self._send_error(conn, "Forbidden", request_id)
            self._log(conn, "", 403, request_id, started)
            return
        route_key, integration = selected
        gate = usage.route_of(route_key) if usage is not None else None
        if gate is not None and self._throttled(usage, conn, gate, request_id, started, route_key):
            return
        template = conn.message_context
        if template is None:
            template = conn.message_context = events.message_context(conn.context_base)
        event = events.message_event(template, route_key, body, is_b64, request_id, time.time_ns() // 1_000_000)
        status, error = 200, None  # error: the access log's field, on a failure only
        connection_id = conn.record.connection_id
        try:
            # The route's time limit without a timer per message: the gateway's sweep cancels
            # the connection's task once ``conn.deadline`` has passed.
            context = _handler_context(self._host, loop, request_id, integration.target, connection_id, self._timeout)
            conn.deadline = now + self._timeout
            try:
                result = await integration.call(event, context)
            except asyncio.CancelledError:
                if not conn.deadline_hit:
                    raise  # the connection or the node is going away
                conn.deadline_hit = False
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise HandlerTimeout(integration.target) from None
            except Exception:
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt: this call's failure, not the node's
                raise HandlerExit(integration.target, exc) from exc
            finally:
                conn.deadline = 0.0
            if result is not None:  # a body that cannot be sent (bad base64, a lone surrogate) fails as a raise
                # The common answer, {"statusCode": ..., "body": "<text>"}, without the
                # Mapping ABC's isinstance check and the general case's branches.
                if type(result) is dict and type(text := result.get("body")) is str \
                        and not result.get("isBase64Encoded"):
                    self._send(conn, text.encode(), False)
                else:
                    self._reply(conn, result, request_id)
        except Disconnect as exc:
            self._host.close(conn, exc.code, exc.reason)
        except HandlerTimeout as exc:
            status = 504
            self._stats.handler_timeouts += 1
            _log_failure(exc, route_key, request_id, connection_id)
            error = self._stats.integration_failed(
                integration.kind, exc, route=route_key, request_id=request_id, status=504)
            self._send_error(conn, "Endpoint request timed out", request_id)
        except Exception as exc:  # noqa: BLE001 - the client gets AWS's error frame, the log the text
            status = 500
            self._stats.handler_errors += 1
            _log_failure(exc, route_key, request_id, connection_id)
            error = self._stats.integration_failed(
                integration.kind, exc, route=route_key, request_id=request_id)
            self._send_error(conn, "Internal server error", request_id)
        finally:
            if gate is not None:
                gate.leave()
        if self._access.enabled:  # per message: build no arguments for a log that is off
            self._log(conn, route_key, status, request_id, started, error, integration=integration.kind)

    async def _refresh(
        self, conn: Connection, lifetime: TokenLifetime, message: str, request_id: str, started: float
    ) -> None:
        """Answer a token refresh: move the connection's deadline to the new token's, or
        refuse with ``Unauthorized`` (the reason goes to the log only) and keep the old one."""
        try:
            principal = await lifetime.renew(conn.record, message, conn.token_deadline)
        except AuthError as exc:
            log.info(
                "token refresh refused (%d): %s connectionId=%s requestId=%s",
                exc.status, exc.reason, conn.id, request_id,
            )
            self._send(conn, _UNAUTHORIZED_FRAME, False)
            self._log(conn, lifetime.action, 401, request_id, started)
            return
        conn.token_deadline = lifetime.deadline(principal.expires_at)
        expires = "null" if principal.expires_at is None else str(int(principal.expires_at))
        self._send(conn, _REFRESHED_FRAME.format(expires).encode(), False)
        self._log(conn, lifetime.action, 200, request_id, started)

    def _throttled(
        self, usage: Usage | None, conn: Connection, gate: RouteGate | None, request_id: str, started: float,
        route_key: str = "",
    ) -> bool:
        """Check the message against the connection's rate and its tenant's plan (``gate``
        None), or against its route's settings. True: it was throttled, the client got AWS's
        error frame (the socket stays open) and the handler is not run."""
        assert usage is not None
        if gate is None:
            refusal = usage.message(conn.record.tenant) if usage.connection_message(conn.id) else TOO_MANY_REQUESTS
        else:
            limit = gate.enter()
            if limit is not None:
                usage.count("", limit, "message")
            refusal = None if limit is None else TOO_MANY_REQUESTS
        if refusal is None:
            return False
        self._send_error(conn, refusal, request_id)
        self._log(conn, route_key, 429, request_id, started)
        return True

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
        # Not contextlib.suppress: this runs for every reply, and a bare try costs nothing.
        try:
            conn.send(data, binary, self._loop.time(), self._queue_limit)
        except (GoneError, LimitExceededError):
            return  # the client is gone or not reading: the sweep deals with the latter
        stats = self._stats
        stats.frames_out += 1
        stats.traffic[conn.record.tenant] += 1  # "out" for the console, as a post is counted

    def _log(
        self, conn: Connection, route_key: str, status: int, request_id: str, started: float,
        error: str | None = None, **fields: str,
    ) -> None:
        """One access-log line for a message (``error``: a failure's, logged only if there was one)."""
        if not self._access.enabled:  # per message: skip building the call's arguments
            return
        if error is not None:
            fields["error"] = error
        self._access.connection_event(
            "message", route_key=route_key, status=status, request_id=request_id,
            started=started, record=conn.record, **fields,
        )


def _connect_outcome(result: Any, request_id: str, connection_id: str) -> ConnectOutcome:
    """Read a ``$connect`` handler's Lambda-proxy result."""
    if result is None:
        return ConnectOutcome(request_id=request_id)
    if not isinstance(result, Mapping):
        log.error("$connect returned %s, not a dict (requestId=%s)", type(result).__name__, request_id)
        return ConnectOutcome(status=500, body="Internal server error", request_id=request_id)
    status = result.get("statusCode", 200)
    # 1xx is no final answer to a handshake (101 would read as the upgrade itself): malformed.
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        log.error("$connect returned statusCode %r (requestId=%s connectionId=%s)", status, request_id, connection_id)
        return ConnectOutcome(status=500, body="Internal server error", request_id=request_id)
    headers = result.get("headers") or {}
    subprotocol = None
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if isinstance(name, str) and name.lower() == "sec-websocket-protocol":
                subprotocol = str(value)
    body = result.get("body")
    return ConnectOutcome(
        status=status, body=body if isinstance(body, str) else "", subprotocol=subprotocol, request_id=request_id
    )
