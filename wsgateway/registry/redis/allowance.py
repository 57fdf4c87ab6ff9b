"""Usage plans on Redis: the tenants' connection places, the cluster's attempt windows and the
daily counts (key layout in ``keys``, scripts ``PLACES_*`` in ``scripts``).

Places are taken atomically by one script per handshake (the cap test and the increment in
one step, so that racing handshakes on several nodes never pass a cap together) and listed
under the node that took them, so that a sweep of a dead node, or the node itself when it
stops, gives them back exactly once (``PLACES_FREE_NODE``). While Redis cannot be reached a
node grants places against its own counts only (the caps then hold per node) and gives those
back locally: nothing is refused only because Redis is down.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from ...usage import WINDOW_S, UsageReport, UsageTotals
from .. import decrement
from .batch import REDIS_FAILURES, CommandBatcher
from .keys import KeySpace
from .scripts import PLACES_FREE, PLACES_FREE_NODE, PLACES_TAKE

__all__ = ["Allowance"]

log = logging.getLogger("wsgateway.registry")

_REFUSED = {1: "max_connections", 2: "max_connections_per_principal"}
_DAY_TTL_S = 2 * 86400  # a day's counts outlive the day by one, for late readers
_WINDOW_TTL_S = int(10 * WINDOW_S) + 1


class Allowance:
    """One node's share of the plans' cluster state; built by ``RedisRegistry``."""

    def __init__(self, keys: KeySpace, node_id: str, batcher: CommandBatcher, *, timeout_s: float) -> None:
        self._keys = keys
        self._node_id = node_id
        self._batcher = batcher
        self._timeout_s = timeout_s
        self._mine: Counter[tuple[str, str]] = Counter()  # (tenant, principal) -> places held here
        self._offline: Counter[tuple[str, str]] = Counter()  # ... of them granted while Redis was down
        self._warned = False
        self._listed: set[str] = set()  # tenants listed under this node since the last sync

    async def reserve(self, tenant: str, principal: str, max_tenant: int, max_principal: int) -> str | None:
        """See ``Registry.reserve``."""
        keys, call, key = self._keys, self._batcher.call, (tenant, principal)
        try:
            async with asyncio.timeout(self._timeout_s):
                # Listed first (same pipeline): a node that dies right after the script still
                # has it listed. Once per tenant per sync is enough (see sync).
                listed = None
                if tenant not in self._listed:
                    listed = call("SADD", keys.node_places(self._node_id), tenant)
                taken = await call("EVAL", PLACES_TAKE, 1, keys.tenant_places(tenant), self._node_id, principal,
                                   max_tenant, max_principal)
                if listed is not None:
                    await listed
                    self._listed.add(tenant)
        except REDIS_FAILURES as exc:
            return self._reserve_offline(key, max_tenant, max_principal, exc)
        if taken:
            return _REFUSED[int(taken)]
        self._mine[key] += 1
        return None

    def _reserve_offline(self, key: tuple[str, str], max_tenant: int, max_principal: int,
                         exc: BaseException) -> str | None:
        if not self._warned:
            self._warned = True
            log.warning("registry: connection caps hold per node while Redis does not answer (%r)", exc)
        tenant_places = sum(n for (t, _), n in self._mine.items() if t == key[0]) if max_tenant else 0
        if max_tenant and tenant_places >= max_tenant:
            return "max_connections"
        if max_principal and self._mine[key] >= max_principal:
            return "max_connections_per_principal"
        self._mine[key] += 1
        self._offline[key] += 1
        return None

    async def unreserve(self, tenant: str, principal: str) -> None:
        """See ``Registry.unreserve``."""
        key = (tenant, principal)
        decrement(self._mine, key)
        if self._offline[key]:
            decrement(self._offline, key)
            return
        self._offline.pop(key, None)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._batcher.call("EVAL", PLACES_FREE, 1, self._keys.tenant_places(tenant),
                                         self._node_id, principal)
        except REDIS_FAILURES as exc:  # the place stays taken until this node stops or is swept
            log.warning("registry: could not give back a connection place of tenant %r (%r)", tenant, exc)

    async def held(self, tenant: str) -> int:
        """See ``Registry.held``."""
        places = await self._batcher.call("HGET", self._keys.tenant_places(tenant), "*")
        return int(places or 0)

    async def free_node(self, node_id: str) -> int:
        """Give back every place ``node_id`` took (it stopped or died); returns how many.
        Raises a Redis error if Redis cannot be used (a later sweep tries again)."""
        keys, call = self._keys, self._batcher.call
        tenants = await call("SMEMBERS", keys.node_places(node_id))
        freed = await asyncio.gather(
            *(call("EVAL", PLACES_FREE_NODE, 1, keys.tenant_places(t.decode()), node_id) for t in tenants))
        await call("DEL", keys.node_places(node_id))
        return sum(int(n) for n in freed)

    async def sync(self, report: UsageReport) -> UsageTotals:
        """See ``Registry.sync_usage``: one pipelined round of commands."""
        keys, call = self._keys, self._batcher.call
        self._listed.clear()  # list again: a sweep of this node (declared dead) dropped the set
        window = keys.demand(report.window)
        adds = [call("HINCRBY", window, key, n) for key, n in report.demand.items()]
        if adds:
            adds.append(call("EXPIRE", window, _WINDOW_TTL_S))
        previous = call("HGETALL", keys.demand(report.window - 1))
        days: list[tuple[str, asyncio.Future[int], asyncio.Future[int]]] = []
        for tenant, (messages, posts) in report.used.items():
            day = keys.tenant_day(tenant, report.day)
            days.append((tenant, call("HINCRBY", day, "m", messages), call("HINCRBY", day, "p", posts)))
            adds.append(call("EXPIRE", day, _DAY_TTL_S))
        # Bounded by the caller (RedisRegistry.sync_usage), as today() and held() are.
        await asyncio.gather(*adds)
        flat = await previous
        totals = UsageTotals({k.decode(): int(v) for k, v in flat.items()})
        for tenant, messages_total, posts_total in days:
            totals.day[tenant] = (int(await messages_total), int(await posts_total))
        return totals

    async def today(self, tenant: str, day: str) -> tuple[int, int]:
        """See ``Registry.usage_today``."""
        messages, posts = await self._batcher.call("HMGET", self._keys.tenant_day(tenant, day), "m", "p")
        return int(messages or 0), int(posts or 0)

