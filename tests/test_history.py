"""wsgateway.history: samples of a node's counters, tenants' traffic, failures, and how the
console adds nodes together. Unit tests: a real Stats, Hub and Usage, a clock in the test's
hands, no sockets."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support import make_config
from wsgateway.connection import Connection
from wsgateway.history import SAMPLE_S, SAMPLES, History, every_sample, merge_samples, percentile
from wsgateway.hub import Hub
from wsgateway.metrics import LATENCY_BOUNDS_MS, MAX_FAILURES, Stats
from wsgateway.records import ConnectionRecord
from wsgateway.usage import Usage


class Clock:
    def __init__(self, now: float = 1_767_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def conn(tenant: str, n: int) -> Connection:
    record = ConnectionRecord(f"c{tenant}{n}", "n1", tenant, "u", 0.0, "127.0.0.1", "ua")
    return Connection(record, 0.0, {})


USAGE: dict[str, Usage] = {}


def history() -> tuple[History, Stats, Hub, Clock]:
    """A node's history; tenant "acme" on a plan of one post per second (``USAGE["n1"]``)."""
    stats, hub, clock = Stats(), Hub(), Clock()
    config = make_config(plans=[{"name": "gold", "tenants": ["acme"], "posts_per_s": 1, "posts_burst": 1}])
    USAGE["n1"] = usage = Usage(config.plans, {}, stats=stats)
    return History("n1", stats, hub, usage, clock=clock), stats, hub, clock


def test_a_sample_is_the_counters_growth_since_the_last() -> None:
    h, stats, hub, clock = history()
    hub.add(conn("acme", 1))
    stats.accepted += 3
    stats.rejected[401] += 2
    stats.messages += 10
    stats.frames_out += 25
    stats.management[("PostToConnection", 200)] += 4
    stats.management[("GetConnection", 200)] += 1
    stats.management[("PostToConnection", 410)] += 1
    stats.post_took(0.0008)  # bucket 2 (<= 1 ms)
    clock.now += 2
    first = h.sample({"ready": True, "status": "ok", "registry": {"backend": "memory", "reachable": True}})
    assert first == {
        "t": 1_767_000_002, "dt": 2.0, "connections": 1, "handshakes": {"101": 3, "401": 2},
        "messagesIn": 10, "framesOut": 25, "management": {"200": 5, "410": 1}, "latency": {"2": 1}, "p99Ms": 1.0,
    }
    clock.now += 2
    stats.messages += 1
    second = h.sample()
    assert (second["handshakes"], second["messagesIn"], second["management"], second["p99Ms"]) == ({}, 1, {}, None)
    assert [s["t"] for s in h.since(0)] == [1_767_000_002, 1_767_000_004]
    assert h.since(1_767_000_002) == [second]
    summary = h.summary()
    assert summary["ready"] is True and summary["last"] == second and summary["uptimeS"] == 4.0
    assert summary["registry"] == {"backend": "memory", "reachable": True}


def test_the_ring_keeps_fifteen_minutes() -> None:
    h, _, _, clock = history()
    for _ in range(SAMPLES + 10):
        clock.now += 2
        h.sample()
    samples = h.since(0)
    assert len(samples) == SAMPLES == 450
    assert samples[-1]["t"] - samples[0]["t"] == 2 * (SAMPLES - 1)


def test_tenants_count_connections_traffic_of_the_last_minute_and_throttled_calls() -> None:
    h, stats, hub, clock = history()
    for i in range(3):
        hub.add(conn("acme", i))
    hub.add(conn("zeta", 0))
    stats.traffic["acme"] += 5
    stats.traffic["gone"] += 2  # traffic of a tenant whose connections closed still shows
    USAGE["n1"].post("acme")  # the burst
    assert USAGE["n1"].post("acme") == "posts_per_s"  # refused: throttled
    clock.now += 2
    h.sample()
    stats.traffic["acme"] += 1
    clock.now += 2
    h.sample()
    assert h.tenants() == {"acme": [3, 6, 1], "zeta": [1, 0, 0], "gone": [0, 2, 0]}
    assert h.tenant("acme") == [3, 6, 1] and h.tenant("nobody") == [0, 0, 0]
    for _ in range(30):  # a minute later the traffic is forgotten
        clock.now += 2
        h.sample()
    assert h.tenants() == {"acme": [3, 0, 1], "zeta": [1, 0, 0]}


