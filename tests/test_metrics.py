"""Prometheus exposition of a node's counters (GET /metrics on the management port)."""

from __future__ import annotations

from tests.support import connect, eventually, running_node, whoami
from tests.test_management import raw


async def test_metrics_exposition():
    async with running_node() as node:
        async with await connect(node) as ws:
            cid = await whoami(ws)
            await raw(node, "POST", f"/prod/@connections/{cid}", b"m")
            await ws.recv()
        await raw(node, "POST", "/prod/@connections/AAAAAAAAAAAAAAAA", b"m")
        await eventually(lambda: node.gateway.stats.disconnects[1000] == 1)
        status, headers, body = await raw(node, "GET", "/metrics")
        text = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert "wsgateway_connections 0.0" in text
        assert "wsgateway_connections_accepted_total 1.0" in text
        assert 'wsgateway_management_requests_total{operation="PostToConnection",status="200"} 1.0' in text
        assert 'wsgateway_management_requests_total{operation="PostToConnection",status="410"} 1.0' in text
        assert 'wsgateway_disconnects_total{code="1000"} 1.0' in text
        assert "wsgateway_messages_received_total 1.0" in text


def test_traffic_tally_counts_as_a_counter() -> None:
    """Stats.traffic is a Tally: a Counter (0 for a missing tenant, adds up in Counter.update)
    whose item assignment is dict's C slot, not Counter's Python-level one."""
    from collections import Counter

    from wsgateway.metrics import Stats, Tally

    stats = Stats()
    assert type(stats.traffic) is Tally and isinstance(stats.traffic, Counter)
    stats.traffic["acme"] += 1
    stats.traffic["acme"] += 2
    assert stats.traffic["acme"] == 3 and stats.traffic["other"] == 0
    total: Counter[str] = Counter()
    total.update(stats.traffic)
    total.update(stats.traffic)
    assert total == {"acme": 6}
    del stats.traffic["acme"]
    assert stats.traffic == {}
