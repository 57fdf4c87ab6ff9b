"""Noticing that one shard of a Redis Cluster lost its data.

On one Redis (and under Sentinel) every key lives on one server, so the registry epoch
(``P:{meta}:epoch``) tells a data loss: gone, it is made again and every node re-registers
(``membership``). On Redis Cluster the epoch lives on the shard of the ``{meta}`` slot only: a
master that restarts empty (no persistence), or fails over to a replica that missed writes,
loses the records, tenant and node sets of its own slots while the epoch stays, and nobody
would write them again (listings and tenant fan-outs would miss those connections for good).

So each node keeps one small mark of its own on every master, ``P:{m:<node>:<k>}``, ``k``
chosen so that the key's slot is served by that master (see :meth:`ShardMarks.keys`), and
writes each again at every beat (``SET ... GET PX``: one command per master, pipelined with
the rest). A mark that this node wrote and that is gone now means its shard lost its data:
the node re-registers every connection it holds, and drops the epoch (``membership``), so
that the cluster settles as after any data loss (a missing record proves nothing until
every live node has re-registered). Every node finds its own marks gone too. The marks
expire a day after the last beat (a dead node's go away); one gone after the node itself
was away for half that long (stopped, cut off) is not taken for a loss: it expired.

A slot that moves (a reshard) takes its keys with it: a mark is then found on another master,
and the master that was given other slots gets a new mark (never seen: no loss).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from .batch import CommandBatcher
from .keys import KeySpace
from .scripts import ms

__all__ = ["MARK_TTL_S", "ShardMarks"]

log = logging.getLogger("wsgateway.registry")

_MAX_TRIES = 4096  # ``k`` values tried to find a slot of each master (about masters x 2 suffice)
MARK_TTL_S = 24 * 3600.0


class ShardMarks:
    """This node's mark on each master of a Redis Cluster; :meth:`check` at every beat."""

    def __init__(
        self, client: RedisCluster, keys: KeySpace, node_id: str, batcher: CommandBatcher
    ) -> None:
        self._client = client
        self._keys = keys
        self._node_id = node_id
        self._batcher = batcher
        self._written: dict[str, float] = {}  # mark -> monotonic time this node last wrote it

    def keys(self) -> list[str]:
        """One mark per master, as the cluster client's slot table places them now (none
        before it has read the table)."""
        slots = self._client.nodes_manager.slots_cache
        masters = {nodes[0].name for nodes in slots.values() if nodes}
        found: dict[str, str] = {}
        for k in range(_MAX_TRIES):
            if len(found) == len(masters):
                break
            key = self._keys.shard_mark(self._node_id, k)
            nodes = slots.get(key_slot(key.encode()))
            if nodes and nodes[0].name not in found:
                found[nodes[0].name] = key
        return list(found.values())

    async def check(self) -> bool:
        """Write every mark again; True if one this node had written was gone (a shard lost
        its data). A master that does not answer tells nothing now: its mark is looked at
        again at the next beat."""
        keys = self.keys()
        sent = time.monotonic()
        replies: list[Any] = await asyncio.gather(
            *(self._batcher.call("SET", key, "1", "GET", "PX", ms(MARK_TTL_S)) for key in keys),
            return_exceptions=True,
        )
        lost = []
        for key, reply in zip(keys, replies, strict=True):
            if isinstance(reply, BaseException):
                continue
            written = self._written.get(key)
            if reply is None and written is not None and sent - written < MARK_TTL_S / 2:
                lost.append(key)
            self._written[key] = sent
        if lost:
            log.warning("registry: a Redis Cluster shard lost its data (%s gone); re-registering", ", ".join(lost))
        return bool(lost)
