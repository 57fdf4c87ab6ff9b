"""The dead-node sweep, and the orphan ``$disconnect`` of every record it claims.

A node is dead once its death line (pushed ahead by each heartbeat, see ``membership``) is
behind Redis's clock. A live node that notices it sweeps it: it takes a lease on the dead
node (``LEASE_SWEEP``, which also unlists it), then claims its records one atomic script
(``CLAIM``) at a time. Whoever claims a record runs its ``$disconnect`` with 1006, so it runs
exactly once in the cluster. The claims are fenced by the lease time: a record its node wrote
or took back since (it came back, see ``membership``) is left to it, and a claimed record
leaves a tombstone for ``TOMBSTONE_S`` that tells its node, should it come back, to close the
connection without a second ``$disconnect``.

The same claim removes a node's own records: when it stops (no tombstone, no ``$disconnect``)
and when it finds records of its node id that its hub does not hold (a previous process with
this id died: those are orphans too).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterable

from ...errors import CLOSE_ABNORMAL
from ...records import ConnectionRecord
from .. import LocalNode
from .allowance import Allowance
from .batch import CommandBatcher
from .keys import KeySpace
from .scripts import CLAIM, LEASE_SWEEP, UNLIST, ms
from .wire import record_from_hash

__all__ = ["TOMBSTONE_S", "Sweeper"]

log = logging.getLogger("wsgateway.registry")

_SWEEP_BATCH = 256
_ORPHAN_CONCURRENCY = 32
# How long a claimed record's tombstone tells its node, should it come back, that another node
# ran its $disconnect. A node back after longer re-registers such a connection instead (and
# its $disconnect would run a second time when it closes).
TOMBSTONE_S = 24 * 3600.0


class Sweeper:
    """This node's sweeps of dead nodes and the orphan ``$disconnect`` calls they start.

    Call :meth:`start` before anything may claim a record (the orphans run on its node),
    :meth:`sweep` with the dead nodes a heartbeat found, and :meth:`close` when stopping.
    """

    def __init__(
        self, keys: KeySpace, node_id: str, batcher: CommandBatcher, *, node_ttl_s: float,
        allowance: Allowance | None = None,
    ) -> None:
        self._keys = keys
        self._allowance = allowance  # its places are given back with the node's sets
        self._node_id = node_id
        self._batcher = batcher
        self._node_ttl_s = node_ttl_s
        self._node: LocalNode | None = None
        self._sweeps: dict[str, asyncio.Task[None]] = {}
        self._orphans: set[asyncio.Task[None]] = set()
        self._orphan_slots = asyncio.Semaphore(_ORPHAN_CONCURRENCY)

    def start(self, node: LocalNode) -> None:
        """Run the orphan ``$disconnect`` calls on ``node`` from now on."""
        self._node = node

    def sweep(self, dead: Iterable[str]) -> None:
        """Start a sweep of each dead node, unless it is this one or already being swept by
        this node; returns at once (a sweep that fails is logged and left to a later beat)."""
        for node_id in dead:
            if node_id != self._node_id and node_id not in self._sweeps:
                self._spawn_sweep(node_id)

    async def close(self, *, grace_s: float) -> None:
        """Stop sweeping; give running ``$disconnect`` calls ``grace_s``."""
        tasks = list(self._sweeps.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._orphans:
            await asyncio.wait(self._orphans, timeout=grace_s)

    def _spawn_sweep(self, node_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self._sweep(node_id), name=f"registry-sweep-{node_id}")
        self._sweeps[node_id] = task
        task.add_done_callback(lambda _: self._sweeps.pop(node_id, None))

    async def _sweep(self, node_id: str) -> None:
        keys, call = self._keys, self._batcher.call
        lease = keys.sweep_lease(node_id)
        try:
            fence = await call("EVAL", LEASE_SWEEP, 5, *keys.meta, lease, node_id, self._node_id, ms(self._node_ttl_s))
            if not fence:
                return  # another node sweeps it, or it came back
            log.warning("registry: node %s is dead; claiming its connections", node_id)
            # Read, claim, then remove from the set: a sweeper dying midway leaves the rest
            # (and the claims it did not finish) to the next one.
            while ids := await call("SRANDMEMBER", keys.node_conns(node_id), _SWEEP_BATCH):
                await self.drop(node_id, {i.decode() for i in ids}, orphans_before=math.inf, fence=fence)
            await self.forget_node(node_id)
            await call("EVAL", UNLIST, 5, *keys.meta, lease, node_id, self._node_id, fence)
        except Exception as exc:  # noqa: BLE001 - the lease expires; the next beat tries again
            log.warning("registry: sweep of node %s interrupted (%r)", node_id, exc)

    async def drop(
        self, node_id: str, connection_ids: Iterable[str], *, orphans_before: float, fence: int | None = None
    ) -> None:
        """Claim and delete ``node_id``'s records of ``connection_ids``; run ``$disconnect``
        (1006) for each claimed record of a connection made before ``orphans_before``.

        A sweep passes ``fence``, its lease time: records written or held since are left to
        their node (it came back), and claimed ones leave a tombstone for it. Without a fence
        the node removes its own records. Raises a Redis error if Redis cannot be used."""
        keys, call = self._keys, self._batcher.call
        ids = list(connection_ids)
        claim_args = ("", "", 0) if fence is None else (fence, self._node_id, ms(TOMBSTONE_S))
        claims = await asyncio.gather(*(call("EVAL", CLAIM, 1, keys.record(i), node_id, *claim_args) for i in ids))
        cleanup = [call("SREM", keys.node_conns(node_id), *ids)] if ids else []
        for cid, flat in zip(ids, claims, strict=True):
            if not flat:
                continue  # someone else claimed it, its node holds it, or it was lost
            info = record_from_hash(cid, dict(zip(flat[::2], flat[1::2], strict=True)))
            cleanup.append(call("ZREM", keys.tenant_conns(info.record.tenant), cid))
            if info.record.connected_at < orphans_before:
                self._spawn_orphan(info.record)
        await asyncio.gather(*cleanup)

    async def forget_node(self, node_id: str) -> None:
        """Remove a node from its tenants' node sets, give back its connection places (usage
        plans' caps) and drop its own sets."""
        keys, call = self._keys, self._batcher.call
        tenants = await call("SMEMBERS", keys.node_tenants(node_id))
        await asyncio.gather(
            *(call("SREM", keys.tenant_nodes(t.decode()), node_id) for t in tenants),
            call("DEL", keys.node_tenants(node_id), keys.node_conns(node_id)),
        )
        if self._allowance is not None:
            freed = await self._allowance.free_node(node_id)
            if freed and node_id != self._node_id:
                log.warning("registry: gave back %d connection places of dead node %s", freed, node_id)

    def _spawn_orphan(self, record: ConnectionRecord) -> None:
        task = asyncio.get_running_loop().create_task(self._orphan(record))
        self._orphans.add(task)
        task.add_done_callback(self._orphans.discard)

    async def _orphan(self, record: ConnectionRecord) -> None:
        assert self._node is not None
        async with self._orphan_slots:
            try:
                await self._node.run_orphan_disconnect(record, CLOSE_ABNORMAL, f"node {record.node_id} died")
            except Exception:
                log.exception("orphan $disconnect failed: connectionId=%s", record.connection_id)

