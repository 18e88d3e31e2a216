"""Room messages over Redis: publish, history, and the pub/sub readers that deliver them.

Theory of operation
-------------------
Publish. One Lua script (``publish.lua``) atomically gets (or creates) the
room's epoch, checks the sender's message id against the room's recent ids,
increments the seq, splices seq and epoch into the event JSON the node
pre-encoded around them (so the bytes are exactly
:func:`wschat.hub.backend.message_payload`'s), appends it to the history stream under
the id ``{seq}-0`` (trimmed to ``history_size`` entries and to ``history_ttl``
by the time Redis stored each) and publishes ``{seq}|{epoch}|{json}`` on the
room's channel. Presence events travel on the same channel as ``|{json}``, so
they are ordered with messages, and relayed ephemeral events (``typing``) as
``R{origin}|{json}``. A retry of an id already published returns the
original position and publishes nothing.

Delivery. A node holds one pub/sub connection per shard (one Redis: one; a
Cluster: one per master it has rooms on), each read by one task, so a room's
events reach the node in the order Redis published them. For each subscribed
room the node remembers the last position it delivered. Before subscribing it
reads the room's position (the baseline); when Redis confirms a subscription
(first time, after a reconnect, or after the room moved to another shard) and
whenever a delivered seq skips ahead, the node reads the missing messages from
the stream and delivers them first, in order; seqs already delivered are
dropped, so the overlap between stream and pub/sub is harmless.

A hole is never silent. If the room's seq moved past what the node delivered
and the stream no longer holds the next message (history shorter than the
outage, ``history_size`` 0, expired by ``history_ttl``), or the epoch changed
(Redis lost the room), the node emits a gap marker first: the Hub makes the
room's members reconnect and recover with ``complete: false``.

Bounded keys. Every publish and read gives the room's position (and history,
when history has no TTL of its own) ``idle_ttl`` more; subscribed nodes renew
it from their presence heartbeat. A room nobody publishes to, reads or is
subscribed to disappears from Redis after ``idle_ttl``.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from ...chat import Position
from ..backend import BackendUnavailable, ChatMessage, Delivery, History, message_payload
from . import keys, scripts
from .topology import COMMAND_TIMEOUT, Topology

logger = logging.getLogger("wschat.hub.redis")

# Errors that mean "Redis cannot answer now" (the cluster client raises
# RedisClusterException, outside RedisError, when no node or slot answers).
FAILURES = (RedisError, RedisClusterException, OSError)
_EPOCH_MARK = "E"
_RELAY_MARK = b"R"
_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 1.0
# The reader PINGs after this long without traffic and gives the connection up
# after two unanswered intervals (TCP keepalive alone takes minutes).
_PING_INTERVAL = 5.0
_CLOSE_TIMEOUT = 2.0


@dataclass(slots=True, eq=False)
class _Room:
    """A subscribed room: its channel, its shard and the last position delivered here.

    ``epoch`` is None until the baseline is read ("" when the room had no epoch
    yet); a room is only subscribed once it has a baseline.
    """

    channel: bytes
    shard: str
    epoch: str | None = None
    seq: int = 0
    active: anyio.Event = field(default_factory=anyio.Event)
    """Set once Redis confirmed the subscription (and the gap was filled)."""


def split_message(room: str, message: ChatMessage) -> tuple[bytes, bytes]:
    """The message event JSON up to ``"seq":`` and after the epoch, for Lua to splice."""
    sample = message_payload(room, Position(_EPOCH_MARK, 0), message)
    marker = b'"seq":0,"epoch":"' + _EPOCH_MARK.encode() + b'"'
    head, found, tail = sample.partition(marker)
    if not found:  # pragma: no cover - message_event's key order changed
        raise AssertionError("message_event no longer puts seq before epoch")
    return head + b'"seq":', tail


@dataclass(frozen=True, slots=True)
class Limits:
    """What a room keeps in Redis, in the units the scripts take (ms)."""

    history_size: int
    history_ttl_ms: int
    idle_ms: int
    dedup_ms: int
    dedup_size: int


class Messages:
    """Publish, history and delivery of room events for one node.

    Args:
        topology: One Redis or a Cluster.
        limits: History, idle and dedup bounds.
        emit: Called with every event to deliver (never blocks).
        resubscribed: Called with a room whose subscription came back after a
            loss (its presence may have changed meanwhile).
    """

    def __init__(
        self,
        topology: Topology,
        limits: Limits,
        emit: Callable[[str, Delivery], None],
        resubscribed: Callable[[str], None],
    ) -> None:
        self.topology = topology
        self.limits = limits
        self._emit = emit
        self._resubscribed = resubscribed
        self.rooms: dict[str, _Room] = {}
        self._readers: dict[str, _ShardReader] = {}
        self._group: TaskGroup | None = None
        self.reconnects = 0
        """How many times a pub/sub connection was re-established."""

    def start(self, group: TaskGroup) -> None:
        """Start readers in ``group`` from now on."""
        self._group = group

    # -- publish and history -----------------------------------------------------

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next position, store the message and publish it, atomically.

        Raises:
            BackendUnavailable: Redis did not take the message (or did not say).
        """
        head, tail = split_message(room, message)
        limits = self.limits
        try:
            seq, epoch, _ = await scripts.PUBLISH(
                self.topology.commands,
                keys.message_keys(room),
                [
                    secrets.token_hex(6),
                    head,
                    tail,
                    limits.history_size,
                    limits.history_ttl_ms,
                    limits.idle_ms,
                    keys.channel(room),
                    self.topology.publish_command,
                    keys.identity(message.username, message.id) if message.id else "",
                    limits.dedup_ms,
                    limits.dedup_size,
                ],
            )
        except FAILURES as exc:
            raise BackendUnavailable(f"Redis did not take the message: {exc}") from exc
        return Position(epoch.decode(), int(seq))

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """Publish an ephemeral event on the room's channel: no seq, no history.

        Raises:
            BackendUnavailable: Redis did not take it.
        """
        data = _RELAY_MARK + origin.encode() + b"|" + payload
        try:
            await self.topology.publish(keys.channel(room), data)
        except FAILURES as exc:
            raise BackendUnavailable(f"Redis did not relay the event: {exc}") from exc

    async def read_room(
        self, room: str, since: Position | None
    ) -> tuple[str, int, list[tuple[int, bytes]]]:
        """The room's (epoch, seq) and the retained messages after ``since``."""
        reply = await scripts.READ(
            self.topology.commands,
            keys.message_keys(room),
            [
                secrets.token_hex(6),
                since.epoch if since is not None else "",
                since.seq if since is not None else 0,
                self.limits.history_ttl_ms,
                self.limits.idle_ms,
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
            epoch, seq, entries = await self.read_room(room, since)
        except FAILURES as exc:
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

    # -- subscriptions -------------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Deliver ``room``'s events from now on; returns once Redis confirmed it.

        Raises:
            BackendUnavailable: Redis could not tell the room's position or did
                not confirm the subscription in time.
        """
        state = self.rooms.get(room)
        if state is None:
            try:
                shard = self.topology.shard_of(room)
            except FAILURES as exc:
                raise BackendUnavailable(f"no Redis shard serves {room!r}: {exc}") from exc
            state = self.rooms[room] = _Room(keys.channel(room).encode(), shard)
            try:
                await self.baseline(room, state)
            except FAILURES as exc:
                if self.rooms.get(room) is state:
                    del self.rooms[room]
                raise BackendUnavailable(f"cannot subscribe to {room!r}: {exc}") from exc
            if self.rooms.get(room) is state:
                await self._reader(state.shard).add(room, state)
        # Presence events have no stream to fill from: return only once Redis
        # routes the channel to this node.
        with anyio.move_on_after(COMMAND_TIMEOUT):
            await state.active.wait()
        if not state.active.is_set():
            if self.rooms.get(room) is state:
                await self.unsubscribe(room)
            raise BackendUnavailable(f"Redis did not confirm the subscription to {room!r}")

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events."""
        state = self.rooms.pop(room, None)
        if state is None:
            return
        state.active.set()  # release a subscribe() still waiting
        reader = self._readers.get(state.shard)
        if reader is not None:
            await reader.remove(room, state)

    async def baseline(self, room: str, state: _Room) -> None:
        """Record the room's position before subscribing: later messages get delivered."""
        meta = keys.room_key(room, "meta")
        epoch, seq = await self.topology.commands.hmget(meta, ["epoch", "seq"])
        if state.epoch is None:
            state.epoch = epoch.decode() if isinstance(epoch, bytes) else ""
            state.seq = int(seq) if seq is not None else 0

    def _reader(self, shard: str) -> _ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = _ShardReader(self, shard)
            assert self._group is not None, "Messages.start() first"
            self._group.start_soon(reader.run, name=f"wschat redis reader {shard or 'main'}")
        return reader

    async def reroute(self, reader: _ShardReader) -> None:
        """After a shard failed: move its rooms whose slot another master owns now."""
        try:
            await self.topology.refresh()
        except FAILURES as exc:
            logger.debug("cluster topology refresh failed: %s", exc)
            return
        for room, state in list(reader.rooms.items()):
            try:
                shard = self.topology.shard_of(room)
            except FAILURES:
                continue
            if shard != reader.shard and self.rooms.get(room) is state:
                del reader.rooms[room]
                state.shard = shard
                logger.info("room %s moved to shard %s", room, shard)
                await self._reader(shard).add(room, state)

    # -- delivery ------------------------------------------------------------------

    async def on_event(self, room: str, state: _Room, data: bytes) -> None:
        """One pub/sub message of ``room``: deliver it in order, filling any gap first."""
        bar = data.index(b"|")
        if bar == 0:  # presence: no position
            self._emit(room, Delivery(data[1:], None))
            return
        if data[:1] == _RELAY_MARK:  # an ephemeral event: R{origin}|{json}
            self._emit(room, Delivery(data[bar + 1 :], None, origin=data[1:bar].decode()))
            return
        bar2 = data.index(b"|", bar + 1)
        seq = int(data[:bar])
        epoch = data[bar + 1 : bar2].decode()
        if epoch == state.epoch:
            if seq <= state.seq:
                return  # already delivered (from the stream)
            if seq == state.seq + 1:
                state.seq = seq
                self._emit(room, Delivery(data[bar2 + 1 :], seq))
                return
        elif seq == 1 and state.epoch == "":  # a new room's first message
            state.epoch, state.seq = epoch, 1
            self._emit(room, Delivery(data[bar2 + 1 :], seq))
            return
        # A gap, or a new epoch: deliver what the stream has first.
        await self.fill(room, state)
        if self.rooms.get(room) is state and epoch == state.epoch and seq > state.seq:
            state.seq = seq
            self._emit(room, Delivery(data[bar2 + 1 :], seq))

    async def on_subscribed(self, room: str, state: _Room) -> None:
        """Redis confirmed ``room``'s subscription: deliver what it missed meanwhile."""
        await self.fill(room, state)
        if state.active.is_set():
            self._resubscribed(room)  # came back after a loss
        state.active.set()

    async def fill(self, room: str, state: _Room) -> None:
        """Deliver the stream's messages after the last one this node delivered.

        Emits a gap marker first when some of them are gone from Redis.
        """
        since = Position(state.epoch, state.seq) if state.epoch else None
        epoch, seq, entries = await self.read_room(room, since)
        if self.rooms.get(room) is not state:
            return
        lost_epoch = bool(state.epoch) and epoch != state.epoch
        if epoch != state.epoch:
            state.epoch, state.seq = epoch, 0
        missing = seq > state.seq and (not entries or entries[0][0] > state.seq + 1)
        if lost_epoch or missing:
            # Messages this node never delivered are gone from Redis: its members
            # must recover (and learn it is incomplete) rather than miss them silently.
            self._emit(room, Delivery(b"", None, gap=True))
        for entry_seq, payload in entries:
            if entry_seq > state.seq:
                state.seq = entry_seq
                self._emit(room, Delivery(payload, entry_seq))
        state.seq = max(state.seq, seq)  # what is behind the marker is not delivered later


class _ShardReader:
    """The pub/sub connection to one shard and the task that reads it."""

    def __init__(self, messages: Messages, shard: str) -> None:
        self.messages = messages
        self.shard = shard
        self.rooms: dict[str, _Room] = {}
        self.pubsub: PubSub | None = None
        self._unsubscribing: Counter[bytes] = Counter()
        topology = messages.topology
        self._sharded = topology.sharded
        self._message_kind = "smessage" if topology.sharded else "message"
        self._subscribed_kind = "ssubscribe" if topology.sharded else "subscribe"

    async def add(self, room: str, state: _Room) -> None:
        """Carry ``room`` on this shard (subscribe now if connected)."""
        self.rooms[room] = state
        pubsub = self.pubsub
        if pubsub is not None and state.epoch is not None:
            try:
                await self._subscribe(pubsub, [state.channel])
            except FAILURES as exc:  # the reader reconnects and subscribes it
                logger.debug("subscribing %s failed: %s", room, exc)

    async def remove(self, room: str, state: _Room) -> None:
        """Stop carrying ``room``."""
        if self.rooms.get(room) is state:
            del self.rooms[room]
        pubsub = self.pubsub
        if pubsub is not None:
            try:
                if self._sharded:
                    self._unsubscribing[state.channel] += 1
                    await pubsub.sunsubscribe(state.channel)
                else:
                    await pubsub.unsubscribe(state.channel)
            except FAILURES as exc:  # a reconnect leaves it out anyway
                logger.debug("unsubscribing %s failed: %s", room, exc)

    async def _subscribe(self, pubsub: PubSub, channels: list[bytes]) -> None:
        if not self._sharded:
            await pubsub.subscribe(*channels)
            return
        # One SSUBSCRIBE may name several channels only if they share a slot.
        by_slot: defaultdict[int, list[bytes]] = defaultdict(list)
        for name in channels:
            by_slot[key_slot(name)].append(name)
        for same_slot in by_slot.values():
            await pubsub.ssubscribe(*same_slot)

    async def run(self) -> None:
        """Connect, subscribe every room of the shard and deliver; reconnect on failure."""
        messages = self.messages
        topology = messages.topology
        delay = _RECONNECT_MIN
        connected_before = False
        while True:
            pubsub = topology.pubsub(self.shard)
            try:
                await pubsub.connect()  # type: ignore[no-untyped-call]
                for room, state in list(self.rooms.items()):
                    if state.epoch is None:
                        await messages.baseline(room, state)
                # From here add() subscribes new rooms itself.
                self.pubsub = pubsub
                self._unsubscribing.clear()
                channels = [s.channel for s in self.rooms.values() if s.epoch is not None]
                if channels:
                    await self._subscribe(pubsub, channels)
                if connected_before:
                    messages.reconnects += 1
                    logger.info(
                        "pub/sub reconnected to %s (%d rooms)",
                        topology.where(self.shard),
                        len(channels),
                    )
                connected_before = True
                delay = _RECONNECT_MIN
                await self._consume(pubsub)
            except FAILURES as exc:
                logger.warning("pub/sub connection to %s lost: %s", topology.where(self.shard), exc)
            except Exception:  # a bug must not take the node down: start over
                logger.exception("pub/sub reader failed; reconnecting")
            finally:
                self.pubsub = None
                with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(*FAILURES):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await anyio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)
            if topology.sharded:
                await messages.reroute(self)

    async def _consume(self, pubsub: PubSub) -> None:
        """Deliver pub/sub messages until the connection fails."""
        messages = self.messages
        rooms = self.rooms
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
            if kind == self._message_kind:
                room = keys.room_of_channel(msg["channel"])
                state = rooms.get(room)
                if state is not None:
                    await messages.on_event(room, state, msg["data"])
            elif kind == self._subscribed_kind:
                room = keys.room_of_channel(msg["channel"])
                state = rooms.get(room)
                if state is not None and state.epoch is not None:
                    await messages.on_subscribed(room, state)
            elif kind == "sunsubscribe":
                name: bytes = msg["channel"]
                if self._unsubscribing[name] > 0:
                    self._unsubscribing[name] -= 1
                    if not self._unsubscribing[name]:
                        del self._unsubscribing[name]
                elif keys.room_of_channel(name) in rooms:
                    # Redis dropped the subscription itself: the slot moved.
                    raise RedisConnectionError(f"{name.decode()} moved to another shard")
