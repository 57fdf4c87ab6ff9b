"""The Redis registry: many gateway nodes behave as one through a shared Redis.

How it holds together (key layout in ``keys``, messages in ``wire``):

- Every accepted connection is a record in Redis, listed under its tenant and its node.
  Records are written through one pipelined writer (``batch``); ``add``/``remove``
  never raise for an outage, they mark the node for re-registration instead.
- A call about a connection on another node finds the owner (named in the connection id, or
  a cached HGET for ids that name none) and publishes a request on the owner's channel; the
  owner answers on ours (``rpc``). The owner is the truth: its ``gone`` is a 410 (unless the
  record says a reliable session moved on). The channels have lean connections of their own
  (``link``, hiredis over an asyncio Protocol); redis-py carries everything else.
- A missing record is a 410 only when the registry can vouch for it: the cluster is
  settled (no data loss being refilled: ``membership`` and ``scripts.HEARTBEAT`` say how that
  is told) and every live node, asked directly, says it does not hold the connection (a node
  that left the live set meanwhile counts as not holding it). Otherwise the live nodes are
  asked anyway (a holder answers) and the call fails with 503, never a false 410.
- A call whose reply is lost (Redis restarting, links reconnecting) is asked about again
  once the links are back; the owner remembers its outcomes (``rpc``), so that an error
  answer means not delivered.
- Heartbeats, re-registration after data loss, lastActiveAt flushes and the reconciliation
  of a node that comes back after being declared dead live in ``membership``; the dead-node
  sweep and the orphan ``$disconnect`` calls in ``sweep``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from redis.asyncio.cluster import RedisCluster

from ...errors import GoneError, RegistryUnavailableError
from ...ids import node_of
from ...records import ConnectionInfo, ConnectionRecord
from .. import FanoutResult, LocalNode, Page, PostWaiter, Registry
from .._page_token import check_limit, decode_token, encode_token
from ..posted import Awaited
from .allowance import Allowance
from .batch import REDIS_FAILURES, CommandBatcher
from .connect import connect
from .keys import KeySpace
from .membership import LocalIndex, Membership, record_commands
from .rpc import (
    STATUS_GONE,
    STATUS_MOVED,
    STATUS_OK,
    STATUS_TIMEOUT,
    STATUS_UNREACHABLE,
    Call,
    CallDone,
    NodeChannel,
    PendingCalls,
    raise_for_status,
)
from .scripts import KEEP_SESSION, MOVE_SESSION, RESTORE_SESSION, SESSION_LOST, STATE
from .shard_marks import ShardMarks
from .sweep import Sweeper
from .wire import (
    KIND_DELETE,
    KIND_FANOUT,
    KIND_GET,
    KIND_GROUP,
    KIND_LANDED,
    KIND_POST,
    KIND_SURVEY,
    KIND_TAKE,
    info_from_json,
    record_from_hash,
    record_to_hash,
)

if TYPE_CHECKING:
    from ...config import RegistryConfig
    from ...usage import UsageReport, UsageTotals

__all__ = ["RedisRegistry"]

log = logging.getLogger("wsgateway.registry")

_T = TypeVar("_T")
_GONE: dict[str, Any] = {"s": STATUS_GONE}
_OWNER_CACHE_SIZE = 65_536
_MAX_MOVES = 3  # a reliable session that moved more often within one call: 503, retry
_MOVE_UNKNOWN = "registry unreachable: a session moves"  # whether a move landed cannot be told now
# The channel links retry at least this often while Redis is away, so that once it is back a
# call whose reply was lost can ask again well within its timeout (see ``rpc``).
_LINK_BACKOFF_S = 0.25


class RedisRegistry:
    """The cluster directory on Redis. See :class:`wsgateway.registry.Registry` for the
    contract; ``request_timeout_s`` bounds a call to another node (the owner acts only in the
    first half of it, so that a 503 is never followed by a late delivery)."""

    kind = "redis"

    def __init__(self, config: RegistryConfig, node_id: str, *, request_timeout_s: float = 2.0) -> None:
        self.node_id = node_id
        self._keys = KeySpace(config.key_prefix)
        self._timeout_s = request_timeout_s
        self._budget_s = request_timeout_s / 2
        self._heartbeat_s = config.heartbeat_s
        self._redis = connect(config, request_timeout_s)
        self._redis.on_failover = self._failed_over
        self._batcher = CommandBatcher(self._redis.client)
        self._pending = PendingCalls(timeout_s=request_timeout_s, budget_s=self._budget_s, wait_s=config.outcome_wait_s)
        # A link whose PING waits longer than redis-py's socket timeout (the request timeout)
        # is taken for dead, as redis-py takes such a connection.
        self._channel = NodeChannel(
            self._redis.locator, self._keys, node_id, self._pending,
            max_backoff_s=min(config.heartbeat_s, _LINK_BACKOFF_S), check_s=max(request_timeout_s, 1.0),
            shards=self._redis.shards,
        )
        self._index = LocalIndex()
        self._allowance = Allowance(self._keys, node_id, self._batcher, timeout_s=request_timeout_s)
        self._sweeper = Sweeper(self._keys, node_id, self._batcher, node_ttl_s=config.node_ttl_s,
                                allowance=self._allowance)
        client = self._redis.client
        marks = None if not isinstance(client, RedisCluster) else ShardMarks(client, self._keys, node_id, self._batcher)
        self._membership = Membership(
            self._keys, node_id, self._batcher, self._index, self._sweeper,
            heartbeat_s=config.heartbeat_s, node_ttl_s=config.node_ttl_s, activity_flush_s=config.activity_flush_s,
            marks=marks,
        )
        self._owners: dict[str, str] = {}  # connection id -> owning node
        self._tasks: set[asyncio.Task[None]] = set()  # posts being asked about (see _spawn_post)
        self._node: LocalNode | None = None
        self._started = False
        self._closed = False

    # ------------------------------------------------------------ lifecycle

    async def start(self, node: LocalNode) -> None:
        """Subscribe, register this node and start its heartbeat. An unreachable Redis does
        not fail the start: the node serves locally and registers when Redis answers."""
        if self._started:
            return
        self._started = True
        self._node = node
        self._batcher.start()
        self._channel.start(node)
        # Listen before announcing this node: other nodes may ask it as soon as it beats.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout_s):
                await self._channel.ready()
        self._sweeper.start(node)
        await self._membership.join(node)

    async def close(self) -> None:
        """Stop beating, remove this node's records (other nodes answer 410 at once), then
        unsubscribe and disconnect. Idempotent; an outage makes it skip the removal."""
        if self._closed or not self._started:
            self._closed = True
            return
        self._closed = True
        await self._membership.close()
        await self._sweeper.close(grace_s=self._timeout_s)
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._unregister()
        except REDIS_FAILURES as exc:
            log.warning("registry: could not remove this node's records (%r)", exc)
        await self._channel.close()
        await self._batcher.close()
        await self._redis.aclose()

    async def _unregister(self) -> None:
        keys, me = self._keys, self.node_id
        known = await self._batcher.call("SMEMBERS", keys.node_conns(me))
        ids = {i.decode() for i in known}
        for tenant_ids in self._index.tenants.values():
            ids.update(tenant_ids)
        await self._sweeper.drop(me, ids, orphans_before=0.0)  # closed by this node
        await self._sweeper.forget_node(me)
        await asyncio.gather(self._batcher.call("HDEL", keys.nodes, me), self._batcher.call("ZREM", keys.alive, me))

    def _failed_over(self) -> None:
        """The master changed (Sentinel promoted a replica): it may have missed the last
        writes, and its epoch marker, replicated long before, does not tell. Re-register
        every connection at the next beat (which reaches the new master), and sweep only
        once every node had time to beat there (see ``Membership.master_changed``)."""
        log.warning("registry: node %s writes to a new master; re-registering its connections", self.node_id)
        self._membership.master_changed()

    # ------------------------------------------------------------ records

    async def add(self, record: ConnectionRecord) -> None:
        """Record an accepted connection; never raises for an outage (see the module doc)."""
        commands = record_commands(self._keys, ConnectionInfo(record, record.connected_at))
        if self._index.add(record):
            commands += self._tenant_commands("SADD", record.tenant)
        await self._write(commands)

    def drain(self) -> None:
        self._membership.stop_waiting()

    async def remove(self, record: ConnectionRecord) -> bool:
        """Forget a closed connection; True if this node runs its ``$disconnect``, False if
        a sweep claimed it (this node was declared dead). Never raises for an outage: the
        answer then waits until Redis answers (see ``Membership.release``)."""
        keys, cid = self._keys, record.connection_id
        release = asyncio.ensure_future(self._membership.release(cid))
        commands: list[tuple[Any, ...]] = [
            ("ZREM", keys.tenant_conns(record.tenant), cid),
            ("SREM", keys.node_conns(self.node_id), cid),
        ]
        if self._index.remove(record):
            commands += self._tenant_commands("SREM", record.tenant)
        await self._write(commands)
        return await release

    def _tenant_commands(self, op: str, tenant: str) -> list[tuple[Any, ...]]:
        return [(op, self._keys.tenant_nodes(tenant), self.node_id), (op, self._keys.node_tenants(self.node_id), tenant)]

    async def _write(self, commands: list[tuple[Any, ...]]) -> None:
        futures = [self._batcher.call(*cmd) for cmd in commands]
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            results = [RegistryUnavailableError("registry write timed out")]
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            if not self._membership.dirty:
                log.warning("registry write failed (%r); re-registering when Redis answers", failed[0])
            self._membership.dirty = True

    # ------------------------------------------------------------ calls about one connection

    async def post(self, connection_id: str, data: bytes, binary: bool) -> None:
        waiter = Awaited()
        self.send_post(connection_id, data, binary, waiter)
        await waiter.future

    def send_post(self, connection_id: str, data: bytes, binary: bool, waiter: PostWaiter) -> None:
        owner = self._owners.get(connection_id)
        by_name = owner is None
        if by_name:
            owner = node_of(connection_id)
        if owner is None or owner == self.node_id:
            header = {"k": KIND_POST, "c": connection_id, "b": int(binary)}
            self._spawn_post(self._ask_owner(connection_id, header, data), waiter)
            return
        # The common case, asked here without the general path's chain of coroutines (a
        # frame each, resumed at every reply), nor a task, nor a header (NodeChannel.post):
        # what _ask_holder does, up to the owner's ok, told to ``waiter`` from the reply's
        # callback (call_done); any other answer goes on where _ask_holder would.
        call = self._open((owner,), self, (waiter, connection_id, data, binary, by_name))
        self._channel.post(call, connection_id, int(binary), data)

    def call_done(self, call: Call) -> None:
        """The call of :meth:`send_post`'s common case is done: an ok is told at once, any
        other answer judged (in a task) as :meth:`_ask_holder` judges it."""
        self._pending.close(call)
        waiter, connection_id, data, binary, by_name = call.context
        owner = call.targets[0]
        if call.replies[owner]["s"] == STATUS_OK:  # an ok is an answer: _replies would not raise
            waiter.posted(None)
            return
        try:
            reply = self._replies(call)[owner]
        except RegistryUnavailableError as exc:
            waiter.posted(exc)
            return
        header = {"k": KIND_POST, "c": connection_id, "b": int(binary)}
        self._spawn_post(self._post_judged(connection_id, header, data, owner, reply, by_name), waiter)

    async def _post_judged(
        self, connection_id: str, header: dict[str, Any], data: bytes, owner: str, reply: dict[str, Any], by_name: bool
    ) -> dict[str, Any]:
        reply = await self._judge(connection_id, header, data, owner, reply, by_name=by_name, looked_up=False)
        return await self._ask_owner(connection_id, header, data, first=reply)

    def _spawn_post(self, asking: Coroutine[Any, Any, dict[str, Any]], waiter: PostWaiter) -> None:
        """Tell ``waiter`` the outcome of a post the coroutine ``asking`` asks about (it
        returns the deciding reply), run as a task held until done."""
        task = asyncio.ensure_future(self._tell(asking, waiter))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _tell(asking: Coroutine[Any, Any, dict[str, Any]], waiter: PostWaiter) -> None:
        try:
            reply = await asking
            raise_for_status(reply["s"], reply.get("m", ""))
        except asyncio.CancelledError as exc:
            waiter.posted(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - the waiter answers every failure
            waiter.posted(exc)
        else:
            waiter.posted(None)

    async def get(self, connection_id: str) -> ConnectionInfo:
        reply = await self._ask_owner(connection_id, {"k": KIND_GET, "c": connection_id})
        raise_for_status(reply["s"])
        return info_from_json(reply["i"])

    async def delete(self, connection_id: str) -> None:
        reply = await self._ask_owner(connection_id, {"k": KIND_DELETE, "c": connection_id})
        raise_for_status(reply["s"], reply.get("m", ""))

    async def group(self, connection_id: str, group: str, *, join: bool) -> None:
        reply = await self._ask_owner(connection_id, {"k": KIND_GROUP, "c": connection_id, "g": group, "j": int(join)})
        raise_for_status(reply["s"])

    async def take_session(self, connection_id: str, claim: Mapping[str, Any]) -> Mapping[str, Any]:
        reply = await self._ask_owner(connection_id, {"k": KIND_TAKE, "c": connection_id, "a": dict(claim)})
        raise_for_status(reply["s"])
        state: Mapping[str, Any] = reply["i"]
        return state

    def handing_over(self, record: ConnectionRecord, to_node: str, handover: str) -> None:
        """Calls about the session go to ``to_node`` at once (see :meth:`settle_handover`).
        Until it is settled the move owns its record: a re-registration neither rewrites nor
        drops it, and keeps this node listed for its tenant (it may stay)."""
        self._remember(record.connection_id, to_node)
        self._index.leaving[record.connection_id] = (record.tenant, handover, to_node)

    async def move_in(self, record: ConnectionRecord, from_node: str, handover: str) -> bool:
        """The record becomes this node's, and the node's sets list it, unless its holder
        kept the session meanwhile (or it is gone); one script decides, atomically."""
        # A session this node handed over and has not settled yet, coming back: that move
        # landed (it comes from where it went). Forgotten before the record moves here, so
        # that the settling of it, asked later, cannot take this node's record for its own.
        cid = record.connection_id
        self._index.leaving.pop(cid, None)
        # Listed in this node's set first: if this node dies once the record is its, its sweep
        # finds it (a sweep takes only records that name the dead node: a listing the move
        # then did not need is harmless, and taken back below).
        node_conns = self._keys.node_conns(self.node_id)
        await self._unavailable_on_failure(self._batcher.call("SADD", node_conns, cid), _MOVE_UNKNOWN)
        fields = record_to_hash(record, record.connected_at)
        script = ("EVAL", MOVE_SESSION, 1, self._keys.record(cid), from_node, self.node_id, handover,
                  *[item for pair in fields.items() for item in pair])
        moved = await self._unavailable_on_failure(self._batcher.call(*script), _MOVE_UNKNOWN)
        if moved != 1:
            await self._write([("SREM", node_conns, cid)])
            return False
        await self.add(record)  # its fields once more, with the sets
        return True

    async def settle_handover(self, record: ConnectionRecord, handover: str) -> bool:
        """True if the session stays here (its move never landed, and now never will); else
        this node's sets forget it (it moved on, or a sweep claimed it), unless it came back
        here meanwhile (:meth:`move_in`: the record is that move's).

        No record at all (no tombstone either) is either a move that landed and a session
        that ended since, or a record Redis lost (a restart without persistence, a failover
        that lost writes). The node the session went to tells which: if the move landed
        there, it moved on (that node holds it, or ran its ``$disconnect``); if not, that
        node's own move found no record either and gave up, so this node writes the record
        back and keeps the session (``RESTORE_SESSION``): either way one node ends it."""
        cid = record.connection_id
        leaving = self._index.leaving.get(cid)
        if leaving is None or leaving[1] != handover:
            return False  # came back since (and may have left again, as another move)
        script = ("EVAL", KEEP_SESSION, 1, self._keys.record(cid), self.node_id, handover)
        kept = await self._unavailable_on_failure(self._batcher.call(*script), _MOVE_UNKNOWN)
        if kept == SESSION_LOST and self._index.leaving.get(cid) is leaving:
            kept = await self._restore_unless_landed(record, handover, leaving[2])
        # Asked before any move back here (one queue of commands): a record naming this node
        # was not moved here again. One that came back meanwhile found it elsewhere (0).
        if self._index.leaving.get(cid) is not leaving:
            return False
        del self._index.leaving[cid]
        if kept == 1:
            self._owners.pop(cid, None)
            return True
        commands: list[tuple[Any, ...]] = [("SREM", self._keys.node_conns(self.node_id), cid)]
        if self._index.remove(record):
            commands += self._tenant_commands("SREM", record.tenant)
        for command in commands:
            self._batcher.send(*command)
        return False

    async def _restore_unless_landed(self, record: ConnectionRecord, handover: str, to_node: str) -> int:
        """The record of a session this node handed over to ``to_node`` is gone: 0 if the
        move landed there, else what ``RESTORE_SESSION`` decides. Raises
        RegistryUnavailableError while ``to_node`` cannot tell (it does not answer, but is
        alive): it may have landed the move, and hold the session."""
        cid = record.connection_id
        header = {"k": KIND_LANDED, "c": cid, "h": handover}
        reply = (await self._request((to_node,), header))[to_node]
        if reply["s"] == STATUS_OK:
            if reply.get("v"):
                return 0
        elif reply["s"] != STATUS_UNREACHABLE or not await self._left(to_node):
            raise RegistryUnavailableError(_MOVE_UNKNOWN)
        # Not landed there (or that node is gone: whatever it held of the session ended with
        # it, and a record it wrote was swept: RESTORE_SESSION then finds its tombstone).
        fields = record_to_hash(record, record.connected_at)
        script = ("EVAL", RESTORE_SESSION, 1, self._keys.record(cid), self.node_id, handover,
                  *[item for pair in fields.items() for item in pair])
        restored: int = await self._unavailable_on_failure(self._batcher.call(*script), _MOVE_UNKNOWN)
        if restored == 1:
            log.warning("registry: the record of session %s was lost while it moved; this node keeps it", cid)
            await self.add(record)  # its sets, which Redis may have lost with the record
        return restored

    async def _left(self, node_id: str) -> bool:
        """Whether ``node_id``, which does not listen on its channel, has left the cluster:
        the registry can vouch for it (settled), and it is neither alive, nor past its death
        line unswept, nor a peer at this node's last beat (see :meth:`_all_left`)."""
        epoch, settling, alive, _, unswept = await self._state()
        return self._trusted(epoch, settling) and node_id not in {*alive, *unswept, *self._membership.peers}

    async def _ask_owner(
        self, connection_id: str, header: dict[str, Any], data: bytes = b"", *, first: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Ask the node holding the connection, following a reliable session that moved
        (``first``: the holder's answer, when it was asked already)."""
        reply = await self._ask_holder(connection_id, header, data) if first is None else first
        for _ in range(_MAX_MOVES):
            if reply["s"] != STATUS_MOVED:
                return reply
            to = str(reply["n"])
            if to != self.node_id:
                self._remember(connection_id, to)
                reply = await self._ask_holder(connection_id, header, data)
            else:  # it is moving here: ask this node through its own channel, which answers
                # once the session is installed (its state came in before this answer)
                reply = (await self._request((to,), header, data))[to]
        raise RegistryUnavailableError("the connection's session is moving between nodes; retry")

    async def _ask_holder(
        self, connection_id: str, header: dict[str, Any], data: bytes = b"", *, named: bool = True
    ) -> dict[str, Any]:
        """Ask the connection's owner: the node its id names (no lookup), else the cached or
        recorded one. An owner that no longer listens (dead, or the id's node part is not a
        node) is looked up once more: the record says who holds it now, or that nobody does.
        So does a named owner that no longer holds it: a reliable session may have moved on
        (its record names the node that took it)."""
        cached = self._owners.get(connection_id)
        by_name = False
        if cached is None and named:
            cached = node_of(connection_id)
            by_name = cached is not None
        owner = cached or await self._lookup(connection_id)
        if owner is None:
            return await self._ask_everyone(connection_id, header, data)
        if owner == self.node_id:
            self._owners.pop(connection_id, None)
            if by_name:
                return await self._moved_on(connection_id, header, data)
            return _GONE  # ours, and the gateway did not find it in its hub: closed
        reply = (await self._request((owner,), header, data))[owner]
        return await self._judge(connection_id, header, data, owner, reply, by_name=by_name, looked_up=cached is None)

    async def _judge(
        self, connection_id: str, header: dict[str, Any], data: bytes, owner: str, reply: dict[str, Any],
        *, by_name: bool, looked_up: bool, again: bool = True,
    ) -> dict[str, Any]:
        """What the ``owner``'s ``reply`` means (see :meth:`_ask_holder`). ``by_name``: the id
        named the owner; ``looked_up``: its record did (neither: the cache). ``again``: an
        owner that got the request too late to act, and said so, is asked once more."""
        status = reply["s"]
        if again and reply.get("dropped"):
            # It never acted and never will (a process stalled past the deadline: a node
            # starved while it shuts down, or this one): a new request cannot deliver twice.
            reply = (await self._request((owner,), header, data))[owner]
            return await self._judge(connection_id, header, data, owner, reply, by_name=by_name,
                                     looked_up=looked_up, again=False)
        if status == STATUS_UNREACHABLE and not looked_up:
            # maybe swept since: look it up once more (a concurrent call may have dropped it)
            self._owners.pop(connection_id, None)
            return await self._ask_holder(connection_id, header, data, named=False)
        if status in (STATUS_UNREACHABLE, STATUS_TIMEOUT):
            self._owners.pop(connection_id, None)
            # A timeout that was not a "dropped" may have been acted on: say by whom.
            acted = status == STATUS_TIMEOUT and not reply.get("dropped")
            raise RegistryUnavailableError("the node holding the connection does not answer",
                                           node_id=owner if acted else None)
        if status == STATUS_GONE:
            self._owners.pop(connection_id, None)
            if by_name:
                return await self._moved_on(connection_id, header, data, reply)
        elif looked_up:
            self._remember(connection_id, owner)
        return reply

    async def _moved_on(
        self, connection_id: str, header: dict[str, Any], data: bytes, gone: dict[str, Any] = _GONE
    ) -> dict[str, Any]:
        """The node an id names does not hold it: 410, unless its record names another node
        (a reliable session that moved there), which is then asked. One HGET per such 410."""
        holder = await self._lookup(connection_id)
        if holder is None or holder == node_of(connection_id):
            return gone
        return await self._ask_holder(connection_id, header, data, named=False)

    async def _lookup(self, connection_id: str) -> str | None:
        owner = await self._batcher.call("HGET", self._keys.record(connection_id), "node")
        return None if owner is None else owner.decode()

    def _remember(self, connection_id: str, owner: str) -> None:
        owners = self._owners
        if len(owners) >= _OWNER_CACHE_SIZE:
            del owners[next(iter(owners))]  # oldest first: dicts keep insertion order
        owners[connection_id] = owner

    async def _ask_everyone(self, connection_id: str, header: dict[str, Any], data: bytes) -> dict[str, Any]:
        """No record: ask every node that may hold the connection, the live ones and those
        past their death line that no sweep has taken yet (see :meth:`_state`). 410 only if
        all say gone and misses are trusted. A node that says the session moved to a node
        that has left since (a sweep took it, and ran the session's ``$disconnect`` if it
        held it) says gone: the session is not there, and that node remembers the move for
        a while yet."""
        epoch, settling, alive, _, unswept = await self._state()
        trusted = self._trusted(epoch, settling)
        targets = {*alive, *unswept} - {self.node_id}
        if not trusted:
            targets |= self._membership.peers  # nodes that may not have beaten since a data loss
        replies = await self._request(tuple(targets), header, data) if targets else {}
        staying = {*targets, *self._membership.peers, self.node_id}
        replies = {n: _GONE if r["s"] == STATUS_MOVED and r.get("n") not in staying else r for n, r in replies.items()}
        for node_id, reply in replies.items():
            if reply["s"] not in (STATUS_GONE, STATUS_UNREACHABLE, STATUS_TIMEOUT):
                if reply["s"] == STATUS_OK:
                    self._remember(connection_id, node_id)
                return reply
        if trusted:
            silent = {n for n, r in replies.items() if r["s"] != STATUS_GONE}
            if not silent or await self._all_left(silent):
                return _GONE
        raise RegistryUnavailableError("the registry cannot tell where the connection is now")

    async def _all_left(self, silent: set[str]) -> bool:
        """Whether every node in ``silent`` (no answer, or nobody listening on its channel)
        has left since the state was read: it stopped (a node leaves only once it holds
        nothing, so its answer would have been gone; it may have stopped listening with the
        request unread), or a sweep took it (and claims its records). A node only past its
        death line has not left: it may be alive with its last beats lost (a failover to a
        replica that missed them) and hold connections whose records were lost with them."""
        _, _, alive, _, unswept = await self._state()
        return not silent & {*alive, *unswept}

    def _trusted(self, epoch: str, settling: bool) -> bool:
        """Whether a miss means gone: the registry has an epoch, is not settling (see
        :meth:`_state`), and this node's membership trusts misses."""
        return bool(epoch) and not settling and self._membership.trusts_misses()

    async def _state(self) -> tuple[str, bool, list[str], list[str], list[str]]:
        """The epoch, whether the cluster is settling, the live nodes, their states (the
        epoch each has registered in) and the unswept ones (past their death line, still
        listed: see ``scripts.STATE``)."""
        epoch, settling, alive, states, unswept = await self._batcher.call(
            "EVAL", STATE, 5, *self._keys.meta, self._keys.expect
        )
        return (epoch.decode(), bool(settling), [n.decode() for n in alive], [s.decode() for s in states],
                [n.decode() for n in unswept])

    async def _request(
        self, targets: tuple[str, ...], header: dict[str, Any], data: bytes = b""
    ) -> dict[str, dict[str, Any]]:
        """Publish one request to each target and wait for their replies; a target that no
        subscriber took answers ``unreachable``, one that did not answer in time (or that the
        request never reached) ``timeout``. Raises RegistryUnavailableError if no request
        could be published and none was answered (a request in flight when the link broke
        is waited for until its deadline, so that the 503 is never followed by a delivery),
        or at once while this node does not listen on its channel (no reply could reach it)."""
        call = self._send(targets, header, data)
        try:
            await call.future
        finally:
            self._pending.close(call)
        return self._replies(call)

    def _send(self, targets: tuple[str, ...], header: dict[str, Any], data: bytes) -> Call:
        """Open a call and publish its request (see :meth:`_request`); close it when done."""
        call = self._open(targets)
        self._channel.request(call, header, data)
        return call

    def _open(self, targets: tuple[str, ...], then: CallDone | None = None, context: Any = None) -> Call:
        """A new call to ``targets`` (``then``, ``context``: see ``rpc.Call``);
        RegistryUnavailableError at once while this node does not listen on its channel (no
        reply could reach it)."""
        if not self._channel.subscribed.is_set():
            raise RegistryUnavailableError("registry unreachable: not subscribed")
        return self._pending.open(targets, then, context)

    @staticmethod
    def _replies(call: Call) -> dict[str, dict[str, Any]]:
        """A finished call's replies by target (see :meth:`_request`)."""
        if call.failed == len(call.targets) and not call.answered:
            raise RegistryUnavailableError("registry unreachable")
        return call.replies

    # ------------------------------------------------------------ tenants

    async def fanout(
        self, tenant: str, data: bytes, binary: bool, *, user: str | None = None, group: str | None = None,
        fanout_id: str = "",
    ) -> FanoutResult:
        """Deliver to the audience on other nodes: one message per node holding the tenant,
        each narrowing it to a user or a group of it on its own hub. A node that does not
        confirm by the request deadline (paused, partitioned, failing) counts as unreachable:
        it acts only before the deadline, so it will not deliver later either."""
        holders = await self._batcher.call("SMEMBERS", self._keys.tenant_nodes(tenant))
        targets = {h.decode() for h in holders}
        if not self._membership.trusts_misses():
            targets |= self._membership.peers  # the tenant sets may still be refilling
        targets.discard(self.node_id)
        if not targets:
            return FanoutResult()
        header: dict[str, Any] = {"k": KIND_FANOUT, "t": tenant, "b": int(binary)}
        if user is not None:
            header["u"] = user
        if group is not None:
            header["g"] = group
        if fanout_id:
            header["x"] = fanout_id
        replies = await self._request(tuple(targets), header, data)
        confirmed = [r for r in replies.values() if r["s"] == STATUS_OK]
        return FanoutResult(sum(r.get("n", 0) for r in confirmed), len(replies) - len(confirmed))

    async def forward(self, connection_id: str, to_node: str, data: bytes, binary: bool, fanout_id: str) -> None:
        header = {"k": KIND_POST, "c": connection_id, "b": int(binary), "x": fanout_id}
        reply = (await self._request((to_node,), header, data))[to_node]
        if reply["s"] in (STATUS_UNREACHABLE, STATUS_TIMEOUT):
            raise RegistryUnavailableError("the node a session moved to does not answer")
        raise_for_status(reply["s"], reply.get("m", ""))

    async def claim_once(self, key: str, ttl_s: float) -> bool:
        """SET NX with the TTL: the first node to claim ``key`` wins, cluster-wide. Raises
        RegistryUnavailableError when Redis does not answer within the request timeout."""
        claim = self._batcher.call("SET", self._keys.once(key), b"1", "NX", "PX", max(1, int(ttl_s * 1000)))
        reply = await self._unavailable_on_failure(claim, "registry unreachable: cannot tell a replay")
        return reply is not None

    async def release_once(self, key: str) -> None:
        await self._unavailable_on_failure(self._batcher.call("DEL", self._keys.once(key)), "registry unreachable")

    async def list_tenant(self, tenant: str, limit: int, next_token: str | None) -> Page:
        check_limit(limit)
        after = decode_token(next_token)
        start = f"({after}" if after is not None else "-"
        ids_f = self._batcher.call("ZRANGEBYLEX", self._keys.tenant_conns(tenant), start, "+", "LIMIT", 0, limit + 1)
        (epoch, settling, _, states, _), raw_ids = await asyncio.gather(self._state(), ids_f)
        if not (self._trusted(epoch, settling) and all(s == epoch for s in states)):
            raise RegistryUnavailableError("the registry is being refilled; retry shortly")
        ids = [i.decode() for i in raw_ids]
        more = len(ids) > limit
        ids = ids[:limit]
        hashes = await asyncio.gather(*(self._batcher.call("HGETALL", self._keys.record(i)) for i in ids))
        infos = [info for info in map(self._listed, ids, hashes) if info is not None]
        return Page(infos, encode_token(ids[-1]) if more else None)

    def _listed(self, connection_id: str, fields: Mapping[bytes, bytes]) -> ConnectionInfo | None:
        if b"node" not in fields:
            return None  # removed since the listing was read (or claimed: a tombstone)
        info = record_from_hash(connection_id, fields)
        if info.record.node_id != self.node_id or self._node is None:
            return info
        try:
            return ConnectionInfo(info.record, self._node.local_info(connection_id).last_active_at)
        except GoneError:
            return None

    # ------------------------------------------------------------ health

    # ------------------------------------------------------------ usage plans (see allowance)

    async def reserve(self, tenant: str, principal: str, max_tenant: int, max_principal: int) -> str | None:
        return await self._allowance.reserve(tenant, principal, max_tenant, max_principal)

    async def unreserve(self, tenant: str, principal: str) -> None:
        await self._allowance.unreserve(tenant, principal)

    async def held(self, tenant: str) -> int:
        return await self._unavailable_on_failure(self._allowance.held(tenant))

    async def sync_usage(self, report: UsageReport) -> UsageTotals:
        return await self._unavailable_on_failure(self._allowance.sync(report))

    async def usage_today(self, tenant: str, day: str) -> tuple[int, int]:
        return await self._unavailable_on_failure(self._allowance.today(tenant, day))

    async def _unavailable_on_failure(self, call: Awaitable[_T], message: str = "the registry does not answer") -> _T:
        """Await ``call`` within the request timeout; RegistryUnavailableError(``message``) if
        Redis does not answer."""
        try:
            async with asyncio.timeout(self._timeout_s):
                return await call
        except REDIS_FAILURES as exc:
            raise RegistryUnavailableError(message) from exc

    async def survey(self, query: dict[str, Any]) -> dict[str, dict[str, Any] | None]:
        """This node answers at once; the live nodes (and those known from their beats) are
        asked over their channels, one request each."""
        assert self._node is not None, "start() has not run"
        answers: dict[str, dict[str, Any] | None] = {self.node_id: self._node.local_survey(query)}
        try:
            _, _, alive, _, _ = await self._unavailable_on_failure(self._state())
        except RegistryUnavailableError:
            alive = []  # Redis is out: the peers of the last beat are listed, not answering
        targets = tuple(sorted((set(alive) | self._membership.peers) - {self.node_id}))
        replies: dict[str, dict[str, Any]] = {}
        if targets:
            with contextlib.suppress(RegistryUnavailableError):
                replies = await self._request(targets, {"k": KIND_SURVEY, "q": query})
        for node_id in targets:
            reply = replies.get(node_id, _GONE)
            answers[node_id] = reply.get("v") if reply["s"] == STATUS_OK else None
        return answers

    async def health(self) -> Mapping[str, Any]:
        """``reachable``: a PING answered within the request timeout; ``subscribed``: this
        node listens on its channel; ``settled``: a missing record may be answered 410 (false
        for two beats after start or an outage, and while a data loss is refilled)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                reachable = bool(await self._batcher.call("PING"))
        except REDIS_FAILURES:
            reachable = False
        membership = self._membership
        return {
            "backend": self.kind,
            "reachable": reachable,
            "node_id": self.node_id,
            "subscribed": self._channel.subscribed.is_set(),
            "settled": reachable and membership.trusts_misses(),
            "nodes": len(membership.peers) + 1,
        }


_: type[Registry] = RedisRegistry
