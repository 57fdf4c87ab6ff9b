"""A node's life in the cluster: heartbeat, re-registration, activity flush, noticing dead
nodes (``sweep`` sweeps them), and coming back after being declared dead.

Every ``heartbeat_s`` one script (``HEARTBEAT``) pushes this node's death line ``node_ttl_s``
ahead on Redis's clock, reads the registry epoch and lists the live and the dead nodes. The
epoch tells a data loss from a settled cluster: a node that finds it changed (or the first
that finds none) opens a return window of two heartbeats, in which every live node beats
once Redis answers, and a node that knew the old epoch lists the peers it saw alive as
expected to re-register; the cluster is settling (a missing record proves nothing, listings
wait) while the window is open, a peer is expected, or a live node has not finished writing
its connections in the epoch. A node that holds nothing (one that starts) is registered in
the epoch at its first beat, so nobody waits for it. Then:

- if the epoch changed (Redis lost its data), a shard of a Redis Cluster lost its data (this
  node's mark there is gone, see ``shard_marks``: it then drops the epoch too, so that the
  cluster settles), this node was unlisted (swept, or Redis emptied) or a write failed since
  the last beat, the node re-registers every connection its hub holds
  (``LocalNode.local_connections()``), in pipelined batches, and drops its stale records;
- it flushes ``lastActiveAt`` of the connections that carried data since the last flush, at
  most once per connection per ``activity_flush_s`` (never once per message; GetConnection
  asks the owning node and is exact, only listings may lag by that much);
- once it has been connected for ``node_ttl_s`` (so that, after an outage, every live node had
  time to beat again), it hands the dead nodes to the ``Sweeper``: a lease per dead node
  (which also unlists it), then an atomic claim per record; whoever claims a record runs its
  ``$disconnect`` with 1006, so it runs exactly once.

A node can be declared dead while it is alive: cut off from Redis, or paused (GC, SIGSTOP,
CPU starvation) for longer than ``node_ttl_s``. It finds out at its first beat back: it is
unlisted while the epoch is unchanged (not a data loss) and it had beaten before (not its
first beat). Before re-registering anything it then reconciles, one atomic script (``HOLD``)
per local connection, which may run while the sweep is still claiming:

- the record is there and names this node: it is stamped ``ownedAt`` = now on Redis's clock,
  and the sweep, which claims only records stamped before its lease, can no longer take it.
  The connection stays, and is re-registered;
- a tombstone is there: the sweep claimed it and runs its ``$disconnect`` elsewhere, so the
  node closes it with 1012 through ``LocalNode.abandon`` (no second ``$disconnect``);
- nothing is there: the record was never written (accepted during the outage) or was lost
  with data; nobody ran its ``$disconnect``, so the connection stays and is re-registered.

Connections accepted after the node came back are written (``WRITE``) stamped after the
lease, so a sweep still running never claims them either. While a sweep of this node holds
its lease the node does not re-register its sets (the sweep is removing them); it does at the
first beat after the sweep ends. A normal beat costs what it did: the lease is looked at only
by a beat that finds the node unlisted, and while a sweep of it runs.

A connection that closes releases its record with one atomic script (``RELEASE``): the node
runs its ``$disconnect`` unless a sweep claimed the record (a tombstone is there). When Redis
cannot answer (the node is cut off, or was paused), the decision waits for the first beat
that reaches Redis, which settles every pending release before anything else.

Limits: a tombstone lasts ``sweep.TOMBSTONE_S``; a node back after longer re-registers such a
connection (its ``$disconnect`` then runs a second time when it closes). A node stopped while
Redis is still out runs its pending ``$disconnect`` calls itself; a sweep that later claims
those records runs them again. Fencing relies on Redis's clock not stepping back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Iterable
from typing import Any

from redis.backoff import ExponentialWithJitterBackoff

from ...errors import CLOSE_SERVICE_RESTART
from ...records import ConnectionInfo, ConnectionRecord
from .. import LocalNode
from .batch import REDIS_FAILURES, CommandBatcher
from .keys import KeySpace
from .scripts import (
    FORGET_EPOCH,
    HEARTBEAT,
    HELD_CLAIMED,
    HOLD,
    REGISTERED,
    RELEASE,
    RELEASED_CLAIMED,
    TOUCH,
    WRITE,
    ms,
)
from .shard_marks import ShardMarks
from .sweep import Sweeper
from .wire import record_to_hash

__all__ = ["DECLARED_DEAD_REASON", "LocalIndex", "Membership", "record_commands"]

log = logging.getLogger("wsgateway.registry")

DECLARED_DEAD_REASON = "node was declared dead"


def record_commands(keys: KeySpace, info: ConnectionInfo) -> list[tuple[Any, ...]]:
    """The writes that make one connection known: its record (stamped with Redis's clock,
    see ``WRITE``), tenant and node entries."""
    rec = info.record
    fields = record_to_hash(rec, info.last_active_at)
    flat = [item for pair in fields.items() for item in pair]
    cid = rec.connection_id
    return [
        ("EVAL", WRITE, 1, keys.record(cid), *flat),
        ("ZADD", keys.tenant_conns(rec.tenant), 0, cid),
        ("SADD", keys.node_conns(rec.node_id), cid),
    ]


class LocalIndex:
    """What this node has registered: connection ids by tenant (to know when the node starts
    or stops holding a tenant) and the lastActiveAt last flushed for each connection."""

    def __init__(self) -> None:
        self.tenants: dict[str, set[str]] = {}
        self.flushed: dict[str, float] = {}
        # Sessions handed over to another node and not settled yet, by id: their tenant, the
        # move's name and the node they went to. The hub no longer holds them; their records
        # and sets are the move's to settle.
        self.leaving: dict[str, tuple[str, str, str]] = {}

    def add(self, record: ConnectionRecord) -> bool:
        """Index a connection; True if it is the node's first of its tenant."""
        ids = self.tenants.setdefault(record.tenant, set())
        first = not ids
        ids.add(record.connection_id)
        self.flushed[record.connection_id] = record.connected_at
        return first

    def remove(self, record: ConnectionRecord) -> bool:
        """Forget a connection; True if it was the node's last of its tenant."""
        self.flushed.pop(record.connection_id, None)
        ids = self.tenants.get(record.tenant)
        if ids is None or record.connection_id not in ids:
            return False
        ids.discard(record.connection_id)
        if not ids:
            del self.tenants[record.tenant]
            return True
        return False

    def rebuild(self, infos: Iterable[ConnectionInfo]) -> None:
        """Start over from the hub's truth (re-registration), and the sessions leaving."""
        self.tenants = {}
        self.flushed = {}
        for info in infos:
            self.tenants.setdefault(info.record.tenant, set()).add(info.record.connection_id)
            self.flushed[info.record.connection_id] = info.last_active_at
        for connection_id, (tenant, _, _) in self.leaving.items():
            self.tenants.setdefault(tenant, set()).add(connection_id)


