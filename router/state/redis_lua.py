"""The Lua scripts that make Redis's budget and rate calls atomic (Redis runs one script at a time).

Each counter of a budget is a hash ``{spent, held, h:<hold id>: amount}`` and
a sorted set of its hold ids by expiry (milliseconds). Amounts are integer
micro-dollars and reach Redis as strings, so no number is ever formatted by
Lua. The clock is the caller's (``now`` in ``ARGV``), as in the other stores.
"""

from __future__ import annotations

__all__ = ["ADMIT", "COMPLETE", "FINISH", "GIVE_BACK", "RATE", "RESERVE", "SWAP", "USAGE"]

# Frees one counter's holds whose expiry has passed.
_SWEEP = """
local function sweep(b, x, now)
  local expired = redis.call('ZRANGEBYSCORE', x, '-inf', now)
  for _, id in ipairs(expired) do
    local amount = redis.call('HGET', b, 'h:' .. id)
    if amount and amount ~= '0' then
      redis.call('HINCRBY', b, 'held', '-' .. amount)
    end
    redis.call('HDEL', b, 'h:' .. id)
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', x, '-inf', now)
  end
end
"""

# A hold on the budget counters from KEYS[k + 1] on (hash and zset per counter), with now, id, amount and
# expiry at ARGV[a] on, then limit and ttl per counter: first check every counter, then place on each.
_HOLD = """
local function hold_refused(k, a)
  local now, amount = ARGV[a], tonumber(ARGV[a + 2])
  local n = (#KEYS - k) / 2
  for i = 1, n do
    sweep(KEYS[k + 2 * i - 1], KEYS[k + 2 * i], now)
  end
  for i = 1, n do
    local b = KEYS[k + 2 * i - 1]
    local spent = tonumber(redis.call('HGET', b, 'spent') or '0')
    local held = tonumber(redis.call('HGET', b, 'held') or '0')
    if spent + held + amount > tonumber(ARGV[a + 2 + 2 * i]) then
      return i, spent, held
    end
  end
  return 0, 0, 0
end

local function hold_place(k, a)
  local id, amount, expires = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  for i = 1, (#KEYS - k) / 2 do
    local b, x, ttl = KEYS[k + 2 * i - 1], KEYS[k + 2 * i], ARGV[a + 3 + 2 * i]
    redis.call('HINCRBY', b, 'held', amount)
    redis.call('HSET', b, 'h:' .. id, amount)
    redis.call('ZADD', x, expires, id)
    redis.call('PEXPIRE', b, ttl)
    redis.call('PEXPIRE', x, ttl)
  end
end
"""

RESERVE = (
    _SWEEP
    + _HOLD
    + """
-- KEYS: hash, zset per counter. ARGV: now, id, amount, expires, then limit, ttl per counter.
local i, spent, held = hold_refused(0, 1)
if i > 0 then
  return {0, i, spent, held}
end
hold_place(0, 1)
return {1, 0, 0, 0}
"""
)

# Charges one hold's counters and drops the hold, once: the marker remembers it was done.
_FINISH = """
local function finish(marker, id, charge, ttl, first, last)
  if redis.call('EXISTS', marker) == 1 then
    return 0
  end
  for i = first, last, 2 do
    local b, x = KEYS[i], KEYS[i + 1]
    local amount = redis.call('HGET', b, 'h:' .. id)
    if amount and amount ~= '0' then
      redis.call('HINCRBY', b, 'held', '-' .. amount)
    end
    redis.call('HDEL', b, 'h:' .. id)
    redis.call('ZREM', x, id)
    -- A counter past its window and grace has expired: nobody reads it any more.
    if redis.call('EXISTS', b) == 1 then
      redis.call('HINCRBY', b, 'spent', charge)
    end
  end
  redis.call('SET', marker, '1', 'PX', ttl)
  return 1
end
"""

FINISH = (
    _FINISH
    + """
-- KEYS: the finished marker, then hash, zset per counter. ARGV: id, charge, marker ttl.
return finish(KEYS[1], ARGV[1], ARGV[2], ARGV[3], 2, #KEYS)
"""
)

