"""This node's reliable sessions: dropping, resuming (here or from another node), handing
over, and ending them with one ``$disconnect``.

- A session whose socket drops without a close frame, or with 1001/1006, while the gateway did
  not decide the close, is *dropped*: it stays in the hub (posts are kept, ``get_connection``
  answers, listings keep it) for ``[reliable] resume_window_s``.
- A resume names the session's id and token. Held here, it is taken at once. Held by another
  node, this node asks that node through the registry (``SessionHost.take_remote``): the holder
  checks the claim, takes the session out of its hub without a ``$disconnect``, remembers where
  it went (:meth:`Sessions.moved_to`, so that calls still reaching it are sent on) and answers
  its state; this node installs it once the registry record follows it. The record decides,
  once, whether the move landed: the holder keeps the session aside, and a few seconds later
  (when the resuming node has given up waiting for an answer that got lost or came late)
  either lets it go, or, if the record still names it, keeps it: the session is back, dropped,
  and a late answer can no longer land it elsewhere. Fan-outs that reach the holder
  meanwhile are sent on to the session's new node (and kept, in case the session stays);
  each fan-out has a cluster-wide name, so a session that just moved takes it once, however
  many ways it comes. Posts that reach this
  node for the session while its state is on the way wait for it (within the session's byte
  limit): each is answered once it is queued after that state, or, if the session does not
  arrive, as a post to a connection this node does not hold, so that its caller looks
  further (AWS's answers stay exact: 200 only once queued).
- The session ends when its window runs out, when it is deleted while dropped, when the
  client closes with any other code, when the gateway closes it, or when this node holds more
  dropped sessions of its tenant than it may (:mod:`.dropped`): then ``$disconnect`` runs
  once, with the code of the drop that opened the window if there was one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from .. import events
from ..connection import MAX_FANOUT_NAMES
from ..errors import (
    CLOSE_ABNORMAL,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    GoneError,
    LimitExceededError,
    MovedError,
    RegistryUnavailableError,
    RemoteNodeError,
)
from .dropped import Dropped
from .moves import Kept, Leaving, record_from_json, record_json, stop_tracking
from .protocol import SUBPROTOCOL, ResumeRequest, new_token, parse_ack, same_token
from .session import ReliableConnection

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection

    from ..config import GatewayConfig
    from ..connection import Connection
    from ..hub import Hub
    from ..usage import Usage

__all__ = ["SessionHost", "Sessions"]

log = logging.getLogger("wsgateway.reliable")

_DROP_CODES = frozenset({CLOSE_GOING_AWAY, CLOSE_ABNORMAL})
_MOVED_S = 30.0  # how long a node sends calls for a session that left it on to its new node
_MOVED_MAX = 65_536
# How long a node remembers the moves that landed here, for the node each came from, should
# Redis lose the record before that node settles the move (see :meth:`Sessions.landed`): past
# a Redis outage in which both nodes wait to settle.
_LANDED_S = 600.0
# How long a holder keeps a session it handed over aside before it settles whether the move
# landed: past the resuming node's wait for the answer (a registry call's 2 s timeout).
SETTLE_AFTER_S = 3.0
# How long a session that moved keeps the names of the fan-outs it took, to take each once:
# past the old holder's sending them on (until it settles), with room for their way here.
_TRACK_S = SETTLE_AFTER_S + 5.0
# How long a node remembers the fan-outs it queued, so that a session it hands over tells its
# new node which it took: one may reach that node after the session (its origin queues it on
# its own hub after the other nodes answered, within a registry call's 2 s timeout).
_FANNED_S = SETTLE_AFTER_S
_INVALID_ACK = b'{"message": "Invalid ack: seq must be an integer, at most the last seq sent"}'


class SessionHost(Protocol):
    """What the sessions need of the gateway."""

    node_id: str
    hub: Hub
    usage: Usage
    draining: bool

    async def closed(self, conn: Connection, code: int, reason: str) -> None:
        """Forget ``conn`` everywhere and run its ``$disconnect``."""

    def count_sent(self, tenant: str, frames: int) -> None:
        """Count frames the sessions queued to ``tenant``'s connections themselves."""

    def deliver(self, conn: Connection, data: bytes, binary: bool) -> None:
        """Queue one post's frame on ``conn``, held here, as any post to it is (its tenant's
        plan admits it, it is counted); raise LimitExceededError, GoneError."""

    def deliver_fanout(self, conn: Connection, data: bytes, binary: bool, fanout_id: str) -> None:
        """Queue a named fan-out's frame on ``conn``, held here, as the hub queues one, unless
        it took that fan-out already; counted. Raises as ``deliver``."""

    async def take_remote(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any] | None:
        """Ask the node holding ``connection_id`` to hand its session over; None if no node
        can (not held, claim refused, holder unreachable). Raises MovedError(holder) when the
        holder did not answer in time: it may have handed the session over, or kept it."""

    async def moved_in(self, conn: Connection, from_node: str | None, handover: str | None) -> bool:
        """A session handed over by ``from_node`` lands here: record it as this node's, unless
        its holder kept it meanwhile (then False: it must not be carried on here). Waits
        while the registry cannot tell."""

    def handing_over(self, conn: Connection, to_node: str, handover: str) -> None:
        """A session of this node is on its way to ``to_node`` (the move named ``handover``):
        calls about it go there."""

    async def forward(self, conn: Connection, to_node: str, data: bytes, binary: bool, fanout_id: str) -> None:
        """Send a fan-out on to a session that left for ``to_node`` (a post with the fan-out's
        name); raise as a post to another node raises."""

    async def settle_handover(self, conn: Connection, handover: str) -> bool:
        """Decide a move of a session this node handed over: True if it stays here (it never
        landed, and now never will), False if it moved on (forgotten here, without
        ``$disconnect``). Waits while the registry cannot tell."""


