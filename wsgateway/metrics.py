"""Counters of one node and their Prometheus exposition (``GET /metrics``, management port).

The hot paths only add to plain integers on a :class:`Stats` object (no lock, no label
lookup per message); the prometheus_client collector of :mod:`wsgateway.exposition` reads
them when Prometheus scrapes, so metrics cost nothing between scrapes.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from typing import TypeVar

from .errors import HandlerTimeout, IntegrationError

__all__ = ["LATENCY_BOUNDS_MS", "MAX_FAILURES", "Stats", "Tally"]

# Upper bounds (ms) of the POST-latency buckets; one more bucket holds everything slower.
LATENCY_BOUNDS_MS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
_LATENCY_BOUNDS_S = tuple(b / 1000 for b in LATENCY_BOUNDS_MS)
MAX_FAILURES = 200  # recent failures kept for the console
_K = TypeVar("_K")


class Tally(Counter[_K]):
    """A :class:`~collections.Counter` whose ``tally[key] += 1`` stays in C.

    Counter defines ``__delitem__`` in Python, and CPython then routes every item assignment
    of its instances through a Python-level slot (~1k instructions, once per client message
    and once per reply for ``Stats.traffic``, once per management request for
    ``Stats.management``); here deleting is dict's own again (a missing key raises), so
    assigning is too. Reading a missing key still answers 0."""

    __delitem__ = dict.__delitem__  # type: ignore[assignment]  # dict's wrapper: CPython picks its C slot


class Stats:
    """Plain counters, incremented where things happen (event loop only)."""

    __slots__ = (
        "accepted",
        "rejected",
        "messages",
        "handler_errors",
        "handler_timeouts",
        "no_route",
        "disconnects",
        "management",
        "slow_consumers",
        "integration_failures",
        "throttled",
        "frames_out",
        "traffic",
        "post_latency",
        "failures",
    )

    def __init__(self) -> None:
        self.accepted = 0
        self.rejected: Counter[int] = Counter()  # handshake status -> count
        self.messages = 0
        self.handler_errors = 0
        self.handler_timeouts = 0
        self.no_route = 0
        self.disconnects: Counter[int] = Counter()  # close code -> count
        self.management: Tally[tuple[str, int]] = Tally()  # (operation, status) -> count
        self.slow_consumers = 0
        # (kind, reason) -> count: "http"/"lambda"/"python" x "5xx", "connect", "timeout", ...
        self.integration_failures: Counter[tuple[str, str]] = Counter()
        # (plan, limit, kind) -> calls throttled; plan "" for route and connection limits.
        # Never a tenant label: one series per tenant would grow without bound.
        self.throttled: Counter[tuple[str, str, str]] = Counter()
        # For the console (wsgateway.history reads them every SAMPLE_S):
        self.frames_out = 0  # frames queued to clients: posts, fan-out deliveries, handler replies
        # tenant -> messages in and out since the last sample (the sampler empties it)
        self.traffic: Tally[str] = Tally()
        # POSTs (to a connection, tenant, user, group), by LATENCY_BOUNDS_MS bucket
        self.post_latency = [0] * (len(LATENCY_BOUNDS_MS) + 1)
        # the last MAX_FAILURES handler failures, refused handshakes and 5xx answers
        self.failures: deque[dict[str, object]] = deque(maxlen=MAX_FAILURES)

    def post_took(self, seconds: float) -> None:
        """Count one answered POST that took ``seconds`` from its head to its answer."""
        self.post_latency[bisect_left(_LATENCY_BOUNDS_S, seconds)] += 1

    def failed(self, kind: str, route: str, status: int, request_id: str, reason: str = "") -> None:
        """Remember one failure for the console: ``kind`` is handler, handshake or management.
        Never pass a token, a message body or a client's text."""
        self.failures.append({"time": time.time(), "kind": kind, "route": route, "status": status,
                              "requestId": request_id, "reason": reason})

    def integration_failed(
        self, kind: str, exc: BaseException, *, route: str = "", request_id: str = "", status: int = 500
    ) -> str:
        """Count a route's failure by its integration's kind and why, and remember it for the
        console; return the reason (for the access log). Never names the backend: the label
        set stays small."""
        reason = "error"
        if isinstance(exc, HandlerTimeout):
            reason = "timeout"
        elif isinstance(exc, IntegrationError):
            reason = exc.reason
        self.integration_failures[kind, reason] += 1
        self.failed("handler", route, status, request_id, f"{kind} {reason}")
        return reason
