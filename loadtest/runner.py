"""Runs scenarios against targets: deploy, start client processes, sample, merge.

For each scenario and target the runner deploys the target (pinned to the server core), then
for each offered rate and phase it starts the phase's client worker processes (pinned to the
client core), waits until every one has opened its connections, samples the servers, gives
everyone the same start time, prints progress, and merges what comes back into a record
(:mod:`loadtest.results`). Every wait is bounded; a phase that cannot start is recorded as
failed and the run goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from loadtest import profiles, worker
from loadtest.backend import UNCHECKED_KEYS
from loadtest.metrics import SLO_P99_MS
from loadtest.resources import (
    TreeSampler,
    core_times,
    kernel_memory_bytes,
    redis_commandstats,
)
from loadtest.results import ServerWindow, phase_record, skipped_record
from loadtest.roles import WorkerResult, WorkerSpec
from loadtest.scenarios import Phase, RoleGroup, Scenario, Settings
from loadtest.servers import ServerError
from loadtest.targets import Deployment, Target

__all__ = ["Plan", "run"]

_START_DELAY_S = 0.3
_PROGRESS_EVERY_S = 2.0
_MAX_SWEEP_POINTS = 8
_TENANT = "t1"


@dataclass(frozen=True)
class Plan:
    """A whole run: scenarios x targets x rates, and where the results go."""

    scenarios: list[Scenario]
    targets: list[Target]
    settings: dict[str, Settings]  # by scenario name
    rates: list[float] | None = None
    sweep: bool = False
    out: Path = Path("loadtest/results")
    pin: bool = True
    progress: bool = True
    profile: bool = False  # py-spy every server process during each measured window
    phases: tuple[str, ...] = ()  # run only these phases (by name); empty: all
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))


def _cores(pin: bool) -> tuple[int | None, int | None]:
    """Return (server core, client core): 0 and 1 when the machine has two to give."""
    try:
        usable = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return None, None
    if not pin or len(usable) < 2:
        return None, None
    return usable[0], usable[1]


def run(plan: Plan, on_record: Callable[[dict[str, object]], None] = lambda r: None) -> list[dict[str, object]]:
    """Run the plan; return every record (``on_record`` sees each one as it is made)."""
    server_cpu, client_cpu = _cores(plan.pin)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    records: list[dict[str, object]] = []
    for scenario in plan.scenarios:
        for target in plan.targets:
            for record in _run_target(plan, scenario, target, server_cpu, client_cpu):
                records.append(record)
                on_record(record)
    return records


def _run_target(plan: Plan, scenario: Scenario, target: Target, server_cpu: int | None,
                client_cpu: int | None) -> Iterator[dict[str, object]]:
    settings = plan.settings[scenario.name]
    if reason := target.unavailable():
        plan.log(f"[{scenario.name}] {target.name}: skipped ({reason})")
        yield skipped_record(scenario.name, scenario.name, target.name, reason)
        return
    workdir = plan.out / "logs" / f"{scenario.name}-{target.name}"
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        dep = target.deploy(scenario.topology(settings), workdir, server_cpu)
    except ServerError as exc:
        plan.log(f"[{scenario.name}] {target.name}: could not start: {exc}")
        yield skipped_record(scenario.name, scenario.name, target.name, f"could not start: {exc}")
        return
    try:
        phases = [ph for ph in scenario.phases(settings) if not plan.phases or ph.name in plan.phases]
        # A sweep goes on for each phase separately: one that broke its SLO stops there.
        live: list[dict[str, object]] = []
        for rate in _rates(plan, scenario, live):
            last = []
            for phase in phases:
                record = _run_phase(plan, scenario, phase, settings, dep, rate, client_cpu, server_cpu)
                plan.log(_line(record))
                last.append(record)
                yield record
            if plan.sweep and rate is not None:
                phases = [ph for ph, r in zip(phases, last, strict=False) if _sustained(r, rate)]
            live.append({"phases": len(phases)})
    finally:
        dep.stop()


def _rates(plan: Plan, scenario: Scenario, done: list[dict[str, object]]) -> Iterator[float | None]:
    """Yield the offered rates: --rate's list, a --sweep that doubles while some phase keeps
    p99 under the SLO (``done[-1]["phases"]``: how many still do after the last rate), or one."""
    if not scenario.sweep_start:
        yield None
    elif plan.rates:
        yield from plan.rates
    elif plan.sweep:
        rate = scenario.sweep_start
        for _ in range(_MAX_SWEEP_POINTS):
            yield rate
            if not done or not done[-1]["phases"]:
                return  # every phase broke its SLO at this rate
            rate *= 2
    else:
        yield scenario.default_rate


def _sustained(record: dict[str, Any], rate: float) -> bool:
    """Whether a sweep point kept p99 under the SLO and did 95% of what was offered."""
    if record.get("status") != "ok":
        return False
    per_message = float((record.get("extra") or {}).get("receivers", 1) or 1)  # fan-out: N each
    return record["latency_ms"]["p99"] < SLO_P99_MS and record["throughput"] >= 0.95 * rate * per_message


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _specs(phase: Phase, settings: Settings, dep: Deployment, rate: float | None, cpu: int | None) -> list[WorkerSpec]:
    specs: list[WorkerSpec] = []
    first = 0
    for group in phase.groups:
        specs.extend(_group_specs(group, settings, dep, rate, cpu, len(specs), first))
        first += group.connections
    listeners = tuple(s.index for s in specs if s.role == "listen")
    return [replace(s, watch=listeners) if s.role == "publish" else s for s in specs]


def _group_specs(g: RoleGroup, s: Settings, dep: Deployment, rate: float | None, cpu: int | None,
                 index: int, first: int) -> list[WorkerSpec]:
    out: list[WorkerSpec] = []
    stalled = _split(g.stalled, g.processes)
    for k, n in enumerate(_split(g.connections, g.processes)):
        if n == 0:
            continue
        out.append(WorkerSpec(
            index=index + len(out), role=g.role, endpoint=dep.nodes[g.node].endpoint, connections=n,
            first_conn=first, mgmt_url=dep.nodes[g.mgmt_node].mgmt_url, sigv4=dep.sigv4 or UNCHECKED_KEYS,
            jwt_secret=dep.jwt_secret, tenant=_TENANT,
            rate=rate * n / g.connections if (rate and g.rated) else None,
            concurrency=g.concurrency, duration=s.duration, drain=min(2.0, max(0.5, s.duration / 10)),
            payload=s.payload, stalled=stalled[k], cpu=cpu,
            connect_timeout=min(600.0, 30.0 + n / 100),
        ))
        first += n
    return out


@dataclass
class _Workers:
    """The client processes of one phase and what they have said so far."""

    procs: list[Any]
    events: Any
    go: Any
    start_at: Any
    progress: Any
    acked: Any
    ready: dict[int, int] = field(default_factory=dict)
    ready_errors: dict[str, int] = field(default_factory=dict)
    results: dict[int, WorkerResult] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)

    def poll(self, timeout: float) -> None:
        """Take one event off the queue, if one comes within ``timeout``."""
        try:
            kind, index, *rest = self.events.get(timeout=timeout)
        except queue.Empty:
            return
        if kind == "ready":
            self.ready[index] = rest[0]
            for key, n in rest[1].items():
                self.ready_errors[key] = self.ready_errors.get(key, 0) + n
        elif kind == "result":
            self.results[index] = rest[0]
        else:
            self.failures[index] = rest[0]

    def wait(self, until: Callable[[], bool], deadline: float) -> bool:
        """Poll until ``until()`` or a failure or ``deadline`` (monotonic s); return ``until()``."""
        while not until() and not self.failures and time.monotonic() < deadline:
            self.poll(0.2)
        return until()

    def stop(self) -> None:
        """Join the processes; terminate (by object) any that do not exit in time."""
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)


def _spawn(specs: list[WorkerSpec]) -> _Workers:
    ctx = mp.get_context("spawn")
    acked = ctx.RawArray("q", [-1] * len(specs))
    w = _Workers([], ctx.Queue(), ctx.Event(), ctx.RawValue("q", 0), ctx.RawArray("q", len(specs)), acked)
    for spec in specs:
        proc = ctx.Process(target=worker.main, args=(spec, w.events, w.go, w.start_at, w.progress, w.acked),
                           name=f"loadtest-{spec.role}-{spec.index}", daemon=True)
        proc.start()
        w.procs.append(proc)
    return w


def _run_phase(plan: Plan, scenario: Scenario, phase: Phase, settings: Settings, dep: Deployment,
               rate: float | None, client_cpu: int | None, server_cpu: int | None) -> dict[str, object]:
    specs = _specs(phase, settings, dep, rate, client_cpu)
    sampler = TreeSampler([s.popen.pid for s in dep.servers])
    redis = TreeSampler([r.popen.pid for r in dep.redis_servers]) if dep.redis else None
    base, kmem0 = sampler.sample(), kernel_memory_bytes()
    workers = _spawn(specs)
    try:
        budget = max(s.connect_timeout for s in specs) + 30
        if not workers.wait(lambda: len(workers.ready) == len(specs), time.monotonic() + budget):
            workers.start_at.value = -1
            workers.go.set()
            why = next(iter(workers.failures.values()), "client processes did not get ready in time")
            plan.log(f"[{phase.name}] {dep.target}: failed: {why}")
            return skipped_record(scenario.name, phase.name, dep.target, f"failed: {why[-600:]}")
        loaded, kmem1 = sampler.sample(), kernel_memory_bytes()
        return _measure(plan, scenario, phase, settings, dep, rate, workers, sampler, redis,
                        base, loaded, kmem1 - kmem0, client_cpu, server_cpu)
    finally:
        workers.stop()


def _measure(plan: Plan, scenario: Scenario, phase: Phase, settings: Settings, dep: Deployment,
             rate: float | None, workers: _Workers, sampler: TreeSampler, redis: TreeSampler | None,
             base: Any, loaded: Any, kernel_delta: int, client_cpu: int | None,
             server_cpu: int | None) -> dict[str, object]:
    start = time.monotonic_ns() + int(_START_DELAY_S * 1e9)
    workers.start_at.value = start
    workers.go.set()
    time.sleep(_START_DELAY_S)
    s0, r0 = sampler.sample(), redis.sample() if redis else None
    cores0, calls0 = core_times(), _redis_calls(dep)
    profilers = _start_profilers(plan, scenario, phase, dep, settings.duration, client_cpu, rate)
    end = time.monotonic() + settings.duration
    peak = s0.rss
    next_note = time.monotonic() + _PROGRESS_EVERY_S
    while time.monotonic() < end and not workers.failures:
        workers.poll(min(0.5, max(0.01, end - time.monotonic())))
        now = time.monotonic()
        if now >= next_note:
            sample = sampler.sample()
            peak = max(peak, sample.rss)
            if plan.progress and settings.duration >= 5:
                done = settings.duration - (end - now)
                plan.log(f"  [{phase.name} {dep.target} rate={rate or 'max'}] {done:.0f}/{settings.duration:.0f} s,"
                         f" {sum(workers.progress)} ops, server RSS {sample.rss / 2**20:.0f} MB")
            next_note = now + _PROGRESS_EVERY_S
    s1, r1 = sampler.sample(), redis.sample() if redis else None
    cores1, calls1 = core_times(), _redis_calls(dep)
    workers.wait(lambda: len(workers.results) + len(workers.failures) == len(workers.procs),
                 time.monotonic() + 60)
    profile = {name: p.finish() for name, p in profilers.items()}
    if workers.failures:
        why = next(iter(workers.failures.values()))
        return skipped_record(scenario.name, phase.name, dep.target, f"failed: {why[-600:]}")
    window = ServerWindow(
        base=base, loaded=loaded, start=s0, end=s1, rss_peak=peak, window_s=settings.duration,
        kernel_delta=kernel_delta,
        redis_cpu_s=(r1.cpu_s - r0.cpu_s) if (r0 and r1) else None, redis_rss=r1.rss if r1 else None,
        core_busy=_busy(cores0, cores1, server_cpu), client_core_busy=_busy(cores0, cores1, client_cpu),
        redis_calls=_delta(calls0, calls1),
    )
    record = phase_record(
        scenario=scenario.name, phase=phase.name, unit=phase.unit, target=dep.target, rate=rate,
        connections=sum(g.connections for g in phase.groups), duration=settings.duration,
        results=[workers.results[i] for i in sorted(workers.results)], ready_errors=workers.ready_errors,
        server=window, generator_cores=1 if client_cpu is not None else (os.cpu_count() or 1),
    )
    if profile:
        record["profile"] = profile
    return record


def _start_profilers(plan: Plan, scenario: Scenario, phase: Phase, dep: Deployment, duration: float,
                     client_cpu: int | None, rate: float | None) -> dict[str, profiles.Profiler]:
    """One py-spy per server process (node), for the measured window; none without --profile."""
    if not plan.profile:
        return {}
    folder = plan.out / "logs" / f"{scenario.name}-{dep.target}"
    tag = f"{phase.name.replace('/', '-')}-{rate or 'max'}"
    out = {}
    for server in dep.servers:
        p = profiles.start([server.popen.pid], folder / f"profile-{tag}-{server.name}.txt", duration, client_cpu)
        if p is not None:
            out[server.name] = p
    return out


def _fmt_us(x: object) -> str:
    return f"{x:.1f}" if isinstance(x, (int, float)) else "—"


def _busy(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int | None) -> float | None:
    """Share of ``cpu``'s time that was busy between two :func:`core_times` readings."""
    if cpu is None or cpu not in before or cpu not in after:
        return None
    busy, total = (a - b for a, b in zip(after[cpu], before[cpu], strict=True))
    return busy / total if total else None


