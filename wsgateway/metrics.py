"""Counters of one node and their Prometheus exposition (``GET /metrics``, management port).

The hot paths only add to plain integers on a :class:`Stats` object (no lock, no label
lookup per message); the prometheus_client collector reads them when Prometheus scrapes,
so metrics cost nothing between scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import HandlerTimeout, IntegrationError

if TYPE_CHECKING:
    from .hub import Hub

__all__ = ["CONTENT_TYPE", "LATENCY_BOUNDS_MS", "MAX_FAILURES", "Stats", "Tally", "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Upper bounds (ms) of the POST-latency buckets; one more bucket holds everything slower.
LATENCY_BOUNDS_MS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
_LATENCY_BOUNDS_S = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)
MAX_FAILURES = 200  # recent failures kept for the console
_K = TypeVar("_K")


class Tally(Counter[_K]):
    """A :class:`~collections.Counter` whose ``tally[key] += 1`` stays in C.

    Counter defines ``__delitem__`` in Python, and CPython then routes every item assignment
    of its instances through a Python-level slot (~1k instructions, once per client message
    and once per reply for ``Stats.traffic``, once per management request for
    ``Stats.management``); here deleting is dict's own again (a missing key raises), so
    assigning is too. Reading a missing key still answers 0."""

    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # dict's wrapper: CPython picks its C slot


class Stats:
    """Plain counters, incremented where things happen (event loop only)."""

    __slots__ = (
        "accepted",
        "rejected",
        "messages",
        "handler_errors",
        "handler_timeouts",
        "no_route",
        "disconnects",
        "management",
        "slow_consumers",
        "integration_failures",
        "throttled",
        "frames_out",
        "traffic",
        "post_latency",
        "failures",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: Counter[int] = Counter()  # handshake status -> count
        self.messages = 0
        self.handler_errors = 0
        self.handler_timeouts = 0
        self.no_route = 0
        self.disconnects: Counter[int] = Counter()  # close code -> count
        self.management: Tally[tuple[str, int]] = Tally()  # (operation, status) -> count
        self.slow_consumers = 0
        # (kind, reason) -> count: "http"/"lambda"/"python" x "5xx", "connect", "timeout", ...
        self.integration_failures: Counter[tuple[str, str]] = Counter()
        # (plan, limit, kind) -> calls throttled; plan "" for route and connection limits.
        # Never a tenant label: one series per tenant would grow without bound.
        self.throttled: Counter[tuple[str, str, str]] = Counter()
        # For the console (wsgateway.history reads them every SAMPLE_S):
        self.frames_out = 0  # frames queued to clients: posts, fan-out deliveries, handler replies
        # tenant -> messages in and out since the last sample (the sampler empties it)
        self.traffic: Tally[str] = Tally()
        # POSTs (to a connection, tenant, user, group), by LATENCY_BOUNDS_MS bucket
        self.post_latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        # the last MAX_FAILURES handler failures, refused handshakes and 5xx answers
        self.failures: deque[dict[str, object]] = deque(maxlen=MAX_FAILURES)

    def post_took(self, seconds: float) -> None:
        """Count one answered POST that took ``seconds`` from its head to its answer."""
        self.post_latency[bisect_left(_LATENCY_BOUNDS_S, seconds)] += 1

    def failed(self, kind: str, route: str, status: int, request_id: str, reason: str = "") -> None:
        """Remember one failure for the console: ``kind`` is handler, handshake or management.
        Never pass a token, a message body or a client's text."""
        self.failures.append({"time": time.time(), "kind": kind, "route": route, "status": status,
                              "requestId": request_id, "reason": reason})

    def integration_failed(
        self, kind: str, exc: BaseException, *, route: str = "", request_id: str = "", status: int = 500
    ) -> str:
        """Count a route's failure by its integration's kind and why, and remember it for the
        console; return the reason (for the access log). Never names the backend: the label
        set stays small."""
        reason = "error"
        if isinstance(exc, HandlerTimeout):
            reason = "timeout"
        elif isinstance(exc, IntegrationError):
            reason = exc.reason
        self.integration_failures[kind, reason] += 1
        self.failed("handler", route, status, request_id, f"{kind} {reason}")
        return reason


class _NodeCollector(Collector):
    def __init__(self, stats: Stats, hub: Hub) -> None:
        self._stats = stats
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        stats, hub = self._stats, self._hub
        yield GaugeMetricFamily("wsgateway_connections", "Open connections on this node", value=len(hub))
        yield GaugeMetricFamily("wsgateway_tenants", "Tenants with a connection on this node", value=len(hub.tenants()))
        yield CounterMetricFamily("wsgateway_connections_accepted", "Handshakes accepted", value=stats.accepted)
        rejected = CounterMetricFamily("wsgateway_handshakes_rejected", "Handshakes refused, by HTTP status", labels=["status"])
        for status, count in sorted(stats.rejected.items()):
            rejected.add_metric([str(status)], count)
        yield rejected
        yield CounterMetricFamily("wsgateway_messages_received", "Client messages dispatched", value=stats.messages)
        yield CounterMetricFamily("wsgateway_messages_unrouted", "Messages answered Forbidden", value=stats.no_route)
        errors = CounterMetricFamily("wsgateway_handler_failures", "Handler failures, by kind", labels=["kind"])
        errors.add_metric(["error"], stats.handler_errors)
        errors.add_metric(["timeout"], stats.handler_timeouts)
        yield errors
        closes = CounterMetricFamily("wsgateway_disconnects", "Connections closed, by close code", labels=["code"])
        for code, count in sorted(stats.disconnects.items()):
            closes.add_metric([str(code)], count)
        yield closes
        yield CounterMetricFamily("wsgateway_slow_consumers", "Clients cut off as slow consumers", value=stats.slow_consumers)
        calls = CounterMetricFamily(
            "wsgateway_management_requests", "Management API calls, by operation and status", labels=["operation", "status"]
        )
        for (operation, status), count in sorted(stats.management.items()):
            calls.add_metric([operation, str(status)], count)
        yield calls
        failures = CounterMetricFamily(
            "wsgateway_integration_failures", "Route failures, by integration kind and reason", labels=["kind", "reason"]
        )
        for (kind, reason), count in sorted(stats.integration_failures.items()):
            failures.add_metric([kind, reason], count)
        yield failures
        throttled = CounterMetricFamily(
            "wsgateway_throttled", "Calls refused by a usage plan, route setting or connection rate, by plan, "
            "limit and kind (handshake, message, post)", labels=["plan", "limit", "kind"]
        )
        for (plan, limit, kind), count in sorted(stats.throttled.items()):
            throttled.add_metric([plan, limit, kind], count)
        yield throttled


def exposition(stats: Stats, hub: Hub) -> bytes:
    """The Prometheus text exposition of a node's counters and its hub's sizes, built now
    (call it per scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_NodeCollector(stats, hub))
    return generate_latest(registry)
