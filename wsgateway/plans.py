"""Usage plans, pure: which plan a tenant is on, token buckets, the UTC day a count belongs to.

Nothing here does I/O or reads a clock of its own: every call takes ``now``, so tests drive
time by hand and the node passes its event loop's clock (buckets) or the wall clock (days).
:mod:`wsgateway.usage` builds the node's throttles from these parts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .config import PlanConfig

__all__ = ["ANY_TENANT", "PlanBook", "TokenBucket", "utc_day"]

ANY_TENANT = "*"


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one token per call let through.

    Allocation-free on the hot path: :meth:`take` updates two floats. ``rate`` 0 = no limit.
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = self.burst  # a fresh bucket is full, as AWS's
        self.stamp = now

    def take(self, now: float) -> bool:
        """Take one token if there is one; False: throttle the call (nothing is taken)."""
        if not self.rate:
            return True
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.stamp = now
        if tokens > self.burst:
            tokens = self.burst
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True

    def resize(self, rate: float, burst: float, now: float) -> None:
        """Refill at ``rate`` from now on with room for ``burst``; tokens held stay, capped."""
        if self.rate:  # credit what the old rate earned until now
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.tokens = min(self.tokens, self.burst)


class PlanBook:
    """The plan of each tenant: its own plan, else the ``"*"`` plan, else None (no limits).

    Built once per configuration (start-up and each reload); lookups are one dict access.
    """

    __slots__ = ("_by_tenant", "_default", "plans")

    def __init__(self, plans: Iterable[PlanConfig]) -> None:
        self.plans = tuple(plans)
        self._by_tenant: dict[str, PlanConfig] = {}
        self._default: PlanConfig | None = None
        for plan in self.plans:
            for tenant in plan.tenants:
                if tenant == ANY_TENANT:
                    self._default = plan
                else:
                    self._by_tenant[tenant] = plan

    def __bool__(self) -> bool:
        return bool(self.plans)

    def plan_of(self, tenant: str) -> PlanConfig | None:
        """The plan that applies to ``tenant``; None: it has none."""
        return self._by_tenant.get(tenant, self._default)


def utc_day(epoch_s: float | None = None) -> str:
    """The UTC day of ``epoch_s`` (default: now) as ``YYYYMMDD``: the key of daily quotas."""
    return time.strftime("%Y%m%d", time.gmtime(time.time() if epoch_s is None else epoch_s))
