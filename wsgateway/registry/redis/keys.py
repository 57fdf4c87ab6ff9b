"""Where the Redis registry keeps what; every name is built here and nowhere else.

``P`` is ``registry.key_prefix`` (default ``wsgw``). The part in braces is the key's hash tag:
Redis Cluster places a key by its tag only, so every multi-key operation (the Lua scripts)
touches keys of one tag, and pipelines of single-key commands can be split by slot::

    P:{c:<connection id>}     HASH    one connection's record: node, tenant, principal,
                                      connectedAt, lastActiveAt, sourceIp, userAgent,
                                      authorizer (JSON), domainName, and ownedAt (Redis-clock
                                      ms at which its node last wrote or took it back: a sweep
                                      claims only records owned before its lease).
                                      Once claimed by a sweep: a tombstone, ``claimedBy`` only,
                                      for a day, read by its node if it comes back
    P:{t:<tenant>}:conns      ZSET    the tenant's connection ids, all scored 0, so that
                                      ZRANGEBYLEX lists them in id order (a page token is the last id)
    P:{t:<tenant>}:nodes      SET     the nodes holding at least one of the tenant's connections
    P:{n:<node>}:conns        SET     the node's connection ids (walked when the node dies)
    P:{n:<node>}:tenants      SET     the tenants the node holds (its :nodes entries, when it dies)
    P:{o:<key>}               STRING  a one-time key (``claim_once``: a signed management request's
                                      signature digest), SET NX with its TTL: expires by itself
    P:{u:<tenant>}:places     HASH    the tenant's connection places (usage plans' caps): "*",
                                      per principal, per node, per node and principal (scripts.PLACES_*)
    P:{u:<tenant>}:day:<day>  HASH    the tenant's messages ("m") and posts ("p") of a UTC day
                                      (YYYYMMDD), all nodes; expires two days later
    P:{n:<node>}:places       SET     the tenants the node took places of (given back when it dies)
    P:{q}:demand:<window>     HASH    attempts per throttled key ("m:<tenant>", "p:<tenant>",
                                      "r:<route>") in one second-long window, all nodes; expires
    P:{meta}:epoch            STRING  registry epoch: a random token made when Redis has none,
                                      i.e. on first start and after Redis lost its data
    P:{meta}:settle           STRING  the return window (TTL two heartbeats), opened when an epoch is
                                      made or a node finds the epoch changed: a node that held
                                      connections before a data loss beats within it
    P:{meta}:expect           ZSET    node -> Redis-clock ms until which it is expected to
                                      re-register after a data loss (listed by the nodes that
                                      knew it); removed once it has. A missing record is not a
                                      proof of 410 while the window is open or a node is expected
    P:{meta}:nodes            HASH    node -> the epoch it has fully registered in ("" meanwhile);
                                      a sweep unlists the node it leases, so that the node, if
                                      alive after all, learns that it was declared dead
    P:{meta}:alive            ZSET    node -> Redis-clock millisecond at which it is dead unless
                                      it beats again (one clock for every node: Redis's TIME)
    P:{meta}:sweep:<node>     STRING  lease of the node that sweeps the dead ``<node>``; while it
                                      is held, ``<node>`` (if back) does not re-register its sets
    P:{m:<node>:<k>}          STRING  Redis Cluster only: the node's mark on one master (``k`` picks
                                      a slot that master serves), written at every beat, expires
                                      a day later: gone, that shard lost its data (``shard_marks``)

    P:node:{<node>}           pub/sub channel of one node: requests to it, replies to its requests
                              (on Redis Cluster a sharded channel, on the shard of its slot)

On Redis Cluster a script or command whose keys span two slots is refused (CROSSSLOT), and
the registry contract runs on a three-master cluster: every script and multi-key command here
takes keys of one tag (the ``{meta}`` ones, one record, or one tenant's or node's sets), and
``shard_pipeline`` sends each to the shard of its first key.

The ``{meta}`` keys share one slot on purpose: the heartbeat, lease and state scripts read
and write several of them atomically. A connection id never moves between nodes, so a
record needs no lock: the only multi-writer event, a dead node's sweep, claims each record
with one single-key script (read, delete, leave a tombstone), and a node that comes back
takes each record back with another (``scripts.HOLD``): whichever runs first decides.
"""

from __future__ import annotations

__all__ = ["KeySpace"]


class KeySpace:
    """The key and channel names of one deployment (one ``key_prefix``)."""

    __slots__ = ("alive", "epoch", "expect", "nodes", "prefix", "settle")

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.epoch = f"{prefix}:{{meta}}:epoch"
        self.settle = f"{prefix}:{{meta}}:settle"
        self.nodes = f"{prefix}:{{meta}}:nodes"
        self.alive = f"{prefix}:{{meta}}:alive"
        self.expect = f"{prefix}:{{meta}}:expect"

    @property
    def meta(self) -> list[str]:
        """The four ``{meta}`` keys in the order the scripts take them."""
        return [self.epoch, self.settle, self.nodes, self.alive]

    def record(self, connection_id: str) -> str:
        return f"{self.prefix}:{{c:{connection_id}}}"

    def once(self, key: str) -> str:
        return f"{self.prefix}:{{o:{key}}}"

    def tenant_conns(self, tenant: str) -> str:
        return f"{self.prefix}:{{t:{tenant}}}:conns"

    def tenant_nodes(self, tenant: str) -> str:
        return f"{self.prefix}:{{t:{tenant}}}:nodes"

    def node_conns(self, node_id: str) -> str:
        return f"{self.prefix}:{{n:{node_id}}}:conns"

    def node_tenants(self, node_id: str) -> str:
        return f"{self.prefix}:{{n:{node_id}}}:tenants"

    def tenant_places(self, tenant: str) -> str:
        return f"{self.prefix}:{{u:{tenant}}}:places"

    def tenant_day(self, tenant: str, day: str) -> str:
        return f"{self.prefix}:{{u:{tenant}}}:day:{day}"

    def node_places(self, node_id: str) -> str:
        return f"{self.prefix}:{{n:{node_id}}}:places"

    def demand(self, window: int) -> str:
        return f"{self.prefix}:{{q}}:demand:{window}"

    def sweep_lease(self, node_id: str) -> str:
        return f"{self.prefix}:{{meta}}:sweep:{node_id}"

    def shard_mark(self, node_id: str, k: int) -> str:
        return f"{self.prefix}:{{m:{node_id}:{k}}}"

    def channel(self, node_id: str) -> str:
        return f"{self.prefix}:node:{{{node_id}}}"
