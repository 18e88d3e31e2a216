-- The usernames present in a room: connections of nodes whose lease is alive.
-- KEYS: conns, leases.
local now = now_ms()
local flat = redis.call('HGETALL', KEYS[1])
local alive, seen, names = {}, {}, {}
for i = 2, #flat, 2 do
  local node, _, name = parse_conn(flat[i])
  local ok = alive[node]
  if ok == nil then
    local lease = redis.call('ZSCORE', KEYS[2], node)
    ok = lease ~= false and tonumber(lease) >= now
    alive[node] = ok
  end
  if ok and not seen[name] then
    seen[name] = true
    names[#names + 1] = name
  end
end
return names
