"""The Lua scripts of the Redis registry (sent with EVAL: Redis caches them by digest, and
nothing needs reloading after a restart or SCRIPT FLUSH).

Each script touches keys of one hash tag only (see ``keys``): the ``{meta}`` scripts
take ``KeySpace.meta`` as KEYS, the record scripts one record key.

Ownership of a record is fenced by Redis's clock: ``WRITE`` and ``HOLD`` stamp a record with
``ownedAt`` (the millisecond at which its node last wrote or re-asserted it), and a sweep
claims only records stamped before it took its lease (``LEASE_SWEEP`` returns that
millisecond). So a node that was declared dead and comes back while the sweep still runs
takes each of its records back atomically, and the sweep can no longer claim it; a claimed
record leaves a tombstone (``claimedBy``) that tells the node it lost it.
"""

from __future__ import annotations

__all__ = [
    "CLAIM",
    "FORGET_EPOCH",
    "HEARTBEAT",
    "HELD_CLAIMED",
    "HOLD",
    "KEEP_SESSION",
    "LEASE_SWEEP",
    "MOVE_SESSION",
    "PLACES_FREE",
    "PLACES_FREE_NODE",
    "PLACES_TAKE",
    "REGISTERED",
    "RELEASE",
    "RELEASED_CLAIMED",
    "RESTORE_SESSION",
    "SESSION_LOST",
    "STATE",
    "TOUCH",
    "UNLIST",
    "WRITE",
    "ms",
]


def ms(seconds: float) -> int:
    """``seconds`` as whole milliseconds, at least 1: the durations the scripts take (a PX of
    0 is an error in Redis)."""
    return max(1, int(seconds * 1000))


_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: epoch, settle, nodes, alive, this node's sweep lease, expect.
# ARGV: 1 node, 2 ttl_ms, 3 known_epoch ("" until the node's first beat), 4 fresh_epoch,
#       5 return_ms (in which every live node beats once Redis answers), 6 check_lease ("1":
#       report whether a sweep of this node still runs), 7 holds_nothing ("1": this node has no
#       connection to register), 8... the peers this node saw alive at its last beat.
# Refreshes the node. An epoch made here (Redis has none: brand new, or it lost its data) or
# one that differs from the node's own (it lost its data) opens the return window (``settle``);
# a node that knew the old epoch also expects every peer it knew to re-register (``expect``,
# until it has, or for ttl_ms: a node that does not beat by then is dead). A node that holds
# nothing is registered in the epoch at once. Returns {epoch, was_unlisted (0|1), settling
# (0|1), alive nodes, dead nodes, being_swept (0|1)}; the lease is only looked at when
# unlisted or asked, so that a normal beat runs the same commands as ever.
HEARTBEAT = (
    _NOW_MS
    + """
local epoch = redis.call('GET', KEYS[1])
local lost = false
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
  lost = ARGV[3] ~= ''
elseif ARGV[3] ~= '' and epoch ~= ARGV[3] then
  lost = true
end
if epoch == ARGV[4] or lost then
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  end
end
if lost then
  for i = 8, #ARGV do
    if redis.call('HGET', KEYS[3], ARGV[i]) ~= epoch then
      redis.call('ZADD', KEYS[6], now + tonumber(ARGV[2]), ARGV[i])
    end
  end
end
local state = ''
if ARGV[7] == '1' then state = epoch end
local unlisted = redis.call('HSETNX', KEYS[3], ARGV[1], state)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1])
local alive = redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
local swept = 0
if unlisted == 1 or ARGV[6] == '1' then swept = redis.call('EXISTS', KEYS[5]) end
local settling = redis.call('EXISTS', KEYS[2], KEYS[6])
if settling > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', '(' .. now)
  settling = redis.call('EXISTS', KEYS[2], KEYS[6])
end
return {epoch, unlisted, settling > 0 and 1 or 0, alive, dead, swept}
"""
)

# KEYS: nodes, expect. ARGV: node, epoch. The node has registered every connection it holds
# in ``epoch``: listings may count on it, and no node expects it any more.
REGISTERED = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[1])
return 0
"""

# KEYS: epoch, settle, nodes, alive, expect. Returns {epoch or "", settling, alive nodes, their
# states, unswept nodes}; settling while the return window is open or a node is still expected.
# Unswept: past their death line but still listed (no sweep has taken them): dead, or alive
# with their last beats lost (cut off, paused, or beating to a master that was demoted or
# died before it replicated them), and so maybe holding connections whose records are lost.
STATE = (
    _NOW_MS
    + """
local epoch = redis.call('GET', KEYS[1]) or ''
local alive = redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')
local states = {}
for i, node in ipairs(alive) do
  states[i] = redis.call('HGET', KEYS[3], node) or ''
