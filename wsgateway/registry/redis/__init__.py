"""The Redis registry: many gateway nodes behave as one through a shared Redis.

One module per part, each named for what it owns (``registry`` tells how they hold together):

- ``registry``: :class:`RedisRegistry`, the :class:`wsgateway.registry.Registry` on Redis;
- ``rpc``: requests between nodes over their channels, and the answers;
- ``link``: the lean RESP connections those channels use (hiredis over an asyncio Protocol);
- ``shards``: those channels on Redis Cluster (sharded pub/sub, one link per shard, MOVED followed);
- ``connect``: from ``redis_url`` to the redis-py client and to where the links connect
  (one Redis, the master Redis Sentinel names, or the shards of a Redis Cluster);
- ``membership``: a node's heartbeat, epoch, re-registration, release fencing, reconciliation
  after being declared dead, and the ``lastActiveAt`` flush;
- ``sweep``: the dead-node sweep and the orphan ``$disconnect`` of the records it claims;
- ``wire``: what nodes say to each other, and how a record is stored (pure, no I/O);
- ``keys``: where everything is kept; ``scripts``: the Lua scripts;
- ``batch``: the one pipelined writer every redis-py command goes through.
"""

from __future__ import annotations

from .registry import RedisRegistry

__all__ = ["RedisRegistry"]
