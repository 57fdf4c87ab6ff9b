"""How long to wait before retrying a delivery: a policy that computes delays and never sleeps.

The loop that retries (``HttpIntegration``'s ``$disconnect`` delivery) owns the sleep; this
only answers "how long before attempt ``n + 1``", so it is tested without a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": attempt ``n`` waits between half and all of
    ``min(cap_s, base_s * 2**n)``, so retries of many connections spread out without ever
    retrying at once. ``budget_s`` bounds the whole series, from the first attempt."""

    base_s: float = 0.1
    cap_s: float = 5.0
    budget_s: float = 30.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (0 = the first) before the next."""
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def allows(self, elapsed_s: float, delay_s: float) -> bool:
        """Whether a retry ``delay_s`` from now still starts within the budget, ``elapsed_s``
        after the first attempt began."""
        return elapsed_s + delay_s <= self.budget_s
