-- Make a room's presence of one node exactly the node's own list: add what is
-- missing (after Redis lost it, or a join that failed), remove the node's other
-- connections (leaves that failed). With an empty list the node leaves the room.
-- KEYS: conns, users, leases.
-- ARGV: [1] node, [2] presence ttl ms, [3] channel, [4] PUBLISH or SPUBLISH,
-- then per connection: conn, username, joined JSON, left JSON.
-- Returns the number of connections added.
local now = now_ms()
local keep, added = {}, 0
for i = 5, #ARGV, 4 do
  keep[ARGV[i]] = true
  added = added + add_conn(KEYS[1], KEYS[2], ARGV[1], ARGV[i], ARGV[i + 1], ARGV[i + 2],
                           ARGV[i + 3], ARGV[4], ARGV[3])
end
local flat = redis.call('HGETALL', KEYS[1])
for i = 1, #flat, 2 do
  if not keep[flat[i]] and parse_conn(flat[i + 1]) == ARGV[1] then
    remove_conn(KEYS[1], KEYS[2], flat[i], flat[i + 1], ARGV[4], ARGV[3])
  end
end
if #ARGV >= 5 then
  renew_lease(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, tonumber(ARGV[2]))
else
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return added
