-- A node's periodic visit of a room it is subscribed to or has connections in:
-- keeps the room's position alive, renews the node's lease, and removes the
-- connections of nodes whose lease expired (their `left` events go out).
-- KEYS: meta, history, conns, users, leases.
-- ARGV: [1] node, [2] presence ttl ms, [3] channel, [4] PUBLISH or SPUBLISH,
-- [5] idle ttl ms, [6] history ttl ms (0: none), [7] '1' if the node has
-- connections in the room, else '0'.
-- Returns 0 if the node has connections in the room but its lease was lost
-- (it must heal the room), else 1.
local now = now_ms()
if redis.call('EXISTS', KEYS[1]) == 1 then
  keep_alive(KEYS[1], KEYS[2], tonumber(ARGV[5]), tonumber(ARGV[6]))
end
local status = 1
if ARGV[7] == '1' then
  local lease = redis.call('ZSCORE', KEYS[5], ARGV[1])
  if lease and tonumber(lease) >= now then
    renew_lease(KEYS[3], KEYS[4], KEYS[5], ARGV[1], now, tonumber(ARGV[2]))
  else
    status = 0
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', '(' .. string.format('%d', now))
if #dead > 0 then
  local gone = {}
  for _, node in ipairs(dead) do gone[node] = true end
  local flat = redis.call('HGETALL', KEYS[3])
  for i = 1, #flat, 2 do
    local node = parse_conn(flat[i + 1])
    if gone[node] then remove_conn(KEYS[3], KEYS[4], flat[i], flat[i + 1], ARGV[4], ARGV[3]) end
  end
  redis.call('ZREM', KEYS[5], unpack(dead))
end
return status
