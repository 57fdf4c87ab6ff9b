"""The Prometheus text of a node's counters (``GET /metrics`` on the management port).

Its own module so that prometheus_client is imported with the first scrape, not at start-up.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

if TYPE_CHECKING:
    from .hub import Hub
    from .metrics import Stats

__all__ = ["CONTENT_TYPE", "exposition"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
