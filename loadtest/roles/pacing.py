"""The open loop's schedule, shared by every role that runs at an offered rate."""

from __future__ import annotations

import asyncio
from array import array
from collections.abc import Awaitable, Callable
from time import monotonic_ns as _now

__all__ = ["paced", "sleep_until"]


async def paced(
    rate: float, start_ns: int, end_ns: int, fire: Callable[[int, int], Awaitable[None]], lags: array[int]
) -> int:
    """Call ``fire(k, due_ns)`` at ``rate`` per second from ``start_ns``; return the count.

    Timers fire with ~1 ms resolution; every operation already due is fired at once. How
    late each one left (``lags``, ns) is the generator's own share of every latency, since
    latency counts from the due time: the report shows it next to the figures.
    """
    interval = 1e9 / rate
    k = 0
    while True:
        due = start_ns + int(k * interval)
        if due >= end_ns:
            return k
        now = _now()
        if due > now:
            await asyncio.sleep((due - now) / 1e9)
            now = _now()
        lags.append(now - due)
        await fire(k, due)
        k += 1


async def sleep_until(ns: int) -> None:
    """Sleep until monotonic time ``ns`` (nanoseconds); return at once if it has passed."""
    delay = (ns - _now()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
