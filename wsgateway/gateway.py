"""The gateway core: owns config, router, hub, registry and auth; runs the connection
lifecycle (``$connect``, messages, ``$disconnect``) and the push API (post, get, delete,
tenant fan-out) that the management edge and handlers share.

The edges (``server.py`` for clients, ``management.py`` for backends) only translate between
the wire and these calls. Connections found in the hub are served here without touching the
registry; everything else goes to the registry (other nodes).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from . import events
from .accesslog import AccessLog
from .auth import Authenticator, Principal
from .connection import Connection
from .errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_SLOW_CONSUMER,
    ConfigError,
    Disconnect,
    GoneError,
    LimitExceededError,
    PayloadTooLargeError,
)
from .hub import Hub
from .ids import new_connection_id, new_node_id, new_request_id
from .integrations import HandlerContext, HandlerTimeout, Integration, load_integration
from .registry import ConnectionInfo, ConnectionRecord, Page, create_registry
from .routing import Router

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from .config import GatewayConfig

__all__ = ["ConnectOutcome", "Gateway"]

log = logging.getLogger("wsgateway")

# AWS's error frame, spacing included (aws-websocket-api.md §2.2, §2.3).
_ERROR_FRAME = '{{"message": "{}", "connectionId":"{}", "requestId":"{}"}}'


@dataclass(slots=True)
class ConnectOutcome:
    """What ``$connect`` decided: accept (status < 400) or reject with ``status``."""

    status: int = 200
    body: str = ""
    subprotocol: str | None = None  # Sec-WebSocket-Protocol the handler chose
    request_id: str = ""

    @property
    def accepted(self) -> bool:
        return self.status < 400


def _to_bytes(data: bytes | str) -> tuple[bytes, bool]:
    """Posted data -> (payload, binary): text unless it is bytes that are not UTF-8."""
    if isinstance(data, str):
        return data.encode(), False
    try:
        data.decode()
    except UnicodeDecodeError:
        return bytes(data), True
    return bytes(data), False


class Gateway:
    """One node's core. Use as ``async with Gateway(config) as gateway:``."""

    def __init__(self, config: GatewayConfig, *, node_id: str | None = None) -> None:
        self.config = config
        self.node_id = node_id or config.registry.node_id or new_node_id()
        self.hub = Hub()
        self.registry = create_registry(config.registry, self.node_id)
        self.auth = Authenticator(config.auth)
        self.access = AccessLog(config.log.access_log)
        self.router: Router[Integration] | None = None
        self.draining = False
        self.ready = False
        limits = config.limits
        self._queue_limit = limits.max_queued_bytes
        self._max_post = config.management.max_post_bytes
        self._handler_timeout = limits.handler_timeout_s
        self._executor = ThreadPoolExecutor(limits.handler_threads, thread_name_prefix="wsgw-handler")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = False
        self._stopped = False

    # ---------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def load_routes(self) -> Router[Integration]:
        """Import every route target (a bad one raises ConfigError naming its key)."""
        routes_cfg = self.config.routes
        targets = {
            key: load_integration(
                target, key=f"routes.{key}", timeout=self._handler_timeout, executor=self._executor
            )
            for key, target in routes_cfg.routes.items()
        }
        try:
            return Router(routes_cfg.selection_expression, targets)
        except ValueError as exc:
            raise ConfigError("routes.selection_expression", str(exc)) from None

    async def start(self) -> None:
        """Load routes, open the auth key source and the registry, start the sweep."""
        if self._started:
            return
        self._started = True
        self._loop = asyncio.get_running_loop()
        if self.router is None:
            self.router = self.load_routes()
        self.access.start()
        await self.auth.start()
        await self.registry.start(self)
        self._spawn(self._sweep())
        self.ready = True

    async def stop(self) -> None:
        """Close backends in reverse order; idempotent. The client edge closes sockets first."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        self.draining = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.registry.close()
        await self.auth.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.access.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # strong reference until it finishes
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- handshake

    def new_connection(
        self, principal: Principal, *, source_ip: str, user_agent: str, domain_name: str
    ) -> Connection:
        """A connection for a handshake that passed auth; not in the hub until opened."""
        record = ConnectionRecord(
            connection_id=new_connection_id(),
            node_id=self.node_id,
            tenant=principal.tenant,
            principal_id=principal.principal_id,
            connected_at=time.time(),
            source_ip=source_ip,
            user_agent=user_agent,
            authorizer=principal.authorizer(),
            domain_name=self.config.domain_name or domain_name,
        )
        base = events.context_base(record, stage=self.config.stage, api_id=self.config.api_id)
        assert self._loop is not None
        return Connection(record, self._loop.time(), base)

    async def run_connect(
        self, conn: Connection, headers: Sequence[tuple[str, str]], query: Sequence[tuple[str, str]]
    ) -> ConnectOutcome:
        """Run ``$connect`` (the upgrade waits for it). Never raises: a handler that raises
        or times out rejects with 500, and its error text stays in the log."""
        assert self.router is not None
        integration = self.router.connect
        request_id = new_request_id()
        if integration is None:
            return ConnectOutcome(request_id=request_id)
        event = events.connect_event(
            conn.context_base, headers=headers, query=query, request_id=request_id, epoch_s=time.time()
        )
        try:
            result = await integration.invoke(event, self._context(integration, request_id, conn.id))
        except Exception as exc:
            self._log_handler_failure(exc, "$connect", request_id, conn.id)
            return ConnectOutcome(status=500, body="Internal server error", request_id=request_id)
        return _connect_outcome(result, request_id, conn.id)

    async def opened(self, conn: Connection, ws: ServerConnection) -> None:
        """The upgrade completed: from now on posts reach ``conn``."""
        conn.ws = ws
        conn.compressed = bool(ws.protocol.extensions)
        self.hub.add(conn)
        await self.registry.add(conn.record)

    def log_handshake(
        self,
        *,
        status: int,
        request_id: str,
        started: float,
        source_ip: str,
        user_agent: str,
        conn: Connection | None = None,
    ) -> None:
        """One access-log line per handshake, accepted (101) or refused (its status)."""
        self.access.write(
            "connect",
            requestId=request_id,
            connectionId=conn.id if conn is not None else "",
            routeKey="$connect",
            status=status,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            tenant=conn.tenant if conn is not None else "",
            sourceIp=source_ip,
            userAgent=user_agent,
        )

    async def closed(self, conn: Connection, code: int, reason: str) -> None:
        """The socket closed: forget it everywhere, then run ``$disconnect`` exactly once."""
        if not self.hub.remove(conn):
            return
        started = time.perf_counter()
        with contextlib.suppress(Exception):
            await self.registry.remove(conn.record)
        request_id = await self._run_disconnect(conn.context_base, conn.id, code, reason)
        rec = conn.record
        self.access.write(
            "disconnect",
            requestId=request_id,
            connectionId=rec.connection_id,
            routeKey="$disconnect",
            status=code,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            tenant=rec.tenant,
            sourceIp=rec.source_ip,
            userAgent=rec.user_agent,
        )

    async def _run_disconnect(
        self, base: Mapping[str, Any], connection_id: str, code: int, reason: str
    ) -> str:
        request_id = new_request_id()
        assert self.router is not None
        integration = self.router.disconnect
        if integration is None:
            return request_id
        event = events.disconnect_event(
            base, code=code, reason=reason, request_id=request_id, epoch_s=time.time()
        )
        try:
            await integration.invoke(event, self._context(integration, request_id, connection_id))
        except Exception as exc:
            self._log_handler_failure(exc, "$disconnect", request_id, connection_id)
        return request_id

    # ---------------------------------------------------------------- messages

    async def on_message(self, conn: Connection, message: str | bytes) -> None:
        """Route one client message and run its handler; answers errors as AWS does."""
        assert self._loop is not None and self.router is not None
        started = time.perf_counter()
        conn.last_active = self._loop.time()
        if isinstance(message, str):
            selected = self.router.select(message)
            body, is_b64 = message, False
        else:
            selected = self.router.select_binary()
            body, is_b64 = base64.b64encode(message).decode(), True
        request_id = new_request_id()
        if selected is None:
            self._send_error(conn, "Forbidden", request_id)
            self._log_message(conn, "", 403, request_id, started)
            return
        route_key, integration = selected
        event = events.message_event(
            conn.context_base,
            route_key=route_key,
            body=body,
            is_base64=is_b64,
            request_id=request_id,
            epoch_s=time.time(),
        )
        status = 200
        try:
            result = await integration.invoke(event, self._context(integration, request_id, conn.id))
        except Disconnect as exc:
            self.close(conn, exc.code, exc.reason)
        except HandlerTimeout:
            status = 504
            log.warning("handler timed out: route=%s requestId=%s connectionId=%s", route_key, request_id, conn.id)
            self._send_error(conn, "Endpoint request timed out", request_id)
        except Exception as exc:
            status = 500
            self._log_handler_failure(exc, route_key, request_id, conn.id)
            self._send_error(conn, "Internal server error", request_id)
        else:
            if result is not None:
                self._reply(conn, result, request_id)
        self._log_message(conn, route_key, status, request_id, started)

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
                data, binary = _to_bytes(bytes(body))
            else:
                data, binary = orjson.dumps(body), False
        elif isinstance(result, str):
            data, binary = result.encode(), False
        else:
            log.warning("handler returned %s, not a dict: nothing sent (requestId=%s)", type(result).__name__, request_id)
            return
        self._send_quietly(conn, data, binary)

    def _send_error(self, conn: Connection, message: str, request_id: str) -> None:
        self._send_quietly(conn, _ERROR_FRAME.format(message, conn.id, request_id).encode(), False)

    def _send_quietly(self, conn: Connection, data: bytes, binary: bool) -> None:
        assert self._loop is not None
        try:
            conn.send(data, binary, self._loop.time(), self._queue_limit)
        except (GoneError, LimitExceededError):
            pass  # the client is gone or not reading: the sweep deals with the latter

    def _log_message(self, conn: Connection, route_key: str, status: int, request_id: str, started: float) -> None:
        if not self.access.enabled:
            return
        rec = conn.record
        self.access.write(
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

    def _context(self, integration: Integration, request_id: str, connection_id: str) -> HandlerContext:
        assert self._loop is not None
        return HandlerContext(
            self,
            self._loop,
            request_id=request_id,
            function_name=integration.target,
            connection_id=connection_id,
            timeout=self._handler_timeout,
        )

    @staticmethod
    def _log_handler_failure(exc: BaseException, route_key: str, request_id: str, connection_id: str) -> None:
        if isinstance(exc, HandlerTimeout):
            log.warning("handler timed out: route=%s requestId=%s connectionId=%s", route_key, request_id, connection_id)
        else:
            log.error(
                "handler failed: route=%s requestId=%s connectionId=%s",
                route_key,
                request_id,
                connection_id,
                exc_info=exc,
            )

    # ---------------------------------------------------------------- closing

    def close(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` from the gateway's side; the first decision wins."""
        if conn.close_code is not None or conn.ws is None:
            return
        conn.close_code, conn.close_reason = code, reason
        self._spawn(self._close_socket(conn.ws, code, reason))

    async def _close_socket(self, ws: ServerConnection, code: int, reason: str) -> None:
        # websockets' close() waits for the write buffer to drain, which never happens for
        # a client that stopped reading: bound it, then drop the TCP connection.
        if code == CLOSE_SLOW_CONSUMER:
            ws.transport.abort()
            return
        try:
            async with asyncio.timeout(self.config.limits.close_timeout_s):
                await ws.close(code, reason)
        except TimeoutError:
            ws.transport.abort()

    async def _sweep(self) -> None:
        """Once per tick: idle timeout, maximum duration, slow consumers."""
        limits = self.config.limits
        tick = max(0.05, min(1.0, limits.idle_timeout_s / 10, limits.slow_consumer_grace_s / 2))
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            idle_before = now - limits.idle_timeout_s
            born_before = now - limits.max_connection_s
            for conn in self.hub:
                if conn.close_code is not None:
                    continue
                if conn.last_active <= idle_before:
                    self.close(conn, CLOSE_GOING_AWAY, "Idle timeout")
                elif conn.opened <= born_before:
                    self.close(conn, CLOSE_GOING_AWAY, "Maximum connection duration")
                elif conn.over_since is not None and conn.check_queue(
                    now, self._queue_limit, limits.slow_consumer_grace_s
                ):
                    log.warning("slow consumer cut off: connectionId=%s", conn.id)
                    self.close(conn, CLOSE_SLOW_CONSUMER, "slow consumer")

    # ---------------------------------------------------------------- push API

    async def post_to_connection(self, connection_id: str, data: bytes | str) -> None:
        """Deliver ``data`` to one connection on any node (text unless not UTF-8).

        Raises PayloadTooLargeError, GoneError, LimitExceededError, RegistryUnavailableError.
        """
        payload, binary = _to_bytes(data)
        if len(payload) > self._max_post:
            raise PayloadTooLargeError("Message too long")
        conn = self.hub.get(connection_id)
        if conn is not None:
            assert self._loop is not None
            conn.send(payload, binary, self._loop.time(), self._queue_limit)
            return
        await self.registry.post(connection_id, payload, binary)

    async def get_connection(self, connection_id: str) -> dict[str, Any]:
        """GetConnection's JSON for a connection on any node; raises GoneError."""
        conn = self.hub.get(connection_id)
        if conn is not None and conn.close_code is None:
            return conn.info().to_json()
        if conn is not None:
            raise GoneError()
        return (await self.registry.get(connection_id)).to_json()

    async def delete_connection(self, connection_id: str) -> None:
        """Close a connection on any node with 1000; raises GoneError."""
        conn = self.hub.get(connection_id)
        if conn is not None:
            if conn.close_code is not None:
                raise GoneError()
            self.close(conn, CLOSE_NORMAL, "Connection Closed Normally")
            return
        await self.registry.delete(connection_id)

    async def post_to_tenant(self, tenant: str, data: bytes | str) -> int:
        """Deliver ``data`` to every connection of ``tenant`` on every node; return how many."""
        payload, binary = _to_bytes(data)
        if len(payload) > self._max_post:
            raise PayloadTooLargeError("Message too long")
        assert self._loop is not None
        # Other nodes first: if the registry cannot answer, the caller gets a retriable error
        # before anyone received the message, so a retry never duplicates it locally.
        remote = await self.registry.fanout(tenant, payload, binary)
        local = self.hub.fanout(tenant, payload, binary, self._loop.time(), self._queue_limit)
        return local + remote

    async def list_tenant(self, tenant: str, limit: int, next_token: str | None) -> Page:
        """One page of the tenant's connections on every node."""
        return await self.registry.list_tenant(tenant, limit, next_token)

    # ---------------------------------------------------------------- LocalNode (for the registry)

    def local_post(self, connection_id: str, data: bytes, binary: bool) -> None:
        conn = self.hub.get(connection_id)
        if conn is None:
            raise GoneError()
        assert self._loop is not None
        conn.send(data, binary, self._loop.time(), self._queue_limit)

    def local_info(self, connection_id: str) -> ConnectionInfo:
        conn = self.hub.get(connection_id)
        if conn is None or conn.close_code is not None:
            raise GoneError()
        return conn.info()

    async def local_delete(self, connection_id: str) -> None:
        conn = self.hub.get(connection_id)
        if conn is None or conn.close_code is not None:
            raise GoneError()
        self.close(conn, CLOSE_NORMAL, "Connection Closed Normally")

    def local_fanout(self, tenant: str, data: bytes, binary: bool) -> int:
        assert self._loop is not None
        return self.hub.fanout(tenant, data, binary, self._loop.time(), self._queue_limit)

    def local_connections(self) -> Iterable[ConnectionInfo]:
        return [conn.info() for conn in self.hub if conn.close_code is None]

    async def run_orphan_disconnect(self, record: ConnectionRecord, code: int, reason: str) -> None:
        """``$disconnect`` for a connection whose node died (the registry claimed it)."""
        base = events.context_base(record, stage=self.config.stage, api_id=self.config.api_id)
        request_id = await self._run_disconnect(base, record.connection_id, code, reason)
        self.access.write(
            "disconnect",
            requestId=request_id,
            connectionId=record.connection_id,
            routeKey="$disconnect",
            status=code,
            latency_ms=0.0,
            tenant=record.tenant,
            sourceIp=record.source_ip,
            userAgent=record.user_agent,
            orphanOf=record.node_id,
        )

    # ---------------------------------------------------------------- health

    async def health(self) -> dict[str, Any]:
        """``live``: serving (started, not draining); ``ready``: live and the registry
        reachable, so that cross-node calls work (a load balancer's readiness check)."""
        registry = dict(await self.registry.health())
        live = self.ready and not self.draining
        reachable = bool(registry.get("reachable", False))
        return {
            "status": "ok" if live and reachable else ("degraded" if live else "unavailable"),
            "live": live,
            "ready": live and reachable,
            "node_id": self.node_id,
            "connections": len(self.hub),
            "registry": registry,
        }


def _connect_outcome(result: Any, request_id: str, connection_id: str) -> ConnectOutcome:
    """Read a ``$connect`` handler's Lambda-proxy result."""
    if result is None:
        return ConnectOutcome(request_id=request_id)
    if not isinstance(result, Mapping):
        log.error("$connect returned %s, not a dict (requestId=%s)", type(result).__name__, request_id)
        return ConnectOutcome(status=500, body="Internal server error", request_id=request_id)
    status = result.get("statusCode", 200)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
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
