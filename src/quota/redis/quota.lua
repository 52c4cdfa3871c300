-- The shared quota's one script; `src/quota/redis.rs` explains the rule.
-- Atomic, and timed by the Redis server's clock so replicas' clocks don't matter.
-- KEYS[1] state hash (last, paused, seq), KEYS[2] limit override,
-- KEYS[3] callers waiting (sorted set: caller -> its latest waiting slot),
-- KEYS[4] the asking caller's waiting slots (sorted set: member -> time),
-- KEYS[5..] one sorted set of reserved times (µs) per window.
-- ARGV[1] = 'reserve' | 'release' | 'seed' | 'pause' | 'lower'.
if redis.replicate_commands then redis.replicate_commands() end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
-- Lua's tostring keeps 14 digits; times need 16.
local function num(x) return string.format('%.0f', x) end
local function extend(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end
local function pause(us, ttl)
  local untl = now + us
  local cur = tonumber(redis.call('HGET', KEYS[1], 'paused'))
  if not cur or cur < untl then redis.call('HSET', KEYS[1], 'paused', num(untl)) end
  extend(KEYS[1], ttl)
end
-- Only ever lowers, and lapses unless Feishu repeats it; below 1 is no limit.
local function lower(limit, ttl)
  if limit < 1 then return end
  local cur = tonumber(redis.call('GET', KEYS[2]))
  if cur and cur < limit then limit = cur end
  redis.call('SET', KEYS[2], num(limit), 'PX', ttl)
end
-- The latest reservation still held: a reservation given back takes the tail with it.
local function retail()
  local top
  for w = 5, #KEYS do
    local e = redis.call('ZRANGE', KEYS[w], -1, -1, 'WITHSCORES')
    if e[2] then
      local s = tonumber(e[2])
      if not top or s > top then top = s end
    end
  end
  if top then redis.call('HSET', KEYS[1], 'last', num(top)) else redis.call('HDEL', KEYS[1], 'last') end
end

local op = ARGV[1]
if op == 'pause' then
  -- ARGV: pause (µs), ttl (ms)
  pause(tonumber(ARGV[2]), tonumber(ARGV[3]))
  return 1
elseif op == 'lower' then
  -- ARGV: limit, ttl (ms)
  lower(tonumber(ARGV[2]), ARGV[3])
  return 1
elseif op == 'release' then
  -- ARGV: the member a reservation returned ('<time>:<seq>'), its caller ('' for none).
  -- A slot given back (its caller woke too late to use it, or went away) leaves
  -- every window; later slots stay valid, and the tail moves back to the latest
  -- slot still held.
  local n = 0
  for w = 5, #KEYS do n = n + redis.call('ZREM', KEYS[w], ARGV[2]) end
  if ARGV[3] ~= '' then
    redis.call('ZREM', KEYS[4], ARGV[2])
    local e = redis.call('ZRANGE', KEYS[4], -1, -1, 'WITHSCORES')
    if e[2] and tonumber(e[2]) > now then
      redis.call('ZADD', KEYS[3], e[2], ARGV[3])
    else
      redis.call('ZREM', KEYS[3], ARGV[3])
    end
  end
  if n > 0 then retail() end
  return n
elseif op == 'seed' then
  -- A replica back from its local share carries its reservations over.
  -- ARGV: ttl (ms), pause (µs from now, 0: none), pause ttl (ms), learnt limit
  -- (0: none), its ttl (ms), then pairs: member, time. A member this script
  -- made ('<time>:<seq>') keeps its time (re-adding it is a no-op); a local
  -- one ('l…') is at `now + offset` (µs, negative in the past).
  local ttl = tonumber(ARGV[2])
  if tonumber(ARGV[3]) > 0 then pause(tonumber(ARGV[3]), tonumber(ARGV[4])) end
  if tonumber(ARGV[5]) > 0 then lower(tonumber(ARGV[5]), ARGV[6]) end
  local top
  for i = 7, #ARGV - 1, 2 do
    local m = ARGV[i]
    local t
    if string.sub(m, 1, 1) == 'l' then t = now + tonumber(ARGV[i + 1]) else t = tonumber(string.match(m, '^(%d+):')) end
    for w = 5, #KEYS do redis.call('ZADD', KEYS[w], num(t), m) end
    if not top or t > top then top = t end
  end
  if top then
    for w = 5, #KEYS do extend(KEYS[w], ttl) end
    local last = tonumber(redis.call('HGET', KEYS[1], 'last'))
    if not last or last < top then redis.call('HSET', KEYS[1], 'last', num(top)) end
    extend(KEYS[1], ttl)
  end
  return 1
elseif op ~= 'reserve' then
  return redis.error_reply('unknown quota op')
end

-- ARGV: max wait (µs), max queue, ttl (ms), shortest window's number (0: none),
-- horizon (µs: the longest any call waits), caller ('' for no fair share),
-- then per window: limit, span (µs).
local max_wait = tonumber(ARGV[2])
local max_queue = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local shortest = tonumber(ARGV[5])
local horizon = tonumber(ARGV[6])
local caller = ARGV[7]
local st = redis.call('HMGET', KEYS[1], 'last', 'paused')
local override = tonumber(redis.call('GET', KEYS[2]))
local t = now
local last, paused = tonumber(st[1]), tonumber(st[2])
if last and last > t then t = last end
if paused and paused > t then t = paused end
local nwin = #KEYS - 4
local binding = nwin > 0 and 1 or 0
local limits = {}
local waiting = 0
local capacity = max_queue
for w = 1, nwin do
  local key = KEYS[w + 4]
  local limit = tonumber(ARGV[6 + 2 * w])
  local span = tonumber(ARGV[7 + 2 * w])
  if w == shortest and override and override >= 1 and override < limit then limit = override end
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
  -- sliding_log::capacity: a burst now and one per span within the horizon.
  local c = limit * (1 + math.floor(horizon / span))
  if c < capacity then capacity = c end
end
local wait = t - now
if waiting >= max_queue then return {0, wait, binding, 1, limits[binding] or 0} end
if wait > max_wait then return {0, wait, binding, 0, limits[binding] or 0} end
if caller ~= '' then
  -- sliding_log::fair_share, over the callers waiting on this key in the whole fleet.
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', num(now))
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', num(now))
  local own = redis.call('ZCARD', KEYS[4])
  local callers = redis.call('ZCARD', KEYS[3])
  if own == 0 then callers = callers + 1 end
  local share = math.floor(capacity / (callers + 1))
  if share < 1 then share = 1 end
  if own >= share then
    local e = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
    return {0, tonumber(e[2]) - now, binding, 1, limits[binding] or 0}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local member = num(t) .. ':' .. seq
for w = 1, nwin do
  redis.call('ZADD', KEYS[w + 4], num(t), member)
  extend(KEYS[w + 4], ttl)
end
redis.call('HSET', KEYS[1], 'last', num(t))
extend(KEYS[1], ttl)
if caller ~= '' and t > now then
  redis.call('ZADD', KEYS[4], num(t), member)
  redis.call('ZADD', KEYS[3], num(t), caller)
  extend(KEYS[4], ttl)
  extend(KEYS[3], ttl)
end
-- t (µs < 2^53) and seq come back as integers: `release` rebuilds the member from them.
return {1, wait, t, seq}
