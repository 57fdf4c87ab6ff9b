"""Medians over repeated runs: ``python -m loadtest.summary RUN_DIR [RUN_DIR ...]``.

Each ``RUN_DIR`` is a ``--out`` folder of :mod:`loadtest.cli` (its ``results.json``). Records
are grouped by phase (tagged ``+deflate`` / ``redis registry`` from the run's options),
target and offered rate; every ratio is first computed against ``bare`` (or the target named
by ``--baseline``, e.g. ``raw``) *within its own run* and only then reduced to the median, so
drift between runs never enters a ratio. Prints a
Markdown table; ``--plot FILE`` also draws the ratios as a bar chart and ``--p99-plot FILE``
p99 latency against offered load for rated runs (PNGs).

:func:`medians` is pure; :func:`main` reads the files and writes the outputs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson

from loadtest.report import efficiency_to_bare, ratio_to_bare

__all__ = ["main", "markdown", "medians"]

Record = dict[str, Any]


def _label(phase: str, meta: dict[str, Any]) -> str:
    tags = [phase]
    if meta.get("compression"):
        tags.append("+deflate")
    if meta.get("registry") == "redis":
        tags.append("(redis registry)")
    return " ".join(tags)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _row_values(r: Record, records: list[Record], baseline: str) -> dict[str, float | None]:
    x, srv = r.get("extra") or {}, r.get("server") or {}
    lat = r.get("latency_ms") or {}
    return {
        "throughput": r.get("throughput"),
        "ratio": ratio_to_bare(r, records, baseline),
        "efficiency": efficiency_to_bare(r, records, baseline),
        "cpu_us_per_op": srv.get("cpu_us_per_op"),
        "server_cpu": srv.get("cpu_percent"),
        "gen_cpu": (r.get("generator") or {}).get("cpu_percent"),
        "p50": lat.get("p50"),
        "p99": lat.get("p99"),
        "last_p99": (r.get("latency_last_ms") or {}).get("p99"),
        "rss_per_conn_kb": x.get("rss_per_conn_kb"),
        "kernel_per_conn_kb": x.get("kernel_per_conn_kb"),
        "redis_calls": x.get("redis_calls_per_op"),
        "saturated": 1.0 if (r.get("generator") or {}).get("saturated") else 0.0,
        "lag_p99": (r.get("send_lag_ms") or {}).get("p99"),
        "from_send_p99": (r.get("latency_from_send_ms") or {}).get("p99"),
    }


def medians(runs: list[tuple[dict[str, Any], list[Record]]], baseline: str = "bare") -> list[dict[str, Any]]:
    """Return one row per (label, target, rate): the medians and how many runs went in;
    ratios are against ``baseline`` (a target of the same runs), each within its run."""
    groups: dict[tuple[str, str, float | None], list[dict[str, float | None]]] = defaultdict(list)
    for meta, records in runs:
        for r in records:
            if r.get("status") == "ok":
                key = (_label(r["phase"], meta), r["target"], r.get("offered_rate"))
                groups[key].append(_row_values(r, records, baseline))
    rows = []
    for (label, target, rate), values in sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != baseline, kv[0][1], kv[0][2] or 0)
    ):
        row: dict[str, Any] = {"label": label, "target": target, "rate": rate, "runs": len(values)}
        for name in values[0]:
            row[name] = _median([v[name] for v in values])
        rows.append(row)
    return rows


def _f(x: float | None, digits: int = 2, suffix: str = "") -> str:
    if x is None:
        return "—"
    return (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.{digits}f}") + suffix


def markdown(rows: list[dict[str, Any]], baseline: str = "bare") -> str:
    """Return the medians as a Markdown table (pure)."""
    x = f"x {baseline}"
    head = ["scenario", "target", "offered", "runs", "throughput", x, "server CPU µs/op",
            f"{x} (CPU/op)", "p50 ms", "p99 ms", "last-client p99 ms", "RSS/conn KB", f"{x} (RSS)",
            "Redis cmds/req", "server CPU %", "gen CPU %", "gen send lag p99 ms", "p99 from real send ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        idle = r["rss_per_conn_kb"] is not None
        cells = [r["label"], r["target"], _f(r["rate"]) if r["rate"] else "max", str(r["runs"]),
                 _f(r["throughput"]), "—" if idle else _f(r["ratio"], suffix="x"), _f(r["cpu_us_per_op"], 1),
                 _f(r["efficiency"], suffix="x"), _f(r["p50"]), _f(r["p99"]), _f(r["last_p99"]),
                 _f(r["rss_per_conn_kb"], 1), _f(r["ratio"], suffix="x") if idle else "—", _f(r["redis_calls"]),
                 _f(r["server_cpu"], 0), _f(r["gen_cpu"], 0) + (" (sat.)" if (r["saturated"] or 0) >= 0.5 else ""),
                 _f(r["lag_p99"]), _f(r["from_send_p99"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict[str, Any]], path: Path, title: str, baseline: str = "bare") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if r["target"] != baseline and r["ratio"] is not None]
    labels = [f"{r['label']}\n{r['target']}" + (f" @{r['rate']:,.0f}" if r["rate"] else "") for r in shown]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(shown)), 4.5))
    xs = range(len(shown))
    thr = [r["ratio"] if r["rss_per_conn_kb"] is None else 1 / r["ratio"] for r in shown]
    eff = [r["efficiency"] or 0 for r in shown]
    ax.bar([x - 0.2 for x in xs], thr, 0.4, label=f"x {baseline} (throughput; memory: {baseline}/target)")
    ax.bar([x + 0.2 for x in xs], eff, 0.4, label=f"x {baseline} (server CPU per op)")
    ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_xticks(list(xs), labels, fontsize="x-small", rotation=30, ha="right")
    ax.set(ylabel=f"ratio to {baseline} (higher is better)", title=title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _p99_plot(runs: list[tuple[dict[str, Any], list[Record]]], path: Path, title: str) -> None:
    """p99 latency against offered load, one panel per phase with rated points (small PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from loadtest.metrics import SLO_P99_MS

    series: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for _, records in runs:
        for r in records:
            if r.get("status") == "ok" and r.get("offered_rate"):
                series[r["phase"]][r["target"]].append((r["offered_rate"], max(r["latency_ms"]["p99"], 1e-2)))
    phases = sorted(series)
    cols = min(2, len(phases))
    rows = -(-len(phases) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(phases):]:
        ax.set_visible(False)
    for ax, phase in zip(axes.flat, phases, strict=False):  # spare axes were hidden above
        for i, (target, pts) in enumerate(sorted(series[phase].items())):
            by_rate: dict[float, list[float]] = defaultdict(list)
            for rate, p99 in pts:
                by_rate[rate].append(p99)
            rates = sorted(by_rate)
            ax.plot(rates, [statistics.median(by_rate[r]) for r in rates], "-o", color=f"C{i}", markersize=3,
                    label=f"{target} (median)")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ".", color=f"C{i}", alpha=0.35)  # every run
        ax.axhline(SLO_P99_MS, color="grey", linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="offered load", ylabel="p99 ms", title=phase)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="x-small")
    fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Print the medians table of the given run folders; exit 2 when one has no results."""
    p = argparse.ArgumentParser(prog="python -m loadtest.summary", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="--out folders of loadtest runs")
    p.add_argument("--plot", type=Path, help="also write the ratios as a PNG bar chart")
    p.add_argument("--p99-plot", type=Path, help="also write p99 against offered load (rated runs) as a PNG")
    p.add_argument("--baseline", default="bare", help="the target ratios are taken against (default bare; e.g. raw)")
    p.add_argument("--title", help="the plots' title (default: wsgateway / BASELINE, medians of repeated runs)")
    args = p.parse_args(argv)
    runs = []
    for folder in args.runs:
        try:
            data = orjson.loads((folder / "results.json").read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            print(f"{folder}: {exc}", file=sys.stderr)
            return 2
        runs.append((data.get("meta") or {}, data.get("results") or []))
    rows = medians(runs, args.baseline)
    sys.stdout.write(markdown(rows, args.baseline))
    title = args.title or f"wsgateway / {args.baseline}, medians of repeated runs"
    if args.plot:
        _plot(rows, args.plot, title, args.baseline)
    if args.p99_plot:
        _p99_plot(runs, args.p99_plot, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
