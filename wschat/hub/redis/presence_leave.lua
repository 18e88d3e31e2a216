-- A connection leaves a room's presence; `left` goes out for the user's last.
-- KEYS: conns, users, leases.
-- ARGV: [1] conn, [2] channel, [3] PUBLISH or SPUBLISH, [4] node,
-- [5] '1' if the node keeps other connections in the room, else '0'.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if value then remove_conn(KEYS[1], KEYS[2], ARGV[1], value, ARGV[3], ARGV[2]) end
if ARGV[5] == '0' then redis.call('ZREM', KEYS[3], ARGV[4]) end
if value then return 1 end
return 0
