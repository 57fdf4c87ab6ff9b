"""Usage plans without sockets: plan lookup, token buckets, quotas by UTC day, cluster shares.

Time is injected: every clock here is a list the test moves by hand.
"""

from __future__ import annotations

import calendar
import time

import pytest

from wsgateway.config import PlanConfig, RouteSettingsConfig, parse_config
from wsgateway.errors import ConfigError
from wsgateway.metrics import Stats
from wsgateway.plans import PlanBook, TokenBucket, utc_day
from wsgateway.usage import LIMIT_EXCEEDED, TOO_MANY_REQUESTS, Usage, UsageTotals

SMALL = PlanConfig(name="small", tenants=("p001", "p002"), max_connections=50, messages_per_s=10,
                   messages_burst=20, posts_per_s=5, posts_burst=5, quota_per_day=100)
ANY = PlanConfig(name="default", tenants=("*",), messages_per_s=1000, messages_burst=1000)


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def usage(*plans: PlanConfig, wall: float = 1_800_000_000.0, **kwargs: object) -> tuple[Usage, Clock, Clock]:
    clock, wall_clock = Clock(100.0), Clock(wall)
    return Usage(plans, {}, clock=clock, wall=wall_clock, **kwargs), clock, wall_clock  # type: ignore[arg-type]


def test_plan_book_names_own_plan_then_the_wildcard_then_none() -> None:
    book = PlanBook((SMALL, ANY))
    assert book.plan_of("p001") is SMALL
    assert book.plan_of("p999") is ANY
    assert PlanBook((SMALL,)).plan_of("p999") is None
    assert not PlanBook(())


def test_token_bucket_lets_the_burst_through_then_the_rate() -> None:
    bucket = TokenBucket(10, 20, 0.0)
    assert sum(bucket.take(0.0) for _ in range(30)) == 20
    assert not bucket.take(0.05)  # half a token earned
    assert bucket.take(0.1)
    assert sum(bucket.take(1.1) for _ in range(30)) == 10  # one second: ten more
    assert sum(bucket.take(100.0) for _ in range(30)) == 20  # never more than the burst


def test_token_bucket_resize_keeps_tokens_held_up_to_the_new_burst() -> None:
    bucket = TokenBucket(10, 20, 0.0)
    bucket.resize(1, 5, 0.0)
    assert sum(bucket.take(0.0) for _ in range(30)) == 5
    assert sum(bucket.take(1.0) for _ in range(30)) == 1


def test_messages_over_the_plans_rate_are_too_many_requests_per_tenant() -> None:
    stats = Stats()
    node, clock, _ = usage(SMALL, ANY, stats=stats)
    results = [node.message("p001") for _ in range(25)]
    assert results.count(None) == 20 and results[20:] == [TOO_MANY_REQUESTS] * 5
    assert node.message("p002") is None  # another tenant on the same plan has its own bucket
    assert node.message("other") is None  # the wildcard plan
    assert stats.throttled == {("small", "messages_per_s", "message"): 5}
    clock.now += 0.5
    assert [node.message("p001") for _ in range(6)].count(None) == 5


def test_the_quota_counts_messages_and_posts_and_resets_at_the_utc_day() -> None:
    midnight = float(calendar.timegm((2026, 12, 7, 0, 0, 0)))
    node, clock, wall = usage(SMALL, wall=midnight - 10)
    used = 0
    for _ in range(200):
        clock.now += 1.0  # never rate-limited
        if node.message("p001") is None:
            used += 1
        if node.post("p001") is None:
            used += 1
    assert used == 100
    assert node.message("p001") == LIMIT_EXCEEDED
    assert node.post("p001") == "quota_per_day"
    assert node.today("p001") == (50, 50)
    wall.now = midnight + 1  # a new UTC day
    assert node.day == "20261207"
    assert node.message("p001") is None
    assert node.today("p001") == (1, 0)


def test_quota_counts_what_other_nodes_used() -> None:
    node, clock, _ = usage(SMALL)
    assert node.message("p001") is None
    report = node.report()
    assert report.used == {"p001": (1, 0)}
    node.learn(report, UsageTotals(day={"p001": (60, 39)}))  # every node together
    assert node.message("p001") is None  # the 100th
    clock.now += 1
    assert node.message("p001") == LIMIT_EXCEEDED


def test_an_unreachable_registry_keeps_the_counts_for_the_next_sync() -> None:
    node, _, _ = usage(SMALL)
    for _ in range(3):
        node.message("p001")
    report = node.report()
    node.learn(report, None)
    assert node.report().used == {"p001": (3, 0)}


def test_a_nodes_share_of_a_rate_follows_its_part_of_the_clusters_attempts() -> None:
    node, clock, wall = usage(SMALL)
    for _ in range(30):
        node.message("p001")
    first = node.report()
    wall.now += 1.0  # the next window: the first one is complete
    second = node.report()
    # This node made 30 of the cluster's 120 attempts in the complete window: a quarter of
    # the rate and of the burst (10/s, 20) is its own from now on.
    node.learn(second, UsageTotals(demand={"m:p001": 120}))
    assert first.demand == {"m:p001": 30}
    clock.now += 100
    assert [node.message("p001") for _ in range(10)].count(None) == 5
    clock.now += 1.0
    assert [node.message("p001") for _ in range(10)].count(None) == 2  # 2.5 per second
    node.learn(node.report(), None)  # the registry is gone: the whole rate again
    clock.now += 100
    assert [node.message("p001") for _ in range(30)].count(None) == 20


