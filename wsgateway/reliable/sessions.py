"""This node's reliable sessions: dropping, resuming (here or from another node), handing
over, and ending them with one ``$disconnect``.

- A session whose socket drops without a close frame, or with 1001/1006, while the gateway did
  not decide the close, is *dropped*: it stays in the hub (posts are kept, ``get_connection``
  answers, listings keep it) for ``[reliable] resume_window_s``.
- A resume names the session's id and token. Held here, it is taken at once. Held by another
  node, this node asks that node through the registry (``SessionHost.take_remote``): the holder
  checks the claim, takes the session out of its hub without a ``$disconnect``, remembers where
  it went (:meth:`Sessions.moved_to`, so that calls still reaching it are sent on) and answers
  its state; this node installs it and the registry record follows it. Posts that reach this
  node for the session while its state is on the way are kept and queued after it.
- The session ends when its window runs out, when it is deleted while dropped, when the
  client closes with any other code, or when the gateway closes it: then ``$disconnect`` runs
  once, with the code of the drop that opened the window if there was one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from .. import events
from ..errors import CLOSE_ABNORMAL, CLOSE_GOING_AWAY, GoneError, LimitExceededError, MovedError
from ..records import ConnectionRecord
from .protocol import SUBPROTOCOL, ResumeRequest, parse_ack, same_token
from .session import ReliableConnection

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from ..config import GatewayConfig
    from ..connection import Connection
    from ..hub import Hub

__all__ = ["SessionHost", "Sessions"]

log = logging.getLogger("wsgateway.reliable")

_DROP_CODES = frozenset({CLOSE_GOING_AWAY, CLOSE_ABNORMAL})
_MOVED_S = 30.0  # how long a node sends calls for a session that left it on to its new node
_MOVED_MAX = 65_536
_INVALID_ACK = b'{"message": "Invalid ack: seq must be an integer, at most the last seq sent"}'


class SessionHost(Protocol):
    """What the sessions need of the gateway."""

    node_id: str
    hub: Hub
    draining: bool

    async def closed(self, conn: Connection, code: int, reason: str) -> None:
        """Forget ``conn`` everywhere and run its ``$disconnect``."""

    async def take_remote(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Ask the node holding ``connection_id`` to hand its session over; None if no node
        can (not held, claim refused, holder unreachable)."""

    async def moved_in(self, conn: Connection) -> None:
        """A session from another node is in this node's hub: record it as this node's."""

    async def moved_out(self, conn: Connection, to_node: str) -> None:
        """A session of this node left for ``to_node``: forget it here, without ``$disconnect``."""


