"""The scenarios: what is deployed, which roles run, and what the headline figure is.

A scenario is data: a :class:`Topology` to deploy and one or more :class:`Phase` s, each a
set of :class:`RoleGroup` s (a role, its connections, how many client processes share them,
which node they connect to and which node's management API they post to). The runner turns
groups into worker processes; nothing here does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from loadtest.targets import Topology

__all__ = ["PER_PROCESS_CONNECTIONS", "SCENARIOS", "Phase", "RoleGroup", "Scenario", "Settings"]

PER_PROCESS_CONNECTIONS = 15_000
"""Connections one process (client or server) is given: the hard open-file limit is 20,000."""


@dataclass(frozen=True)
class Settings:
    """The knobs of one run, after defaults (see :mod:`loadtest.cli`)."""

    connections: int
    duration: float
    clients: int = 2  # client processes per role group (more when connections need it)
    workers: int = 0  # server processes per node; 0 = as many as the connections need
    payload: int = 200
    slow_share: float = 0.1
    concurrency: int = 0  # dials / requests in flight per client process; 0 = the role's default
    compression: bool = False  # permessage-deflate (wsgateway and bare)
    registry: str = "memory"  # "redis": single-node scenarios get a private Redis (wsgateway's registry)
    plans: bool = False  # wsgateway: a generous usage plan on every tenant (checked, never throttling)


@dataclass(frozen=True)
class RoleGroup:
    """Connections running one role, spread over ``processes`` client processes."""

    role: str
    connections: int
    processes: int
    node: int = 0
    mgmt_node: int = 0
    stalled: int = 0
    rated: bool = False  # takes a share of the offered rate
    concurrency: int = 64


@dataclass(frozen=True)
class Phase:
    """One measured result: its name in the report and the unit of its headline figure."""

    name: str
    groups: tuple[RoleGroup, ...]
    unit: str
    rate_unit: str = ""  # what --rate offers, when the phase takes one


@dataclass(frozen=True)
class Scenario:
    """A scenario: its defaults and how it builds its topology and phases from settings."""

    name: str
    summary: str
    default_connections: int
    payload: int
    topology: Callable[[Settings], Topology]
    phases: Callable[[Settings], list[Phase]]
    sweep_start: float = 0.0  # first rate of --sweep; 0 = the scenario takes no rate
    default_rate: float | None = None  # offered without --rate; None = closed loop


def _procs(s: Settings, connections: int) -> int:
    return max(s.clients, math.ceil(connections / PER_PROCESS_CONNECTIONS))


def _conc(s: Settings, default: int) -> int:
    return s.concurrency or default


def _idle(s: Settings) -> list[Phase]:
    # 50 dials in flight per process: a burst above the server's listen backlog (asyncio: 100)
    # drops SYNs, and their 1 s retransmit would be measured instead of the server.
    return [Phase("idle", (RoleGroup("hold", s.connections, _procs(s, s.connections), concurrency=_conc(s, 50)),),
                  "connections held")]


def _connect(s: Settings) -> list[Phase]:
    group = RoleGroup("dial", s.connections, _procs(s, s.connections), rated=True, concurrency=_conc(s, 32))
    return [Phase("connect", (group,), "handshakes/s", "handshakes/s")]


def _echo(s: Settings) -> list[Phase]:
    group = RoleGroup("echo", s.connections, _procs(s, s.connections), rated=True)
    return [Phase("echo", (group,), "round trips/s", "messages/s")]


def _echohttp(s: Settings) -> list[Phase]:
    group = RoleGroup("echo", s.connections, _procs(s, s.connections), rated=True)
    return [Phase("echohttp", (group,), "round trips/s", "messages/s")]


def _unicast_phase(name: str, s: Settings, node: int, mgmt: int) -> Phase:
    group = RoleGroup("unicast", s.connections, _procs(s, s.connections), node=node, mgmt_node=mgmt,
                      rated=True, concurrency=_conc(s, 16))
    return Phase(name, (group,), "deliveries/s", "POSTs/s")


def _fanout_phase(name: str, s: Settings, node: int, mgmt: int, stalled: int = 0) -> Phase:
    listeners = max(1, s.connections - 1)  # the publisher's sentinel is the last connection
    return Phase(
        name,
        (
            RoleGroup("listen", listeners, _procs(s, listeners), node=node, stalled=stalled),
            RoleGroup("publish", 1, 1, node=node, mgmt_node=mgmt, rated=True),
        ),
        "deliveries/s",
        "messages/s",
    )


def _crossnode(s: Settings) -> list[Phase]:
    # Clients sit on node 1; backends POST to node 0, so every message crosses Redis.
    return [_unicast_phase("crossnode/unicast", s, 1, 0), _fanout_phase("crossnode/fanout", s, 1, 0)]


_CLUSTER_NODES = 3


def _cluster(s: Settings) -> list[Phase]:
    # The tenant's connections are spread evenly over the nodes; the backend POSTs to node 0,
    # which delivers its share and hands the message to the other nodes through Redis.
    listeners = max(_CLUSTER_NODES, s.connections - 1)
    shares = [listeners // _CLUSTER_NODES + (1 if i < listeners % _CLUSTER_NODES else 0) for i in range(_CLUSTER_NODES)]
    groups = tuple(RoleGroup("listen", n, _procs(s, n), node=i) for i, n in enumerate(shares))
    return [Phase("cluster", (*groups, RoleGroup("publish", 1, 1, node=0, mgmt_node=0, rated=True)),
                  "deliveries/s", "messages/s")]


def _slow(s: Settings) -> list[Phase]:
    stalled = max(1, round(s.connections * s.slow_share))
    return [_fanout_phase("slow", s, 0, 0, stalled=stalled)]


def _single(s: Settings) -> Topology:
    return Topology(1, s.workers or 1, bus=s.registry == "redis", compression=s.compression, plans=s.plans)


def _with_backend(s: Settings) -> Topology:
    return Topology(1, s.workers or 1, bus=s.registry == "redis", compression=s.compression, backend=True)


def _idle_topology(s: Settings) -> Topology:
    return Topology(1, s.workers or math.ceil(s.connections / PER_PROCESS_CONNECTIONS), compression=s.compression,
                    plans=s.plans)


SCENARIOS: dict[str, Scenario] = {
    sc.name: sc
    for sc in (
        Scenario("idle", "hold N connections: server RSS and kernel memory per connection, most held",
                 10_000, 200, _idle_topology, _idle),
        Scenario("connect", "handshakes/s with an HS256 JWT (and wsgateway's $connect handler)",
                 2_000, 200, _single, _connect, sweep_start=500),
        Scenario("echo", "client messages routed by action to a handler that answers",
                 100, 200, _single, _echo, sweep_start=2_000),
        Scenario("echohttp", "echo through an HTTP backend: wsgateway's HTTP integration, bare's pooled aiohttp client",
                 100, 200, _with_backend, _echohttp, sweep_start=1_000),
        Scenario("unicast", "backends POST to single connections (SigV4 where the target checks it)",
                 100, 200, _single, lambda s: [_unicast_phase("unicast", s, 0, 0)], sweep_start=1_000),
        Scenario("fanout", "POST to a tenant; every connection of the tenant gets it",
                 1_000, 200, _single, lambda s: [_fanout_phase("fanout", s, 0, 0)], sweep_start=10),
        Scenario("crossnode", "unicast and fan-out with the clients on another node, through Redis",
                 100, 200, lambda s: Topology(2, 1, bus=True, compression=s.compression, plans=s.plans), _crossnode,
                 sweep_start=500),
        Scenario("cluster", "tenant fan-out to connections spread over 3 nodes, through Redis",
                 10_000, 200, lambda s: Topology(_CLUSTER_NODES, 1, bus=True, compression=s.compression, plans=s.plans),
                 _cluster, sweep_start=10),
        Scenario("slow", "fan-out while a share of the clients stop reading",
                 1_000, 1024, _single, _slow, sweep_start=10, default_rate=20),
    )
}
"""Every scenario by name, in the order ``all`` runs them."""
