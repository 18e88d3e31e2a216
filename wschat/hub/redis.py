"""The Redis backend (``redis://host:port/db``): rooms shared by many nodes.

Theory of operation
-------------------
Every node holds one ordinary connection pool for commands and ONE pub/sub
connection, read by a single task, so a room's events reach a node in the
order Redis published them.

Messages. :meth:`RedisBackend.publish` runs one Lua script that, atomically,
gets (or creates) the room's epoch, increments its seq, splices seq and epoch
into the message JSON the node pre-encoded around them (so the bytes are
exactly :func:`wschat.chat.message_event`'s), appends it to the room's history
stream under the id ``{seq}-0`` (trimmed to exactly ``history_size`` entries,
and to ``history_ttl`` by the time Redis stored each one) and PUBLISHes
``{seq}|{epoch}|{json}`` on the room channel. Presence events travel on the
same channel as ``|{json}``. The reader splits the header off without
decoding JSON.

No message lost that Redis still has. For each subscribed room the node
remembers the last position it delivered. Before SUBSCRIBE it reads the room's
position (the baseline); when Redis confirms a subscription (first time or
after a reconnect) and whenever a delivered seq skips ahead, the node reads the
missing messages from the stream and delivers them first, in order. Seqs it
already delivered are dropped, so the overlap between stream and pub/sub is
harmless. If the room's epoch changed (Redis lost its memory) the new epoch's
messages are delivered from its start; the old epoch's are never re-sent.

Presence. Each connection is a field of ``wschat:{room}:conns`` whose value
names the owning node; ``wschat:{room}:users`` counts connections per user,
so ``joined`` goes out on a user's first connection in the room and ``left``
on the last (published by the same script, so they are ordered with
messages). Each node keeps ``wschat:node:{id}`` alive with a TTL of
``presence_ttl`` and refreshes it every third of that; every node also sweeps
every third of it, removing the connections of nodes whose key expired (and
emitting their ``left`` events). A node that finds its own key gone (Redis
restarted, or it was cut off longer than the TTL) registers again and re-adds
its local connections.

Failures. Commands are never retried by redis-py (a retried publish could be
published twice); a publish that fails raises :class:`BackendUnavailable`.
The reader reconnects with exponential backoff (50 ms to 1 s), resubscribes
every room and fills the gaps. Presence changes that fail are kept and
replayed by the heartbeat once Redis answers again.

Key layout (room ``r``, node ``n``)::

    wschat:{r}:meta      hash   epoch, seq
    wschat:{r}:history   stream id "{seq}-0", fields p (event JSON), t (ms, Redis TIME)
    wschat:{r}:conns     hash   conn_id -> "{node}\\n{left event JSON}\\n{username}"
    wschat:{r}:users     hash   username -> connections in the room
    wschat:node:n        string heartbeat, PX presence_ttl
    wschat:node:n:members set   "{len(r)}:{r}{conn_id}" for each connection of n
    wschat:nodes         set    nodes owning presence entries
    wschat:room:r        pub/sub channel

The braces make every per-room key of a room hash to the same Redis Cluster
slot; the presence sweep still touches several rooms' keys in one script, so
the backend targets a single Redis (or a primary with replicas), not a Cluster.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from ..chat import Position, membership_event
from .backend import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_PRESENCE_TTL,
    BackendUnavailable,
    ChatMessage,
    Deliver,
    Delivery,
    History,
    message_payload,
)

logger = logging.getLogger("wschat.hub.redis")

CHANNEL_PREFIX = "wschat:room:"
_CHANNEL_PREFIX = CHANNEL_PREFIX.encode()
_EPOCH_MARK = "E"
_RELAY_MARK = b"R"
_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 1.0
# The reader PINGs after this long without traffic and gives the connection up
# after two unanswered intervals (TCP keepalive alone takes minutes).
_PING_INTERVAL = 5.0
_COMMAND_TIMEOUT = 5.0
_CONNECT_TIMEOUT = 2.0
_CLOSE_TIMEOUT = 2.0

# Errors that mean "Redis cannot answer now".
_FAILURES = (RedisError, OSError)


def meta_key(room: str) -> str:
    """The hash holding ``room``'s epoch and seq."""
    return f"wschat:{{{room}}}:meta"


