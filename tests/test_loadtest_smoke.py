"""The load generator still works: every scenario against wsgateway for a few seconds.

This checks the instrument, never the speed of anything: each scenario ran, opened what it
was asked to, and reported numbers that make sense together. Full runs stay manual
(``loadtest/README.md``). The pure pieces (histogram, capacity, the wire formats) are checked
without sockets at the end.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from loadtest import wire
from loadtest.metrics import Histogram, RatePoint, capacity
from loadtest.report import markdown

REPO = Path(__file__).resolve().parent.parent
PHASES = {"idle", "connect", "echo", "unicast", "fanout", "crossnode/unicast", "crossnode/fanout", "slow"}
SMOKE_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("loadtest")
    run = subprocess.run(
        [sys.executable, "-m", "loadtest", "all", "--target", "wsgateway", "--smoke", "--quiet", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        timeout=SMOKE_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr.decode(errors="replace")[-4000:]
    data = orjson.loads((out / "results.json").read_bytes())
    data["out"] = out
    data["by_phase"] = {r["phase"]: r for r in data["results"]}
    return data


def test_every_scenario_ran(smoke: dict[str, Any]) -> None:
    assert set(smoke["by_phase"]) == PHASES
    for record in smoke["results"]:
        assert record["status"] == "ok", record
        assert record["target"] == "wsgateway"


def test_numbers_are_sane(smoke: dict[str, Any]) -> None:
    for record in smoke["results"]:
        lat = record["latency_ms"]
        assert record["throughput"] > 0, record
        assert record["error_total"] == 0, record["errors"]
        assert lat["count"] > 0
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
        assert record["opened"] == record["connections"]
        assert record["server"]["rss_mb"] > 0 and record["server"]["cpu_percent"] >= 0
        assert record["generator"]["processes"] >= 1


def test_idle_reports_memory_per_connection(smoke: dict[str, Any]) -> None:
    idle = smoke["by_phase"]["idle"]
    assert idle["throughput"] == idle["connections"]  # every connection still held
    assert idle["extra"]["rss_per_conn_kb"] > 0


def test_fanout_reaches_every_client(smoke: dict[str, Any]) -> None:
    for phase in ("fanout", "crossnode/fanout"):
        record = smoke["by_phase"][phase]
        assert record["extra"]["messages_published"] > 0
        assert record["extra"]["delivered_share"] == 1.0
        assert record["latency_last_ms"]["p99"] >= record["latency_ms"]["p50"]


def test_unicast_is_signed_and_delivered(smoke: dict[str, Any]) -> None:
    for phase in ("unicast", "crossnode/unicast"):
        record = smoke["by_phase"][phase]
        assert record["extra"]["requests_per_s"] > 0  # a bad SigV4 signature would be http_403
        assert record["request_latency_ms"]["count"] > 0


def test_slow_clients_are_counted(smoke: dict[str, Any]) -> None:
    slow = smoke["by_phase"]["slow"]
    assert slow["offered_rate"] == 20
    assert slow["extra"]["stalled"] == 4  # 10% of 40
    assert slow["extra"]["receivers"] == 36  # 35 listeners + the publisher's sentinel


def test_report_and_plots_are_written(smoke: dict[str, Any]) -> None:
    report = (smoke["out"] / "report.md").read_text()
    for phase in PHASES:
        assert f"## {phase}\n" in report
    assert list((smoke["out"] / "plots").glob("*-throughput.png"))


# -- pure pieces, no sockets --------------------------------------------------------------


def test_histogram_percentiles_within_one_percent() -> None:
    hist = Histogram.from_samples([1_000_000] * 99 + [100_000_000])
    assert hist.total == 100
    assert 1_000_000 <= hist.percentile(50) <= 1_010_000
    assert hist.percentile(100) == 100_000_000 == hist.max_ns
    merged = hist.merge(Histogram.from_samples([5_000_000]))
    assert merged.total == 101 and merged.max_ns == 100_000_000
    assert Histogram().summary().count == 0


def test_capacity_is_the_highest_sustained_rate() -> None:
    points = [RatePoint(1000, 1000, 2.0), RatePoint(2000, 1990, 30.0), RatePoint(4000, 3000, 80.0)]
    assert capacity(points) == 2000
    assert capacity([RatePoint(1000, 500, 1.0)]) is None
    assert capacity([RatePoint(1000, 1000, 1.0, errors=3)]) is None


def test_wire_stamps_and_socketio_frames() -> None:
    text = wire.body(123, 7, 200, "echo")
    assert len(text) == 200
    assert wire.read_stamp(text) == (123, 7)
    frame = wire.action_frame("socketio", "echo", text)
    assert frame.startswith('42["echo",')
    assert wire.payload("socketio", frame) == text
    assert wire.payload("socketio", "2") is wire.PING
    assert wire.connect_ack_sid('40{"sid":"abc"}') == "abc"
    with pytest.raises(ValueError):
        wire.connect_ack_sid('44{"message":"unauthorized"}')


def test_markdown_ratio_to_bare() -> None:
    def rec(target: str, throughput: float) -> dict[str, Any]:
        return {
            "scenario": "echo", "phase": "echo", "target": target, "status": "ok", "offered_rate": None,
            "throughput": throughput, "unit": "round trips/s", "error_total": 0, "errors": {}, "extra": {},
            "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0, "count": 10},
            "server": {"cpu_percent": 90.0, "rss_mb": 50.0}, "generator": {"cpu_percent": 50.0, "saturated": False},
        }

    text = markdown({"command": "x"}, [rec("bare", 1000.0), rec("wsgateway", 500.0)])
    assert "| wsgateway | max | 500 | 0.50x |" in text
