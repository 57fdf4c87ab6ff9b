"""This node's dropped sessions, oldest first per tenant, and the bounds they are held to: pure
bookkeeping, no I/O (``sessions`` ends the sessions it names).

A dropped session gives back its ``limits.max_connections`` slot and its usage-plan place,
so neither bounds how many a tenant leaves behind by connecting and dropping again and again;
these bounds do, on each node:

- a tenant whose plan sets ``max_connections`` keeps at most that many dropped sessions;
- the tenants without such a cap keep at most ``[reliable] max_dropped_sessions`` together.

Past a bound the oldest dropped session ends (the one that has waited longest): the
tenant's own, or, past the shared bound, that of the uncapped tenant holding the most, so
that one tenant's churn ends its own sessions before anyone else's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .session import ReliableConnection

__all__ = ["Dropped"]


class _Tenant:
    """One tenant's dropped sessions, by id, in the order they dropped."""

    __slots__ = ("name", "pooled", "sessions")

    def __init__(self, name: str, pooled: bool) -> None:
        self.name = name
        self.pooled = pooled  # counted against the shared bound (the tenant has no cap)
        self.sessions: dict[str, ReliableConnection] = {}


class Dropped:
    """The dropped sessions of one node. ``pool``: ``[reliable] max_dropped_sessions``."""

    __slots__ = ("_pool", "_pooled", "_tenants")

    def __init__(self, pool: int) -> None:
        self._pool = pool
        self._pooled = 0  # dropped sessions of the tenants without a cap
        self._tenants: dict[str, _Tenant] = {}

    def __len__(self) -> int:
        return sum(len(tenant.sessions) for tenant in self._tenants.values())

    def of(self, tenant: str) -> list[ReliableConnection]:
        """``tenant``'s dropped sessions, oldest first."""
        held = self._tenants.get(tenant)
        return [] if held is None else list(held.sessions.values())

    def add(self, conn: ReliableConnection, cap: int) -> list[ReliableConnection]:
        """Keep ``conn`` as its tenant's newest dropped session; ``cap`` is the tenant's
        plan's ``max_connections`` (0: none). Returns the sessions that must end now for
        the bounds to hold, oldest first; they are no longer kept here."""
        name, pooled = conn.record.tenant, not cap
        tenant = self._tenants.get(name)
        if tenant is None:
            tenant = self._tenants[name] = _Tenant(name, pooled)
        elif tenant.pooled != pooled:  # its plan changed since (a reload)
            tenant.pooled = pooled
            self._pooled += len(tenant.sessions) if pooled else -len(tenant.sessions)
        tenant.sessions[conn.id] = conn
        if tenant.pooled:
            self._pooled += 1
        ended = []
        while cap and len(tenant.sessions) > cap:
            ended.append(self._end_oldest(tenant))
        while self._pooled > self._pool:
            largest = max((t for t in self._tenants.values() if t.pooled), key=lambda t: len(t.sessions))
            ended.append(self._end_oldest(largest))
        return ended

    def touch(self, conn: ReliableConnection) -> None:
        """``conn`` is being resumed: it becomes its tenant's newest (the last to end)."""
        tenant = self._tenants.get(conn.record.tenant)
        if tenant is not None and tenant.sessions.get(conn.id) is conn:
            tenant.sessions[conn.id] = tenant.sessions.pop(conn.id)

    def remove(self, conn: ReliableConnection) -> None:
        """``conn`` is no longer dropped (resumed, handed over, ended); no-op if not kept."""
        tenant = self._tenants.get(conn.record.tenant)
        if tenant is not None and tenant.sessions.get(conn.id) is conn:
            self._forget(tenant, conn.id)

    def _end_oldest(self, tenant: _Tenant) -> ReliableConnection:
        oldest = next(iter(tenant.sessions))
        conn = tenant.sessions[oldest]
        self._forget(tenant, oldest)
        return conn

    def _forget(self, tenant: _Tenant, connection_id: str) -> None:
        del tenant.sessions[connection_id]
        if tenant.pooled:
            self._pooled -= 1
        if not tenant.sessions:
            del self._tenants[tenant.name]
