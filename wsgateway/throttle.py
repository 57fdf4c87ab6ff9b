"""The node's usage plans at work: connection places, management-call throttles, the usage
report and the periodic sync of :class:`~wsgateway.usage.Usage` with the cluster.

The gateway builds one :class:`Throttle` over its usage state and its registry (seen here
only as a :class:`PlanStore`); the client edge takes places through it, the gateway checks
management calls with it, and its :meth:`Throttle.run_sync` loop runs for the node's life.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .admission import Hold
from .errors import LimitExceededError
from .usage import SYNC_S, Usage, UsageReport, UsageTotals

__all__ = ["PlanStore", "Throttle"]

log = logging.getLogger("wsgateway")


class PlanStore(Protocol):
    """The registry's part in usage plans (see ``wsgateway.registry.Registry``)."""

    async def reserve(self, tenant: str, principal: str, max_tenant: int, max_principal: int) -> str | None: ...

    async def unreserve(self, tenant: str, principal: str) -> None: ...

    async def sync_usage(self, report: UsageReport) -> UsageTotals: ...

    async def usage_today(self, tenant: str, day: str) -> tuple[int, int]: ...


class Throttle:
    """Usage plans on one node; ``spawn`` runs a coroutine in the node's task set."""

    def __init__(self, usage: Usage, store: PlanStore, spawn: Callable[[Coroutine[Any, Any, Any]], object]) -> None:
        self.usage = usage
        self._store = store
        self._spawn = spawn

    async def reserve_places(self, tenant: str, principal_id: str) -> Hold | None:
        """While plans are configured: take one of the tenant's connection places, cluster-wide,
        before the awaited ``$connect``. None: over its plan's cap (the handshake gets 429);
        else a Hold to release on every exit path (a failed handshake, the close)."""
        usage = self.usage
        if not usage.book:
            return Hold(None)
        plan = usage.plan_of(tenant)
        caps = (plan.max_connections, plan.max_connections_per_principal) if plan is not None else (0, 0)
        refused = await self._store.reserve(tenant, principal_id, *caps)
        if refused is not None:
            assert plan is not None
            log.info("handshake refused (429): tenant %r over its plan's %s", tenant, refused)  # %r: a client's text
            usage.count(plan.name, refused, "handshake")
            return None
        return Hold(lambda: self._spawn(self._store.unreserve(tenant, principal_id)))

    def admit_post(self, tenant: str) -> None:
        """A management call aimed at ``tenant`` (post, delete, fan-out): raise
        LimitExceededError (429) naming the plan's limit it is over."""
        limit = self.usage.post(tenant)
        if limit is not None:
            what = "used up" if limit == "quota_per_day" else "over"
            raise LimitExceededError(f"Too Many Requests: tenant {tenant} {what} its plan's {limit}")

    async def report(self, tenant: str, connections: int) -> dict[str, Any]:
        """The body of ``GET /@tenants/{tenant}/usage``, ``connections`` counted by the caller.
        Raises RegistryUnavailableError."""
        usage = self.usage
        plan = usage.plan_of(tenant)
        synced = await self._store.usage_today(tenant, usage.day)
        unsynced = usage.today(tenant)
        messages, posts = synced[0] + unsynced[0], synced[1] + unsynced[1]
        quota = plan.quota_per_day if plan is not None else 0
        return {
            "plan": plan.name if plan is not None else None,
            "connections": connections,
            "messagesToday": messages,
            "postsToday": posts,
            "quotaPerDay": quota,
            "remainingToday": max(0, quota - messages - posts) if quota else None,
        }

    async def run_sync(self) -> None:
        """Every SYNC_S, for the node's life: tell the store this node's usage, learn the
        cluster's. A store that fails leaves the limits per node until it answers."""
        usage = self.usage
        while True:
            await asyncio.sleep(SYNC_S)
            if not usage.active:
                continue
            report = usage.report()
            try:
                totals: UsageTotals | None = await self._store.sync_usage(report)
            except Exception as exc:  # noqa: BLE001 - limits then hold per node until it answers
                log.debug("usage sync failed (%r): limits hold per node", exc)
                totals = None
            usage.learn(report, totals)