def test_per_connection_rate_and_route_gates() -> None:
    stats = Stats()
    clock = Clock(0.0)
    node = Usage((), {"send": RouteSettingsConfig(rate_per_s=1, burst=2, max_concurrency=1)},
                 per_connection=(1.0, 3), stats=stats, clock=clock)
    assert [node.connection_message("c1") for _ in range(5)] == [True] * 3 + [False] * 2
    assert node.connection_message("c2")
    node.forget_connection("c1")
    assert node.connection_message("c1")
    gate = node.route_of("send")
    assert gate is not None and node.route_of("other") is None
    assert gate.enter() is None
    assert gate.enter() == "max_concurrency"  # one in flight per node
    gate.leave()
    assert gate.enter() is None
    gate.leave()
    assert gate.enter() == "rate_per_s"
    assert stats.throttled[("", "messages_per_s_per_connection", "message")] == 2


def test_configure_keeps_counts_and_applies_new_figures() -> None:
    node, clock, _ = usage(SMALL)
    for _ in range(20):
        node.message("p001")
    assert node.message("p001") == TOO_MANY_REQUESTS
    bigger = PlanConfig(name="big", tenants=("p001",), messages_per_s=100, messages_burst=100, quota_per_day=0)
    node.configure((bigger,), {})
    assert node.plan_of("p001") is bigger
    clock.now += 1
    assert [node.message("p001") for _ in range(150)].count(None) == 100
    assert node.plan_of("p002") is None


def test_utc_day() -> None:
    assert utc_day(0) == "19700101"
    assert utc_day(calendar.timegm((2026, 12, 6, 23, 59, 59))) == "20261206"
    assert len(utc_day()) == 8 and utc_day() == time.strftime("%Y%m%d", time.gmtime())


@pytest.mark.parametrize(("doc", "message"), [
    ({"plans": [{"name": "a", "tenants": ["x"]}, {"name": "b", "tenants": ["y", "x"]}]},
     "plans[1].tenants: 'x' is already in plan 'a'"),
    ({"plans": [{"name": "a", "tenants": ["*"]}, {"name": "b", "tenants": "*"}]},
     "plans[1].tenants: '*' is already in plan 'a'"),
    ({"plans": [{"name": "a", "tenants": ["x"]}, {"name": "a", "tenants": ["y"]}]},
     "plans[1].name: 'a' is used by another plan"),
    ({"plans": [{"name": "a", "tenants": ["x"], "max_connections": -1}]},
     "plans[0].max_connections: must be an integer >= 0, got -1"),
    ({"plans": [{"name": "a", "tenants": ["x"], "messages_per_s": "fast"}]},
     "plans[0].messages_per_s: must be a number >= 0, got 'fast'"),
    ({"plans": [{"name": "a", "tenants": ["x"], "posts_per_s": 10, "posts_burst": 5}]},
     "plans[0].posts_burst: must be >= its rate (10) when the rate is set, got 5"),
    ({"plans": [{"name": "a", "tenants": []}]}, "plans[0].tenants: must name at least one tenant"),
    ({"plans": [{"tenants": ["x"]}]}, "plans[0].name: is required"),
    ({"plans": [{"name": "a", "tenants": ["x"], "quota": 5}]}, "plans[0].quota: unknown key"),
    ({"route_settings": {"send": {"rate_per_s": 100, "burst": 50}}},
     "route_settings.send.burst: must be >= its rate (100) when the rate is set, got 50"),
    ({"route_settings": {"send": {"max_concurrency": 1.5}}},
     "route_settings.send.max_concurrency: must be an integer >= 0, got 1.5"),
    ({"limits": {"messages_per_s_per_connection": 5, "messages_burst_per_connection": 1}},
     "limits.messages_burst_per_connection: must be >= its rate (5) when the rate is set, got 1"),
])
def test_bad_plans_config_names_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(doc)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_plans_config_reads_the_issues_example() -> None:
    config = parse_config({
        "plans": [{"name": "small", "tenants": ["p001", "p002"], "max_connections": 50,
                   "max_connections_per_principal": 5, "messages_per_s": 50, "messages_burst": 100,
                   "posts_per_s": 200, "posts_burst": 400, "quota_per_day": 1000}],
        "limits": {"messages_per_s_per_connection": 0, "messages_burst_per_connection": 0},
        "route_settings": {"sendMessage": {"rate_per_s": 100, "burst": 200, "max_concurrency": 20}},
    })
    assert config.plans[0].max_connections_per_principal == 5
    assert config.route_settings.routes["sendMessage"] == RouteSettingsConfig(rate_per_s=100, burst=200, max_concurrency=20)


def test_loadtest_plans_flag_configures_every_check_generously() -> None:
    import tomllib

    from loadtest.targets import gateway_config

    config = parse_config(tomllib.loads(gateway_config(secret="s" * 40, access_key="AK", secret_key="k", plans=True)))
    assert [p.tenants for p in config.plans] == [("*",)]
    assert config.plans[0].max_connections >= 10_000_000 and config.plans[0].quota_per_day >= 10**12
    assert config.route_settings.routes["echo"].max_concurrency >= 10_000_000
    assert config.limits.messages_per_s_per_connection >= 10_000_000
    plain = parse_config(tomllib.loads(gateway_config(secret="s" * 40, access_key="AK", secret_key="k")))
    assert plain.plans == () and not plain.route_settings.routes