end
local unswept = {}
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)) do
  if redis.call('HEXISTS', KEYS[3], node) == 1 then unswept[#unswept + 1] = node end
end
local settling = redis.call('EXISTS', KEYS[2]) + redis.call('ZCOUNT', KEYS[5], now, '+inf')
return {epoch, settling > 0 and 1 or 0, alive, states, unswept}
"""
)

# KEYS: epoch, settle, nodes, alive, sweep lease. ARGV: dead node, sweeper, lease_ms.
# Takes the lease on sweeping a node only while it is still dead, and unlists the node, so
# that its first beat if it comes back tells it that it was declared dead. Returns the lease
# time (Redis ms, the fence of the sweep's claims), or 0 if not taken.
LEASE_SWEEP = (
    _NOW_MS
    + """
local deadline = redis.call('ZSCORE', KEYS[4], ARGV[1])
if (not deadline) or tonumber(deadline) >= now then return 0 end
if not redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[3]) then return 0 end
redis.call('HDEL', KEYS[3], ARGV[1])
return now
"""
)

# KEYS: epoch. ARGV: the epoch the caller knows. A shard of a Redis Cluster lost its data
# (``shard_marks``) while the epoch's shard kept it: the epoch is dropped, so that the next beat
# makes a new one and the cluster settles as after any data loss (every node re-registers, a
# missing record proves nothing meanwhile). Only if it is still the caller's: another node that
# noticed first may have dropped it, and a new one made, already. Returns 1 if dropped.
FORGET_EPOCH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: epoch, settle, nodes, alive, sweep lease. ARGV: swept node, sweeper, lease time.
# Ends a sweep. A node that beat since the lease came back: it stays listed and alive (if it
# died again, a later sweep takes its newer records), and re-registers once the lease is gone;
# if the lease ran out during the sweep, unlisting it makes it re-register again, since this
# sweep may have removed what it re-registered. A node still dead is forgotten.
UNLIST = (
    _NOW_MS
    + """
local ours = redis.call('GET', KEYS[5]) == ARGV[2]
if ours then redis.call('DEL', KEYS[5]) end
local deadline = tonumber(redis.call('ZSCORE', KEYS[4], ARGV[1]) or '0')
if deadline > tonumber(ARGV[3]) then
  if not ours then redis.call('HDEL', KEYS[3], ARGV[1]) end
  return 0
end
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return 0
"""
)

# KEYS: record. ARGV: field, value, ... (the record's hash).
# Writes a record stamped ownedAt = now, unless a sweep claimed it (its tombstone is there:
# the node learns it at its next beat). Returns 1 if written, 0 if not.
WRITE = (
    _NOW_MS
    + """
if redis.call('HEXISTS', KEYS[1], 'claimedBy') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'ownedAt', now, unpack(ARGV))
return 1
"""
)

# KEYS: record. ARGV: node the record must belong to, fence ("" for none: the node removes its
# own records), claimer ("" for no tombstone), tombstone_ms.
# The atomic claim on a connection: whoever gets the fields runs its $disconnect. A sweep
# passes its lease time as the fence: a record its node wrote or held since is not claimed. A
# record claimed by a sweep becomes a tombstone, so that its node, if it comes back, knows.
CLAIM = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return {} end
if ARGV[2] ~= '' and tonumber(redis.call('HGET', KEYS[1], 'ownedAt') or '0') >= tonumber(ARGV[2]) then
  return {}
end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'claimedBy', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return fields
"""

# A reliable session handed over between nodes (``reliable.sessions``): its holder hands its
# state to the resuming node and keeps the session aside; the record settles who holds it.
# Whichever of these two reaches Redis first decides, once: the resuming node moves the record
# to itself (the session lands there), or the holder, a while later, keeps it (the move never
# landed: its answer was lost or came too late, and now it never will land). ``handover`` is
# the one-time name the holder gave that move; it stays in the record.

# KEYS: record. ARGV: holder, this node, handover, field, value, ... (the record's hash).
# Returns 1 if the record is this node's (moved now, or by an earlier try of the same move), 0
# if not: no longer the holder's (claimed by a sweep, gone) or kept there.
MOVE_SESSION = (
    _NOW_MS
    + """
local node = redis.call('HGET', KEYS[1], 'node')
local handover = redis.call('HGET', KEYS[1], 'handover')
if node == ARGV[2] and handover == ARGV[3] then return 1 end
if node ~= ARGV[1] or handover == ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'ownedAt', now, 'handover', ARGV[3], unpack(ARGV, 4))
return 1
"""
)

# KEEP_SESSION's and RESTORE_SESSION's start: 1, the session kept (naming the move), while the
# record is this node's; 0 once it names another node or a sweep's tombstone is there; on no
# record at all, on to what follows.
_KEEP_IF_HELD = """
local node = redis.call('HGET', KEYS[1], 'node')
if node == ARGV[1] then
  redis.call('HSET', KEYS[1], 'handover', ARGV[2])
  return 1
end
if node or redis.call('HEXISTS', KEYS[1], 'claimedBy') == 1 then return 0 end
"""

# KEYS: record. ARGV: this node (the holder), handover. Returns 1 if the session stays here
# (the record is still this node's: the move can no longer land), 0 if it moved on (or a sweep
# claimed it: its tombstone), SESSION_LOST if there is no record at all: the move landed and the
# session ended since, or Redis lost the record (then only the resuming node can tell whether
# the move landed first: ``RedisRegistry.settle_handover`` asks it, then ``RESTORE_SESSION``).
KEEP_SESSION = _KEEP_IF_HELD + "return 2\n"

