-- The shared quota's one script; `src/quota/redis.rs` explains the rule.
-- Atomic, and timed by the Redis server's clock so replicas' clocks don't matter.
-- KEYS[1] state hash (last, paused, seq), KEYS[2] limit override,
-- KEYS[3..] one sorted set of reserved times (µs) per window.
-- ARGV[1] = 'reserve' | 'release' | 'pause' | 'lower'.
if redis.replicate_commands then redis.replicate_commands() end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
-- Lua's tostring keeps 14 digits; times need 16.
local function num(x) return string.format('%.0f', x) end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

local op = ARGV[1]
if op == 'pause' then
  -- ARGV: pause (µs), ttl (ms)
  local untl = now + tonumber(ARGV[2])
  local cur = tonumber(redis.call('HGET', KEYS[1], 'paused'))
  if not cur or cur < untl then redis.call('HSET', KEYS[1], 'paused', num(untl)) end
  extend(KEYS[1], tonumber(ARGV[3]))
  return 1
elseif op == 'lower' then
  -- ARGV: limit, ttl (ms); only ever lowers, and lapses unless Feishu repeats it.
  local new = tonumber(ARGV[2])
  local cur = tonumber(redis.call('GET', KEYS[2]))
  if cur and cur < new then new = cur end
  redis.call('SET', KEYS[2], num(new), 'PX', ARGV[3])
  return 1
elseif op == 'release' then
  -- ARGV: the member a reservation returned ('<time>:<seq>'). A slot given back
  -- (its caller woke too late to use it, or went away) leaves every window; later
  -- slots stay valid.
  local n = 0
  for w = 3, #KEYS do n = n + redis.call('ZREM', KEYS[w], ARGV[2]) end
  return n
elseif op ~= 'reserve' then
  return redis.error_reply('unknown quota op')
end

-- ARGV: max wait (µs), max queue, ttl (ms), shortest window's number (0: none),
-- then per window: limit, span (µs).
local max_wait = tonumber(ARGV[2])
local max_queue = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local shortest = tonumber(ARGV[5])
local st = redis.call('HMGET', KEYS[1], 'last', 'paused')
local override = tonumber(redis.call('GET', KEYS[2]))
local t = now
local last, paused = tonumber(st[1]), tonumber(st[2])
if last and last > t then t = last end
if paused and paused > t then t = paused end
local nwin = #KEYS - 2
local binding = nwin > 0 and 1 or 0
local limits = {}
local waiting = 0
for w = 1, nwin do
  local key = KEYS[w + 2]
  local limit = tonumber(ARGV[4 + 2 * w])
  local span = tonumber(ARGV[5 + 2 * w])
  if w == shortest and override and override < limit then limit = override end
  limits[w] = limit
  redis.call('ZREMRANGEBYSCORE', key, '-inf', num(now - span))
  local len = redis.call('ZCARD', key)
  local future = redis.call('ZCOUNT', key, '(' .. num(now), '+inf')
  if future > waiting then waiting = future end
  if limit == 0 then return {0, span, w, 0, 0} end
  if len >= limit then
    local e = redis.call('ZRANGE', key, len - limit, len - limit, 'WITHSCORES')
    local free = tonumber(e[2]) + span
    if free > t then t, binding = free, w end
  end
end
local wait = t - now
if waiting >= max_queue then return {0, wait, binding, 1, limits[binding] or 0} end
if wait > max_wait then return {0, wait, binding, 0, limits[binding] or 0} end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local member = num(t) .. ':' .. seq
for w = 1, nwin do
  redis.call('ZADD', KEYS[w + 2], num(t), member)
  extend(KEYS[w + 2], ttl)
end
redis.call('HSET', KEYS[1], 'last', num(t))
extend(KEYS[1], ttl)
-- t (µs < 2^53) and seq come back as integers: `release` rebuilds the member from them.
return {1, wait, t, seq}
