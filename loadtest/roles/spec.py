"""What a worker process is given (:class:`WorkerSpec`) and what it reports (:class:`WorkerResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from loadtest.backend import UNCHECKED_KEYS
from loadtest.clients import Endpoint
from loadtest.metrics import Histogram

__all__ = ["WorkerResult", "WorkerSpec"]


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker process needs; built by the runner, pickled to the worker."""

    index: int
    role: str
    endpoint: Endpoint
    connections: int
    first_conn: int = 0  # global index of this worker's first connection (source address)
    mgmt_url: str = ""
    sigv4: tuple[str, str] = UNCHECKED_KEYS  # every target's requests are signed alike
    jwt_secret: str = ""
    tenant: str = "t0"
    rate: float | None = None  # this worker's share of the offered rate; None = closed loop
    concurrency: int = 64  # dials / requests in flight
    duration: float = 5.0
    drain: float = 1.0  # seconds after the window to wait for late deliveries
    payload: int = 200
    stalled: int = 0  # connections that never read (slow)
    cpu: int | None = None  # core to pin the worker to
    connect_timeout: float = 60.0
    watch: tuple[int, ...] = ()  # publish: listener workers whose progress paces the closed loop


@dataclass
class WorkerResult:
    """What a worker measured; the runner merges these into one scenario result."""

    index: int
    role: str
    opened: int = 0
    held: int = 0
    ops: int = 0
    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency: Histogram = field(default_factory=Histogram)
    request_latency: Histogram = field(default_factory=Histogram)
    send_lag: Histogram = field(default_factory=Histogram)
    from_send: Histogram = field(default_factory=Histogram)
    last_by_seq: dict[int, tuple[int, int]] = field(default_factory=dict)
    receivers: int = 0
    stalled_closed: int = 0
    cpu_s: float = 0.0
    window_s: float = 0.0
    first_ns: int = 0
    last_ns: int = 0
