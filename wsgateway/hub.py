"""This node's open connections, by id and by audience; local fan-out, encoded once.

The hub is the truth about what this node holds: a connection is in it from the moment its
upgrade completed until its socket closed, and nothing else. Posts for ids found here never
touch the registry.

Audiences are always inside one tenant: the whole tenant, one user's connections (the
token's ``sub``), or a named group that handlers and backends add connections to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from .connection import Connection, encode_frame
from .errors import GoneError, LimitExceededError

__all__ = ["Hub"]

# Index keys: ("t", tenant, "") / ("u", tenant, principal) / ("g", tenant, group).
_Key = tuple[str, str, str]


def audience_key(tenant: str, user: str | None = None, group: str | None = None) -> _Key:
    """The index key of an audience: a group, else a user, else the whole tenant."""
    if group is not None:
        return ("g", tenant, group)
    if user is not None:
        return ("u", tenant, user)
    return ("t", tenant, "")


class Hub:
    """Connections of this node. Not thread-safe: use from the event loop only."""

    __slots__ = ("_by_id", "_members", "get")

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        # The connection with this id, or None: the dict's own get (no Python frame), looked
        # up once or twice per post and per message. _by_id is never replaced.
        self.get: Callable[[str], Connection | None] = self._by_id.get
        # Dicts used as insertion-ordered sets: iteration order = join order.
        self._members: dict[_Key, dict[str, Connection]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def add(self, conn: Connection) -> None:
        self._by_id[conn.id] = conn
        self._join(("t", conn.tenant, ""), conn)
        if conn.record.principal_id:
            self._join(("u", conn.tenant, conn.record.principal_id), conn)

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn`` and its group memberships; False if it was not here (idempotent)."""
        if self._by_id.pop(conn.id, None) is None:
            return False
        self._leave(("t", conn.tenant, ""), conn)
        if conn.record.principal_id:
            self._leave(("u", conn.tenant, conn.record.principal_id), conn)
        for group in conn.groups or ():
            self._leave(("g", conn.tenant, group), conn)
        conn.groups = None
        return True

    def join_group(self, conn: Connection, group: str) -> None:
        """Add ``conn`` to a group of its tenant (idempotent)."""
        if conn.groups is None:
            conn.groups = set()
        conn.groups.add(group)
        self._join(("g", conn.tenant, group), conn)

    def leave_group(self, conn: Connection, group: str) -> None:
        """Take ``conn`` out of a group of its tenant (idempotent)."""
        if conn.groups is not None:
            conn.groups.discard(group)
        self._leave(("g", conn.tenant, group), conn)

    def tenant_size(self, tenant: str) -> int:
        return len(self._members.get(("t", tenant, ""), ()))

    def tenants(self) -> list[str]:
        return [key[1] for key in self._members if key[0] == "t"]

    def fanout(
        self, tenant: str, data: bytes, binary: bool, now: float, limit: int,
        *, user: str | None = None, group: str | None = None, fanout_id: str = "",
    ) -> int:
        """Queue ``data`` on every open connection of the audience; return how many took it.

        The frame is encoded once and written to each transport without awaiting; a full
        or closing connection is skipped (a full one starts its slow-consumer clock).
        Compressed once too for connections that compress each message alone (one frame per
        window size); a connection with context takeover compresses it itself, and a reliable
        session numbers it itself (``Connection.own_frames``), and takes a fan-out named
        ``fanout_id`` once (``Connection.already_took``).
        """
        members = self._members.get(audience_key(tenant, user, group))
        if not members:
            return 0
        frames: dict[int, bytes] = {}  # by deflate window bits; 0: uncompressed
        delivered = 0
        for conn in list(members.values()):
            try:
                if conn.own_frames:
                    if fanout_id and conn.fanouts is not None and conn.already_took(fanout_id):
                        continue
                    conn.send(data, binary, now, limit)
                else:
                    deflate = conn.shared_deflate
                    key = 0 if deflate is None else deflate.local_max_window_bits
                    frame = frames.get(key)
                    if frame is None:
                        frame = frames[key] = encode_frame(data, binary, deflate)
                    conn.send_frame(frame, now, limit)
            except (GoneError, LimitExceededError):
                continue
            delivered += 1
        return delivered

    def _join(self, key: _Key, conn: Connection) -> None:
        self._members.setdefault(key, {})[conn.id] = conn

    def _leave(self, key: _Key, conn: Connection) -> None:
        members = self._members.get(key)
        if members is not None:
            members.pop(conn.id, None)
            if not members:
                del self._members[key]
