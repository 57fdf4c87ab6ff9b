"""One node's usage state: the throttles of plans, routes and connections, and daily quotas.

The hot paths (:meth:`Usage.message`, :meth:`Usage.post`, :meth:`Usage.route_of`) are a dict
lookup and a token bucket: no I/O, no Redis call per message. Cluster-wide figures come from
a sync the gateway runs every :data:`SYNC_S`:

- rates: each node counts the *attempts* per key (a tenant's messages, its posts, a route)
  and adds them to a per-second window the registry keeps for the cluster. A node's share
  of a rate is its part of the cluster's attempts in the last complete window, so the shares
  add up to the configured figure; a key this node has not seen contested yet gets the whole
  rate. While the registry cannot be reached every node enforces the whole figure alone.
- quotas: accepted messages and posts are added to the tenant's count of the UTC day in the
  registry; a node refuses once the cluster count it last saw plus its own unsynced count
  reaches the quota. Counts not yet synced are kept until the registry answers.

Use from the event loop only.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import PlanConfig, RouteSettingsConfig
from .plans import PlanBook, TokenBucket, utc_day

if TYPE_CHECKING:
    from .metrics import Stats

__all__ = ["LIMIT_EXCEEDED", "SYNC_S", "TOO_MANY_REQUESTS", "WINDOW_S", "RouteGate", "Usage", "UsageReport",
           "UsageTotals"]

SYNC_S = 0.5  # seconds between syncs with the registry
WINDOW_S = 1.0  # the cluster's attempt counts are kept per window of this many seconds
TOO_MANY_REQUESTS = "Too Many Requests"  # AWS's throttled-message text
LIMIT_EXCEEDED = "Limit Exceeded"  # AWS's text once a quota is used up
_UNSEEN: Any = object()  # a tenant not looked up yet (see Usage.post)


@dataclass(slots=True)
class UsageReport:
    """What one node tells the registry at a sync: attempts per key since the last report
    (``m:<tenant>``, ``p:<tenant>``, ``r:<route>``) in ``window``, and the messages and posts
    it let through per tenant on UTC ``day``."""

    window: int
    day: str
    demand: dict[str, int] = field(default_factory=dict)
    used: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(slots=True)
class UsageTotals:
    """The registry's answer: the cluster's attempts per key in window ``window - 1`` and
    each reported tenant's (messages, posts) of the day, all nodes together."""

    demand: dict[str, int] = field(default_factory=dict)
    day: dict[str, tuple[int, int]] = field(default_factory=dict)


class _Tenant:
    """The throttles and counts of one tenant on a plan."""

    __slots__ = ("messages", "name", "plan", "posts", "quota_share", "seen", "throttled", "tried_m", "tried_p",
                 "used_m", "used_p")

    def __init__(self, name: str, plan: PlanConfig, now: float) -> None:
        self.name = name
        self.plan = plan
        self.messages = TokenBucket(plan.messages_per_s, plan.messages_burst, now)
        self.posts = TokenBucket(plan.posts_per_s, plan.posts_burst, now)
        self.tried_m = self.tried_p = 0  # attempts since the last report
        self.used_m = self.used_p = 0  # let through, not yet synced
        self.seen = 0  # messages + posts of the day, all nodes, at the last sync
        self.quota_share = 1.0  # this node's part of the tenant's demand (1.0: alone, or unknown)
        self.throttled = 0  # calls this node refused since start (the console shows them)

    def over_quota(self) -> bool:
        """Until the next sync this node may use its share of what the day has left, so that
        nodes spending at once overshoot the quota by rounding, not by a sync's worth each."""
        quota = self.plan.quota_per_day
        if not quota:
            return False
        left = quota - self.seen
        return left <= 0 or self.used_m + self.used_p >= left * self.quota_share


class RouteGate:
    """A route's throttles on this node: its share of ``rate_per_s`` and ``max_concurrency``."""

    __slots__ = ("_clock", "bucket", "in_flight", "max_concurrency", "settings", "tried")

    def __init__(self, settings: RouteSettingsConfig, clock: Callable[[], float]) -> None:
        self.settings = settings
        self._clock = clock
        self.bucket = TokenBucket(settings.rate_per_s, settings.burst, clock())
        self.max_concurrency = settings.max_concurrency
        self.in_flight = 0
        self.tried = 0

    def enter(self) -> str | None:
        """Before invoking the route's handler: None to go on (call :meth:`leave` after),
        else the name of the limit that throttles this message."""
        self.tried += 1
        if self.max_concurrency and self.in_flight >= self.max_concurrency:
            return "max_concurrency"
        if not self.bucket.take(self._clock()):
            return "rate_per_s"
        self.in_flight += 1
        return None

    def leave(self) -> None:
        """The handler returned (or failed)."""
        self.in_flight -= 1


