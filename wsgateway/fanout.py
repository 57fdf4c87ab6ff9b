"""What a fan-out (to a tenant, a user or a group) achieved, as every layer reports it.

The registry returns one for the other nodes, the gateway adds its own hub's count, the
management edge answers it (200 when complete, 207 when partial) and handlers get it from
``context.post_to_tenant`` / ``post_to_user`` / ``post_to_group``. It sits at the bottom of
the package so that the registry, the gateway and the handler context can name it without
importing one another.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FanoutResult"]


class FanoutResult(int):
    """How many connections took the message (queued on their socket): an ``int``, as the
    handler context's fan-out calls have always returned, so a handler that adds, compares or
    serialises the count keeps working. ``unreachable_nodes``: nodes holding the audience that
    did not confirm in time (paused, partitioned, failing); their connections most likely did
    not get it, and a retry of the whole fan-out would send it twice to the delivered ones.

    Two results are equal when both numbers are; a result equals a plain ``int`` when its
    delivered count does.
    """

    unreachable_nodes: int

    def __new__(cls, delivered: int = 0, unreachable_nodes: int = 0) -> FanoutResult:
        self = super().__new__(cls, delivered)
        self.unreachable_nodes = unreachable_nodes
        return self

    @property
    def delivered(self) -> int:
        return int(self)

    @property
    def complete(self) -> bool:
        """True when every node holding the audience answered."""
        return self.unreachable_nodes == 0

    def plus_local(self, delivered: int) -> FanoutResult:
        """This result with ``delivered`` more connections (the node's own hub)."""
        return FanoutResult(int(self) + delivered, self.unreachable_nodes)

    def to_json(self) -> dict[str, Any]:
        """The management API's body: ``{"delivered": N, "unreachableNodes": K}``."""
        return {"delivered": int(self), "unreachableNodes": self.unreachable_nodes}

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FanoutResult):
            return int(self) == int(other) and self.unreachable_nodes == other.unreachable_nodes
        return int(self) == other

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = int.__hash__

    def __repr__(self) -> str:
        return f"FanoutResult(delivered={int(self)}, unreachable_nodes={self.unreachable_nodes})"
