"""What one node tells the operator console: its figures over the last 15 minutes, its
tenants and its recent failures.

Nothing here runs per message. The hot paths only add to the plain counters of
:class:`~wsgateway.metrics.Stats`; every :data:`SAMPLE_S` the gateway calls
:meth:`History.sample`, which turns the counters' growth since the last sample into one
small record and keeps the last :data:`SAMPLES` of them (15 minutes). The console of any
node asks every node for these through the registry (``Registry.survey``), and
:meth:`History.answer` is what a node says.

A sample (JSON as it crosses the registry)::

    {"t": 1767000000, "dt": 2.0, "connections": 12,
     "handshakes": {"101": 3, "401": 1}, "messagesIn": 40, "framesOut": 95,
     "management": {"200": 9, "410": 1}, "latency": {"2": 7, "3": 2}, "p99Ms": 2.0}

Counts are per sample (``dt`` seconds); ``latency`` counts POSTs by bucket index of
:data:`~wsgateway.metrics.LATENCY_BOUNDS_MS`, so that the console can add nodes together
before it takes a percentile.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .metrics import LATENCY_BOUNDS_MS, Tally

if TYPE_CHECKING:
    from .hub import Hub
    from .metrics import Stats
    from .usage import Usage

__all__ = ["SAMPLES", "SAMPLE_S", "History", "every_sample", "merge_samples", "percentile"]

SAMPLE_S = 2.0  # seconds between samples, on the wall clock's even seconds (nodes line up)
SAMPLES = 450  # 15 minutes of them
_TRAFFIC_SAMPLES = 30  # a tenant's traffic is counted over the last minute
_MIN_WAIT_S = 0.001  # uvloop's timers tick in milliseconds: a shorter wait may return at once


async def every_sample(
    take: Callable[[], Awaitable[None]],
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Call ``take`` once at each of the wall clock's multiples of :data:`SAMPLE_S` (so that
    nodes line up), forever. A timer may fire a little before its time (uvloop's run on a
    millisecond clock): the wait then goes on to the same instant, which is sampled once,
    never again as if it were the next one. An instant missed (the loop was blocked past
    it) is skipped: the next one is the first after now."""
    due = (clock() // SAMPLE_S + 1) * SAMPLE_S
    while True:
        while (left := due - clock()) > 0:
            await sleep(max(left, _MIN_WAIT_S))
        await take()
        due += SAMPLE_S
        now = clock()
        if due <= now:
            due = (now // SAMPLE_S + 1) * SAMPLE_S
_MAX_TENANTS = 10_000  # per answer: the busiest, by connections


def percentile(buckets: Mapping[int, int] | list[int], fraction: float) -> float | None:
    """The upper bound (ms) of the latency bucket that holds the ``fraction`` quantile of
    the counts (bucket index -> count); None without counts. Past the last bound it answers
    the last bound: "at least" that much."""
    items = sorted(buckets.items()) if isinstance(buckets, Mapping) else list(enumerate(buckets))
    total = sum(count for _, count in items)
    if not total:
        return None
    rank = fraction * total
    seen = 0
    for index, count in items:
        seen += count
        if seen >= rank and count:
            return LATENCY_BOUNDS_MS[min(index, len(LATENCY_BOUNDS_MS) - 1)]
    return LATENCY_BOUNDS_MS[-1]


class _Totals:
    """The counters' values at one sample (what the next sample subtracts)."""

    __slots__ = ("accepted", "frames_out", "latency", "management", "messages", "rejected")

    def __init__(self, stats: Stats) -> None:
        self.accepted = stats.accepted
        self.rejected = Counter(stats.rejected)
        self.messages = stats.messages
        self.frames_out = stats.frames_out
        self.management: Counter[int] = Counter()
        for (_, status), count in stats.management.items():
            self.management[status] += count
        self.latency = list(stats.post_latency)


def _grown(now: Counter[int], before: Counter[int]) -> dict[str, int]:
    return {str(key): now[key] - before[key] for key in sorted(now) if now[key] > before[key]}


class History:
    """One node's samples, tenants' traffic and failures, for the console. Event loop only."""

    def __init__(
        self, node_id: str, stats: Stats, hub: Hub, usage: Usage, *, clock: Callable[[], float] = time.time,
        size: int = SAMPLES,
    ) -> None:
        self.node_id = node_id
        self._stats = stats
        self._hub = hub
        self._usage = usage
        self._clock = clock
        self.started_at = clock()
        self._samples: deque[dict[str, Any]] = deque(maxlen=size)
        self._traffic: deque[Counter[str]] = deque(maxlen=_TRAFFIC_SAMPLES)
        self._before = _Totals(stats)
        self._before_at = self.started_at
        self.health: dict[str, Any] = {}  # the node's /health answer at the last sample

    def sample(self, health: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record the counters' growth since the last call; return the new sample."""
        now = self._clock()
        stats = self._stats
        totals = _Totals(stats)
        before = self._before
        handshakes = _grown(totals.rejected, before.rejected)
        if totals.accepted > before.accepted:
            handshakes = {"101": totals.accepted - before.accepted, **handshakes}
        latency = {str(i): n - m for i, (n, m) in enumerate(zip(totals.latency, before.latency, strict=True)) if n > m}
        sample = {
            "t": round(now),
            "dt": round(now - self._before_at, 3),
            "connections": len(self._hub),
            "handshakes": handshakes,
            "messagesIn": totals.messages - before.messages,
            "framesOut": totals.frames_out - before.frames_out,
            "management": _grown(totals.management, before.management),
            "latency": latency,
            "p99Ms": percentile({int(k): v for k, v in latency.items()}, 0.99),
        }
        self._before, self._before_at = totals, now
        self._samples.append(sample)
        self._traffic.append(stats.traffic)
        stats.traffic = Tally()
        if health is not None:
            self.health = dict(health)
        return sample

    def since(self, t: float) -> list[dict[str, Any]]:
        """The samples taken after epoch second ``t`` (0: all of them), oldest first."""
        return [s for s in self._samples if s["t"] > t]

    def summary(self) -> dict[str, Any]:
        """This node as the overview lists it."""
        now = self._clock()
        last = self._samples[-1] if self._samples else None
        registry = self.health.get("registry", {})
        return {
            "node": self.node_id,
            "startedAt": self.started_at,
            "uptimeS": round(now - self.started_at, 1),
            "connections": len(self._hub),
            "tenants": len(self._hub.tenants()),
            "ready": bool(self.health.get("ready", False)),
            "status": self.health.get("status", "starting"),
            "registry": {k: registry[k] for k in ("backend", "reachable", "subscribed", "settled") if k in registry},
            "last": last,
        }

    def tenants(self) -> dict[str, list[int]]:
        """Tenant -> [connections here, messages in + out here in the last minute, calls
        throttled here since start]: at most the ``_MAX_TENANTS`` with most connections."""
        hub = self._hub
        traffic: Counter[str] = Counter()
        for counts in self._traffic:
            traffic.update(counts)
        names = set(hub.tenants()) | set(traffic)
        if len(names) > _MAX_TENANTS:
            names = set(sorted(names, key=hub.tenant_size, reverse=True)[:_MAX_TENANTS])
        usage = self._usage
        return {name: [hub.tenant_size(name), traffic[name], usage.throttled_of(name)] for name in names}

    def tenant(self, name: str) -> list[int]:
        """One tenant's [connections, traffic, throttled] here, as :meth:`tenants` counts them."""
        traffic = sum(counts[name] for counts in self._traffic)
        return [self._hub.tenant_size(name), traffic, self._usage.throttled_of(name)]

    def failures(self) -> list[dict[str, Any]]:
        """The recent failures, newest first, each with this node's id."""
        return [{**f, "node": self.node_id} for f in reversed(self._stats.failures)]

    def answer(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """What this node says to a console's survey: ``{"what": "overview", "since": t}``,
        ``{"what": "tenants"}``, ``{"what": "tenant", "tenant": name}`` or
        ``{"what": "failures"}``. Raises ValueError otherwise."""
        what = query.get("what")
        if what == "overview":
            since = query.get("since", 0)
            if not isinstance(since, (int, float)):
                raise ValueError("since must be a number")
            return {"node": self.summary(), "samples": self.since(since)}
        if what == "tenants":
            return {"tenants": self.tenants()}
        if what == "tenant":
            name = query.get("tenant")
            if not isinstance(name, str):
                raise ValueError("tenant must be a string")
            return {"tenant": self.tenant(name)}
        if what == "failures":
            return {"failures": self.failures()}
        raise ValueError(f"unknown survey {what!r}")


def merge_samples(per_node: Iterable[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Add nodes' samples together by their second ``t`` (nodes sample on the same even
    seconds; one a second late joins its own point). Oldest first."""
    by_t: dict[int, dict[str, Any]] = {}
    for samples in per_node:
        for s in samples:
            into = by_t.get(s["t"])
            if into is None:
                by_t[s["t"]] = into = {"t": s["t"], "dt": s["dt"], "connections": 0, "handshakes": Counter(),
                                       "messagesIn": 0, "framesOut": 0, "management": Counter(), "latency": Counter()}
            into["connections"] += s["connections"]
            into["messagesIn"] += s["messagesIn"]
            into["framesOut"] += s["framesOut"]
            for key in ("handshakes", "management", "latency"):
                into[key].update(s[key])
    merged = []
    for t in sorted(by_t):
        s = by_t[t]
        s["p99Ms"] = percentile({int(k): v for k, v in s["latency"].items()}, 0.99)
        for key in ("handshakes", "management", "latency"):
            s[key] = dict(s[key])
        merged.append(s)
    return merged