class Usage:
    """The node's plans and throttles; build once, :meth:`configure` on reload."""

    def __init__(
        self,
        plans: tuple[PlanConfig, ...],
        route_settings: Mapping[str, RouteSettingsConfig],
        *,
        per_connection: tuple[float, int] = (0.0, 0),
        stats: Stats | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._stats = stats
        self._conn_rate, self._conn_burst = per_connection
        self._conn_buckets: dict[str, TokenBucket] = {}
        self._tenants: dict[str, _Tenant | None] = {}
        self._routes: dict[str, RouteGate] = {}
        self._shares: dict[str, float] = {}  # key -> this node's share of its rate
        self._mine: dict[int, Counter[str]] = {}  # window -> this node's reported attempts
        self._day = ""
        self._day_end = 0.0
        self.book = PlanBook(())
        self.active = False  # whether anything is limited; kept by configure
        self._start_day(wall())
        self.configure(plans, route_settings)

    # ---------------------------------------------------------------- configuration

    def configure(self, plans: tuple[PlanConfig, ...], route_settings: Mapping[str, RouteSettingsConfig]) -> None:
        """Apply (new) plans and route settings. Counts of the day are kept; buckets take the
        new figures from now on; open connections are not touched."""
        now = self._clock()
        self.book = PlanBook(plans)
        for tenant, state in list(self._tenants.items()):
            plan = self.book.plan_of(tenant)
            if plan is None or state is None:
                self._tenants.pop(tenant)  # looked up again on its next call
                continue
            state.plan = plan
            self._resize(state, now)
        self._routes = {key: RouteGate(settings, self._clock) for key, settings in route_settings.items()
                        if settings.rate_per_s or settings.max_concurrency}
        # Whether anything is limited (plans, routes or per-connection rates): an attribute,
        # since every client message reads it.
        self.active = bool(self.book) or bool(self._routes) or bool(self._conn_rate)

    def plan_of(self, tenant: str) -> PlanConfig | None:
        """The tenant's plan (None: no plan applies)."""
        return self.book.plan_of(tenant)

    # ---------------------------------------------------------------- checks (hot path)

    def connection_message(self, connection_id: str) -> bool:
        """One client message on a connection; False: over ``messages_per_s_per_connection``."""
        if not self._conn_rate:
            return True
        bucket = self._conn_buckets.get(connection_id)
        now = self._clock()
        if bucket is None:
            bucket = self._conn_buckets[connection_id] = TokenBucket(self._conn_rate, self._conn_burst, now)
        if bucket.take(now):
            return True
        self.count("", "messages_per_s_per_connection", "message")
        return False

    def forget_connection(self, connection_id: str) -> None:
        """The connection closed: drop its bucket."""
        self._conn_buckets.pop(connection_id, None)

    def message(self, tenant: str) -> str | None:
        """One client message of ``tenant``: None lets it through, else the error frame's text
        (:data:`TOO_MANY_REQUESTS` or :data:`LIMIT_EXCEEDED`)."""
        state = self._tenant(tenant)
        if state is None:
            return None
        state.tried_m += 1
        if state.plan.quota_per_day and self._over_quota(state):
            self._refused(state, "quota_per_day", "message")
            return LIMIT_EXCEEDED
        if not state.messages.take(self._clock()):
            self._refused(state, "messages_per_s", "message")
            return TOO_MANY_REQUESTS
        state.used_m += 1
        return None

    def post(self, tenant: str) -> str | None:
        """One management call aimed at ``tenant`` (a post, a delete, a fan-out): None lets it
        through, else the name of the plan's limit it is over."""
        state = self._tenants.get(tenant, _UNSEEN)  # known (most calls): no call to _tenant
        if state is _UNSEEN:
            state = self._tenant(tenant)
        if state is None:
            return None
        state.tried_p += 1
        if state.plan.quota_per_day and self._over_quota(state):
            self._refused(state, "quota_per_day", "post")
            return "quota_per_day"
        if not state.posts.take(self._clock()):
            self._refused(state, "posts_per_s", "post")
            return "posts_per_s"
        state.used_p += 1
        return None

    def route_of(self, route_key: str) -> RouteGate | None:
        """The route's gate, or None when ``[route_settings]`` limits nothing for it."""
        return self._routes.get(route_key)

    def count(self, plan: str, limit: str, kind: str) -> None:
        """Count one throttled call for ``wsgateway_throttled_total``."""
        if self._stats is not None:
            self._stats.throttled[(plan, limit, kind)] += 1

    def throttled_of(self, tenant: str) -> int:
        """Calls of ``tenant`` its plan refused on this node since start (0 without a plan)."""
        state = self._tenants.get(tenant)
        return state.throttled if state is not None else 0

    def _refused(self, state: _Tenant, limit: str, kind: str) -> None:
        state.throttled += 1
        self.count(state.plan.name, limit, kind)

    def _tenant(self, tenant: str) -> _Tenant | None:
        try:
            return self._tenants[tenant]
        except KeyError:
            plan = self.book.plan_of(tenant)
            state = None if plan is None else _Tenant(tenant, plan, self._clock())
            if state is not None:
                self._resize(state, self._clock())
            self._tenants[tenant] = state
            return state

    def _over_quota(self, state: _Tenant) -> bool:
        self._roll()
        return state.over_quota()

    def _roll(self) -> None:
        """Start a new UTC day's counts once the wall clock passed midnight."""
        now = self._wall()
        if now >= self._day_end:
            self._start_day(now)

    def _start_day(self, now: float) -> None:
        self._day = utc_day(now)
        self._day_end = (now // 86400 + 1) * 86400.0  # the next UTC midnight: epoch days are 86,400 s
        for state in self._tenants.values():
            if state is not None:
                state.seen = state.used_m = state.used_p = 0

    # ---------------------------------------------------------------- sync with the registry

    def report(self) -> UsageReport:
        """What to send the registry now; counts move from 'unsynced' to the report (give
        them back with :meth:`learn` (None) if the registry could not take them)."""
        self._roll()
        window = int(self._wall() // WINDOW_S)
        report = UsageReport(window, self._day)
        demand = report.demand
        for tenant, state in self._tenants.items():
            if state is None:
                continue
            # Only tenants with traffic here: their day totals come back with the answer.
            if state.used_m or state.used_p or (state.plan.quota_per_day and (state.tried_m or state.tried_p)):
                report.used[tenant] = (state.used_m, state.used_p)
                state.used_m = state.used_p = 0
            if state.tried_m:
                demand["m:" + tenant], state.tried_m = state.tried_m, 0
            if state.tried_p:
                demand["p:" + tenant], state.tried_p = state.tried_p, 0
        for key, gate in self._routes.items():
            if gate.tried:
                demand["r:" + key], gate.tried = gate.tried, 0
        self._mine.setdefault(window, Counter()).update(demand)
        for old in [w for w in self._mine if w < window - 1]:
            del self._mine[old]
        return report

    def learn(self, report: UsageReport, totals: UsageTotals | None) -> None:
        """Take the registry's answer to ``report``; None: it could not be reached, so the
        report's counts wait for the next sync and every share goes back to the whole rate."""
        if totals is None:
            self._unsent(report)
            self._set_shares({})
            return
        mine = self._mine.get(report.window - 1, Counter())
        shares = {key: min(1.0, count / total) for key, count in mine.items()
                  if (total := totals.demand.get(key, 0)) > count > 0}
        self._set_shares(shares)
        if report.day != self._day:
            return  # a new day began meanwhile: these totals are yesterday's
        for tenant, (messages, posts) in totals.day.items():
            state = self._tenants.get(tenant)
            if state is not None:
                state.seen = messages + posts

    def today(self, tenant: str) -> tuple[int, int]:
        """This node's (messages, posts) of ``tenant`` today not yet in the registry."""
        self._roll()
        state = self._tenants.get(tenant)
        return (0, 0) if state is None else (state.used_m, state.used_p)

    @property
    def day(self) -> str:
        """The current UTC day, ``YYYYMMDD``."""
        self._roll()
        return self._day

    def _unsent(self, report: UsageReport) -> None:
        if report.day != self._day:
            return  # yesterday's: no longer counted anywhere
        for tenant, (messages, posts) in report.used.items():
            state = self._tenants.get(tenant)
            if state is not None:
                state.used_m += messages
                state.used_p += posts

    def _set_shares(self, shares: dict[str, float]) -> None:
        changed = self._shares.keys() | shares.keys()
        self._shares = shares
        now = self._clock()
        for key in changed:
            kind, _, name = key.partition(":")
            if kind == "r":
                gate = self._routes.get(name)
                if gate is not None:
                    share = shares.get(key, 1.0)
                    gate.bucket.resize(gate.settings.rate_per_s * share, gate.settings.burst * share, now)
            else:
                state = self._tenants.get(name)
                if state is not None:
                    self._resize(state, now)

    def _resize(self, state: _Tenant, now: float) -> None:
        plan, shares = state.plan, self._shares
        share = shares.get("m:" + state.name, 1.0) if shares else 1.0
        state.messages.resize(plan.messages_per_s * share, plan.messages_burst * share, now)
        share_p = shares.get("p:" + state.name, 1.0) if shares else 1.0
        state.posts.resize(plan.posts_per_s * share_p, plan.posts_burst * share_p, now)
        state.quota_share = shares.get("m:" + state.name, share_p) if shares else 1.0
