"""wsgateway.exposition: the Prometheus text of a node's counters, read back with
prometheus_client's own parser (tests/test_metrics.py scrapes a running node's /metrics).
"""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from wsgateway.exposition import CONTENT_TYPE, exposition
from wsgateway.hub import Hub
from wsgateway.metrics import Stats

_FAMILIES = {
    "wsgateway_connections": "gauge", "wsgateway_tenants": "gauge",
    "wsgateway_connections_accepted": "counter", "wsgateway_handshakes_rejected": "counter",
    "wsgateway_messages_received": "counter", "wsgateway_messages_unrouted": "counter",
    "wsgateway_handler_failures": "counter", "wsgateway_disconnects": "counter",
    "wsgateway_slow_consumers": "counter", "wsgateway_management_requests": "counter",
    "wsgateway_integration_failures": "counter", "wsgateway_throttled": "counter",
}


def _samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = list(text_string_to_metric_families(text.decode()))
    assert {f.name: f.type for f in families} == _FAMILIES
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_a_fresh_node_exposes_every_family_at_zero() -> None:
    samples = _samples(exposition(Stats(), Hub()))
    assert samples[("wsgateway_connections", ())] == 0
    assert samples[("wsgateway_connections_accepted_total", ())] == 0
    assert samples[("wsgateway_handler_failures_total", (("kind", "error"),))] == 0
    assert samples[("wsgateway_handler_failures_total", (("kind", "timeout"),))] == 0
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_counters_by_label_read_back_exactly_whatever_the_label_text() -> None:
    stats = Stats()
    stats.accepted = 7
    stats.rejected[401] += 3
    stats.disconnects[1006] += 2
    stats.management[("PostToConnection", 410)] += 5
    stats.integration_failures[("http", "5xx")] += 1
    # A plan's name comes from the operator's config: quotes, a backslash and a newline must
    # be escaped, or one plan could break the whole scrape.
    plan = 'gold "eu"\\n\nsecond line'
    stats.throttled[(plan, "messages_per_s", "message")] += 4
    samples = _samples(exposition(stats, Hub()))
    assert samples[("wsgateway_connections_accepted_total", ())] == 7
    assert samples[("wsgateway_handshakes_rejected_total", (("status", "401"),))] == 3
    assert samples[("wsgateway_disconnects_total", (("code", "1006"),))] == 2
    assert samples[("wsgateway_management_requests_total", (("operation", "PostToConnection"), ("status", "410")))] == 5
    assert samples[("wsgateway_integration_failures_total", (("kind", "http"), ("reason", "5xx")))] == 1
    throttled = (("kind", "message"), ("limit", "messages_per_s"), ("plan", plan))
    assert samples[("wsgateway_throttled_total", throttled)] == 4