USAGE = (
    _SWEEP
    + """
-- KEYS: hash, zset. ARGV: now.
sweep(KEYS[1], KEYS[2], ARGV[1])
return {tonumber(redis.call('HGET', KEYS[1], 'spent') or '0'), tonumber(redis.call('HGET', KEYS[1], 'held') or '0')}
"""
)

# The sliding window over n rate counters (previous and current bucket per counter, from KEYS[1]),
# their limit and cost from ARGV[first] on: router.state.windows.fits, in the same integers.
_RATE = """
local function rate_fits(n, width, elapsed, first)
  local reply, fits = {0}, 1
  for i = 1, n do
    local prev = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    local cur = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    local limit, cost = tonumber(ARGV[first + 2 * i - 2]), tonumber(ARGV[first + 2 * i - 1])
    reply[2 * i], reply[2 * i + 1] = prev, cur
    if prev * (width - elapsed) + (cur + cost) * width > limit * width then
      fits = 0
    end
  end
  reply[1] = fits
  return reply
end

local function rate_count(n, ttl, first)
  for i = 1, n do
    redis.call('INCRBY', KEYS[2 * i], ARGV[first + 2 * i - 1])
    redis.call('PEXPIRE', KEYS[2 * i], ttl)
  end
end
"""

RATE = (
    _RATE
    + """
-- KEYS: previous, current bucket per counter. ARGV: width, elapsed, ttl, then limit, cost per counter.
local reply = rate_fits(#KEYS / 2, tonumber(ARGV[1]), tonumber(ARGV[2]), 4)
if reply[1] == 1 then
  rate_count(#KEYS / 2, ARGV[3], 4)
end
return reply
"""
)

GIVE_BACK = """
-- KEYS: one rate bucket per counter. ARGV: what to uncount from each; never below zero, and a bucket
-- that has expired stays gone (DECRBY would bring it back negative and without an expiry).
for i = 1, #KEYS do
  local left = tonumber(redis.call('GET', KEYS[i]) or '0')
  local back = math.min(left, tonumber(ARGV[i]))
  if back > 0 then
    redis.call('DECRBY', KEYS[i], back)
  end
end
return 0
"""

SWAP = """
-- KEYS: a hash. ARGV: field, expected value, new value. Sets it only if it still holds what was read.
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

ADMIT = (
    _SWEEP
    + _RATE
    + _HOLD
    + """
-- RATE then RESERVE in one script: both or neither.
-- KEYS: previous, current bucket per rate counter, then hash, zset per budget counter.
-- ARGV: number of rate counters, width, elapsed, rate ttl, limit and cost per rate counter,
--       then now, hold id, amount, expires, limit and ttl per budget counter.
local nrate = tonumber(ARGV[1])
local reply = rate_fits(nrate, tonumber(ARGV[2]), tonumber(ARGV[3]), 5)
if reply[1] == 0 then
  return reply
end
local k, a = 2 * nrate, 5 + 2 * nrate
local i, spent, held = hold_refused(k, a)
if i > 0 then
  return {2, i, spent, held}
end
rate_count(nrate, ARGV[4], 5)
hold_place(k, a)
return {1}
"""
)

COMPLETE = (
    _SWEEP
    + _FINISH
    + """
-- FINISH, the completion's tokens and USAGE of the budgets, in one script.
-- KEYS: [the finished marker, hash and zset per held counter], the current bucket per rate counter,
--       hash and zset per budget to read.
-- ARGV: has a hold (0/1), held counters, rate counters, budgets to read, hold id, charge, marker ttl,
--       rate ttl, now, then the tokens per rate counter.
local has, nh, nr, nu = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k = 0
if has == 1 then
  finish(KEYS[1], ARGV[5], ARGV[6], ARGV[7], 2, 1 + 2 * nh)
  k = 1 + 2 * nh
end
for i = 1, nr do
  redis.call('INCRBY', KEYS[k + i], ARGV[9 + i])
  redis.call('PEXPIRE', KEYS[k + i], ARGV[8])
end
k = k + nr
local reply = {}
for i = 1, nu do
  local b, x = KEYS[k + 2 * i - 1], KEYS[k + 2 * i]
  sweep(b, x, ARGV[9])
  reply[2 * i - 1] = tonumber(redis.call('HGET', b, 'spent') or '0')
  reply[2 * i] = tonumber(redis.call('HGET', b, 'held') or '0')
end
return reply
"""
)
