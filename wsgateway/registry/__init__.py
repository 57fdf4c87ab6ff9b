"""The registry: the cluster-wide directory of connections and the road to other nodes.

The hub (``wsgateway.hub``) is the truth about the connections *this* node holds; the gateway
always tries it first. The registry answers for everything else:

- it records every accepted connection (``add``/``remove``) so that any node can list a
  tenant's connections and find the node that owns a connection;
- it carries management calls for connections held by other nodes (``post``/``get``/
  ``delete``) and tenant fan-out to other nodes (``fanout``), calling back into the owning
  node's :class:`LocalNode`;
- it remembers one-time keys cluster-wide (``claim_once``: signed management requests, so
  that a replay is refused on every node);
- with several nodes, it notices nodes that died and runs ``$disconnect`` for their
  connections on a surviving node (``LocalNode.run_orphan_disconnect``).

Two implementations pass one contract test suite (``tests/registry_contract.py``):
``memory.MemoryRegistry`` (one node, the default) and ``redis.RedisRegistry``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..fanout import FanoutResult

# Re-exported: the registry's submodules and older imports name them from here.
from ..records import ConnectionInfo, ConnectionRecord, iso8601
from .posted import PostWaiter

if TYPE_CHECKING:
    from ..config import RegistryConfig
    from ..usage import UsageReport, UsageTotals

__all__ = [
    "ConnectionInfo",
    "ConnectionRecord",
    "FanoutResult",
    "LocalNode",
    "Page",
    "PostWaiter",
    "Registry",
    "create_registry",
    "decrement",
    "iso8601",
]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a tenant listing; ``next_token`` is None on the last page."""

    connections: list[ConnectionInfo]
    next_token: str | None


@runtime_checkable
class LocalNode(Protocol):
    """What a registry may ask of the node it serves (implemented by the gateway).

    Every method answers from this node's hub only; none of them touches the registry,
    so a registry can call them while handling a request from another node.
    """

    node_id: str

    def local_post(self, connection_id: str, data: bytes, binary: bool, fanout_id: str = "") -> Awaitable[None] | None:
        """Queue ``data`` on a local connection; raise GoneError or LimitExceededError.
        Returns None once queued, or, for a reliable session on its way to this node, what
        to await: done once it is queued, raising as this call would if it is not.
        ``fanout_id``: the post is a fan-out sent on by the node a session moved from
        (queued once, if the session got that fan-out here already)."""

    def arriving(self, connection_id: str) -> Awaitable[object] | None:
        """A reliable session on its way to this node from another: what is done once it
        landed here or did not (calls about it wait for that, rather than answer that it is
        not here); None if no session of that id is on its way here."""

    def local_info(self, connection_id: str) -> ConnectionInfo:
        """Return a local connection's info; raise GoneError."""

    async def local_delete(self, connection_id: str) -> None:
        """Close a local connection with 1000; raise GoneError."""

    def local_fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> int:
        """Queue ``data`` on every local connection of the audience (the tenant, or one user
        of it, or one group of it); return how many took it. ``fanout_id`` names the fan-out
        cluster-wide (a reliable session that just moved takes it once)."""

    def local_group(self, connection_id: str, group: str, *, join: bool) -> bool:
        """Join or leave a group for a local connection; False if it is not held here."""

    def local_connections(self) -> Iterable[ConnectionInfo]:
        """Every open local connection, for re-registration and lastActiveAt refresh."""

    def local_survey(self, query: dict[str, Any]) -> dict[str, Any]:
        """What this node tells an operator console (``wsgateway.history``): a JSON-able
        answer to a JSON-able ``query``; raise ValueError for a query it does not know."""

    async def run_orphan_disconnect(self, record: ConnectionRecord, code: int, reason: str) -> None:
        """Run ``$disconnect`` for a connection whose node died (exactly once per record)."""

    def abandon(self, connection_ids: Iterable[str], code: int, reason: str) -> int:
        """Close local connections whose records another node claimed (it declared this node
        dead and ran their ``$disconnect``): no second ``$disconnect``, no registry writes."""

    def local_take_session(self, connection_id: str, claim: Mapping[str, Any], to_node: str) -> dict[str, Any]:
        """Hand a local reliable session over to ``to_node``, which a client resumes it on:
        check ``claim`` (token, lastSeq, tenant, principal), take the session out of this
        node without ``$disconnect`` and return its state (JSON-able). Raises GoneError if it
        is not here or the claim does not match."""

    def local_landed(self, connection_id: str, handover: str) -> bool:
        """Whether the move ``handover`` of ``connection_id`` landed here lately (the session
        may have ended since, or moved on): asked by the node it came from when Redis lost
        its record. Asked once no move of it to this node is under way (``arriving``)."""


