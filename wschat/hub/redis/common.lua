-- Helpers every wschat script starts with (scripts.py prepends this file).
-- Scripts take every key they touch in KEYS, all in one room's hash slot.

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The room's epoch. A room without one (new, idle past its TTL, or Redis lost
-- it) starts a fresh epoch at seq 0, and what is left of an older life goes.
local function room_epoch(meta, stream, ids, idtimes, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', stream, ids, idtimes)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
  end
  return epoch
end

-- Keep an idle room's position (and, when history has no TTL of its own, its
-- history) for idle ms more.
local function keep_alive(meta, stream, idle, history_ttl)
  redis.call('PEXPIRE', meta, idle)
  if history_ttl == 0 then redis.call('PEXPIRE', stream, idle) end
end

-- Drop history entries stored before horizon (ms): they are a prefix.
local function expire_history(stream, horizon)
  local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #first == 0 or tonumber(first[1][2][4]) >= horizon then return end
  while true do
    local batch = redis.call('XRANGE', stream, '-', '+', 'COUNT', 64)
    if #batch == 0 then return end
    for i, entry in ipairs(batch) do
      if tonumber(entry[2][4]) >= horizon then
        if i > 1 then redis.call('XTRIM', stream, 'MINID', entry[1]) end
        return
      end
    end
    local last = tonumber(string.sub(batch[#batch][1], 1, -3))
    redis.call('XTRIM', stream, 'MINID', string.format('%d', last + 1) .. '-0')
  end
end

-- A connection's value in conns: "{node}\n{left event JSON}\n{username}".
local function parse_conn(value)
  local a = string.find(value, '\n', 1, true)
  local b = string.find(value, '\n', a + 1, true)
  return string.sub(value, 1, a - 1), string.sub(value, a + 1, b - 1), string.sub(value, b + 1)
end

local function add_conn(conns, users, node, conn, username, joined, left, publish, channel)
  if redis.call('HSETNX', conns, conn, node .. '\n' .. left .. '\n' .. username) == 0 then
    return 0
  end
  if redis.call('HINCRBY', users, username, 1) == 1 then
    redis.call(publish, channel, '|' .. joined)
  end
  return 1
end

local function remove_conn(conns, users, conn, value, publish, channel)
  local _, left, username = parse_conn(value)
  redis.call('HDEL', conns, conn)
  if redis.call('HINCRBY', users, username, -1) <= 0 then
    redis.call('HDEL', users, username)
    redis.call(publish, channel, '|' .. left)
  end
end

-- The node holds connections in the room until now + ttl; so do the keys.
local function renew_lease(conns, users, leases, node, now, ttl)
  redis.call('ZADD', leases, now + ttl, node)
  redis.call('PEXPIRE', conns, ttl)
  redis.call('PEXPIRE', users, ttl)
  redis.call('PEXPIRE', leases, ttl)
end
