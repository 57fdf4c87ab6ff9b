"""Turns what the workers and samplers measured into one result record: pure, no I/O.

A record is a plain dict (it goes to ``results.json`` as is). Its headline is ``throughput``
in ``unit``; ``latency_ms`` is measured from the sender's timestamp; ``latency_last_ms`` (fan
out) is, per message, the latency to the last client that got it; ``server`` is the CPU and
RSS of the target's process trees over the window, and ``cpu_us_per_op``: server CPU seconds
over the operations done (deliveries, round trips, handshakes), the server's efficiency,
which stays honest when the generator, not the server, limited the throughput;
``generator`` is the load generator's own CPU, so a result the generator limited is visible
(``saturated``). ``core_busy_percent`` is the busy share of each pinned core, interrupt and
softirq time included (a process's CPU time leaves those out; on loopback they are large).
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
    core_busy: float | None = None  # the server core's busy share, interrupts included
    client_core_busy: float | None = None  # the client core's
    redis_calls: dict[str, int] | None = None  # Redis commands in the window, by name


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
    active = _active_s(main_role, results, connections)  # a dial phase that finished early
    cpu_window = max(active or server.window_s, 1e-3)
    gen_window = active or max((r.window_s for r in results), default=0.0)
    gen_cpu = sum(r.cpu_s for r in results) / max(gen_window, 1e-3)
    opened = sum(r.opened for r in results)
    ops = sum(r.ops for r in measured)
    server_cpu_s = server.end.cpu_s - server.start.cpu_s
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
            "cpu_us_per_op": round(1e6 * server_cpu_s / ops, 2) if ops and main_role != "hold" else None,
            "core_busy_percent": _percent(_over(server.core_busy, server.window_s, active)),
        },
        "generator": {
            "cpu_percent": round(100 * gen_cpu, 1),
            "processes": len(results),
            "saturated": gen_cpu > _SATURATED * generator_cores,
            "core_busy_percent": _percent(_over(server.client_core_busy, server.window_s, active)),
        },
    }
    record["error_total"] = sum(record["errors"].values())  # type: ignore[attr-defined]
    extra: dict[str, object] = {}
    lag = Histogram.merge_all(r.send_lag for r in results)
    if lag.total:
        record["send_lag_ms"] = lag.summary().as_dict()  # the generator's share of each latency
    from_send = Histogram.merge_all(r.from_send for r in results)
    if from_send.total and lag.total:
        record["latency_from_send_ms"] = from_send.summary().as_dict()
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
    if server.redis_calls is not None:
        _redis_extra(server.redis_calls, sum(r.requests for r in results), ops, extra)
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


def _over(share: float | None, window_s: float, active_s: float | None) -> float | None:
    """A core's busy share over the active part of the window (a dial phase that ended early
    idles afterwards; its busy time all fell inside ``active_s``)."""
    if share is None or not active_s:
        return share
    return min(1.0, share * window_s / active_s)


def _percent(share: float | None) -> float | None:
    return None if share is None else round(100 * share, 1)


def _redis_extra(calls: dict[str, int], requests: int, ops: int, extra: dict[str, object]) -> None:
    """Redis commands per management request (per operation when there were none)."""
    per = requests or ops
    if not per:
        return
    extra["redis_calls_per"] = "request" if requests else "op"
    extra["redis_calls_per_op"] = round(sum(calls.values()) / per, 3)
    extra["redis_calls_by_command"] = {k: round(n / per, 3) for k, n in sorted(calls.items(), key=lambda kv: -kv[1])}