class Sessions:
    """Reliable sessions of one node. Not thread-safe: use from the event loop only."""

    def __init__(self, config: GatewayConfig, host: SessionHost) -> None:
        self._config = config
        self.enabled = config.reliable.enabled
        self._window_s = config.reliable.resume_window_s
        self.max_unacked = config.reliable.max_unacked_bytes
        self._host = host
        self._moved: dict[str, tuple[str, float]] = {}  # connection id -> (its new node, until)
        self._incoming: dict[str, Kept] = {}  # resumes in flight from other nodes
        self._claims: dict[str, asyncio.Future[None]] = {}  # resumes being judged: done once they are
        self._leaving: dict[str, Leaving] = {}  # sessions handed over, not settled yet
        self._landed: dict[str, float] = {}  # the names of the moves that landed here lately -> until
        self._ending: set[asyncio.Task[None]] = set()
        self._dropped = Dropped(config.reliable.max_dropped_sessions)  # those with an expiry timer
        # The fan-outs queued here lately, by tenant: (when, name, user, group), oldest first.
        self._fanned: dict[str, deque[tuple[float, str, str | None, str | None]]] = {}
        self._fanned_swept_at = 0.0

    # ---------------------------------------------------------------- handshake

    def offered(self, subprotocols: Sequence[str]) -> bool:
        """Whether a handshake opts in (and this node lets it)."""
        return self.enabled and SUBPROTOCOL in subprotocols

    async def claim(self, request: ResumeRequest, tenant: str, principal_id: str) -> ReliableConnection | None:
        """The session a resuming handshake may carry on, now in this node's hub (dropped, or
        still attached to a socket the handler replaces); None if it cannot be resumed.

        Resumes of one id are judged here one at a time: one that comes while another is
        being judged waits for it (refused at once, anyone who knew the id could keep the
        client from resuming by sending resumes with a wrong token). A resume granted spends
        the token at once (the next one goes to the client in the ``connected`` frame), so
        that of two resumes with the same token only one is granted."""
        connection_id = request.connection_id
        claims = self._claims
        while (other := claims.get(connection_id)) is not None:
            await asyncio.wait((other,))
        done = claims[connection_id] = asyncio.get_running_loop().create_future()
        try:
            incoming = self._incoming.get(connection_id)
            if incoming is not None:  # a move whose resume was given up on: it lands first
                await asyncio.shield(incoming.moving)
            conn = self._host.hub.get(connection_id)
            if conn is None:
                kept = self._incoming[connection_id] = Kept()
                claim = {"token": request.token, "lastSeq": request.last_seq, "tenant": tenant, "principal": principal_id}
                # Shielded: once asked, the holder may hand the session over whatever becomes
                # of this handshake (its client gone, its open timeout), and the session must
                # then land here, dropped, to wait for the client's next resume: a move cut
                # short would lose it without a $disconnect.
                kept.moving = asyncio.ensure_future(self._move_here(connection_id, claim, kept))
                conn = await asyncio.shield(kept.moving)  # the holder checked the claim
                if conn is None:
                    return None
            elif not isinstance(conn, ReliableConnection) or not _allows(conn, request, tenant, principal_id):
                return None
            conn.token = new_token()
            self._dropped.touch(conn)  # the last of its tenant to end while its socket comes
            return conn
        finally:
            del claims[connection_id]
            done.set_result(None)

    async def _move_here(self, connection_id: str, claim: dict[str, Any], kept: Kept) -> ReliableConnection | None:
        """Ask the node holding a session for it, and install it here; None if it did not come."""
        stayed: str | None = None  # the node the session may have stayed on, if it did not come
        try:
            try:
                state = await self._host.take_remote(connection_id, claim)
            except MovedError as exc:  # the holder may have kept it: calls here go back there
                stayed = exc.node_id
                return None
            if state is None:
                return None
            conn = await self._install(state, kept)
            if conn is None and isinstance(state.get("from"), str) and state.get("handover") is not None:
                stayed = state["from"]  # the holder kept it (its settling reached the record first)
            return conn
        finally:
            del self._incoming[connection_id]
            if stayed is not None:
                self._remember_move(connection_id, stayed)
            # The session did not come: those posts were not queued here; where it may have
            # stayed, their senders look for it there.
            kept.not_here(stayed)

    async def _install(self, state: Mapping[str, Any], kept: Kept) -> ReliableConnection | None:
        try:
            record = replace(record_from_json(state["record"]), node_id=self._host.node_id)
            base = events.context_base(record, stage=self._config.stage, api_id=self._config.api_id)
            loop = asyncio.get_running_loop()
            # On this node's clock, when it was opened: its age and lastActiveAt carry on.
            opened = loop.time() - max(0.0, time.time() - record.connected_at)
            conn = ReliableConnection(record, opened, base, token="", max_unacked=self.max_unacked)
            conn.last_active = loop.time()
            groups = conn.restore(dict(state["session"]))
            from_node, handover = state.get("from"), state.get("handover")
            if not (from_node is None or isinstance(from_node, str)) or not (handover is None or isinstance(handover, str)):
                raise TypeError("from and handover must be strings")
            # None from an earlier release; the newest, oldest first, from this one.
            took = [str(name) for name in list(state.get("fanouts", ()))[-MAX_FANOUT_NAMES:]]
        except (KeyError, TypeError, ValueError):
            log.exception("a session handed over by another node was malformed: connectionId=%s",
                          state.get("record", {}).get("connectionId"))
            return None
        gone = self._leaving.get(conn.id)
        if gone is not None:  # it left here, and comes back from where it went: that move landed
            gone.wake.set()  # and is settled at once (the copy kept aside is let go)
        if not await self._host.moved_in(conn, from_node, handover):
            log.warning("session %s stayed on the node that held it: not resumed here", conn.id)
            return None
        self._moved.pop(conn.id, None)  # it left here once, and is back: calls here are for it
        if handover is not None:
            self._remember_landing(handover)
        self._track_fanouts(conn)
        for name in took:  # oldest first: past the bound, the newest are kept
            conn.already_took(name)
        hub = self._host.hub
        hub.add(conn)
        for group in groups:
            hub.join_group(conn, group)
        self._expire_later(conn)
        kept.deliver(conn, self._host.deliver, self._host.deliver_fanout)  # after its own messages, in order
        log.info("session %s resumed from another node", conn.id)
        return conn

    def take(self, connection_id: str, claim: Mapping[str, Any], to_node: str) -> dict[str, Any]:
        """Another node resumes a session held here: check ``claim``, take it out of this
        node (its socket, if still attached, is dropped) and return its state. Raises
        MovedError if it left this node a moment ago (the asker follows it), GoneError if it
        is not here or the claim does not match."""
        conn = self._host.hub.get(connection_id)
        if conn is None:
            self.moved_to(connection_id)
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
        handover = new_token()  # this move's one-time name, in the record once it lands
        state = {"record": record_json(conn), "session": conn.export(), "from": self._host.node_id,
                 "handover": handover, "fanouts": self._took_lately(conn)}
        conn.ending = True  # it lives on elsewhere (unless kept): nothing here may end it
        leaving = Leaving(conn, to_node, sorted(conn.groups or ()))
        self._host.hub.remove(conn)
        self._remember_move(connection_id, to_node)
        self._host.handing_over(conn, to_node, handover)
        leaving.settling = asyncio.ensure_future(self._settle(leaving, handover))
        self._leaving[connection_id] = leaving
        return state

    @property
    def leaving(self) -> bool:
        """Whether sessions are on their way from this node to others (see :meth:`send_on`)."""
        return bool(self._leaving)

    def send_on(
        self, tenant: str, data: bytes, binary: bool, user: str | None, group: str | None, fanout_id: str
    ) -> None:
        """A fan-out reached this node: send it on to each session of its audience that is on
        its way to another node (it took every fan-out before it left), and keep it, in case
        the session stays. A fan-out without a name (from a node of an earlier release) is
        not: it could reach the session twice."""
        if not fanout_id:
            return
        for leaving in self._leaving.values():
            record = leaving.conn.record
            if record.tenant != tenant or (user is not None and record.principal_id != user) or (
                    group is not None and group not in leaving.groups):
                continue
            if leaving.size + len(data) > self.max_unacked:
                continue  # over the session's bound: it would refuse it as any post
            leaving.size += len(data)
            leaving.fanouts.append((fanout_id, data, binary))
            self._spawn(self._forward(leaving, data, binary, fanout_id))

    def fanned_out(self, tenant: str, user: str | None, group: str | None, fanout_id: str) -> None:
        """The fan-out ``fanout_id`` was queued on this node's hub: remembered for a few
        seconds, so that a session handed over meanwhile tells its new node it took it (it
        may reach that node too, after the session: see :data:`_FANNED_S`)."""
        now = asyncio.get_running_loop().time()
        recent = self._fanned.get(tenant)
        if recent is None:
            recent = self._fanned[tenant] = deque()
        while recent and recent[0][0] < now - _FANNED_S:
            recent.popleft()
        recent.append((now, fanout_id, user, group))
        if now >= self._fanned_swept_at:  # tenants that fanned out no more lately are let go
            self._fanned_swept_at = now + _FANNED_S
            for name in [name for name, old in self._fanned.items() if old[-1][0] < now - _FANNED_S]:
                del self._fanned[name]

    def _took_lately(self, conn: ReliableConnection) -> list[str]:
        """The names of the fan-outs ``conn`` took here lately (or knows of from its move
        here), oldest first: at most ``MAX_FANOUT_NAMES``, the newest (the fan-outs most
        likely to reach its new node after it)."""
        record, groups = conn.record, conn.groups or ()
        horizon = asyncio.get_running_loop().time() - _FANNED_S
        recent: list[str] = []
        for at, name, user, group in reversed(self._fanned.get(record.tenant, ())):
            if at < horizon or len(recent) == MAX_FANOUT_NAMES:
                break
            if (user is None or user == record.principal_id) and (group is None or group in groups):
                recent.append(name)
        names = dict.fromkeys(conn.fanouts or ())
        names.update(dict.fromkeys(reversed(recent)))
        return list(names)[-MAX_FANOUT_NAMES:]

    async def _forward(self, leaving: Leaving, data: bytes, binary: bool, fanout_id: str) -> None:
        try:
            await self._host.forward(leaving.conn, leaving.to_node, data, binary, fanout_id)
        except (GoneError, LimitExceededError, RegistryUnavailableError, RemoteNodeError) as exc:
            # Kept here: if the session stays, it gets it when it is back; if it landed there
            # and still refused it, the session was over its bound, as for any post.
            log.info("a fan-out to session %s, which left for node %s, was not sent on (%s)",
                     leaving.conn.id, leaving.to_node, type(exc).__name__)

    async def _settle(self, leaving: Leaving, handover: str) -> None:
        """Once the resuming node has given up waiting, settle a move: the session moved on,
        or (its answer lost or late, so it never landed) it is back here, dropped, for a
        whole window, with the fan-outs that reached it here meanwhile, and calls about it
        are served here again."""
        conn = leaving.conn
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leaving.wake.wait(), SETTLE_AFTER_S)
            stays = await self._host.settle_handover(conn, handover)
        except Exception:  # a bug: the session is neither here nor known to be elsewhere
            log.exception("settling the move of session %s failed", conn.id)
            return
        finally:
            if self._leaving.get(conn.id) is leaving:  # (it may have come back, and left again)
                del self._leaving[conn.id]
        if not stays:
            return
        log.warning("session %s stays here: its move to another node did not complete", conn.id)
        conn.ending = False
        self._moved.pop(conn.id, None)
        self._track_fanouts(conn)
        for fanout_id, data, binary in leaving.fanouts:
            with contextlib.suppress(GoneError, LimitExceededError):
                self._host.deliver_fanout(conn, data, binary, fanout_id)
        hub = self._host.hub
        hub.add(conn)
        for group in leaving.groups:
            hub.join_group(conn, group)
        self._expire_later(conn)

    def landed(self, handover: str) -> bool:
        """Whether the move named ``handover`` landed here (in the last ``_LANDED_S``), even if
        its session ended or moved on since. Asked by the node it came from when Redis lost
        the session's record: then only this node can tell whether the move landed (it ran
        its ``$disconnect`` if the session ended here) or never will (its holder keeps it)."""
        until = self._landed.get(handover)
        return until is not None and until > time.monotonic()

    def arriving(self, connection_id: str) -> asyncio.Future[Any] | None:
        """The move of a session on its way here (done once it landed or did not), None if
        none is."""
        kept = self._incoming.get(connection_id)
        return None if kept is None else kept.moving

    def moved_to(self, connection_id: str) -> None:
        """Raise MovedError if the session left this node a moment ago (calls follow it)."""
        moved = self._moved.get(connection_id)
        if moved is not None and moved[1] > time.monotonic():
            raise MovedError(moved[0])

    def keep_incoming(
        self, connection_id: str, data: bytes, binary: bool, fanout_id: str = ""
    ) -> asyncio.Future[None] | None:
        """Keep a post for a session being resumed here from another node, None if none is.

        The returned future is done once the post is queued on the session (its result) or
        is not (its exception: GoneError if the session did not come here, LimitExceededError
        if the session or its tenant's plan refused it). Raises LimitExceededError at once
        when the posts kept for the session would pass ``max_unacked_bytes``, as a post to a
        dropped session over its limit is refused. ``fanout_id``: see ``Gateway.local_post``."""
        kept = self._incoming.get(connection_id)
        if kept is None:
            return None
        return kept.add(data, binary, self.max_unacked, fanout_id)

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
        received, sent = ws.protocol.close_rcvd, ws.protocol.close_sent
        if received is not None and received.code not in _DROP_CODES:
            return False  # the client closed it on purpose
        if received is None and sent is not None and sent.code != CLOSE_INTERNAL_ERROR:
            # websockets failed the connection for what the client sent (an invalid close
            # frame or frame: 1002, 1007, 1009): the client did close, or broke the protocol.
            # 1011 stays a drop: it is the keepalive timeout, the network dying.
            return False
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
                self._host.count_sent(conn.record.tenant, 1)  # an error frame, as the dispatcher's are counted
            return
        await dispatch(conn, message)

    async def close(self) -> None:
        """The node stops: let sessions on their way here land, and settle those that left
        (for at most the shutdown timeout each), then end every dropped session, those kept
        here too, and wait for their ``$disconnect``."""
        timeout = self._config.limits.shutdown_timeout_s
        await _within(timeout, [kept.moving for kept in self._incoming.values()])
        while self._leaving:  # a take made while these settle is settled too
            await _within(timeout, self._settling())
        for conn in self._host.hub:
            if isinstance(conn, ReliableConnection) and conn.dropped:
                self.end(conn)
        if self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)

    # ---------------------------------------------------------------- internals

    def _settling(self) -> list[asyncio.Future[None]]:
        """Settle every move from here now (woken early), and return those settlings."""
        for leaving in self._leaving.values():
            leaving.wake.set()
        return [leaving.settling for leaving in self._leaving.values()]

    @staticmethod
    def _track_fanouts(conn: ReliableConnection) -> None:
        """A session that just moved (or stayed) takes each fan-out once for a while: one may
        reach it directly and sent on by the node it left."""
        seen: dict[str, None] = {}
        conn.fanouts = seen
        asyncio.get_running_loop().call_later(_TRACK_S, stop_tracking, conn, seen)

    def _expire_later(self, conn: ReliableConnection) -> None:
        """``conn`` is dropped here: end it when its window runs out, or sooner, as its window
        running out would, if newer drops take this node past what it may hold."""
        self._cancel_expiry(conn)
        conn.expiry = asyncio.get_running_loop().call_later(self._window_s, self.end, conn)
        plan = self._host.usage.plan_of(conn.record.tenant)
        for oldest in self._dropped.add(conn, plan.max_connections if plan is not None else 0):
            log.info("dropped session %s ended: its tenant's dropped sessions are over this node's bound", oldest.id)
            self.end(oldest)

    def _cancel_expiry(self, conn: ReliableConnection) -> None:
        if conn.expiry is not None:
            conn.expiry.cancel()
            conn.expiry = None
            self._dropped.remove(conn)

    def _remember_move(self, connection_id: str, to_node: str) -> None:
        moved, now = self._moved, time.monotonic()
        if len(moved) >= _MOVED_MAX:
            for key in [k for k, (_, until) in moved.items() if until <= now] or [next(iter(moved))]:
                del moved[key]
        moved[connection_id] = (to_node, now + _MOVED_S)

    def _remember_landing(self, handover: str) -> None:
        landed, now = self._landed, time.monotonic()
        while landed and (len(landed) >= _MOVED_MAX or next(iter(landed.values())) <= now):
            del landed[next(iter(landed))]  # oldest first: all are kept equally long
        landed[handover] = now + _LANDED_S

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)


async def _within(timeout: float, tasks: Sequence[asyncio.Future[Any]]) -> None:
    """Let ``tasks`` finish for at most ``timeout`` seconds, then cancel those still running."""
    if tasks:
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