def _redis_calls(dep: Deployment) -> dict[str, int] | None:
    if dep.redis is None:
        return None
    total: Counter[str] = Counter()
    try:
        for server in dep.redis_servers:  # a cluster's masters: their sum
            total.update(redis_commandstats(server.ready["url"]))
    except Exception:  # noqa: BLE001 - a figure missing from the report, not a failed run
        return None
    return dict(total)


def _delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    out = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0) > 0}
    out.pop("info", None)  # our own INFO call
    return out


def _line(r: dict[str, object]) -> str:
    """One line per record for the terminal."""
    if r.get("status") != "ok":
        return f"[{r['phase']}] {r['target']}: {r.get('status')} {r.get('reason', '')[:200]}"  # type: ignore[index]
    lat = r["latency_ms"]
    gen = r["generator"]
    return (f"[{r['phase']}] {r['target']:<13} rate={r['offered_rate'] or 'max'}: {r['throughput']:,.0f} {r['unit']}"
            f"  p50 {lat['p50']:.2f} p99 {lat['p99']:.2f} max {lat['max']:.1f} ms"  # type: ignore[index]
            f"  errors {r['error_total']}  server CPU {r['server']['cpu_percent']}%"  # type: ignore[index]
            f" ({_fmt_us(r['server'].get('cpu_us_per_op'))} µs/op)"  # type: ignore[index,attr-defined]
            f"  gen CPU {gen['cpu_percent']}%{' (saturated)' if gen['saturated'] else ''}")  # type: ignore[index]