def history_key(room: str) -> str:
    """The stream holding ``room``'s retained messages."""
    return f"wschat:{{{room}}}:history"


def conns_key(room: str) -> str:
    """The hash of ``room``'s present connections."""
    return f"wschat:{{{room}}}:conns"


def users_key(room: str) -> str:
    """The hash counting ``room``'s connections per username."""
    return f"wschat:{{{room}}}:users"


def node_key(node_id: str) -> str:
    """A node's heartbeat key."""
    return f"wschat:node:{node_id}"


def node_members_key(node_id: str) -> str:
    """The set of a node's present connections, as ``member_entry`` strings."""
    return f"wschat:node:{node_id}:members"


NODES_KEY = "wschat:nodes"


def channel(room: str) -> str:
    """The pub/sub channel of ``room``."""
    return CHANNEL_PREFIX + room


def member_entry(room: str, conn_id: str) -> str:
    """A connection in a node's member set: ``{len(room)}:{room}{conn_id}`` (bytes length)."""
    return f"{len(room.encode())}:{room}{conn_id}"


# -- Lua -----------------------------------------------------------------------
# Key names built inside Lua must match the functions above.

_LUA_NOW = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

_LUA_EPOCH = """
local function room_epoch(meta, stream, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = fresh
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', epoch, 'seq', 0)
  end
  return epoch
end
"""

# Drop history entries stored before ``horizon`` (ms): they are a prefix.
_LUA_EXPIRE = """
local function expire(stream, horizon)
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
"""

# KEYS: meta, history. ARGV: fresh epoch, JSON head (ends with "seq":), JSON tail
# (starts after the epoch), history size, history ttl ms (0: none), channel.
_PUBLISH = (
    _LUA_NOW
    + _LUA_EPOCH
    + _LUA_EXPIRE
    + """
local epoch = room_epoch(KEYS[1], KEYS[2], ARGV[1])
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local s = string.format('%d', seq)
local payload = ARGV[2] .. s .. ',"epoch":"' .. epoch .. '"' .. ARGV[3]
local size = tonumber(ARGV[4])
if size > 0 then
  local now = now_ms()
  redis.call('XADD', KEYS[2], 'MAXLEN', size, s .. '-0', 'p', payload,
             't', string.format('%d', now))
  local ttl = tonumber(ARGV[5])
  if ttl > 0 then
    expire(KEYS[2], now - ttl)
    redis.call('PEXPIRE', KEYS[2], ttl)
  end
else
  redis.call('DEL', KEYS[2])
end
redis.call('PUBLISH', ARGV[6], s .. '|' .. epoch .. '|' .. payload)
return {seq, epoch}
"""
)

# KEYS: meta, history. ARGV: fresh epoch, since epoch ('' for none), since seq,
# history ttl ms. Returns {epoch, seq, seq1, payload1, seq2, payload2, ...}.
_READ = (
    _LUA_NOW
    + _LUA_EPOCH
    + _LUA_EXPIRE
    + """
local epoch = room_epoch(KEYS[1], KEYS[2], ARGV[1])
local seq = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local ttl = tonumber(ARGV[4])
if ttl > 0 then expire(KEYS[2], now_ms() - ttl) end
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
"""
)