SESSION_LOST = 2  # KEEP_SESSION: no record, no tombstone

# KEYS: record. ARGV: this node (the holder), handover, field, value, ... (the record's hash).
# The holder keeps a session whose record Redis lost, once the node it handed it over to said
# the move never landed there (nor will: its own move found no record either). Writes the
# record back, naming this node and the move, unless one is there again; then answers as
# KEEP_SESSION. A late ``MOVE_SESSION`` of the same move finds the move named: it cannot land.
RESTORE_SESSION = (
    _NOW_MS
    + _KEEP_IF_HELD
    + """
redis.call('HSET', KEYS[1], 'ownedAt', now, 'handover', ARGV[2], unpack(ARGV, 3))
return 1
"""
)

HELD_CLAIMED = 0  # a sweep claimed it (and runs, or ran, its $disconnect elsewhere)

# KEYS: record. ARGV: node. A node back from being declared dead takes a record back.
# Returns 1 (the record is this node's: stamped now, no sweep that began earlier can claim it),
# HELD_CLAIMED, or 2 (no record, no tombstone: never written, in an outage, or lost with data).
HOLD = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'ownedAt', now)
  return 1
end
if redis.call('HEXISTS', KEYS[1], 'claimedBy') == 1 then return 0 end
return 2
"""
)

RELEASED_CLAIMED = 0  # a sweep claimed it: its $disconnect ran (or runs) on the sweeper

# KEYS: record. ARGV: node. A node whose connection closed decides who runs its $disconnect.
# Idempotent (a retried call gives the same answer): the tombstone is left to expire.
# Returns 1 (the record was this node's and is deleted: the node runs its $disconnect),
# RELEASED_CLAIMED, or 2 (no record, no tombstone: never written, in an outage, or lost with
# data; the node runs its $disconnect too).
RELEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
if redis.call('HEXISTS', KEYS[1], 'claimedBy') == 1 then return 0 end
return 2
"""

# KEYS: record. ARGV: lastActiveAt. Never recreates a record that is gone (closed, flushed,
# claimed: a tombstone has no node).
TOUCH = """
if redis.call('HEXISTS', KEYS[1], 'node') == 1 then
  redis.call('HSET', KEYS[1], 'lastActiveAt', ARGV[1])
end
return 0
"""


# The places of a tenant (usage plans' connection caps): one hash per tenant,
# KEYS[1] = KeySpace.tenant_places. Fields: "*" all places, "p|<principal>", "n|<node>" and
# "np|<node>|<principal>"; the node's fields let a sweep give a dead node's places back.
# PLACES_TAKE: ARGV node, principal, cap of the tenant, cap per principal (0 = none);
# 0 taken, 1 over the tenant's cap, 2 over the principal's.
PLACES_TAKE = """
local h, node, pr = KEYS[1], ARGV[1], ARGV[2]
local cap_t, cap_p = tonumber(ARGV[3]), tonumber(ARGV[4])
if cap_t > 0 and tonumber(redis.call('HGET', h, '*') or '0') >= cap_t then return 1 end
if cap_p > 0 and tonumber(redis.call('HGET', h, 'p|' .. pr) or '0') >= cap_p then return 2 end
redis.call('HINCRBY', h, '*', 1)
redis.call('HINCRBY', h, 'p|' .. pr, 1)
redis.call('HINCRBY', h, 'n|' .. node, 1)
redis.call('HINCRBY', h, 'np|' .. node .. '|' .. pr, 1)
return 0
"""

# PLACES_FREE: ARGV node, principal. Gives back one place of the node's, if it still has one
# (a sweep may have given them all back already): 1 given back, 0 none held.
PLACES_FREE = """
local h, node, pr = KEYS[1], ARGV[1], ARGV[2]
local np = 'np|' .. node .. '|' .. pr
if tonumber(redis.call('HGET', h, np) or '0') <= 0 then return 0 end
for _, f in ipairs({np, 'n|' .. node, 'p|' .. pr, '*'}) do
  if redis.call('HINCRBY', h, f, -1) <= 0 then redis.call('HDEL', h, f) end
end
return 1
"""

# PLACES_FREE_NODE: ARGV node. Gives back every place of the node (it stopped or died);
# returns how many. Running it twice gives nothing back the second time.
PLACES_FREE_NODE = """
local h, n, np = KEYS[1], 'n|' .. ARGV[1], 'np|' .. ARGV[1] .. '|'
local flat = redis.call('HGETALL', h)
local freed = 0
for i = 1, #flat, 2 do
  local f, v = flat[i], tonumber(flat[i + 1])
  if f == n then
    freed = v
    redis.call('HDEL', h, f)
  elseif string.sub(f, 1, #np) == np then
    local p = 'p|' .. string.sub(f, #np + 1)
    if redis.call('HINCRBY', h, p, -v) <= 0 then redis.call('HDEL', h, p) end
    redis.call('HDEL', h, f)
  end
end
if freed > 0 and redis.call('HINCRBY', h, '*', -freed) <= 0 then redis.call('HDEL', h, '*') end
return freed
"""
