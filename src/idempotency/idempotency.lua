-- The idempotency store's one script; `src/idempotency/redis.rs` explains the record.
-- Atomic, and timed by the Redis server's clock so replicas' clocks don't matter.
-- KEYS[1] the record hash. ARGV[1] = 'begin' | 'finish' | 'unknown' | 'forget'.
if redis.replicate_commands then redis.replicate_commands() end
local op = ARGV[1]
if op ~= 'begin' and op ~= 'finish' and op ~= 'unknown' and op ~= 'forget' then
  return redis.error_reply('unknown idempotency op')
end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)
-- Lua's tostring keeps 14 digits; times in ms need 13, durations may need more.
local function num(x) return string.format('%.0f', x) end
local key = KEYS[1]

if op == 'begin' then
  -- ARGV: fingerprint (32 bytes), token, lease (ms), ttl (ms).
  local r = redis.call('HMGET', key, 'state', 'fp', 'until', 'expires')
  local untl = now + tonumber(ARGV[4])
  if not r[1] then
    local expires = now + tonumber(ARGV[5])
    redis.call('HSET', key, 'state', 'running', 'fp', ARGV[2], 'token', ARGV[3],
      'until', num(untl), 'expires', num(expires), 'after_unknown', '0')
    -- A running call keeps its record past the TTL until its marker lapses.
    redis.call('PEXPIREAT', key, num(math.max(expires, untl)))
    return {'run'}
  end
  if r[2] ~= ARGV[2] then return {'reused'} end
  if r[1] == 'done' then
    -- A missing log_id comes back as nil.
    local o = redis.call('HMGET', key, 'kind', 'response', 'code', 'message', 'details', 'log_id')
    return {'done', o[1], o[2], o[3], o[4], o[5], o[6]}
  end
  local held = tonumber(r[3])
  if r[1] == 'running' and held and held > now then
    return {'busy', num(held - now)}
  end
  -- Unknown, or a marker whose holder died mid-call: it may have been sent.
  local expires = tonumber(r[4]) or now
  redis.call('HSET', key, 'state', 'running', 'token', ARGV[3], 'until', num(untl),
    'after_unknown', '1')
  redis.call('PEXPIREAT', key, num(math.max(expires, untl)))
  return {'again'}
end

-- Settling a lease. ARGV: token, then for 'finish': kind, response, code,
-- message, details, and the log id if there is one. A lease that no longer
-- holds the record (another call took it over) changes nothing.
local r = redis.call('HMGET', key, 'state', 'token', 'after_unknown', 'expires')
if r[1] ~= 'running' or r[2] ~= ARGV[2] then return 0 end
if op == 'forget' and r[3] ~= '1' then
  redis.call('DEL', key)
  return 1
end
if op == 'finish' then
  redis.call('HSET', key, 'state', 'done', 'kind', ARGV[3], 'response', ARGV[4],
    'code', ARGV[5], 'message', ARGV[6], 'details', ARGV[7])
  if ARGV[8] then redis.call('HSET', key, 'log_id', ARGV[8]) end
else
  -- 'unknown', or 'forget' after an unknown attempt: an earlier one may have applied.
  redis.call('HSET', key, 'state', 'unknown')
end
redis.call('HDEL', key, 'token', 'until', 'after_unknown')
-- Back to first use + ttl (a time already past deletes the record).
redis.call('PEXPIREAT', key, num(tonumber(r[4]) or now))
return 1
