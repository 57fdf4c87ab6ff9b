"""Turns what the workers and samplers measured into one result record: pure, no I/O.

A record is a plain dict (it goes to ``results.json`` as is). Its headline is ``throughput``
in ``unit``; ``latency_ms`` is measured from the sender's timestamp; ``latency_last_ms`` (fan
out) is, per message, the latency to the last client that got it; ``server`` is the CPU and
RSS of the target's process trees over the window; ``generator`` is the load generator's own
CPU, so a result the generator limited is visible (``saturated``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from loadtest.metrics import Histogram
from loadtest.resources import TreeSample
from loadtest.roles import WorkerResult

__all__ = ["ServerWindow", "phase_record", "skipped_record"]

_MB = 1 << 20
_SATURATED = 0.9  # generator CPU share of its cores above which a figure may be the generator's


@dataclass(frozen=True)
class ServerWindow:
    """Samples of the servers' trees: before clients, once connected, window start and end."""

    base: TreeSample
    loaded: TreeSample
    start: TreeSample
    end: TreeSample
    rss_peak: int
    window_s: float
    kernel_delta: int
    redis_cpu_s: float | None = None
    redis_rss: int | None = None


def skipped_record(scenario: str, phase: str, target: str, reason: str) -> dict[str, object]:
    """Return the record of a target that could not run (it shows in the report)."""
    return {"scenario": scenario, "phase": phase, "target": target, "status": "skipped", "reason": reason}


def _count_errors(results: Iterable[WorkerResult], ready_errors: dict[str, int]) -> dict[str, int]:
    total: Counter[str] = Counter(ready_errors)
    for r in results:
        total.update(r.errors)
    return dict(sorted(total.items()))


def _last_client(results: list[WorkerResult]) -> tuple[Histogram, int, int]:
    """Return the latency-to-last-client histogram, messages seen, and how many some missed."""
    receivers = sum(r.receivers for r in results if r.role in ("listen", "publish"))
    worst: dict[int, int] = {}
    got: Counter[int] = Counter()
    for r in results:
        for seq, (latency, count) in r.last_by_seq.items():
            worst[seq] = max(worst.get(seq, 0), latency)
            got[seq] += count
    incomplete = sum(1 for seq in worst if got[seq] < receivers)
    return Histogram.from_samples(list(worst.values())), len(worst), incomplete


def _active_s(role: str, results: list[WorkerResult], connections: int) -> float | None:
    """Seconds the servers worked when a dial phase finished early (its CPU is over those)."""
    if role != "dial" or sum(r.ops for r in results) < connections or not results:
        return None
    return (max(r.last_ns for r in results) - min(r.first_ns for r in results)) / 1e9


def _throughput(role: str, results: list[WorkerResult], duration: float, connections: int) -> float:
    ops = sum(r.ops for r in results)
    if role == "hold":
        return float(sum(r.held for r in results))
    if (active := _active_s(role, results, connections)) is not None:
        return ops / max(active, 1e-3)  # every handshake was done before the window closed
    return ops / duration


def phase_record(
    *,
    scenario: str,
    phase: str,
    unit: str,
    target: str,
    rate: float | None,
    connections: int,
    duration: float,
    results: list[WorkerResult],
    ready_errors: dict[str, int],
    server: ServerWindow,
    generator_cores: int,
) -> dict[str, object]:
    """Return the result record of one phase at one offered rate."""
    main_role = results[0].role if results else ""
    measured = [r for r in results if r.role != "publish"] or results
    latency = Histogram.merge_all(r.latency for r in results)
    requests = Histogram.merge_all(r.request_latency for r in results)
    cpu_window = max(_active_s(main_role, results, connections) or server.window_s, 1e-3)
    gen_cpu = sum(r.cpu_s for r in results) / max(max((r.window_s for r in results), default=0.0), 1e-3)
    opened = sum(r.opened for r in results)
    record: dict[str, object] = {
        "scenario": scenario,
        "phase": phase,
        "target": target,
        "status": "ok",
        "offered_rate": rate,
        "connections": connections,
        "opened": opened,
        "duration_s": duration,
        "throughput": round(_throughput(main_role, measured, duration, connections), 1),
        "unit": unit,
        "latency_ms": latency.summary().as_dict(),
        "errors": _count_errors(results, ready_errors),
        "server": {
            "cpu_percent": round(100 * (server.end.cpu_s - server.start.cpu_s) / cpu_window, 1),
            "rss_mb": round(server.end.rss / _MB, 1),
            "rss_peak_mb": round(max(server.rss_peak, server.end.rss) / _MB, 1),
            "processes": server.end.processes,
        },
        "generator": {
            "cpu_percent": round(100 * gen_cpu, 1),
            "processes": len(results),
            "saturated": gen_cpu > _SATURATED * generator_cores,
        },
    }
    record["error_total"] = sum(record["errors"].values())  # type: ignore[union-attr]
    extra: dict[str, object] = {}
    if requests.total:
        record["request_latency_ms"] = requests.summary().as_dict()
        extra["requests_per_s"] = round(sum(r.requests for r in results) / duration, 1)
    if any(r.role == "publish" for r in results):
        _fanout_extra(results, record, extra)
    if main_role == "hold" and opened:
        extra["rss_per_conn_kb"] = round((server.loaded.rss - server.base.rss) / opened / 1024, 2)
        extra["kernel_per_conn_kb"] = round(server.kernel_delta / opened / 1024, 2)
    if server.redis_cpu_s is not None:
        extra["redis_cpu_percent"] = round(100 * server.redis_cpu_s / cpu_window, 1)
        extra["redis_rss_mb"] = round((server.redis_rss or 0) / _MB, 1)
    record["extra"] = extra
    return record


def _fanout_extra(results: list[WorkerResult], record: dict[str, object], extra: dict[str, object]) -> None:
    last, messages, incomplete = _last_client(results)
    record["latency_last_ms"] = last.summary().as_dict()
    receivers = sum(r.receivers for r in results)
    published = sum(r.requests for r in results if r.role == "publish")
    delivered = sum(r.latency.total for r in results)
    extra.update(
        messages_published=published,
        receivers=receivers,
        delivered_share=round(delivered / (published * receivers), 4) if published and receivers else 0.0,
        incomplete_messages=incomplete,
        messages_seen=messages,
    )
    stalled = sum(r.opened - r.receivers for r in results)
    if stalled:
        extra["stalled"] = stalled
        extra["stalled_closed_by_server"] = sum(r.stalled_closed for r in results)
        extra["healthy_closed"] = sum(r.receivers - r.held for r in results)
