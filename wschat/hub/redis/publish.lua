-- Publish one message: position, history, dedup and fan-out in one atomic step.
-- KEYS: meta, history, ids, idtimes.
-- ARGV: [1] fresh epoch, [2] event JSON up to "seq":, [3] event JSON after the
-- epoch, [4] history size, [5] history ttl ms (0: none), [6] idle ttl ms,
-- [7] channel, [8] PUBLISH or SPUBLISH, [9] identity ('' without an id),
-- [10] dedup ttl ms, [11] dedup size.
-- Returns {seq, epoch, 1 for a retry of an id already published (nothing sent) else 0}.
local now = now_ms()
local epoch = room_epoch(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local history_ttl = tonumber(ARGV[5])
local idle = tonumber(ARGV[6])
local identity = ARGV[9]
local window = tonumber(ARGV[10])
if identity ~= '' then
  local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', now - window))
  if #expired > 0 then
    redis.call('HDEL', KEYS[3], unpack(expired))
    redis.call('ZREM', KEYS[4], unpack(expired))
  end
  local seen = redis.call('HGET', KEYS[3], identity)
  if seen then
    keep_alive(KEYS[1], KEYS[2], idle, history_ttl)
    return {tonumber(seen), epoch, 1}
  end
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local s = string.format('%d', seq)
local payload = ARGV[2] .. s .. ',"epoch":"' .. epoch .. '"' .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, s .. '-0', 'p', payload,
             't', string.format('%d', now))
  if history_ttl > 0 then
    expire_history(KEYS[2], now - history_ttl)
    redis.call('PEXPIRE', KEYS[2], history_ttl)
  end
else
  redis.call('DEL', KEYS[2])
end
keep_alive(KEYS[1], KEYS[2], idle, history_ttl)
if identity ~= '' then
  redis.call('HSET', KEYS[3], identity, s)
  redis.call('ZADD', KEYS[4], now, identity)
  local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[11])
  if excess > 0 then
    redis.call('HDEL', KEYS[3], unpack(redis.call('ZRANGE', KEYS[4], 0, excess - 1)))
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
  end
  -- The ids go with the room's position at the latest: a new epoch forgets them.
  redis.call('PEXPIRE', KEYS[3], math.min(window, idle))
  redis.call('PEXPIRE', KEYS[4], math.min(window, idle))
end
redis.call(ARGV[8], ARGV[7], s .. '|' .. epoch .. '|' .. payload)
return {seq, epoch, 0}
