"""The single-node registry (the default): the hub already answers for every connection.

It keeps the records it is given so that tenant listings work the same as with Redis
(paged in connection id order, with the shared ``next_token`` form). Management calls reach
it only for ids the hub does not hold, so they are gone: there is no other node.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import GoneError
from ..records import ConnectionInfo, ConnectionRecord
from ..usage import UsageReport, UsageTotals
from . import FanoutResult, LocalNode, Page, PostWaiter, Registry, decrement
from ._page_token import check_limit, decode_token, encode_token

__all__ = ["MemoryRegistry"]


class MemoryRegistry:
    """One node, no shared state. See :class:`wsgateway.registry.Registry` for the contract."""

    kind = "memory"

    def __init__(self, node_id: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.node_id = node_id
        self._node: LocalNode | None = None
        self._records: dict[str, ConnectionRecord] = {}
        self._by_tenant: dict[str, set[str]] = {}
        self._clock = clock
        self._claimed: dict[str, float] = {}  # key -> when it may be claimed again
        self._expiries: list[tuple[float, str]] = []  # heap of the same, soonest first
        self._places: dict[str, int] = {}  # tenant -> places taken (see reserve)
        self._principal_places: dict[tuple[str, str], int] = {}
        self._days: dict[tuple[str, str], tuple[int, int]] = {}  # (day, tenant) -> (messages, posts)

    async def start(self, node: LocalNode) -> None:
        self._node = node

    async def close(self) -> None:
        self._records.clear()
        self._by_tenant.clear()

    async def add(self, record: ConnectionRecord) -> None:
        self._records[record.connection_id] = record
        self._by_tenant.setdefault(record.tenant, set()).add(record.connection_id)

    def drain(self) -> None:
        pass  # remove never waits here

    async def remove(self, record: ConnectionRecord) -> bool:
        if self._records.pop(record.connection_id, None) is None:
            return True
        ids = self._by_tenant.get(record.tenant)
        if ids is not None:
            ids.discard(record.connection_id)
            if not ids:
                del self._by_tenant[record.tenant]
        return True

    async def post(self, connection_id: str, data: bytes, binary: bool) -> None:
        raise GoneError()

    def send_post(self, connection_id: str, data: bytes, binary: bool, waiter: PostWaiter) -> None:
        waiter.posted(GoneError())

    async def get(self, connection_id: str) -> ConnectionInfo:
        raise GoneError()

    async def delete(self, connection_id: str) -> None:
        raise GoneError()

    async def take_session(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any]:
        raise GoneError()  # no other node to take it from

    def handing_over(self, record: ConnectionRecord, to_node: str, handover: str) -> None:
        pass  # no other node to hand it to

    async def move_in(self, record: ConnectionRecord, from_node: str, handover: str) -> bool:
        await self.add(record)  # never called: no other node hands a session over
        return True

    async def settle_handover(self, record: ConnectionRecord, handover: str) -> bool:
        return True  # never called: no session leaves this node

    async def fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> FanoutResult:
        return FanoutResult()  # no other node: the gateway's hub holds the whole audience

    async def forward(self, connection_id: str, to_node: str, data: bytes, binary: bool, fanout_id: str) -> None:
        raise GoneError()  # never called: no session leaves this node

    async def group(self, connection_id: str, group: str, *, join: bool) -> None:
        raise GoneError()

    async def list_tenant(self, tenant: str, limit: int, next_token: str | None) -> Page:
        check_limit(limit)
        after = decode_token(next_token)
        ids = sorted(i for i in self._by_tenant.get(tenant, ()) if after is None or i > after)
        page: list[ConnectionInfo] = []
        for connection_id in ids:
            info = self._info(connection_id)
            if info is None:
                continue
            if len(page) == limit:  # one more exists: this page is not the last
                return Page(page, encode_token(page[-1].record.connection_id))
            page.append(info)
        return Page(page, None)

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        now = self._clock()
        self._prune(now)
        if key in self._claimed:
            return False
        self._claimed[key] = now + ttl_s
        heapq.heappush(self._expiries, (now + ttl_s, key))
        return True

    async def release_once(self, key: str) -> None:
        self._claimed.pop(key, None)  # its heap entry goes when due (see _prune)

    def _prune(self, now: float) -> None:
        # On every claim, so memory holds only the keys of the last ttl_s: no timer needed.
        expiries = self._expiries
        while expiries and expiries[0][0] <= now:
            expiry, key = heapq.heappop(expiries)
            if self._claimed.get(key) == expiry:  # not released and claimed again since
                del self._claimed[key]

    async def health(self) -> Mapping[str, Any]:
        return {"backend": self.kind, "reachable": True}

    async def survey(self, query: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
        assert self._node is not None, "start() has not run"
        return {self.node_id: self._node.local_survey(query)}

    async def reserve(self, tenant: str, principal: str, max_tenant: int, max_principal: int) -> str | None:
        places, key = self._places.get(tenant, 0), (tenant, principal)
        if max_tenant and places >= max_tenant:
            return "max_connections"
        if max_principal and self._principal_places.get(key, 0) >= max_principal:
            return "max_connections_per_principal"
        self._places[tenant] = places + 1
        self._principal_places[key] = self._principal_places.get(key, 0) + 1
        return None

    async def unreserve(self, tenant: str, principal: str) -> None:
        decrement(self._places, tenant)
        decrement(self._principal_places, (tenant, principal))

    async def held(self, tenant: str) -> int:
        return self._places.get(tenant, 0)

    async def sync_usage(self, report: UsageReport) -> UsageTotals:
        # One node: the cluster's attempts are this node's, the day's counts are kept here.
        totals = UsageTotals(demand=dict(report.demand))
        for tenant, (messages, posts) in report.used.items():
            before = self._days.get((report.day, tenant), (0, 0))
            totals.day[tenant] = self._days[(report.day, tenant)] = (before[0] + messages, before[1] + posts)
        for old in [key for key in self._days if key[0] < report.day]:
            del self._days[old]  # yesterday's: nobody asks any more
        return totals

    async def usage_today(self, tenant: str, day: str) -> tuple[int, int]:
        return self._days.get((day, tenant), (0, 0))

    def _info(self, connection_id: str) -> ConnectionInfo | None:
        record = self._records[connection_id]
        if self._node is None:
            return ConnectionInfo(record, record.connected_at)
        try:
            return ConnectionInfo(record, self._node.local_info(connection_id).last_active_at)
        except GoneError:
            return None  # closed a moment ago; its remove() is on its way


_: type[Registry] = MemoryRegistry
