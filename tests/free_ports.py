"""Free loopback ports for the servers the tests start themselves (redis-server, Sentinels,
Redis Cluster masters and their bus ports).

A port is chosen below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``): the
tests open thousands of outbound connections and bind gateways to port 0, and each of those
takes a port from that range. A port chosen inside it may be taken by one of them between the
moment it is found free and the moment redis-server binds it, and redis-server then exits
("Address already in use").
"""

from __future__ import annotations

from pathlib import Path

import port_for

__all__ = ["PORTS", "free_port"]

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral() -> range:
    try:
        low, high = (int(part) for part in _RANGE.read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


PORTS = frozenset(port_for.available_good_ports() - set(_ephemeral()))
"""The ports to choose from, for a tool that chooses itself (pytest-redis)."""


def free_port() -> int:
    """A port nobody listens on now, outside the ephemeral range."""
    return port_for.select_random(set(PORTS))