@runtime_checkable
class Registry(Protocol):
    """The cluster directory. Methods about one connection only see *other* nodes' ones
    when the gateway calls them: it has already looked in its own hub."""

    kind: str  # "memory" | "redis"

    async def start(self, node: LocalNode) -> None:
        """Connect and begin serving ``node``; idempotent."""

    async def close(self) -> None:
        """Remove this node's records and stop; idempotent. Other nodes answer 410 at once."""

    async def add(self, record: ConnectionRecord) -> None:
        """Record an accepted connection. Never raises for an outage: a registry that cannot
        write now re-registers the node's live connections when it can."""

    def drain(self) -> None:
        """The node is stopping: from now on ``remove`` answers without waiting for an
        unreachable backend (this node then runs the ``$disconnect``)."""

    async def remove(self, record: ConnectionRecord) -> bool:
        """Forget a closed connection; return whether this node runs its ``$disconnect``
        (False: another node declared this one dead and ran it). Never raises for an
        outage; the answer may then wait until the registry can tell."""

    async def post(self, connection_id: str, data: bytes, binary: bool) -> None:
        """Deliver to a connection on another node. Raises GoneError (it is nowhere),
        LimitExceededError (its queue is full) or RegistryUnavailableError (cannot tell now;
        the data is then never delivered later)."""

    def send_post(self, connection_id: str, data: bytes, binary: bool, waiter: PostWaiter) -> None:
        """:meth:`post` without a coroutine: ``waiter`` is told the outcome once, later or
        before this returns. Raises (and then never tells ``waiter``) only what it can tell
        at once, as RegistryUnavailableError while no reply could reach this node."""

    async def get(self, connection_id: str) -> ConnectionInfo:
        """Info of a connection on another node; same errors as ``post``."""

    async def delete(self, connection_id: str) -> None:
        """Close a connection on another node with 1000; same errors as ``post``."""

    async def take_session(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any]:
        """Have the node holding a reliable session hand it over to this one (see
        ``LocalNode.local_take_session``); return its state. Same errors as ``post``."""

    def handing_over(self, record: ConnectionRecord, to_node: str, handover: str) -> None:
        """A session of this node is on its way to ``to_node`` (the move named ``handover``):
        calls about it go there from now on. Never raises. Its record and this node's sets
        wait for :meth:`settle_handover` (a re-registration meanwhile leaves them alone)."""

    async def move_in(self, record: ConnectionRecord, from_node: str, handover: str) -> bool:
        """A session handed over by ``from_node`` (as its move ``handover``) lands here: its
        record becomes this node's, atomically, unless the holder kept it meanwhile (see
        :meth:`settle_handover`) or it is gone. True if it did (the session is this node's);
        False: it must not be carried on here. Raises RegistryUnavailableError when it cannot
        tell; asking again is safe."""

    async def settle_handover(self, record: ConnectionRecord, handover: str) -> bool:
        """Decide a move this node handed a session over for, once its new node had time to
        land it (:meth:`move_in`): True if the session stays here (the move did not land and
        now never will: calls about it come here again), False if it moved on (this node's
        sets forget it), or came back here since (a later move, whose new registration is
        left alone). Raises RegistryUnavailableError when it cannot tell; asking again is
        safe."""

    async def fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> FanoutResult:
        """Deliver to the audience's connections on *other* nodes (one message per node that
        holds the tenant; each node filters by user or group); return how many took it there
        and how many of those nodes did not confirm within the request deadline. Raises
        RegistryUnavailableError only when the message reached no node (nobody got it)."""

    async def forward(self, connection_id: str, to_node: str, data: bytes, binary: bool, fanout_id: str) -> None:
        """Send a fan-out (``fanout_id``) on to a reliable session that left for ``to_node``,
        as a post to it there. Raises as ``post``, but GoneError only as that node's answer."""

    async def group(self, connection_id: str, group: str, *, join: bool) -> None:
        """Join or leave a group for a connection on another node; errors as ``post``."""

    async def list_tenant(self, tenant: str, limit: int, next_token: str | None) -> Page:
        """The tenant's connections on every node, this one included, ``limit`` per page.
        Raises BadRequestError for a token it did not issue, RegistryUnavailableError."""

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        """Remember ``key`` for ``ttl_s`` seconds (cluster-wide); True if this call recorded
        it, False if it was already remembered (a replay). Memory stays bounded: expired keys
        are dropped. Raises RegistryUnavailableError when it cannot tell (callers refuse)."""

    async def release_once(self, key: str) -> None:
        """Forget a claimed ``key`` (its request failed retriably: the retry, signed alike,
        must pass). Raises RegistryUnavailableError when it cannot reach the backend."""

    async def health(self) -> Mapping[str, Any]:
        """``{"backend": kind, "reachable": bool, ...}`` for /health."""

    async def reserve(self, tenant: str, principal: str, max_tenant: int, max_principal: int) -> str | None:
        """Take one of the tenant's connection places cluster-wide, atomically, before the
        awaited ``$connect``: None when taken (give it back with :meth:`unreserve`), else the
        name of the cap it would break (``max_connections``, ``max_connections_per_principal``).
        0 = no cap. Never raises: while the backend is unreachable the caps hold per node."""

    async def unreserve(self, tenant: str, principal: str) -> None:
        """Give back a place :meth:`reserve` took (the handshake failed or the connection
        closed). Never raises; a node's places are also given back when it stops or dies."""

    async def held(self, tenant: str) -> int:
        """The tenant's places taken on every node (connections and handshakes in flight).
        Raises RegistryUnavailableError."""

    async def sync_usage(self, report: UsageReport) -> UsageTotals:
        """Add this node's usage ``report`` to the cluster's counts and answer the cluster's
        totals (see :mod:`wsgateway.usage`). Raises RegistryUnavailableError."""

    async def usage_today(self, tenant: str, day: str) -> tuple[int, int]:
        """The tenant's (messages, posts) on UTC ``day`` as synced by every node.
        Raises RegistryUnavailableError."""

    async def survey(self, query: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
        """Ask every live node, this one included, ``LocalNode.local_survey(query)``; answer
        by node id, None for a node that did not answer within the request timeout. Never
        raises for an outage: this node always answers; the nodes it cannot reach are None."""


def create_registry(config: RegistryConfig, node_id: str) -> Registry:
    """Build the registry named by ``config.backend`` ("memory" or "redis")."""
    if config.backend == "redis":
        from .redis import RedisRegistry

        return RedisRegistry(config, node_id)
    from .memory import MemoryRegistry

    return MemoryRegistry(node_id)


def decrement(counts: dict[Any, int], key: Any) -> None:
    """Count one ``key`` fewer in ``counts``, dropping it at zero (counts of places held)."""
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
