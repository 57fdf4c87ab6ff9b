"""``python -m loadtest SCENARIO --target TARGET ...``: parse, run, write the report.

Exit status: 0 when every requested target ran (or was skipped as unavailable), 1 when a
phase failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from dataclasses import replace
from pathlib import Path

from loadtest import report, runner
from loadtest.scenarios import SCENARIOS, Scenario, Settings
from loadtest.targets import TARGETS, resolve

__all__ = ["main", "parse_args"]

_MAX_CONNECTIONS = 200_000
_MAX_DURATION_S = 3_600.0
_MAX_RATES = 12
_SMOKE_CONNECTIONS = {"idle": 200, "connect": 200, "echo": 20, "echohttp": 20, "unicast": 20, "fanout": 50,
                      "crossnode": 20, "cluster": 30, "slow": 40}
_SMOKE_DURATION_S = 2.0


def _positive_rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from exc
    if not rates or any(r <= 0 for r in rates) or len(rates) > _MAX_RATES:
        raise argparse.ArgumentTypeError(f"give 1 to {_MAX_RATES} positive rates")
    return sorted(rates)


def _scenarios(text: str) -> list[Scenario]:
    names = list(SCENARIOS) if text == "all" else [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}, all")
    return [SCENARIOS[n] for n in names]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the parsed command line; exits with status 2 on bad arguments."""
    p = argparse.ArgumentParser(
        prog="python -m loadtest",
        description="Measure wsgateway and the gateways users would pick instead, side by side.",
        epilog="Scenarios: " + "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()),
    )
    p.add_argument("scenario", type=_scenarios, help=f"{', '.join(SCENARIOS)}, a comma list, or all")
    p.add_argument("--target", default="bare,wsgateway", help=f"{', '.join(TARGETS)}, a comma list, or all")
    p.add_argument("--connections", type=int, help="client connections (default: per scenario)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds per point (default 10)")
    p.add_argument("--rate", type=_positive_rates, help="offered load, or a comma list for a sweep")
    p.add_argument("--sweep", action="store_true", help="double the rate until p99 >= 50 ms")
    p.add_argument("--out", type=Path, help="report folder (default loadtest/results/<time>)")
    p.add_argument("--workers", type=int, default=0, help="server processes per node (default: as needed)")
    p.add_argument("--clients", type=int, default=2, help="client processes per role (default 2)")
    p.add_argument("--payload", type=int, help="message bytes (default 200; slow: 1024)")
    p.add_argument("--slow-share", type=float, default=0.1, help="share of clients that stop reading")
    p.add_argument("--concurrency", type=int, default=0, help="dials/requests in flight per client process")
    p.add_argument("--compression", action="store_true", help="permessage-deflate on (wsgateway and bare)")
    p.add_argument("--registry", choices=("memory", "redis"), default="memory",
                   help="single-node scenarios: wsgateway's registry (redis: a private redis-server)")
    p.add_argument("--plans", action="store_true",
                   help="wsgateway: a generous usage plan on every tenant (what the checks cost; nothing throttled)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and clients to cores")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--phase", action="append", default=[],
                   help="run only this phase (e.g. crossnode/unicast); repeatable")
    p.add_argument("--profile", action="store_true",
                   help="py-spy every server during each window (top frames in the report)")
    p.add_argument("--smoke", action="store_true", help="a few seconds, a few connections: does it work?")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    args = p.parse_args(argv)
    if args.connections is not None and not 1 <= args.connections <= _MAX_CONNECTIONS:
        p.error(f"--connections must be 1..{_MAX_CONNECTIONS}")
    if not 0.5 <= args.duration <= _MAX_DURATION_S:
        p.error(f"--duration must be 0.5..{_MAX_DURATION_S:.0f} s")
    if not 1 <= args.clients <= 64 or not 0 <= args.workers <= 64 or not 0.0 < args.slow_share < 1.0:
        p.error("--clients 1..64, --workers 0..64, --slow-share in (0, 1)")
    try:
        args.targets = resolve(args.target)
    except ValueError as exc:
        p.error(str(exc))
    return args


def _settings(args: argparse.Namespace, scenario: Scenario) -> Settings:
    base = Settings(
        connections=args.connections or scenario.default_connections,
        duration=args.duration,
        clients=args.clients,
        workers=args.workers,
        payload=args.payload or scenario.payload,
        slow_share=args.slow_share,
        concurrency=args.concurrency,
        compression=args.compression,
        registry=args.registry,
        plans=args.plans,
    )
    if args.smoke:
        base = replace(base, connections=args.connections or _SMOKE_CONNECTIONS[scenario.name],
                       duration=min(args.duration, _SMOKE_DURATION_S), clients=1)
    return base


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = parse_args(argv)
    if args.phase:
        known = {ph.name for sc in args.scenario for ph in sc.phases(_settings(args, sc))}
        if unknown := sorted(set(args.phase) - known):
            print(f"--phase: unknown {unknown}; these scenarios have {sorted(known)}", file=sys.stderr)
            return 2
    if args.profile and shutil.which("py-spy") is None:
        print("--profile needs py-spy on PATH: pip install -e '.[loadtest]'", file=sys.stderr)
        return 2
    out: Path = args.out or Path("loadtest/results") / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    plan = runner.Plan(
        scenarios=args.scenario,
        targets=args.targets,
        settings={s.name: _settings(args, s) for s in args.scenario},
        rates=args.rate,
        sweep=args.sweep,
        out=out,
        pin=not args.no_pin,
        progress=not args.quiet,
        profile=args.profile,
        phases=tuple(args.phase),
    )
    meta = plan_meta(args)
    records: list[dict[str, object]] = []

    def keep(record: dict[str, object]) -> None:
        # Rewritten after every record, so a run cut short still leaves its results.
        records.append(record)
        report.write_json(out, meta, records)

    runner.run(plan, on_record=keep)
    paths = report.write(out, meta, records, plots=not args.no_plots)
    for path in paths:
        print(path)
    failed = [r for r in records if r.get("status") == "skipped" and str(r.get("reason", "")).startswith("failed")]
    return 1 if failed else 0


def plan_meta(args: argparse.Namespace) -> dict[str, object]:
    """Return what the report says about how it was run (the command line, the machine)."""
    import os
    import platform

    from loadtest.http_client import parser_name
    from loadtest.servers import management_edge

    return {
        "command": "python -m loadtest " + " ".join(sys.argv[1:]),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "pinned": not args.no_pin,
        "compression": args.compression,
        "registry": args.registry,
        "plans": args.plans,
        "response_parser": parser_name(),
        "management_edge": management_edge(),
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
