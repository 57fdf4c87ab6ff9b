"""The gateway core: owns config, router, hub, registry and auth; runs the connection
lifecycle (``$connect``, messages, ``$disconnect``) and the push API (post, get, delete,
tenant fan-out) that the management edge and handlers share.

The edges (``server.py`` for clients, ``management.py`` for backends) only translate between
the wire and these calls. Connections found in the hub are served here without touching the
registry; everything else goes to the registry (other nodes). Reliable sessions
(``wsgateway.reliable``) outlive their sockets: the gateway hosts them (``sessions``) and
hands them to other nodes through the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from . import events
from .accesslog import AccessLog
from .admission import Slots
from .auth import Authenticator, Principal
from .authorizer import load_authorizer
from .connection import Connection, as_payload
from .dispatch import ConnectOutcome, Dispatcher
from .errors import (
    CLOSE_GOING_AWAY,
    CLOSE_NORMAL,
    CLOSE_SLOW_CONSUMER,
    CLOSE_TOKEN_EXPIRED,
    ConfigError,
    ForbiddenError,
    GoneError,
    MovedError,
    PayloadTooLargeError,
    RegistryUnavailableError,
    RemoteNodeError,
)
from .fanout import FanoutResult
from .history import History, every_sample
from .hub import Hub
from .ids import can_name, new_connection_id, new_node_id
from .integrations import Integration, LambdaClients, load_integration, target_kind
from .lifetime import TOKEN_EXPIRED, TokenLifetime
from .metrics import Stats
from .records import ConnectionInfo, ConnectionRecord
from .registry import Page, PostWaiter, create_registry
from .registry.posted import Awaited
from .reliable import ReliableConnection, Sessions, new_token
from .routing import Router
from .throttle import Throttle
from .usage import Usage

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .integrations.http import HttpPool

__all__ = ["ConnectOutcome", "Gateway"]

log = logging.getLogger("wsgateway")


class Gateway:
    """One node's core. Use as ``async with Gateway(config) as gateway:``."""

    def __init__(self, config: GatewayConfig, *, node_id: str | None = None) -> None:
        self.config = config
        self.node_id = node_id or config.registry.node_id or new_node_id()
        self.hub = Hub()
        self.registry = create_registry(config.registry, self.node_id)
        # A name for each fan-out from here: the node id, this process's tag (a node restarted
        # with a configured id must not repeat the names a session that moved still remembers,
        # see Connection.already_took) and a counter.
        self._fanout_names = f"{self.node_id}.{secrets.token_hex(4)}."
        self._fanout_ids = itertools.count(1)
        # post_elsewhere(connection_id, payload, binary, waiter): the rest of
        # post_to_connection for a connection post_here did not find: its owner is asked (its
        # node checks the plan), and ``waiter`` told the outcome (maybe before this returns).
        # Raises (``waiter`` then never told) what it can tell at once, as
        # RegistryUnavailableError. The registry's own send_post: no frame of its own.
        self.post_elsewhere: Callable[[str, bytes, bool, PostWaiter], None] = self.registry.send_post
        # On a cluster a connection id names its node: other nodes reach it without a lookup.
        self._id_node = self.node_id if self.registry.kind != "memory" and can_name(self.node_id) else None
        self.access = AccessLog(config.log.access_log)
        # limits.max_connections: handshakes in flight plus connections in the hub (the
        # client edge takes a slot at admission, before the awaited auth and $connect)
        self.slots = Slots(config.limits.max_connections)
        self.stats = Stats()
        self.usage = Usage(
            config.plans, config.route_settings.routes, stats=self.stats,
            per_connection=(config.limits.messages_per_s_per_connection, config.limits.messages_burst_per_connection),
        )
        self.throttle = Throttle(self.usage, self.registry, self._spawn)
        self.sessions = Sessions(config, self)  # [reliable]: sessions that outlive their socket
        self.history = History(self.node_id, self.stats, self.hub, self.usage)  # for the console
        self.router: Router[Integration] | None = None
        self.dispatcher: Dispatcher | None = None
        self.lifetime: TokenLifetime | None = None  # [auth] on_expiry / refresh_action; set by start
        self.draining = False
        self.ready = False
        limits = config.limits
        self._queue_limit = limits.max_queued_bytes
        self._max_post = config.management.max_post_bytes
        self._handler_timeout = limits.handler_timeout_s
        self._executor = ThreadPoolExecutor(limits.handler_threads, thread_name_prefix="wsgw-handler")
        # After the executor: a sync authorizer runs in it, as sync handlers do.
        self.auth = Authenticator(
            config.auth, authorizer=load_authorizer(config, executor=self._executor, calls=self)
        )
        self._http: HttpPool | None = None  # every HTTP route's keep-alive pool, made with the first
        self._integrations: list[Integration] = []
        lambda_cfg = config.integrations.lambda_
        # one client per region for every lambda: route; its integrations start and close it
        self._lambdas = LambdaClients(
            region=lambda_cfg.region, endpoint_url=lambda_cfg.endpoint_url, timeout=limits.handler_timeout_s
        )
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
        if self._http is None and any(target_kind(target) == "http" for target in routes_cfg.routes.values()):
            from .integrations.http import HttpPool  # with aiohttp: only for a node that has HTTP routes

            self._http = HttpPool(self.config.integrations.http)
        targets = {
            key: load_integration(
                target, key=f"routes.{key}", timeout=self._handler_timeout, executor=self._executor,
                route_key=key, settings=self.config.integrations, pool=self._http,
                max_body=self.config.limits.max_message_bytes,
                lambdas=self._lambdas,
            )
            for key, target in routes_cfg.routes.items()
        }
        self._integrations = list(targets.values())
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
        # After load_routes: the selection expression is known to compile.
        self.lifetime = TokenLifetime(self.config.auth, self.config.routes.selection_expression, self.auth.verify_token)
        for integration in self._integrations:
            await integration.start()
        self.dispatcher = Dispatcher(
            self,
            self.router,
            loop=self._loop,
            access=self.access,
            stats=self.stats,
            queue_limit=self._queue_limit,
            timeout=self._handler_timeout,
            lifetime=self.lifetime if self.lifetime.action else None,  # no per-message check when off
            usage=self.usage,
        )
        self.access.start()
        await self.auth.start()
        await self.registry.start(self)
        self._spawn(self._sweep())
        self._spawn(self.throttle.run_sync())
        self._spawn(self._sample())
        self.ready = True

    def begin_drain(self) -> None:
        """The node is stopping: refuse new handshakes, and have the registry decide every
        ``$disconnect`` now instead of waiting for an unreachable Redis."""
        self.draining = True
        self.registry.drain()

    async def stop(self) -> None:
        """Close backends in reverse order; idempotent. The client edge closes sockets first."""
        if self._stopped:
            return
        self._stopped = True
        self.ready = False
        self.begin_drain()
        await self.sessions.close()  # dropped sessions end here: their $disconnect runs now
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.registry.close()  # after its orphan $disconnect calls (their grace)
        for integration in reversed(self._integrations):  # every route has run by now
            await integration.close()
        await self.auth.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        await self.access.close()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the gateway runs on (set by :meth:`start`)."""
        assert self._loop is not None, "Gateway.start() has not run"
        return self._loop

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # strong reference until it finishes
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- handshake

    def new_connection_id(self) -> str:
        """A fresh connection id; on a cluster it names this node (see ``ids``)."""
        return new_connection_id(self._id_node)

    def new_connection(
        self, principal: Principal, *, source_ip: str, user_agent: str, domain_name: str,
        connection_id: str | None = None, reliable: bool = False,
    ) -> Connection:
        """A connection for a handshake that passed auth; not in the hub until opened.

        ``connection_id`` is the one the authorizer already saw; None draws a fresh one.
        ``reliable``: a session of the ``wsgateway.reliable.v1`` subprotocol.
        """
        record = ConnectionRecord(
            connection_id=connection_id or self.new_connection_id(),
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
        assert self._loop is not None and self.lifetime is not None
        if reliable:
            conn: Connection = ReliableConnection(
                record, self._loop.time(), base, token=new_token(), max_unacked=self.sessions.max_unacked
            )
        else:
            conn = Connection(record, self._loop.time(), base)
        conn.token_deadline = self.lifetime.deadline(principal.expires_at)
        return conn

    async def tenant_usage(self, tenant: str) -> dict[str, Any]:
        """``GET /@tenants/{tenant}/usage``: its plan, connections on every node and today's
        counts. Raises RegistryUnavailableError."""
        if self.usage.book:  # every handshake takes a place: the count is one read
            connections = await self.registry.held(tenant)
        else:
            connections, token = 0, None
            while True:  # no places without plans: count the listing
                page = await self.registry.list_tenant(tenant, 1000, token)
                connections += len(page.connections)
                if (token := page.next_token) is None:
                    break
        return await self.throttle.report(tenant, connections)

    def reload_plans(self, config: GatewayConfig) -> None:
        """Take ``config``'s plans, route settings and allowed origins (SIGHUP); open
        connections stay, new caps apply to new handshakes."""
        limits = replace(self.config.limits, allowed_origins=config.limits.allowed_origins)
        self.config = replace(self.config, plans=config.plans, route_settings=config.route_settings, limits=limits)
        self.usage.configure(config.plans, config.route_settings.routes)

    async def run_connect(
        self, conn: Connection, headers: Sequence[tuple[str, str]], query: Sequence[tuple[str, str]]
    ) -> ConnectOutcome:
        """Run ``$connect`` (the upgrade waits for it); never raises (see Dispatcher.connect)."""
        assert self.dispatcher is not None, "Gateway.start() has not run"
        return await self.dispatcher.connect(conn, headers, query)

    async def opened(self, conn: Connection) -> None:
        """The upgrade completed (``conn`` is attached to its socket): from now on posts
        reach ``conn``."""
        self.hub.add(conn)
        self.stats.accepted += 1
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
        if status != 101:
            self.stats.rejected[status] += 1
            self.stats.failed("handshake", "$connect", status, request_id, "refused")
        self.access.connection_event(
            "connect", route_key="$connect", status=status, request_id=request_id, started=started,
            record=conn.record if conn is not None else None, source_ip=source_ip, user_agent=user_agent,
        )

    async def closed(self, conn: Connection, code: int, reason: str) -> None:
        """The socket closed: forget it everywhere, then run ``$disconnect`` exactly once
        (a reliable session that dropped is kept for its resume window instead)."""
        if isinstance(conn, ReliableConnection) and self.sessions.drop(conn, code, reason):
            return
        if not self.hub.remove(conn):
            return
        self.usage.forget_connection(conn.id)
        self.stats.disconnects[code] += 1
        if conn.abandoned:  # its $disconnect ran on the node that declared this one dead
            return
        started = time.perf_counter()
        try:
            run_here = await self.registry.remove(conn.record)
        except Exception:  # a registry bug must not cost the $disconnect
            log.exception("registry remove failed for %s", conn.id)
            run_here = True
        if not run_here:
            log.info("connection %s closed after another node ran its $disconnect", conn.id)
            return
        assert self.dispatcher is not None
        await self.dispatcher.disconnect(conn.record, conn.context_base, code, reason, started=started)

    # ---------------------------------------------------------------- closing

    def close(self, conn: Connection, code: int, reason: str) -> None:
        """Close ``conn`` from the gateway's side; the first decision wins. A dropped reliable
        session has no socket: it ends (``$disconnect`` with the code of its drop)."""
        if conn.close_code is not None or conn.ws is None:
            if conn.ws is None and isinstance(conn, ReliableConnection):
                self.sessions.end(conn)
            return
        conn.close_code, conn.close_reason = code, reason
        self._spawn(conn.close_socket(self.config.limits.close_timeout_s))

    async def _sweep(self) -> None:
        """Once per tick: handler time limits, token expiry, idle timeout, maximum duration,
        slow consumers."""
        limits = self.config.limits
        tick = max(
            0.05,
            min(1.0, limits.idle_timeout_s / 10, limits.slow_consumer_grace_s / 2, limits.handler_timeout_s / 10),
        )
        loop = asyncio.get_running_loop()
        wall_clock = self.lifetime.clock if self.lifetime is not None else time.time
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            wall = wall_clock()  # token deadlines are epoch seconds, as exp is
            idle_before = now - limits.idle_timeout_s
            born_before = now - limits.max_connection_s
            for conn in self.hub:
                if conn.deadline and conn.deadline <= now and not conn.deadline_hit and conn.task is not None:
                    conn.deadline_hit = True  # the dispatcher turns the cancel into a timeout
                    conn.task.cancel()
                if conn.close_code is not None:
                    continue
                if conn.token_deadline is not None and conn.token_deadline <= wall:
                    self.close(conn, CLOSE_TOKEN_EXPIRED, TOKEN_EXPIRED)
                elif conn.last_active <= idle_before:
                    self.close(conn, CLOSE_GOING_AWAY, "Idle timeout")
                elif conn.opened <= born_before:
                    self.close(conn, CLOSE_GOING_AWAY, "Maximum connection duration")
                elif conn.over_since is not None and conn.check_queue(
                    now, self._queue_limit, limits.slow_consumer_grace_s
                ):
                    log.warning("slow consumer cut off: connectionId=%s", conn.id)
                    self.stats.slow_consumers += 1
                    self.close(conn, CLOSE_SLOW_CONSUMER, "slow consumer")

    async def _sample(self) -> None:
        """Every SAMPLE_S (on the wall clock's even seconds, so that nodes line up): one
        sample of the counters and the node's health, for the console."""
        await every_sample(self._take_sample)

    async def _take_sample(self) -> None:
        try:
            self.history.sample(await self.health())
        except Exception:  # a sampling bug must not stop the samples
            log.exception("console sample failed")

    # ---------------------------------------------------------------- push API

    async def post_to_connection(self, connection_id: str, data: bytes | str) -> None:
        """Deliver ``data`` to one connection on any node (text unless not UTF-8).

        Raises PayloadTooLargeError, GoneError, LimitExceededError, RegistryUnavailableError.
        """
        elsewhere = self.post_here(connection_id, data)
        if elsewhere is not None:
            waiter = Awaited()
            self.post_elsewhere(connection_id, *elsewhere, waiter)
            await waiter.future

    def post_here(self, connection_id: str, data: bytes | str) -> tuple[bytes, bool] | None:
        """The start of :meth:`post_to_connection`, without a coroutine: a connection held
        here gets ``data`` at once (None is returned), else the payload and whether it is
        binary are returned, for ``post_elsewhere``. Raises as :meth:`post_to_connection`.

        The management edge answers a post to a local connection from this call alone (most
        posts), and one to another node's from the callback its reply arrives in.
        """
        payload, binary = as_payload(data)
        if len(payload) > self._max_post:
            raise PayloadTooLargeError("Message too long")
        conn = self.hub.get(connection_id)
        if conn is None:
            return payload, binary
        self.deliver(conn, payload, binary)
        return None

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
            self.throttle.admit_post(conn.record.tenant)
            self.close(conn, CLOSE_NORMAL, "Connection Closed Normally")
            return
        await self.registry.delete(connection_id)  # its node checks the plan

    async def post_to_tenant(
        self, tenant: str, data: bytes | str, *, user: str | None = None, group: str | None = None
    ) -> FanoutResult:
        """Deliver ``data`` to every connection of ``tenant`` on every node, or only to one
        user's connections, or only to a group's; return how many took it and how many nodes
        holding the tenant did not confirm (``unreachable_nodes`` > 0: a partial delivery,
        which a retry would duplicate for those who got it).

        Raises PayloadTooLargeError, and RegistryUnavailableError when nobody got it while
        some node was unreachable (a retry is then safe).
        """
        payload, binary = as_payload(data)
        if len(payload) > self._max_post:
            raise PayloadTooLargeError("Message too long")
        self.throttle.admit_post(tenant)
        # Other nodes first: if the registry cannot answer, the caller gets a retriable error
        # before anyone received the message, so a retry never duplicates it locally.
        fanout_id = f"{self._fanout_names}{next(self._fanout_ids)}"
        remote = await self.registry.fanout(tenant, payload, binary, user=user, group=group, fanout_id=fanout_id)
        result = remote.plus_local(
            self.local_fanout(tenant, payload, binary, user=user, group=group, fanout_id=fanout_id))
        if result.delivered == 0 and not result.complete:
            raise RegistryUnavailableError(f"{result.unreachable_nodes} node(s) did not answer; nobody got it")
        return result

    async def post_to_user(self, tenant: str, user: str, data: bytes | str) -> FanoutResult:
        """Deliver ``data`` to every connection of one user (token ``sub``) of ``tenant``;
        result and errors as :meth:`post_to_tenant`."""
        return await self.post_to_tenant(tenant, data, user=user)

    async def post_to_group(self, tenant: str, group: str, data: bytes | str) -> FanoutResult:
        """Deliver ``data`` to every connection in a group of ``tenant``; result and errors
        as :meth:`post_to_tenant`."""
        return await self.post_to_tenant(tenant, data, group=group)

    async def refuse_replay(self, key: str, ttl_s: float) -> None:
        """With ``management.replay_protection``: call once per verified signed request,
        before acting on it, with its signature's digest and how long it stays valid.
        Raises ForbiddenError if any node saw it before (a replay), RegistryUnavailableError
        if the registry cannot tell (refused rather than risk a second delivery)."""
        if not await self.registry.claim_once(key, ttl_s):
            log.info("management request refused: its signature was used before (a replay)")
            raise ForbiddenError("Forbidden")

    async def allow_retry(self, key: str) -> None:
        """After :meth:`refuse_replay` passed, the request failed retriably (429, 5xx) and
        delivered nothing: forget its signature, so that an SDK's retry (signed in the same
        second, hence alike) is not taken for a replay. Never raises."""
        try:
            await self.registry.release_once(key)
        except Exception:  # noqa: BLE001 - at worst that retry is refused 403
            log.warning("could not forget a failed request's signature; a retry of it is refused")

    async def join_group(self, connection_id: str, group: str) -> None:
        """Add a connection (on any node) to a group of its tenant; raise GoneError."""
        if not self.local_group(connection_id, group, join=True):
            await self.registry.group(connection_id, group, join=True)

    async def leave_group(self, connection_id: str, group: str) -> None:
        """Take a connection (on any node) out of a group of its tenant; raise GoneError."""
        if not self.local_group(connection_id, group, join=False):
            await self.registry.group(connection_id, group, join=False)

    async def list_tenant(self, tenant: str, limit: int, next_token: str | None) -> Page:
        """One page of the tenant's connections on every node."""
        return await self.registry.list_tenant(tenant, limit, next_token)

    async def connection_info(self, connection_id: str) -> ConnectionInfo:
        """The whole record of a connection on any node (tenant, principal, node, authorizer
        context...); raises GoneError, RegistryUnavailableError."""
        conn = self.hub.get(connection_id)
        if conn is not None:
            return self.local_info(connection_id)
        return await self.registry.get(connection_id)

    async def survey(self, query: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
        """Ask every live node (this one too) what :meth:`History.answer` says to ``query``;
        by node id, None for a node that did not answer in time."""
        return await self.registry.survey(query)

    # ---------------------------------------------------------------- LocalNode (for the registry)

    def local_post(
        self, connection_id: str, data: bytes, binary: bool, fanout_id: str = ""
    ) -> asyncio.Future[None] | None:
        conn = self.hub.get(connection_id)
        if conn is None:
            # A session on its way here keeps the post (it may have left this node before:
            # where it went then is no longer where it is).
            kept = self.sessions.keep_incoming(connection_id, data, binary, fanout_id)
            if kept is not None:
                return kept
            self.sessions.moved_to(connection_id)
            raise GoneError()
        if fanout_id:  # a fan-out sent on by the node the session left
            self.deliver_fanout(conn, data, binary, fanout_id)
        else:
            self.deliver(conn, data, binary)
        return None

    def deliver(self, conn: Connection, data: bytes, binary: bool) -> None:
        """One post's frame to a connection held here: its tenant's plan admits it, it is
        queued and counted. Raises LimitExceededError, GoneError (as ``Connection.send``)."""
        assert self._loop is not None
        tenant = conn.record.tenant
        self.throttle.admit_post(tenant)
        conn.send(data, binary, self._loop.time(), self._queue_limit)
        stats = self.stats  # count_sent's count of one frame, without its call (one per post)
        stats.frames_out += 1
        stats.traffic[tenant] += 1

    def deliver_fanout(self, conn: Connection, data: bytes, binary: bool, fanout_id: str) -> None:
        """A named fan-out's frame to a connection held here, as the hub queues one (no post
        of the tenant's plan), once (``Connection.already_took``), counted. Raises as
        ``Connection.send``."""
        if not conn.already_took(fanout_id):
            assert self._loop is not None
            conn.send(data, binary, self._loop.time(), self._queue_limit)
            self.count_sent(conn.record.tenant, 1)

    def arriving(self, connection_id: str) -> asyncio.Future[Any] | None:
        return self.sessions.arriving(connection_id)

    def local_info(self, connection_id: str) -> ConnectionInfo:
        conn = self.hub.get(connection_id)
        if conn is None or conn.close_code is not None:
            self.sessions.moved_to(connection_id)
            raise GoneError()
        return conn.info()

    async def local_delete(self, connection_id: str) -> None:
        conn = self.hub.get(connection_id)
        if conn is None or conn.close_code is not None:
            self.sessions.moved_to(connection_id)
            raise GoneError()
        self.throttle.admit_post(conn.record.tenant)
        self.close(conn, CLOSE_NORMAL, "Connection Closed Normally")

    def local_fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> int:
        assert self._loop is not None
        delivered = self.hub.fanout(tenant, data, binary, self._loop.time(), self._queue_limit, user=user, group=group,
                                    fanout_id=fanout_id)
        self.count_sent(tenant, delivered)
        if fanout_id and self.sessions.enabled:
            self.sessions.fanned_out(tenant, user, group, fanout_id)
        if self.sessions.leaving:  # sessions on their way to another node get it there (not counted:
            self.sessions.send_on(tenant, data, binary, user, group, fanout_id)  # it may have it already)
        return delivered

    def count_sent(self, tenant: str, frames: int) -> None:
        """Count frames pushed to ``tenant``'s connections here (once per post or fan-out)."""
        stats = self.stats
        stats.frames_out += frames
        stats.traffic[tenant] += frames

    def local_group(self, connection_id: str, group: str, *, join: bool) -> bool:
        """Join or leave a group for a local connection; False if it is not held here."""
        conn = self.hub.get(connection_id)
        if conn is None or conn.close_code is not None:
            self.sessions.moved_to(connection_id)
            return False
        if join:
            self.hub.join_group(conn, group)
        else:
            self.hub.leave_group(conn, group)
        return True

    def local_survey(self, query: dict[str, Any]) -> dict[str, Any]:
        return self.history.answer(query)

    def local_connections(self) -> Iterable[ConnectionInfo]:
        return [conn.info() for conn in self.hub if conn.close_code is None]

    def abandon(self, connection_ids: Iterable[str], code: int, reason: str) -> int:
        """Close these local connections without ``$disconnect`` and without touching the
        registry: another node declared this one dead and claimed them. Returns how many."""
        closed = 0
        for connection_id in connection_ids:
            conn = self.hub.get(connection_id)
            if conn is None or conn.close_code is not None:
                continue
            conn.abandoned = True
            self.close(conn, code, reason)
            closed += 1
        if closed:
            log.warning("%d connections abandoned: %s", closed, reason)
        return closed

    def local_take_session(self, connection_id: str, claim: Mapping[str, Any], to_node: str) -> dict[str, Any]:
        return self.sessions.take(connection_id, claim, to_node)

    def local_landed(self, connection_id: str, handover: str) -> bool:
        return self.sessions.landed(handover)

    # ---------------------------------------------------------------- SessionHost (for the sessions)

    async def take_remote(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any] | None:
        try:
            return await self.registry.take_session(connection_id, claim)
        except (GoneError, RegistryUnavailableError, RemoteNodeError) as exc:
            log.info("session %s cannot be resumed here (%s)", connection_id, type(exc).__name__)
            if isinstance(exc, RegistryUnavailableError) and exc.node_id is not None:
                raise MovedError(exc.node_id) from None  # it may have handed the session over, or kept it
            return None

    async def moved_in(self, conn: Connection, from_node: str | None, handover: str | None) -> bool:
        if from_node is None or handover is None:  # handed over by a node of an earlier release
            await self.registry.add(conn.record)
            return True
        return await _until_known(lambda: self.registry.move_in(conn.record, from_node, handover))

    def handing_over(self, conn: Connection, to_node: str, handover: str) -> None:
        self.registry.handing_over(conn.record, to_node, handover)

    async def forward(self, conn: Connection, to_node: str, data: bytes, binary: bool, fanout_id: str) -> None:
        await self.registry.forward(conn.id, to_node, data, binary, fanout_id)

    async def settle_handover(self, conn: Connection, handover: str) -> bool:
        stays = await _until_known(lambda: self.registry.settle_handover(conn.record, handover))
        if not stays:
            self.usage.forget_connection(conn.id)
        return stays

    async def run_orphan_disconnect(self, record: ConnectionRecord, code: int, reason: str) -> None:
        """``$disconnect`` for a connection whose node died (the registry claimed it)."""
        base = events.context_base(record, stage=self.config.stage, api_id=self.config.api_id)
        assert self.dispatcher is not None
        await self.dispatcher.disconnect(record, base, code, reason, started=None, orphanOf=record.node_id)

    # ---------------------------------------------------------------- health

    async def health(self) -> dict[str, Any]:
        """``live``: serving (started, not draining); ``ready``: live, the registry
        reachable and settled (it can vouch for a 410 and a complete listing), so that
        cross-node calls answer exactly (a load balancer's readiness check).
        The node's details (id, connections, registry state) are for the management port;
        the client port shows them only with ``[listen] health_details``."""
        registry = dict(await self.registry.health())
        live = self.ready and not self.draining
        reachable = bool(registry.get("reachable", False))
        settled = reachable and bool(registry.get("settled", True))
        return {
            "status": "ok" if live and settled else ("degraded" if live else "unavailable"),
            "live": live,
            "ready": live and settled,
            "node_id": self.node_id,
            "connections": len(self.hub),
            "registry": registry,
        }


async def _until_known(ask: Callable[[], Coroutine[Any, Any, bool]]) -> bool:
    """``ask()``'s answer, asked again (backing off up to a second) while the registry
    cannot tell; a question that is safe to ask twice."""
    delay = 0.05
    while True:
        try:
            return await ask()
        except RegistryUnavailableError:
            await asyncio.sleep(delay)
            delay = min(1.0, delay * 2)
