"""Latency histograms, percentiles and capacity: pure logic, no I/O.

Workers record raw latencies (nanoseconds, in an ``array('q')``) and fold them into a
:class:`Histogram` once, with numpy, when their window closes; histograms from every worker
merge exactly. Buckets grow by 1% from 1 µs, so a percentile is reported to within 1% (as
HdrHistogram with two significant digits) and the maximum is exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SLO_P99_MS", "Histogram", "LatencySummary", "RatePoint", "capacity"]

SLO_P99_MS = 50.0
"""Capacity is the highest offered load whose p99 latency stays under this (milliseconds)."""

_FLOOR_NS = 1_000  # everything at or below 1 µs shares bucket 0
_GROWTH = 1.01
_LOG_GROWTH = math.log(_GROWTH)


def _upper_ns(index: int) -> float:
    """Return the upper bound of bucket ``index`` (every sample in it is at most this)."""
    return _FLOOR_NS * _GROWTH**index


@dataclass
class Histogram:
    """Counts of latencies in log-spaced buckets; merge with :meth:`merge`.

    Build it with :meth:`from_samples`; an empty histogram has ``total == 0``.
    """

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0
    max_ns: int = 0

    @classmethod
    def from_samples(cls, samples_ns: Sequence[int] | np.ndarray) -> Histogram:
        """Return the histogram of ``samples_ns``; negative samples count as zero."""
        arr = np.asarray(samples_ns, dtype=np.int64)
        if arr.size == 0:
            return cls()
        clipped = np.maximum(arr, _FLOOR_NS).astype(np.float64)
        # A tiny epsilon keeps a sample equal to a bucket's bound in that bucket.
        index = np.ceil(np.log(clipped / _FLOOR_NS) / _LOG_GROWTH - 1e-9).astype(np.int64)
        keys, counts = np.unique(index, return_counts=True)
        return cls(dict(zip(keys.tolist(), counts.tolist(), strict=True)), int(arr.size), max(0, int(arr.max())))

    def merge(self, other: Histogram) -> Histogram:
        """Return a new histogram holding the samples of both."""
        counts = dict(self.counts)
        for key, n in other.counts.items():
            counts[key] = counts.get(key, 0) + n
        return Histogram(counts, self.total + other.total, max(self.max_ns, other.max_ns))

    def percentile(self, q: float) -> float:
        """Return the ``q``-th percentile (0 < q <= 100) in nanoseconds; 0.0 when empty."""
        if not self.total:
            return 0.0
        rank = max(1, math.ceil(q / 100.0 * self.total))
        seen = 0
        for key in sorted(self.counts):
            seen += self.counts[key]
            if seen >= rank:
                return min(_upper_ns(key), float(self.max_ns))
        return float(self.max_ns)

    def summary(self) -> LatencySummary:
        """Return count and p50/p95/p99/max in milliseconds."""
        ms = 1e-6
        return LatencySummary(
            count=self.total,
            p50_ms=self.percentile(50) * ms,
            p95_ms=self.percentile(95) * ms,
            p99_ms=self.percentile(99) * ms,
            max_ms=self.max_ns * ms,
        )

    @staticmethod
    def merge_all(histograms: Iterable[Histogram]) -> Histogram:
        """Return the merge of ``histograms`` (empty if there are none)."""
        out = Histogram()
        for h in histograms:
            out = out.merge(h)
        return out


@dataclass(frozen=True)
class LatencySummary:
    """What the report shows of a latency distribution (milliseconds)."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    def as_dict(self) -> dict[str, float | int]:
        """Return the fields rounded for JSON."""
        return {
            "count": self.count,
            "p50": round(self.p50_ms, 3),
            "p95": round(self.p95_ms, 3),
            "p99": round(self.p99_ms, 3),
            "max": round(self.max_ms, 3),
        }


@dataclass(frozen=True)
class RatePoint:
    """One point of a rate sweep: what was offered, what was done, and its p99."""

    offered: float
    achieved: float
    p99_ms: float
    errors: int = 0


def capacity(
    points: Iterable[RatePoint], slo_ms: float = SLO_P99_MS, min_share: float = 0.95
) -> float | None:
    """Return the highest offered rate that was sustained, or ``None`` if none was.

    A rate is sustained when its p99 stays under ``slo_ms``, at least ``min_share`` of it was
    achieved, and no errors occurred; a rate above a failed one still counts if it passed (the
    report shows every point, so a noisy sweep stays visible).
    """
    ok = [
        p.offered
        for p in points
        if p.p99_ms < slo_ms and p.achieved >= min_share * p.offered and p.errors == 0
    ]
    return max(ok) if ok else None
