"""PNG plots of a run, with matplotlib (headless).

Per phase: latency percentiles against offered load (when some target has two or more rates),
and throughput by target (each target's best point, labelled with its ratio to bare).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from loadtest.metrics import SLO_P99_MS

__all__ = ["write_all"]

Record = dict[str, Any]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(phase: str) -> str:
    return phase.replace("/", "-")


def write_all(out: Path, records: list[Record]) -> list[Path]:
    """Write every plot under ``out/plots``; return the paths."""
    ok = [r for r in records if r.get("status") == "ok"]
    by_phase: dict[str, list[Record]] = defaultdict(list)
    for r in ok:
        by_phase[r["phase"]].append(r)
    folder = out / "plots"
    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for phase, rows in by_phase.items():
        paths.append(_throughput(folder, phase, rows))
        rated: dict[str, int] = defaultdict(int)
        for r in rows:
            rated[r["target"]] += 1 if r["offered_rate"] else 0
        if max(rated.values(), default=0) >= 2:
            paths.append(_latency(folder, phase, rows))
    return paths


def _latency(folder: Path, phase: str, rows: list[Record]) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    by_target: dict[str, list[Record]] = defaultdict(list)
    for r in rows:
        if r["offered_rate"]:
            by_target[r["target"]].append(r)
    for i, (target, pts) in enumerate(sorted(by_target.items())):
        pts.sort(key=lambda r: r["offered_rate"])
        x = [r["offered_rate"] for r in pts]
        color = f"C{i}"
        for key, style in (("p50", ":"), ("p95", "--"), ("p99", "-")):
            ax.plot(x, [max(r["latency_ms"][key], 1e-3) for r in pts], style, color=color, marker="o",
                    label=f"{target} {key}")
    ax.axhline(SLO_P99_MS, color="grey", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel=f"offered load ({rows[0]['unit']})", ylabel="latency (ms)",
           title=f"{phase}: latency percentiles vs offered load")
    ax.legend(fontsize="small", ncol=2)
    ax.grid(True, which="both", alpha=0.3)
    path = folder / f"{_slug(phase)}-latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _throughput(folder: Path, phase: str, rows: list[Record]) -> Path:
    plt = _plt()
    best: dict[str, Record] = {}
    for r in rows:
        if r["target"] not in best or r["throughput"] > best[r["target"]]["throughput"]:
            best[r["target"]] = r
    targets = sorted(best, key=lambda t: (t != "bare", t))
    values = [best[t]["throughput"] for t in targets]
    bare = best.get("bare", {}).get("throughput")
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(targets, values, color=[f"C{i}" for i in range(len(targets))])
    for bar, value in zip(bars, values, strict=True):
        label = f"{value:,.0f}" + (f"\n{value / bare:.2f}x" if bare else "")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize="small")
    ax.set(ylabel=rows[0]["unit"], title=f"{phase}: {rows[0]['unit']} by target (best point)")
    ax.margins(y=0.2)
    path = folder / f"{_slug(phase)}-throughput.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
