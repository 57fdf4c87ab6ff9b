"""A reliable session on its way between two nodes, as each of them keeps it (``sessions``
runs the moves): the node it leaves keeps it aside until the move is settled
(:class:`Leaving`), the node it comes to keeps the posts that reach it for the session
meanwhile (:class:`Kept`); and the record as the handover carries it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..errors import GoneError, LimitExceededError, MovedError
from ..records import ConnectionRecord
from .session import OVER_LIMIT, ReliableConnection

if TYPE_CHECKING:
    from ..connection import Connection

__all__ = ["Kept", "Leaving", "record_from_json", "record_json", "stop_tracking"]


class Leaving:
    """A session handed over to ``to_node`` and not settled yet: its groups, the fan-outs
    that reached it here since (name, data, binary) and their size."""

    __slots__ = ("conn", "fanouts", "groups", "settling", "size", "to_node", "wake")

    def __init__(self, conn: ReliableConnection, to_node: str, groups: list[str]) -> None:
        self.conn = conn
        self.to_node = to_node
        self.groups = groups
        self.fanouts: list[tuple[str, bytes, bool]] = []
        self.size = 0
        self.wake = asyncio.Event()  # set: settle now (the node stops)
        self.settling: asyncio.Future[None]  # its settling (Sessions._settle)


class Kept:
    """A session on its way to this node: the move, and the posts that reached this node for
    the session meanwhile, each with the future its caller's answer waits on."""

    __slots__ = ("moving", "posts", "size")

    def __init__(self) -> None:
        self.posts: list[tuple[bytes, bool, str, asyncio.Future[None]]] = []  # data, binary, fanout_id, answer
        self.size = 0  # bytes of the posts' data
        self.moving: asyncio.Future[ReliableConnection | None]  # the move itself (Sessions._move_here)

    def add(self, data: bytes, binary: bool, limit: int, fanout_id: str = "") -> asyncio.Future[None]:
        if self.size + len(data) > limit:
            raise LimitExceededError(OVER_LIMIT)
        self.size += len(data)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(functools.partial(self._given_up, len(data)))
        self.posts.append((data, binary, fanout_id, done))
        return done

    def _given_up(self, size: int, done: asyncio.Future[None]) -> None:
        """A post's caller gave up on it (its deadline passed): it no longer counts."""
        if done.cancelled() and self.posts:
            self.size -= size

    def deliver(
        self, conn: ReliableConnection, deliver: Callable[[Connection, bytes, bool], None],
        deliver_fanout: Callable[[Connection, bytes, bool, str], None],
    ) -> None:
        """The session is here: queue each post on it, in order, and answer each; a fan-out
        sent on by the node the session left goes through ``deliver_fanout`` (as the hub
        queues one, once), any other post through ``deliver``."""
        posts, self.posts, self.size = self.posts, [], 0
        for data, binary, fanout_id, done in posts:
            if done.done():  # its caller gave up (cancelled): not delivered
                continue
            try:
                if fanout_id:
                    deliver_fanout(conn, data, binary, fanout_id)
                else:
                    deliver(conn, data, binary)
            except (GoneError, LimitExceededError) as exc:
                done.set_exception(exc)
            else:
                done.set_result(None)

    def not_here(self, stayed: str | None = None) -> None:
        """The session did not come: every post still kept is answered as not held here, or,
        if it may have stayed on node ``stayed``, as moved there (its sender follows it)."""
        posts, self.posts, self.size = self.posts, [], 0
        for _, _, _, done in posts:
            if not done.done():
                done.set_exception(GoneError() if stayed is None else MovedError(stayed))


def stop_tracking(conn: ReliableConnection, seen: dict[str, None]) -> None:
    """The tracking that began with ``seen`` is over (unless a later move began another)."""
    if conn.fanouts is seen:
        conn.fanouts = None


def record_json(conn: ReliableConnection) -> dict[str, Any]:
    rec = conn.record
    return {
        "connectionId": rec.connection_id, "tenant": rec.tenant, "principalId": rec.principal_id,
        "connectedAt": rec.connected_at, "sourceIp": rec.source_ip, "userAgent": rec.user_agent,
        "authorizer": dict(rec.authorizer), "domainName": rec.domain_name,
    }


def record_from_json(body: Mapping[str, Any]) -> ConnectionRecord:
    return ConnectionRecord(
        connection_id=str(body["connectionId"]), node_id="", tenant=str(body["tenant"]),
        principal_id=str(body["principalId"]), connected_at=float(body["connectedAt"]),
        source_ip=str(body["sourceIp"]), user_agent=str(body["userAgent"]),
        authorizer=dict(body["authorizer"]), domain_name=str(body["domainName"]),
    )
