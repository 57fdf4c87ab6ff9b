"""The Lua scripts of the Redis registry (sent with EVAL: Redis caches them by digest, and
nothing needs reloading after a restart or SCRIPT FLUSH).

Each script touches keys of one hash tag only (see ``_redis_keys``): the ``{meta}`` scripts
take ``KeySpace.meta`` as KEYS, the record scripts one record key.
"""

from __future__ import annotations

__all__ = ["CLAIM", "HEARTBEAT", "LEASE_SWEEP", "STATE", "TOUCH", "UNLIST"]

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: epoch, settle, nodes, alive.
# ARGV: node, ttl_ms, known_epoch ("" on first beat), fresh_epoch, settle_ms, birth_settle_ms.
# Refreshes the node, makes an epoch if Redis has none, opens the settle window when data was
# lost. Returns {epoch, was_unlisted (0|1), settling (0|1), alive nodes, dead nodes}.
HEARTBEAT = (
    _NOW_MS
    + """
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
  local window = ARGV[6]
  if ARGV[3] ~= '' then window = ARGV[5] end
  if redis.call('PTTL', KEYS[2]) < tonumber(window) then
    redis.call('SET', KEYS[2], '1', 'PX', window)
  end
elseif ARGV[3] ~= '' and epoch ~= ARGV[3] then
  if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[5]) then
    redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
  end
end
local unlisted = redis.call('HSETNX', KEYS[3], ARGV[1], '')
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), ARGV[1])
local alive = redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')
local dead = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', '(' .. now)
return {epoch, unlisted, redis.call('EXISTS', KEYS[2]), alive, dead}
"""
)

# KEYS: epoch, settle, nodes, alive. Returns {epoch or "", settling, alive nodes, their states}.
STATE = (
    _NOW_MS
    + """
local epoch = redis.call('GET', KEYS[1]) or ''
local alive = redis.call('ZRANGEBYSCORE', KEYS[4], now, '+inf')
local states = {}
for i, node in ipairs(alive) do
  states[i] = redis.call('HGET', KEYS[3], node) or ''
end
return {epoch, redis.call('EXISTS', KEYS[2]), alive, states}
"""
)

# KEYS: epoch, settle, nodes, alive, sweep lease. ARGV: dead node, sweeper, lease_ms.
# Takes the lease on sweeping a node only while it is still dead; returns 1 if taken.
LEASE_SWEEP = (
    _NOW_MS
    + """
local deadline = redis.call('ZSCORE', KEYS[4], ARGV[1])
if (not deadline) or tonumber(deadline) >= now then return 0 end
if redis.call('SET', KEYS[5], ARGV[2], 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""
)

# KEYS: epoch, settle, nodes, alive, sweep lease. ARGV: swept node.
# Forgets a swept node; if it came back meanwhile, leaving it unlisted makes it re-register.
UNLIST = (
    _NOW_MS
    + """
redis.call('HDEL', KEYS[3], ARGV[1])
local deadline = redis.call('ZSCORE', KEYS[4], ARGV[1])
if deadline and tonumber(deadline) < now then redis.call('ZREM', KEYS[4], ARGV[1]) end
redis.call('DEL', KEYS[5])
return 0
"""
)

# KEYS: record. ARGV: node the record must belong to.
# The atomic claim on a dead node's connection: whoever gets the fields runs its $disconnect.
CLAIM = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return {} end
local fields = redis.call('HGETALL', KEYS[1])
redis.call('DEL', KEYS[1])
return fields
"""

# KEYS: record. ARGV: lastActiveAt. Never recreates a record that is gone (closed, flushed).
TOUCH = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'lastActiveAt', ARGV[1])
end
return 0
"""