class Membership:
    """The heartbeat loop of one node and what it learns: epoch, live peers, reachability.
    It hands the dead nodes it finds to ``sweeper``, and this node's stale records too."""

    def __init__(
        self, keys: KeySpace, node_id: str, batcher: CommandBatcher, index: LocalIndex, sweeper: Sweeper,
        *, heartbeat_s: float, node_ttl_s: float, activity_flush_s: float = 30.0, marks: ShardMarks | None = None,
    ) -> None:
        self._keys = keys
        self._marks = marks  # Redis Cluster: notices a shard that lost its data
        self._sweeper = sweeper
        self._activity_s = activity_flush_s
        self._node_id = node_id
        self._batcher = batcher
        self._index = index
        self._heartbeat_s = heartbeat_s
        self._node_ttl_s = node_ttl_s
        self._backoff = ExponentialWithJitterBackoff(cap=heartbeat_s, base=min(0.05, heartbeat_s))
        self._node: LocalNode | None = None
        self._task: asyncio.Task[None] | None = None
        self._born = time.time()  # records of this node id connected earlier are a past life's
        self.epoch = ""  # the registry epoch this node registered in ("" before its first beat)
        self.settling = True  # Redis lost its data lately: nodes may still be refilling it
        self.peers: frozenset[str] = frozenset()  # live nodes at the last beat, not this one
        self.up_since: float | None = None  # monotonic time of the first beat after a failure
        self._trusted_from = 0.0  # monotonic time from which misses are trusted (unless settling)
        self.dirty = True  # some of this node's records may be missing: re-register
        self.declared_dead = False  # found out it was swept: reconcile before re-registering
        self.being_swept = False  # a sweep of this node holds its lease: re-register after it
        # Closed connections whose record Redis could not release yet: who runs $disconnect
        # is decided when it answers (a sweep may have claimed the record meanwhile).
        self._releases: dict[str, asyncio.Future[bool]] = {}
        self._draining = False

    # ------------------------------------------------------------ lifecycle

    async def join(self, node: LocalNode) -> None:
        """Beat once now (registering ``node``'s connections), then every heartbeat_s.
        A first beat that fails is logged; the loop keeps trying."""
        self._node = node
        if self._task is not None:
            return
        try:
            await self.beat()
        except REDIS_FAILURES as exc:
            log.error("registry: Redis unreachable at start (%r); retrying in the background", exc)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-heartbeat")

    async def close(self) -> None:
        """Stop beating and settle the pending releases (see :meth:`stop_waiting`). The
        sweeps it started stop when the sweeper closes."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.stop_waiting()

    def master_changed(self) -> None:
        """The master changed (Sentinel promoted a replica): it may lack this node's last
        writes, and the beats every node sent in the last moments (nodes write to a demoted
        master until their next look at the Sentinels). Re-register at the next beat, and
        take that beat as a reconnection: no sweep for ``node_ttl_s``, so that every live
        node has beaten on the new master before any is taken for dead there."""
        self.dirty = True
        self.up_since = None

    def trusts_misses(self) -> bool:
        """Whether a record missing now means the connection is gone, as far as this node
        can tell: the cluster is not settling (see ``scripts.HEARTBEAT``) and, if this node
        found a node past its death line when it (re)connected, two beats have passed (that
        node may be one cut off with Redis, back within a beat with connections it accepted
        meanwhile and could not record)."""
        if self.up_since is None or self.settling or not self.epoch:
            return False
        return time.monotonic() >= self._trusted_from

    async def _run(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(self._heartbeat_s if failures == 0 else self._backoff.compute(failures))
            try:
                await self.beat()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the heartbeat must outlive any failure
                failures += 1
                if self.up_since is not None:
                    log.warning("registry heartbeat failed (%r); retrying", exc)
                self.up_since = None

    # ------------------------------------------------------------ one beat

    async def beat(self) -> None:
        """Refresh this node, notice data loss and dead nodes (this one included), reconcile
        and re-register, flush activity, sweep. Raises RegistryUnavailableError (or a Redis
        error) when Redis cannot be used; what was not done is retried at the next beat."""
        keys = self._keys
        assert self._node is not None
        holds_nothing = next(iter(self._node.local_connections()), None) is None
        reply = await self._batcher.call(
            "EVAL", HEARTBEAT, 6, *keys.meta, keys.sweep_lease(self._node_id), keys.expect, self._node_id,
            ms(self._node_ttl_s), self.epoch, secrets.token_hex(8), ms(2 * self._heartbeat_s),
            "1" if self.being_swept else "0", "1" if holds_nothing else "0", *sorted(self.peers),
        )
        epoch, unlisted, settling, alive, dead, swept = reply
        known = self.epoch
        self._learn(epoch.decode(), bool(unlisted), bool(swept), bool(dead))
        self.settling = bool(settling)
        self.peers = frozenset(n.decode() for n in alive) - {self._node_id}
        await self._release_pending()
        if self._marks is not None and await self._marks.check():
            await self._shard_lost(epoch_changed=self.epoch != known)
        if self.declared_dead:
            await self._reconcile()
        if self.dirty and not self.being_swept:
            self.dirty = False  # a write failing from now on sets it again
            try:
                await self._resync()
            except BaseException:
                self.dirty = True
                raise
        await self._flush_activity()
        assert self.up_since is not None  # set by _learn
        if time.monotonic() - self.up_since >= self._node_ttl_s:
            self._sweeper.sweep(n.decode() for n in dead)

    async def _shard_lost(self, *, epoch_changed: bool) -> None:
        """A shard of a Redis Cluster lost this node's records, and the other nodes' too:
        re-register, and unless this beat found a new epoch already (the epoch's shard was
        the one), drop the epoch, so that the cluster settles as after any data loss."""
        self.dirty = True
        if not epoch_changed:
            try:
                await self._batcher.call("EVAL", FORGET_EPOCH, 1, self._keys.epoch, self.epoch)
            except REDIS_FAILURES as exc:  # this node re-registers all the same
                log.warning("registry: could not drop the epoch after a shard lost its data (%r)", exc)

    def _learn(self, epoch: str, unlisted: bool, swept: bool, dead_seen: bool) -> None:
        """Take in what a heartbeat found about this node: the epoch (changed: data loss),
        whether it was unlisted (re-register; declared dead too if the epoch is the one it
        beat in before), whether a sweep of it still holds its lease, and (at a first beat
        after a failure or at start) whether a node is past its death line."""
        if self.up_since is None:
            self.up_since = time.monotonic()
            self._trusted_from = self.up_since + (2 * self._heartbeat_s if dead_seen else 0.0)
            log.info("registry reachable: node %s in epoch %s", self._node_id, epoch)
        if epoch != self.epoch:
            if self.epoch:
                log.warning("registry epoch changed (Redis lost its data): re-registering")
            self.epoch = epoch
            self.dirty = True
            self.declared_dead = False  # the claims, if any, were lost with the data
        elif unlisted:
            if not self.declared_dead:
                log.warning("registry: node %s was declared dead; reconciling", self._node_id)
            self.declared_dead = True
        if unlisted:
            self.dirty = True
        self.being_swept = swept

    async def release(self, connection_id: str) -> bool:
        """Delete a closed connection's record; tell whether this node runs its ``$disconnect``
        (False: a sweep claimed the record, so its ``$disconnect`` ran on the sweeper).

        When Redis cannot answer, waits for the first beat that reaches it (or for
        :meth:`close`): a node cut off for longer than ``node_ttl_s`` may have been swept.
        """
        future = self._releases.get(connection_id)
        if future is None:
            try:
                return self._released(connection_id, await self._release_call(connection_id))
            except REDIS_FAILURES:
                if self._draining:
                    return True  # do not hold up the shutdown: see stop_waiting
                future = self._releases[connection_id] = asyncio.get_running_loop().create_future()
        return await asyncio.shield(future)

    def stop_waiting(self) -> None:
        """The node is stopping: settle the pending releases, and answer later ones at once,
        in favour of running their ``$disconnect`` here. A sweep that later claims such a
        record runs it a second time (see the module doc)."""
        self._draining = True
        for future in self._releases.values():
            if not future.done():
                future.set_result(True)
        self._releases.clear()

    def _release_call(self, connection_id: str) -> asyncio.Future[Any]:
        return self._batcher.call("EVAL", RELEASE, 1, self._keys.record(connection_id), self._node_id)

    def _released(self, connection_id: str, reply: int) -> bool:
        if reply == RELEASED_CLAIMED:
            self._batcher.send("DEL", self._keys.record(connection_id))  # the tombstone has told us
            return False
        return True

    async def _release_pending(self) -> None:
        """Settle the releases Redis could not answer before; raises if it fails again (the
        unanswered ones are asked at the next beat)."""
        if not self._releases:
            return
        ids = list(self._releases)
        replies = await asyncio.gather(*map(self._release_call, ids), return_exceptions=True)
        failed: BaseException | None = None
        for cid, reply in zip(ids, replies, strict=True):
            if isinstance(reply, BaseException):
                failed = reply
                continue
            future = self._releases.pop(cid, None)  # None: stop_waiting settled it meanwhile
            if future is not None and not future.done():
                future.set_result(self._released(cid, reply))
        if failed is not None:
            raise failed

    async def _reconcile(self) -> None:
        """Take back each local connection's record that no sweep claimed; abandon (1012, no
        second ``$disconnect``) those it claimed. Raises if Redis failed for some: those are
        asked again at the next beat, the answered ones are settled."""
        assert self._node is not None
        keys, call, me = self._keys, self._batcher.call, self._node_id
        ids = [info.record.connection_id for info in self._node.local_connections()]
        replies = await asyncio.gather(*(call("EVAL", HOLD, 1, keys.record(i), me) for i in ids), return_exceptions=True)
        claimed = [cid for cid, reply in zip(ids, replies, strict=True) if reply == HELD_CLAIMED]
        # A claimed connection that was closing already is not abandoned: its release reads
        # the tombstone (and runs no $disconnect), so the tombstones stay unless every claimed
        # connection was abandoned (then nobody else reads them).
        if claimed and self._node.abandon(claimed, CLOSE_SERVICE_RESTART, DECLARED_DEAD_REASON) == len(claimed):
            for cid in claimed:
                self._batcher.send("DEL", keys.record(cid))  # the tombstone has told us
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        self.declared_dead = False
        log.warning(
            "registry: node %s reconciled after being declared dead: %d kept, %d abandoned",
            me, len(ids) - len(claimed), len(claimed),
        )

    async def _resync(self) -> None:
        """Write every live local connection again and drop this node's stale records."""
        assert self._node is not None
        keys, call, me = self._keys, self._batcher.call, self._node_id
        # Listings wait for a node that has something to register ("" until done); a node
        # that holds nothing (one that just started) holds up nobody.
        refilling = [call("HSET", keys.nodes, me, "")] if next(iter(self._node.local_connections()), None) else []
        known_ids, known_tenants, *_ = await asyncio.gather(
            call("SMEMBERS", keys.node_conns(me)), call("SMEMBERS", keys.node_tenants(me)), *refilling,
        )
        # From the snapshot on, everything is queued without awaiting: a remove() made after
        # it is queued after these writes, so it cannot be undone by them.
        infos = list(self._node.local_connections())
        self._index.rebuild(infos)
        futures = [call(*cmd) for info in infos for cmd in record_commands(keys, info)]
        for tenant in self._index.tenants:
            futures += [call("SADD", keys.tenant_nodes(tenant), me), call("SADD", keys.node_tenants(me), tenant)]
        for tenant in {t.decode() for t in known_tenants} - self._index.tenants.keys():
            futures += [call("SREM", keys.tenant_nodes(tenant), me), call("SREM", keys.node_tenants(me), tenant)]
        futures.append(call("EVAL", REGISTERED, 2, keys.nodes, keys.expect, me, self.epoch))
        results = await asyncio.gather(*futures, return_exceptions=True)
        if any(isinstance(r, BaseException) for r in results):
            self.dirty = True
            return
        held = {info.record.connection_id for info in infos} | self._index.leaving.keys()
        stale = {i.decode() for i in known_ids} - held
        if stale:
            # Records of this node id that its hub does not hold: a previous process with this
            # node id died (its connections are orphans), or a remove failed (closed already).
            # A session on its way to another node is not one: its move settles its record.
            await self._sweeper.drop(me, stale, orphans_before=self._born)
        log.info("registry: node %s registered %d connections", me, len(infos))

    async def _flush_activity(self) -> None:
        assert self._node is not None
        flushed, call, keys = self._index.flushed, self._batcher.call, self._keys
        futures = []
        for info in self._node.local_connections():
            cid = info.record.connection_id
            # At most one write per connection per activity_flush_s: with 10k busy
            # connections a write per beat was 5,000 Redis calls a second.
            gap = info.last_active_at - flushed.get(cid, 0.0)
            if gap > 0 and gap >= self._activity_s:
                flushed[cid] = info.last_active_at
                futures.append(call("EVAL", TOUCH, 1, keys.record(cid), repr(info.last_active_at)))
        if futures:
            await asyncio.gather(*futures)