class Sessions:
    """Reliable sessions of one node. Not thread-safe: use from the event loop only."""

    def __init__(self, config: GatewayConfig, host: SessionHost) -> None:
        self._config = config
        self.enabled = config.reliable.enabled
        self._window_s = config.reliable.resume_window_s
        self.max_unacked = config.reliable.max_unacked_bytes
        self._host = host
        self._moved: dict[str, tuple[str, float]] = {}  # connection id -> (its new node, until)
        self._incoming: dict[str, list[tuple[bytes, bool]]] = {}  # resumes in flight from other nodes
        self._claims: dict[str, asyncio.Future[bool]] = {}  # ... each done (resumed?) when answered
        self._ending: set[asyncio.Task[None]] = set()

    # ---------------------------------------------------------------- handshake

    def offered(self, subprotocols: Sequence[str]) -> bool:
        """Whether a handshake opts in (and this node lets it)."""
        return self.enabled and SUBPROTOCOL in subprotocols

    async def claim(self, request: ResumeRequest, tenant: str, principal_id: str) -> ReliableConnection | None:
        """The session a resuming handshake may carry on, now in this node's hub (dropped, or
        still attached to a socket the handler replaces); None if it cannot be resumed."""
        while True:
            conn = self._host.hub.get(request.connection_id)
            if conn is not None:
                if not isinstance(conn, ReliableConnection) or not _allows(conn, request, tenant, principal_id):
                    return None
                return conn
            other = self._claims.get(request.connection_id)
            if other is None:
                break
            # Another handshake is resuming it here right now (maybe with a wrong token): its
            # answer first, then this one's own claim. Refused at once, anyone who knew the
            # id could keep its own client from resuming on this node. If it resumed the
            # session, its token is spent: this handshake starts afresh.
            await asyncio.wait((other,))
            if other.result():
                return None
        pending = self._incoming[request.connection_id] = []
        done = self._claims[request.connection_id] = asyncio.get_running_loop().create_future()
        claim = {"token": request.token, "lastSeq": request.last_seq, "tenant": tenant, "principal": principal_id}
        resumed: ReliableConnection | None = None
        try:
            state = await self._host.take_remote(request.connection_id, claim)
            resumed = None if state is None else await self._install(state, pending)
            return resumed
        finally:
            del self._incoming[request.connection_id]
            del self._claims[request.connection_id]
            done.set_result(resumed is not None)

    async def _install(self, state: Mapping[str, Any], pending: list[tuple[bytes, bool]]) -> ReliableConnection | None:
        try:
            record = replace(_record(state["record"]), node_id=self._host.node_id)
            base = events.context_base(record, stage=self._config.stage, api_id=self._config.api_id)
            loop = asyncio.get_running_loop()
            # On this node's clock, when it was opened: its age and lastActiveAt carry on.
            opened = loop.time() - max(0.0, time.time() - record.connected_at)
            conn = ReliableConnection(record, opened, base, token="", max_unacked=self.max_unacked)
            conn.last_active = loop.time()
            groups = conn.restore(dict(state["session"]))
        except (KeyError, TypeError, ValueError):
            log.exception("a session handed over by another node was malformed: connectionId=%s",
                          state.get("record", {}).get("connectionId"))
            return None
        hub = self._host.hub
        hub.add(conn)
        for group in groups:
            hub.join_group(conn, group)
        self._expire_later(conn)
        now = loop.time()
        for data, binary in pending:  # posts that reached this node while the state was on its way
            try:
                conn.send(data, binary, now, 0)
            except LimitExceededError:
                log.warning("a post to a moving session was over its limit: connectionId=%s", conn.id)
        await self._host.moved_in(conn)
        log.info("session %s resumed from another node", conn.id)
        return conn

    def take(self, connection_id: str, claim: Mapping[str, Any], to_node: str) -> dict[str, Any]:
        """Another node resumes a session held here: check ``claim``, take it out of this
        node (its socket, if still attached, is dropped) and return its state. Raises
        GoneError if it is not here or the claim does not match."""
        conn = self._host.hub.get(connection_id)
        request = ResumeRequest(connection_id, str(claim.get("token", "")), int(claim.get("lastSeq", -1)))
        if not isinstance(conn, ReliableConnection) or not _allows(
            conn, request, str(claim.get("tenant")), str(claim.get("principal"))
        ):
            raise GoneError()
        ws = conn.ws
        code, reason = (conn.drop_code, conn.drop_reason) if ws is None else (CLOSE_ABNORMAL, "")
        conn.detach(code, reason)
        self._cancel_expiry(conn)
        if ws is not None:
            ws.transport.abort()  # its handler finds it no longer carries the session
        state = {"record": _record_json(conn), "session": conn.export()}
        conn.ending = True  # it lives on elsewhere: nothing here may end it
        self._host.hub.remove(conn)
        self._remember_move(connection_id, to_node)
        self._spawn(self._host.moved_out(conn, to_node))
        return state

    def moved_to(self, connection_id: str) -> None:
        """Raise MovedError if the session left this node a moment ago (calls follow it)."""
        moved = self._moved.get(connection_id)
        if moved is not None and moved[1] > time.monotonic():
            raise MovedError(moved[0])

    def keep_incoming(self, connection_id: str, data: bytes, binary: bool) -> bool:
        """Keep a post for a session being resumed here from another node; False if none is."""
        pending = self._incoming.get(connection_id)
        if pending is None:
            return False
        pending.append((data, binary))
        return True

    # ---------------------------------------------------------------- sockets

    def attach(self, conn: ReliableConnection, ws: ServerConnection, send_buffer: int, resume_after: int | None) -> bool:
        """The handler's socket carries ``conn`` from now on: greet it, then (resuming)
        replay what it missed, and return True. A socket still attached (the old one, not yet
        noticed dead) is dropped. False: the session ended since its resume was granted."""
        if conn.ending:
            return False
        old = conn.ws
        self._cancel_expiry(conn)
        conn.attach(ws, send_buffer)
        if old is not None and old is not ws:
            old.transport.abort()
        conn.greet(resume_after is not None, resume_after or 0)
        return True

    def drop(self, conn: ReliableConnection, code: int, reason: str) -> bool:
        """The socket closed with (code, reason): keep the session for its window and return
        True, or return False if the session ends now."""
        ws = conn.ws
        if conn.ending or conn.close_code is not None or ws is None or self._host.draining:
            return False
        received = ws.protocol.close_rcvd
        if received is not None and received.code not in _DROP_CODES:
            return False  # the client closed it on purpose
        conn.detach(code, reason)
        self._expire_later(conn)
        return True

    def end(self, conn: ReliableConnection) -> None:
        """End a dropped session now (deleted, window over, node stopping): ``$disconnect``
        runs once, with the code of its drop. Idempotent."""
        if conn.ending or not conn.dropped:
            return
        conn.ending = True
        self._cancel_expiry(conn)
        self._spawn(self._host.closed(conn, conn.drop_code, conn.drop_reason))

    async def on_message(self, conn: Connection, message: str | bytes, dispatch: Any) -> None:
        """A client frame of a reliable connection: an ack is taken here, the rest is routed."""
        assert isinstance(conn, ReliableConnection)
        try:
            seq = parse_ack(message)
            if seq is not None:
                conn.ack(seq)
                return
        except ValueError:
            with contextlib.suppress(GoneError, LimitExceededError):
                conn.send(_INVALID_ACK, False, asyncio.get_running_loop().time(), 0)
            return
        await dispatch(conn, message)

    async def close(self) -> None:
        """The node stops: end every dropped session and wait for their ``$disconnect``."""
        for conn in self._host.hub:
            if isinstance(conn, ReliableConnection) and conn.dropped:
                self.end(conn)
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    # ---------------------------------------------------------------- internals

    def _expire_later(self, conn: ReliableConnection) -> None:
        self._cancel_expiry(conn)
        conn.expiry = asyncio.get_running_loop().call_later(self._window_s, self.end, conn)

    @staticmethod
    def _cancel_expiry(conn: ReliableConnection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None

    def _remember_move(self, connection_id: str, to_node: str) -> None:
        moved, now = self._moved, time.monotonic()
        if len(moved) >= _MOVED_MAX:
            for key in [k for k, (_, until) in moved.items() if until <= now] or [next(iter(moved))]:
                del moved[key]
        moved[connection_id] = (to_node, now + _MOVED_S)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


def _allows(conn: ReliableConnection, request: ResumeRequest, tenant: str, principal_id: str) -> bool:
    """Whether ``request`` may resume ``conn``: same token, tenant and principal, the
    session not ending, and every message after its ``lastSeq`` still kept."""
    return (
        not conn.ending
        and conn.close_code is None
        and same_token(request.token, conn.token)
        and conn.record.tenant == tenant
        and conn.record.principal_id == principal_id
        and conn.can_resume(request.last_seq)
    )


def _record_json(conn: ReliableConnection) -> dict[str, Any]:
    rec = conn.record
    return {
        "connectionId": rec.connection_id, "tenant": rec.tenant, "principalId": rec.principal_id,
        "connectedAt": rec.connected_at, "sourceIp": rec.source_ip, "userAgent": rec.user_agent,
        "authorizer": dict(rec.authorizer), "domainName": rec.domain_name,
    }


def _record(body: Mapping[str, Any]) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=str(body["connectionId"]), node_id="", tenant=str(body["tenant"]),
        principal_id=str(body["principalId"]), connected_at=float(body["connectedAt"]),
        source_ip=str(body["sourceIp"]), user_agent=str(body["userAgent"]),
        authorizer=dict(body["authorizer"]), domain_name=str(body["domainName"]),
    )