_LUA_REMOVE = """
local function remove_conn(room, conn)
  local conns = 'wschat:{' .. room .. '}:conns'
  local value = redis.call('HGET', conns, conn)
  if not value then return 0 end
  redis.call('HDEL', conns, conn)
  local a = string.find(value, '\\n', 1, true)
  local b = string.find(value, '\\n', a + 1, true)
  local node = string.sub(value, 1, a - 1)
  local left = string.sub(value, a + 1, b - 1)
  local username = string.sub(value, b + 1)
  redis.call('SREM', 'wschat:node:' .. node .. ':members',
             string.format('%d', string.len(room)) .. ':' .. room .. conn)
  local users = 'wschat:{' .. room .. '}:users'
  if redis.call('HINCRBY', users, username, -1) <= 0 then
    redis.call('HDEL', users, username)
    redis.call('PUBLISH', 'wschat:room:' .. room, '|' .. left)
  end
  return 1
end

local function drop_node(node)
  local members = 'wschat:node:' .. node .. ':members'
  for _, entry in ipairs(redis.call('SMEMBERS', members)) do
    local colon = string.find(entry, ':', 1, true)
    local n = tonumber(string.sub(entry, 1, colon - 1))
    remove_conn(string.sub(entry, colon + 1, colon + n), string.sub(entry, colon + n + 1))
  end
  redis.call('DEL', members)
  redis.call('SREM', 'wschat:nodes', node)
end
"""

# KEYS: conns, users, heartbeat, node members, nodes. ARGV: node, conn, username,
# joined JSON, left JSON, channel, member entry. -1: node not registered.
_JOIN = """
if redis.call('EXISTS', KEYS[3]) == 0 then return -1 end
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[1] .. '\\n' .. ARGV[5] .. '\\n' .. ARGV[3])
redis.call('SADD', KEYS[4], ARGV[7])
redis.call('SADD', KEYS[5], ARGV[1])
if redis.call('HINCRBY', KEYS[2], ARGV[3], 1) == 1 then
  redis.call('PUBLISH', ARGV[6], '|' .. ARGV[4])
end
return 1
"""

# KEYS: conns, users (declared; the names are rebuilt from ARGV). ARGV: room, conn.
_LEAVE = (
    _LUA_REMOVE
    + """
return remove_conn(ARGV[1], ARGV[2])
"""
)

# KEYS: conns. Usernames of connections whose node is alive.
_PRESENCE = """
local flat = redis.call('HGETALL', KEYS[1])
local alive, seen, names = {}, {}, {}
for i = 2, #flat, 2 do
  local value = flat[i]
  local a = string.find(value, '\\n', 1, true)
  local node = string.sub(value, 1, a - 1)
  local ok = alive[node]
  if ok == nil then
    ok = redis.call('EXISTS', 'wschat:node:' .. node) == 1
    alive[node] = ok
  end
  if ok then
    local b = string.find(value, '\\n', a + 1, true)
    local name = string.sub(value, b + 1)
    if not seen[name] then
      seen[name] = true
      names[#names + 1] = name
    end
  end
end
return names
"""

# KEYS: heartbeat, nodes. ARGV: node, ttl ms. 1: was alive; 0: (re)registered.
_BEAT = """
if redis.call('PEXPIRE', KEYS[1], ARGV[2]) == 1 then return 1 end
redis.call('SET', KEYS[1], '1', 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 0
"""

# Remove the connections of every node whose heartbeat expired.
_SWEEP = (
    _LUA_REMOVE
    + """
local dropped = 0
for _, node in ipairs(redis.call('SMEMBERS', 'wschat:nodes')) do
  if redis.call('EXISTS', 'wschat:node:' .. node) == 0 then
    drop_node(node)
    dropped = dropped + 1
  end
end
return dropped
"""
)

# ARGV: node. A node leaving cleanly.
_GOODBYE = (
    _LUA_REMOVE
    + """
drop_node(ARGV[1])
redis.call('DEL', 'wschat:node:' .. ARGV[1])
return 1
"""
)


@dataclass(slots=True, eq=False)
class _Room:
    """A subscribed room: its channel and the last position delivered to this node.

    ``epoch`` is None until the baseline is read ("" when the room had no epoch
    yet); a room is only SUBSCRIBEd once it has a baseline.
    """

    channel: bytes
    epoch: str | None = None
    seq: int = 0
    active: anyio.Event = field(default_factory=anyio.Event)
    """Set once Redis confirmed the subscription (and the gap was filled)."""


