"""What the servers and the machine spend: CPU and RSS of process trees, kernel socket memory.

:class:`TreeSampler` follows a server's process and all its children (``--workers``,
uvicorn's workers). Kernel memory is read from ``/proc``: the TCP buffer pages in
``/proc/net/sockstat`` plus the unreclaimable slab in ``/proc/meminfo`` (where socket, inode
and TCP control blocks live). On loopback both ends of every connection are on this machine,
so a delta divided by the connection count is the cost of *both* sockets of a connection,
and anything else the machine did meanwhile is in it too (see the README).

A process's CPU time leaves out the interrupt and softirq time spent on its core, and on
loopback the kernel's TCP work for a message lands largely there: :func:`core_times` reads
each core's busy and total time from ``/proc/stat`` so a run can tell whether a *core* (not
only a process) was saturated. :func:`redis_commandstats` reads a private Redis's
``INFO commandstats`` (calls by command) so a run can count Redis commands per operation.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil

__all__ = [
    "TreeSample",
    "TreeSampler",
    "core_times",
    "kernel_memory_bytes",
    "parse_meminfo",
    "parse_sockstat",
    "parse_stat",
    "redis_commandstats",
]

_PAGE = 4096


@dataclass(frozen=True)
class TreeSample:
    """CPU seconds (user + system) and RSS bytes summed over a set of process trees."""

    cpu_s: float
    rss: int
    processes: int


class TreeSampler:
    """Samples the process trees rooted at ``pids``; children are found at every sample."""

    def __init__(self, pids: list[int]) -> None:
        self._roots = [psutil.Process(p) for p in pids]
        self._known: dict[int, psutil.Process] = {}
        self._last_cpu: dict[int, float] = {}

    def sample(self) -> TreeSample:
        """Return the current totals; processes that are gone keep their last CPU time."""
        procs: list[psutil.Process] = []
        for root in self._roots:
            try:
                procs.append(root)
                procs.extend(root.children(recursive=True))
            except psutil.NoSuchProcess:
                continue
        rss = 0
        alive = 0
        for proc in procs:
            proc = self._known.setdefault(proc.pid, proc)
            try:
                with proc.oneshot():
                    times = proc.cpu_times()
                    self._last_cpu[proc.pid] = times.user + times.system
                    rss += proc.memory_info().rss
                    alive += 1
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
        return TreeSample(sum(self._last_cpu.values()), rss, alive)


def parse_sockstat(text: str) -> dict[str, dict[str, int]]:
    """Parse ``/proc/net/sockstat`` into ``{"TCP": {"inuse": .., "mem": ..}, ...}``."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        proto, _, rest = line.partition(":")
        fields = rest.split()
        out[proto.strip()] = {k: int(v) for k, v in zip(fields[::2], fields[1::2], strict=False)}
    return out


def parse_meminfo(text: str) -> dict[str, int]:
    """Parse ``/proc/meminfo`` into bytes by key."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            out[key] = int(parts[0]) * (1024 if len(parts) > 1 and parts[1] == "kB" else 1)
    return out


def kernel_memory_bytes() -> int:
    """Return TCP buffer memory plus unreclaimable slab, machine-wide, in bytes."""
    with open("/proc/net/sockstat") as f:
        tcp_pages = parse_sockstat(f.read()).get("TCP", {}).get("mem", 0)
    with open("/proc/meminfo") as f:
        slab = parse_meminfo(f.read()).get("SUnreclaim", 0)
    return tcp_pages * _PAGE + slab


def parse_stat(text: str) -> dict[int, tuple[int, int]]:
    """Parse ``/proc/stat`` into ``{cpu: (busy ticks, total ticks)}``, per core.

    Busy is everything but idle and iowait (user, nice, system, irq, softirq, steal).
    """
    out: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(x) for x in rest.split()[:8]]
        idle = ticks[3] + ticks[4]
        out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return out


def core_times() -> dict[int, tuple[int, int]]:
    """Return ``{cpu: (busy ticks, total ticks)}`` for every core (see :func:`parse_stat`)."""
    with open("/proc/stat") as f:
        return parse_stat(f.read())


def redis_commandstats(url: str) -> dict[str, int]:
    """Return ``{command: calls}`` from the Redis at ``url`` (``INFO commandstats``).

    Raises ``redis.RedisError`` when it does not answer (within 2 s).
    """
    import redis

    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
