"""What a fan-out (to a tenant, a user or a group) achieved, as every layer reports it.

The registry returns one for the other nodes, the gateway adds its own hub's count, the
management edge answers it (200 when complete, 207 when partial) and handlers get it from
``context.post_to_tenant`` / ``post_to_user`` / ``post_to_group``. It sits at the bottom of
the package so that the registry, the gateway and the handler context can name it without
importing one another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FanoutResult"]


@dataclass(frozen=True, slots=True)
class FanoutResult:
    """``delivered``: connections that took the message (queued on their socket).
    ``unreachable_nodes``: nodes holding the audience that did not confirm in time (paused,
    partitioned, failing); their connections most likely did not get it, and a retry of the
    whole fan-out would send it twice to the ``delivered`` ones."""

    delivered: int = 0
    unreachable_nodes: int = 0

    @property
    def complete(self) -> bool:
        """True when every node holding the audience answered."""
        return self.unreachable_nodes == 0

    def plus_local(self, delivered: int) -> FanoutResult:
        """This result with ``delivered`` more connections (the node's own hub)."""
        return FanoutResult(self.delivered + delivered, self.unreachable_nodes)

    def to_json(self) -> dict[str, Any]:
        """The management API's body: ``{"delivered": N, "unreachableNodes": K}``."""
        return {"delivered": self.delivered, "unreachableNodes": self.unreachable_nodes}