def _split_message(room: str, message: ChatMessage) -> tuple[bytes, bytes]:
    """The message event JSON up to ``"seq":`` and after the epoch, for Lua to splice."""
    sample = message_payload(room, Position(_EPOCH_MARK, 0), message)
    marker = b'"seq":0,"epoch":"' + _EPOCH_MARK.encode() + b'"'
    head, found, tail = sample.partition(marker)
    if not found:  # pragma: no cover - message_event's key order changed
        raise AssertionError("message_event no longer puts seq before epoch")
    return head + b'"seq":', tail


class RedisBackend:
    """A backend shared by every node connected to one Redis.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``).
        history_size: Messages kept per room (exactly).
        history_ttl: Seconds a message stays in history (None: no expiry).
        presence_ttl: Seconds after its last heartbeat that a node's members
            are removed from presence.
        node_id: This node's name in presence (default: random).
    """

    def __init__(
        self,
        url: str,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: float | None = None,
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        node_id: str | None = None,
    ) -> None:
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be > 0")
        if node_id is not None and (not node_id or "\n" in node_id or ":" in node_id):
            raise ValueError("node_id must be non-empty, without newlines or colons")
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.presence_ttl = presence_ttl
        self.node_id = node_id or secrets.token_hex(8)
        self._ttl_ms = round(history_ttl * 1000) if history_ttl else 0
        self._presence_ttl_ms = max(1, round(presence_ttl * 1000))
        self._interval = presence_ttl / 3
        self._redis: Redis = Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            socket_connect_timeout=_CONNECT_TIMEOUT,
            socket_timeout=_COMMAND_TIMEOUT,
        )
        self._publish = self._redis.register_script(_PUBLISH)
        self._read = self._redis.register_script(_READ)
        self._join = self._redis.register_script(_JOIN)
        self._leave = self._redis.register_script(_LEAVE)
        self._presence = self._redis.register_script(_PRESENCE)
        self._beat = self._redis.register_script(_BEAT)
        self._sweep = self._redis.register_script(_SWEEP)
        self._goodbye = self._redis.register_script(_GOODBYE)
        self._deliver: Deliver | None = None
        self._rooms: dict[str, _Room] = {}
        self._pubsub: PubSub | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._closed = False
        # Presence of this node's connections, replayed after Redis lost it.
        self._local: dict[tuple[str, str], str] = {}
        self._pending_leaves: set[tuple[str, str]] = set()
        self._presence_dirty = False
        self._heal_lock = anyio.Lock()
        self.reconnects = 0
        """How many times the pub/sub connection was re-established."""

    # -- lifecycle -------------------------------------------------------------

    async def start(self, deliver: Deliver, task_group: TaskGroup) -> None:
        """Register this node, then read pub/sub and heartbeat in ``task_group``.

        Raises:
            BackendUnavailable: Redis cannot be reached now.
        """
        try:
            await self._beat(
                keys=[node_key(self.node_id), NODES_KEY], args=[self.node_id, self._presence_ttl_ms]
            )
        except _FAILURES as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self._where()}: {exc}") from exc
        self._deliver = deliver
        self._scope = anyio.CancelScope()
        task_group.start_soon(self._run, name=f"wschat redis backend {self.node_id}")

    async def aclose(self) -> None:
        """Stop, remove this node's presence (emitting ``left``) and close connections."""
        if self._closed:
            return
        self._closed = True
        self._deliver = None
        if self._scope is not None:
            self._scope.cancel()
            with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                await self._stopped.wait()
        self._local.clear()
        self._pending_leaves.clear()
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            try:
                await self._goodbye(args=[self.node_id])
            except _FAILURES as exc:
                logger.warning("could not remove node %s's presence: %s", self.node_id, exc)
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._redis.aclose()

    async def _run(self) -> None:
        assert self._scope is not None
        try:
            with self._scope:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._reader)
                    group.start_soon(self._heartbeat)
        finally:
            self._stopped.set()

    def _where(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    # -- subscriptions and the reader -----------------------------------------

    async def subscribe(self, room: str) -> None:
        """Deliver ``room``'s events from now on; returns once Redis confirmed it.

        Messages published after the call starts are delivered even if they
        beat the subscription (from the history stream). Call after :meth:`start`.

        Raises:
            BackendUnavailable: Redis could not tell the room's position or did
                not confirm the subscription in time.
        """
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(channel(room).encode())
            try:
                await self._baseline(room, state)
            except _FAILURES as exc:
                if self._rooms.get(room) is state:
                    del self._rooms[room]
                raise BackendUnavailable(f"cannot subscribe to {room!r}: {exc}") from exc
            pubsub = self._pubsub
            if pubsub is not None and self._rooms.get(room) is state:
                try:
                    await pubsub.subscribe(state.channel)
                except _FAILURES as exc:  # the reader reconnects and subscribes it
                    logger.debug("SUBSCRIBE %s failed: %s", room, exc)
        # Presence events have no stream to fill from: return only once Redis
        # routes the channel to this node.
        with anyio.move_on_after(_COMMAND_TIMEOUT):
            await state.active.wait()
        if not state.active.is_set():
            if self._rooms.get(room) is state:
                await self.unsubscribe(room)
            raise BackendUnavailable(f"Redis did not confirm the subscription to {room!r}")

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events."""
        state = self._rooms.pop(room, None)
        if state is not None:
            state.active.set()  # release a subscribe() still waiting
        pubsub = self._pubsub
        if state is not None and pubsub is not None:
            try:
                await pubsub.unsubscribe(state.channel)
            except _FAILURES as exc:  # a reconnect leaves it out anyway
                logger.debug("UNSUBSCRIBE %s failed: %s", room, exc)

    async def _baseline(self, room: str, state: _Room) -> None:
        """Record the room's position before SUBSCRIBE: later messages get delivered."""
        epoch, seq = await self._redis.hmget(meta_key(room), ["epoch", "seq"])
        if state.epoch is None:
            state.epoch = epoch.decode() if isinstance(epoch, bytes) else ""
            state.seq = int(seq) if seq is not None else 0

    async def _reader(self) -> None:
        delay = _RECONNECT_MIN
        connected_before = False
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                for room, state in list(self._rooms.items()):
                    if state.epoch is None:
                        await self._baseline(room, state)
                # From here a new subscribe() sends its own SUBSCRIBE; rooms whose
                # baseline is still being read are left to it.
                self._pubsub = pubsub
                channels = [s.channel for s in self._rooms.values() if s.epoch is not None]
                if channels:
                    await pubsub.subscribe(*channels)
                if connected_before:
                    self.reconnects += 1
                    logger.info(
                        "pub/sub reconnected to %s (%d rooms)", self._where(), len(channels)
                    )
                connected_before = True
                delay = _RECONNECT_MIN
                await self._consume(pubsub)
            except _FAILURES as exc:
                logger.warning("pub/sub connection to %s lost: %s", self._where(), exc)
            except Exception:  # a bug must not take the node down: start over
                logger.exception("pub/sub reader failed; reconnecting")
            finally:
                self._pubsub = None
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(*_FAILURES):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await anyio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)

    async def _consume(self, pubsub: PubSub) -> None:
        """Deliver pub/sub messages until the connection fails."""
        rooms = self._rooms
        start = len(_CHANNEL_PREFIX)
        silent = 0
        while True:
            msg: dict[str, Any] | None = await pubsub.get_message(timeout=_PING_INTERVAL)
            if msg is None:
                silent += 1
                if silent > 2:
                    raise RedisConnectionError("pub/sub connection stopped answering PING")
                await pubsub.ping()
                continue
            silent = 0
            kind = msg["type"]
            if kind == "message":
                room = msg["channel"][start:].decode()
                state = rooms.get(room)
                if state is None:
                    continue
                data: bytes = msg["data"]
                bar = data.index(b"|")
                if bar == 0:  # presence: no position
                    self._emit(room, Delivery(data[1:], None))
                    continue
                if data[:1] == _RELAY_MARK:  # an ephemeral event: R{origin}|{json}
                    origin = data[1:bar].decode()
                    self._emit(room, Delivery(data[bar + 1 :], None, origin=origin))
                    continue
                bar2 = data.index(b"|", bar + 1)
                seq = int(data[:bar])
                epoch = data[bar + 1 : bar2].decode()
                if epoch == state.epoch:
                    if seq <= state.seq:
                        continue  # already delivered (from the stream)
                    if seq == state.seq + 1:
                        state.seq = seq
                        self._emit(room, Delivery(data[bar2 + 1 :], seq))
                        continue
                elif seq == 1 and state.epoch == "":  # a new room's first message
                    state.epoch, state.seq = epoch, 1
                    self._emit(room, Delivery(data[bar2 + 1 :], seq))
                    continue
                # A gap, or a new epoch: deliver what the stream has first.
                await self._fill(room, state)
                if rooms.get(room) is state and epoch == state.epoch and seq > state.seq:
                    state.seq = seq
                    self._emit(room, Delivery(data[bar2 + 1 :], seq))
            elif kind == "subscribe":
                room = msg["channel"][start:].decode()
                state = rooms.get(room)
                if state is not None and state.epoch is not None:
                    await self._fill(room, state)
                    state.active.set()

    async def _fill(self, room: str, state: _Room) -> None:
        """Deliver the stream's messages after the last one this node delivered."""
        since = Position(state.epoch, state.seq) if state.epoch else None
        epoch, _, entries = await self._read_room(room, since)
        if self._rooms.get(room) is not state:
            return
        lost_epoch = bool(state.epoch) and epoch != state.epoch
        if epoch != state.epoch:
            state.epoch, state.seq = epoch, 0
        if lost_epoch or (entries and entries[0][0] > state.seq + 1):
            # Messages this node never delivered are gone from Redis: its members
            # must recover (and learn it is incomplete) rather than miss them silently.
            self._emit(room, Delivery(b"", None, gap=True))
        for seq, payload in entries:
            if seq > state.seq:
                state.seq = seq
                self._emit(room, Delivery(payload, seq))

    def _emit(self, room: str, delivery: Delivery) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        try:
            deliver(room, delivery)
        except Exception:
            logger.exception("delivering an event of room %r failed", room)

    # -- messages and history ----------------------------------------------------

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next position, store the message and publish it, atomically.

        Raises:
            BackendUnavailable: Redis did not take the message.
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        head, tail = _split_message(room, message)
        try:
            seq, epoch = await self._publish(
                keys=[meta_key(room), history_key(room)],
                args=[
                    secrets.token_hex(6),
                    head,
                    tail,
                    self.history_size,
                    self._ttl_ms,
                    channel(room),
                ],
            )
        except _FAILURES as exc:
            raise BackendUnavailable(f"Redis did not take the message: {exc}") from exc
        return Position(epoch.decode(), int(seq))

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """PUBLISH an ephemeral event on the room's channel (no seq, no history).

        Raises:
            BackendUnavailable: Redis did not take it.
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        try:
            await self._redis.publish(channel(room), _RELAY_MARK + origin.encode() + b"|" + payload)
        except _FAILURES as exc:
            raise BackendUnavailable(f"Redis did not relay the event: {exc}") from exc

    async def _read_room(
        self, room: str, since: Position | None
    ) -> tuple[str, int, list[tuple[int, bytes]]]:
        reply = await self._read(
            keys=[meta_key(room), history_key(room)],
            args=[
                secrets.token_hex(6),
                since.epoch if since is not None else "",
                since.seq if since is not None else 0,
                self._ttl_ms,
            ],
        )
        epoch: str = reply[0].decode()
        entries = [(int(reply[i]), reply[i + 1]) for i in range(2, len(reply), 2)]
        return epoch, int(reply[1]), entries

    async def history(self, room: str, since: Position | None) -> History:
        """Messages after ``since``; ``complete`` is False when some are gone.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        try:
            epoch, seq, entries = await self._read_room(room, since)
        except _FAILURES as exc:
            raise BackendUnavailable(f"cannot read history of {room!r}: {exc}") from exc
        position = Position(epoch, seq)
        messages = [payload for _, payload in entries]
        if since is None:
            complete = True
        elif since.epoch != epoch or since.seq > seq:
            complete = False
        elif since.seq == seq:
            complete = True
        else:
            complete = bool(entries) and entries[0][0] == since.seq + 1
        return History(messages, position, complete)

    # -- presence ------------------------------------------------------------------

    async def presence_join(self, room: str, conn_id: str, username: str) -> None:
        """Add a connection; ``joined`` goes out for the user's first in the room.

        If Redis cannot be reached the change is kept and made when it can.
        """
        key = (room, conn_id)
        self._pending_leaves.discard(key)
        self._local[key] = username
        try:
            if await self._join_one(room, conn_id, username) < 0:
                await self._heal()
        except _FAILURES as exc:
            self._presence_dirty = True
            logger.warning("presence join deferred (%s): %s", room, exc)

    async def presence_leave(self, room: str, conn_id: str) -> None:
        """Remove a connection; ``left`` goes out when it was the user's last.

        If Redis cannot be reached the change is kept and made when it can.
        """
        key = (room, conn_id)
        self._local.pop(key, None)
        try:
            await self._leave(keys=[conns_key(room), users_key(room)], args=[room, conn_id])
        except _FAILURES as exc:
            self._pending_leaves.add(key)
            self._presence_dirty = True
            logger.warning("presence leave deferred (%s): %s", room, exc)

    async def presence(self, room: str) -> list[str]:
        """Usernames present in ``room`` on live nodes, sorted, each once.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        try:
            names = await self._presence(keys=[conns_key(room)])
        except _FAILURES as exc:
            raise BackendUnavailable(f"cannot read presence of {room!r}: {exc}") from exc
        return sorted(name.decode() for name in names)

    async def _join_one(self, room: str, conn_id: str, username: str) -> int:
        result: int = await self._join(
            keys=[
                conns_key(room),
                users_key(room),
                node_key(self.node_id),
                node_members_key(self.node_id),
                NODES_KEY,
            ],
            args=[
                self.node_id,
                conn_id,
                username,
                membership_event("joined", room, username),
                membership_event("left", room, username),
                channel(room),
                member_entry(room, conn_id),
            ],
        )
        return result

    async def _heartbeat_once(self) -> bool:
        """Refresh this node's heartbeat; False if it had expired (now registered again)."""
        alive = await self._beat(
            keys=[node_key(self.node_id), NODES_KEY], args=[self.node_id, self._presence_ttl_ms]
        )
        return bool(alive)

    async def _heal(self) -> None:
        """Register again and make Redis's presence match this node's connections."""
        async with self._heal_lock:
            self._presence_dirty = False
            try:
                await self._heartbeat_once()
                for room, conn_id in list(self._pending_leaves):
                    await self._leave(keys=[conns_key(room), users_key(room)], args=[room, conn_id])
                    self._pending_leaves.discard((room, conn_id))
                for (room, conn_id), username in list(self._local.items()):
                    if self._local.get((room, conn_id)) == username:
                        await self._join_one(room, conn_id, username)
                        if (room, conn_id) not in self._local:
                            # It left while we re-added it: undo, or it stays a ghost.
                            await self._leave(
                                keys=[conns_key(room), users_key(room)], args=[room, conn_id]
                            )
            except BaseException:
                self._presence_dirty = True
                raise

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self._interval)
            try:
                alive = await self._heartbeat_once()
                if not alive or self._presence_dirty:
                    if not alive:
                        logger.warning("node %s was dropped from presence; rejoining", self.node_id)
                    await self._heal()
                await self._sweep()
            except _FAILURES as exc:
                logger.debug("heartbeat failed: %s", exc)
            except Exception:
                logger.exception("presence heartbeat failed")
