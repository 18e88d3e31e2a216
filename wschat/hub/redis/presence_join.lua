-- A connection joins a room's presence; `joined` goes out for the user's first.
-- KEYS: conns, users, leases.
-- ARGV: [1] node, [2] conn, [3] username, [4] joined JSON, [5] left JSON,
-- [6] channel, [7] PUBLISH or SPUBLISH, [8] presence ttl ms.
-- Returns 1 if the node's lease in the room was alive, else 0: the node's other
-- connections in the room (if any) are missing and it must heal the room.
local now = now_ms()
local lease = redis.call('ZSCORE', KEYS[3], ARGV[1])
local alive = 0
if lease and tonumber(lease) >= now then alive = 1 end
add_conn(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[7], ARGV[6])
renew_lease(KEYS[1], KEYS[2], KEYS[3], ARGV[1], now, tonumber(ARGV[8]))
return alive
