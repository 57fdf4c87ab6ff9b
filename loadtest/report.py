"""The report: ``results.json``, ``report.md`` (a table per scenario, ratios to bare) and plots.

:func:`markdown` is pure; :func:`write` writes all three and returns their paths.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from loadtest.metrics import SLO_P99_MS, RatePoint, capacity
from loadtest.scenarios import SCENARIOS

__all__ = ["capacities", "efficiency_to_bare", "markdown", "ratio_to_bare", "write", "write_json"]

Record = dict[str, Any]
_BARE = "bare"


def write_json(out: Path, meta: dict[str, object], records: list[Record]) -> Path:
    """Write ``results.json`` (meta + every record); return its path."""
    path = out / "results.json"
    path.write_bytes(orjson.dumps({"meta": meta, "results": records}, option=orjson.OPT_INDENT_2))
    return path


def write(out: Path, meta: dict[str, object], records: list[Record], *, plots: bool = True) -> list[Path]:
    """Write the JSON, the Markdown and (unless ``plots`` is false) the PNGs; return the paths."""
    paths = [write_json(out, meta, records)]
    md = out / "report.md"
    md.write_text(markdown(meta, records))
    paths.append(md)
    if plots:
        from loadtest import plots as plotting

        paths.extend(plotting.write_all(out, records))
    return paths


def _ok(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.get("status") == "ok"]


def ratio_to_bare(record: Record, records: list[Record], baseline: str = _BARE) -> float | None:
    """Return ``record``'s headline over bare's (or ``baseline``'s) in the same phase and
    offered rate.

    For ``idle`` the headline is memory per connection (lower is better); elsewhere it is
    throughput. ``None`` when bare has no such point.
    """
    for other in _ok(records):
        if (other["target"] == baseline and other["phase"] == record["phase"]
                and other["offered_rate"] == record["offered_rate"]):
            key = _headline(record)
            mine, bare = key(record), key(other)
            return mine / bare if bare else None
    return None


def efficiency_to_bare(record: Record, records: list[Record], baseline: str = _BARE) -> float | None:
    """Return bare's (or ``baseline``'s) server CPU per operation over ``record``'s, same
    phase and offered rate.

    Above 1 the target spends less CPU per operation than bare. This is the honest ratio
    when the generator, not the server, limited the throughput. ``None`` without figures.
    """
    mine = (record.get("server") or {}).get("cpu_us_per_op")
    for other in _ok(records):
        if (other["target"] == baseline and other["phase"] == record["phase"]
                and other["offered_rate"] == record["offered_rate"]):
            bare = (other.get("server") or {}).get("cpu_us_per_op")
            return bare / mine if bare and mine else None
    return None


def _headline(record: Record) -> Any:
    if record["phase"] == "idle":
        return lambda r: r["extra"].get("rss_per_conn_kb", 0.0)
    return lambda r: r["throughput"]


def capacities(records: list[Record]) -> dict[tuple[str, str], float | None]:
    """Return, per (phase, target) with a rate sweep, the highest sustained offered rate."""
    points: dict[tuple[str, str], list[RatePoint]] = defaultdict(list)
    for r in _ok(records):
        if r["offered_rate"]:
            per = r["extra"].get("receivers", 1) if r["extra"].get("messages_published") is not None else 1
            points[(r["phase"], r["target"])].append(
                RatePoint(r["offered_rate"], r["throughput"] / max(per, 1), r["latency_ms"]["p99"], r["error_total"])
            )
    return {key: capacity(pts) for key, pts in points.items()}


def _fmt(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _row(r: Record, records: list[Record]) -> str:
    lat, srv, gen = r["latency_ms"], r["server"], r["generator"]
    ratio = ratio_to_bare(r, records)
    cells = [r["target"], _fmt(r["offered_rate"]) if r["offered_rate"] else "max", _fmt(r["throughput"]),
             f"{ratio:.2f}x" if ratio is not None else "—",
             _fmt(lat["p50"]), _fmt(lat["p95"]), _fmt(lat["p99"]), _fmt(lat["max"], 1)]
    if "latency_last_ms" in r:
        cells.append(_fmt(r["latency_last_ms"]["p99"]))
    eff = efficiency_to_bare(r, records)
    cells += [str(r["error_total"]), _fmt(srv["cpu_percent"], 0), _fmt(srv.get("core_busy_percent"), 0),
              _fmt(srv.get("cpu_us_per_op"), 1), f"{eff:.2f}x" if eff is not None else "—",
              _fmt(srv["rss_mb"], 1), _fmt(gen["cpu_percent"], 0) + (" (sat.)" if gen["saturated"] else "")]
    return "| " + " | ".join(cells) + " |"


def _idle_row(r: Record, records: list[Record]) -> str:
    ratio = ratio_to_bare(r, records)
    x = r["extra"]
    cells = [r["target"], str(r["connections"]), _fmt(r["throughput"]), _fmt(x.get("rss_per_conn_kb")),
             f"{ratio:.2f}x" if ratio is not None else "—", _fmt(x.get("kernel_per_conn_kb")),
             _fmt(r["latency_ms"]["p99"]), str(r["error_total"]), _fmt(r["server"]["rss_mb"], 1),
             str(r["server"]["processes"])]
    return "| " + " | ".join(cells) + " |"


def _table(phase: str, rows: list[Record], records: list[Record]) -> list[str]:
    if phase == "idle":
        head = ["target", "connections", "held", "server RSS/conn KB", "x bare", "kernel/conn KB (both ends)",
                "handshake p99 ms", "errors", "server RSS MB", "server procs"]
        body = [_idle_row(r, records) for r in rows]
    else:
        unit = rows[0]["unit"]
        head = ["target", "offered", unit, "x bare", "p50 ms", "p95 ms", "p99 ms", "max ms"]
        if "latency_last_ms" in rows[0]:
            head.append("last-client p99 ms")
        head += ["errors", "server CPU %", "server core %", "server CPU µs/op", "x bare (CPU/op)",
                 "server RSS MB", "generator CPU %"]
        body = [_row(r, records) for r in rows]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head), *body]


def _notes(rows: list[Record]) -> list[str]:
    notes = []
    for r in rows:
        x = r["extra"]
        bits = []
        if "requests_per_s" in x:
            bits.append(f"{x['requests_per_s']:,.0f} requests/s")
        if "send_lag_ms" in r:
            lag = r["send_lag_ms"]
            bits.append(f"generator send lag p50 {lag['p50']:.2f} / p99 {lag['p99']:.2f} ms (inside every latency)")
        if "latency_from_send_ms" in r:
            fs = r["latency_from_send_ms"]
            bits.append(f"from the real send: p50 {fs['p50']:.2f} / p99 {fs['p99']:.2f} ms")
        if "delivered_share" in x:
            share = 100 * x["delivered_share"]
            bits.append(f"delivered {share:.1f}% of {x['messages_published']} messages x {x['receivers']} clients")
        if "stalled" in x:
            bits.append(f"{x['stalled_closed_by_server']} of {x['stalled']} stalled clients cut off by the server, "
                        f"{x['healthy_closed']} healthy ones closed")
        if "redis_cpu_percent" in x:
            bits.append(f"Redis CPU {x['redis_cpu_percent']}%")
        if "redis_calls_per_op" in x:
            top = ", ".join(f"{k} {v}" for k, v in list(x["redis_calls_by_command"].items())[:4])
            bits.append(f"Redis commands per {x['redis_calls_per']} {x['redis_calls_per_op']} ({top})")
        if r["errors"]:
            bits.append("errors " + ", ".join(f"{k}={v}" for k, v in r["errors"].items()))
        if bits:
            notes.append(f"- {r['target']} (rate {r['offered_rate'] or 'max'}): " + "; ".join(bits))
    return notes


def _profiles(rows: list[Record]) -> list[str]:
    """Top frames of each profiled server (``--profile``), as shares of its busy samples."""
    lines: list[str] = []
    for r in rows:
        for server, prof in (r.get("profile") or {}).items():
            if "error" in prof:
                lines.append(f"- profile of {server} (rate {r['offered_rate'] or 'max'}): {prof['error']}")
                continue
            title = (f"Profile of `{server}` (rate {r['offered_rate'] or 'max'}, {prof['samples']} samples, "
                     f"`{prof.get('file', '')}`): self time / inclusive time, % of its CPU")
            lines += ["", title, "", "| self % | frame | inclusive % | frame |", "|---|---|---|---|"]
            for (f1, p1), (f2, p2) in zip(prof["self"], prof["inclusive"], strict=False):
                lines.append(f"| {p1} | `{f1}` | {p2} | `{f2}` |")
    return lines


def markdown(meta: dict[str, object], records: list[Record]) -> str:
    """Return the Markdown report: one table per phase, capacities, skipped targets."""
    how = (f"`{meta.get('command', '')}` at {meta.get('when', '')}: Python {meta.get('python', '')}, "
           f"{meta.get('cpus', '?')} CPUs, servers and clients pinned to separate cores: "
           f"{'yes' if meta.get('pinned') else 'no'}; permessage-deflate: "
           f"{'on' if meta.get('compression') else 'off'}; management responses parsed by "
           f"{meta.get('response_parser', '?')}; wsgateway's management edge: "
           f"{meta.get('management_edge', '?')}.")
    legend = ("Every ratio is to `bare` at the same offered load in this run. *x bare* divides "
              "throughputs; *x bare (CPU/op)* divides bare's server CPU per operation by the target's "
              "(above 1: cheaper than bare), the honest ratio where the generator was saturated "
              "`(sat.)`. *server core %* is the server core's busy share, softirq included. Latency is "
              "measured from the timestamp the sender put in the message. `max` in *offered* is a "
              "closed loop.")
    lines = ["# wsgateway load test", "", how, "", legend, ""]
    caps = capacities(records)
    by_phase: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        by_phase[r["phase"]].append(r)
    for phase, rows in by_phase.items():
        scenario = SCENARIOS.get(phase.split("/")[0])
        lines += [f"## {phase}", "", f"{scenario.summary if scenario else ''}", ""]
        ok = sorted(_ok(rows), key=lambda r: (r["target"] != _BARE, r["target"], r["offered_rate"] or 0))
        if ok:
            lines += [*_table(phase, ok, records), ""]
            lines += _notes(ok)
        phase_caps = {t: c for (p, t), c in caps.items() if p == phase}
        if phase_caps:
            lines += ["", f"Capacity (highest offered load sustained with p99 < {SLO_P99_MS:.0f} ms): "
                      + "; ".join(f"{t} {_fmt(c) if c else 'none'}" for t, c in sorted(phase_caps.items()))]
        for r in rows:
            if r.get("status") != "ok":
                lines.append(f"- {r['target']}: {r['status']}: {str(r.get('reason', ''))[:300]}")
        lines += _profiles(ok)
        lines.append("")
    return "\n".join(lines)