def test_failures_are_the_last_200_newest_first_with_the_node() -> None:
    h, stats, _, _ = history()
    for i in range(MAX_FAILURES + 5):
        stats.failed("handler", "boom", 500, f"r{i}", "python error")
    failures = h.failures()
    assert len(failures) == MAX_FAILURES
    assert failures[0]["requestId"] == f"r{MAX_FAILURES + 4}" and failures[0]["node"] == "n1"
    assert set(failures[0]) == {"time", "kind", "route", "status", "requestId", "reason", "node"}


def test_answer_knows_three_queries() -> None:
    h, _, _, clock = history()
    clock.now += 2
    h.sample()
    assert set(h.answer({"what": "overview", "since": 0})) == {"node", "samples"}
    assert h.answer({"what": "tenants"}) == {"tenants": {}}
    assert h.answer({"what": "failures"}) == {"failures": []}
    assert h.answer({"what": "tenant", "tenant": "acme"}) == {"tenant": [0, 0, 0]}
    with pytest.raises(ValueError, match="tenant must be a string"):
        h.answer({"what": "tenant"})
    with pytest.raises(ValueError, match="unknown survey"):
        h.answer({"what": "secrets"})
    with pytest.raises(ValueError, match="since must be a number"):
        h.answer({"what": "overview", "since": "x"})


def test_percentile_is_the_bucket_bound_holding_the_rank() -> None:
    assert percentile({}, 0.99) is None
    assert percentile({0: 99, 5: 1}, 0.99) == LATENCY_BOUNDS_MS[0]
    assert percentile({0: 98, 5: 2}, 0.99) == LATENCY_BOUNDS_MS[5]
    assert percentile({len(LATENCY_BOUNDS_MS): 1}, 0.99) == LATENCY_BOUNDS_MS[-1]  # slower than every bound
    assert percentile([0, 0, 3], 0.5) == LATENCY_BOUNDS_MS[2]


def test_merge_adds_nodes_by_second_and_takes_the_percentile_of_the_sum() -> None:
    def sample(t: int, conns: int, latency: dict[str, int]) -> dict[str, Any]:
        return {"t": t, "dt": 2.0, "connections": conns, "handshakes": {"101": 1}, "messagesIn": 1, "framesOut": 2,
                "management": {"200": 1}, "latency": latency, "p99Ms": None}

    merged = merge_samples([[sample(10, 1, {"0": 99}), sample(12, 1, {})], [sample(10, 2, {"6": 1})]])
    assert [m["t"] for m in merged] == [10, 12]
    first = merged[0]
    assert (first["connections"], first["handshakes"], first["messagesIn"], first["framesOut"]) == (3, {"101": 2}, 2, 4)
    assert first["latency"] == {"0": 99, "6": 1}
    assert first["p99Ms"] == LATENCY_BOUNDS_MS[0]  # 99 of 100 within the first bucket
    assert merged[1]["connections"] == 1


class _Enough(Exception):
    pass


async def _sampled(early_s: float, *, blocked_once_s: float = 0.0, count: int = 4) -> list[float]:
    """The clock's readings at each sample of ``every_sample``, on a clock that each wait
    moves by what was asked less ``early_s`` (a timer firing early, as uvloop's millisecond
    ones do), and once by ``blocked_once_s`` more (a blocked loop)."""
    clock = Clock(1_767_000_000.3)
    taken: list[float] = []
    blocked = [blocked_once_s]

    async def sleep(seconds: float) -> None:
        assert seconds > 0
        clock.now += max(seconds - early_s, 1e-5) + blocked.pop() if blocked else max(seconds - early_s, 1e-5)

    async def take() -> None:
        taken.append(clock.now)
        if len(taken) == count:
            raise _Enough

    with pytest.raises(_Enough):
        await asyncio.wait_for(every_sample(take, clock, sleep), 5)
    return taken


async def test_samples_are_taken_once_at_each_even_second_even_when_timers_fire_early() -> None:
    """uvloop's timers may fire a little early: the sampler waits on to the same instant and
    samples it once (it once sampled the same instant dozens of times in a row, which pushed
    a tenant's traffic out of the last minute's samples at once)."""
    for early_s in (0.0, 0.0004, 0.002):
        taken = await _sampled(early_s)
        assert [round(t / SAMPLE_S) * SAMPLE_S for t in taken] == [1_767_000_002.0 + SAMPLE_S * i for i in range(4)]
        assert all(t >= round(t / SAMPLE_S) * SAMPLE_S for t in taken)  # never before its instant


async def test_an_instant_missed_by_a_blocked_loop_is_skipped() -> None:
    taken = await _sampled(0.0, blocked_once_s=5.0, count=3)
    assert [int(t) for t in taken] == [1_767_000_007, 1_767_000_008, 1_767_000_010]
