"""This node's open connections, by id and by tenant; local fan-out, encoded once.

The hub is the truth about what this node holds: a connection is in it from the moment its
upgrade completed until its socket closed, and nothing else. Posts for ids found here never
touch the registry.
"""

from __future__ import annotations

from collections.abc import Iterator

from .connection import Connection, encode_frame
from .errors import GoneError, LimitExceededError

__all__ = ["Hub"]


class Hub:
    """Connections of this node. Not thread-safe: use from the event loop only."""

    __slots__ = ("_by_id", "_by_tenant")

    def __init__(self) -> None:
        self._by_id: dict[str, Connection] = {}
        # A dict used as an insertion-ordered set: iteration order = connect order.
        self._by_tenant: dict[str, dict[str, Connection]] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self._by_id.values()))

    def add(self, conn: Connection) -> None:
        self._by_id[conn.id] = conn
        self._by_tenant.setdefault(conn.tenant, {})[conn.id] = conn

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn``; return False if it was not here (idempotent)."""
        if self._by_id.pop(conn.id, None) is None:
            return False
        members = self._by_tenant.get(conn.tenant)
        if members is not None:
            members.pop(conn.id, None)
            if not members:
                del self._by_tenant[conn.tenant]
        return True

    def get(self, connection_id: str) -> Connection | None:
        return self._by_id.get(connection_id)

    def tenant_size(self, tenant: str) -> int:
        return len(self._by_tenant.get(tenant, ()))

    def tenants(self) -> list[str]:
        return list(self._by_tenant)

    def fanout(self, tenant: str, data: bytes, binary: bool, now: float, limit: int) -> int:
        """Queue ``data`` on every open connection of ``tenant``; return how many took it.

        The frame is encoded once and written to each transport without awaiting; a full
        or closing connection is skipped (a full one starts its slow-consumer clock).
        """
        members = self._by_tenant.get(tenant)
        if not members:
            return 0
        frame: bytes | None = None
        delivered = 0
        for conn in list(members.values()):
            try:
                if conn.compressed:
                    conn.send(data, binary, now, limit)
                else:
                    if frame is None:
                        frame = encode_frame(data, binary)
                    conn.send_frame(frame, now, limit)
            except (GoneError, LimitExceededError):
                continue
            delivered += 1
        return delivered
