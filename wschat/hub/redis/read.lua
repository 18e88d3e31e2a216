-- Read a room's position and the history after a position.
-- KEYS: meta, history, ids, idtimes.
-- ARGV: [1] fresh epoch, [2] since epoch ('' for none), [3] since seq,
-- [4] history ttl ms (0: none), [5] idle ttl ms, [6] '1' when the reader is a node
-- that delivered up to ``since`` (renew the epoch if Redis is behind it).
-- Returns {epoch, seq, seq1, payload1, seq2, payload2, ...}.
local epoch = room_epoch(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
if ARGV[6] == '1' and ARGV[2] == epoch and tonumber(ARGV[3]) > seq then
  -- A node delivered this epoch up to a seq Redis no longer has: Redis lost writes
  -- (a restart from an older snapshot, a failover to a replica that lagged).
  -- The next messages would reuse seqs already delivered, and be dropped as
  -- duplicates: this life of the room is over, start a new epoch instead. (Only
  -- a node's own position counts: a client's `since` is not evidence.)
  redis.call('DEL', KEYS[1])
  epoch = room_epoch(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
  seq = 0
end
local history_ttl = tonumber(ARGV[4])
keep_alive(KEYS[1], KEYS[2], tonumber(ARGV[5]), history_ttl)
if history_ttl > 0 then expire_history(KEYS[2], now_ms() - history_ttl) end
local out = {epoch, seq}
local start = '-'
if ARGV[2] == epoch then
  local since = tonumber(ARGV[3])
  if since == seq then return out end
  if since < seq then start = string.format('%d', since + 1) .. '-0' end
end
for _, entry in ipairs(redis.call('XRANGE', KEYS[2], start, '+')) do
  out[#out + 1] = tonumber(string.sub(entry[1], 1, -3))
  out[#out + 1] = entry[2][2]
end
return out
