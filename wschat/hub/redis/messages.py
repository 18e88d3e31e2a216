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
original position and publishes nothing. Publishes go through the node's
:class:`~.pipeline.Pipelines` with every other command: all that queued during
a round trip go to the room's shard as one pipeline, in the order they were
queued (``publish_soon`` queues one without waiting), so one sender's messages
keep their order and a burst of them is one round trip.

Delivery. A node holds one pub/sub connection per shard (one Redis: one; a
Cluster: one per master it has rooms on), each read by one task, so a room's
events reach the node in the order Redis published them. The reader hands the
Hub every message redis-py has already buffered before it yields (a buffered
reply is parsed without awaiting the socket), so a read of many messages is
one batch for the server's flusher: one write per member. For each subscribed
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

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ...chat import Position
from ..backend import (
    BackendUnavailable,
    ChatMessage,
    Delivery,
    History,
    PublishDone,
)
from . import keys, scripts
from .pipeline import Pipelines
from .reader import ShardReader
from .scripts import Limits, split_message
from .topology import COMMAND_TIMEOUT, FAILURES, Topology

logger = logging.getLogger("wschat.hub.redis")

_RELAY_MARK = b"R"


@dataclass(slots=True, eq=False)
class Room:
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


def _positioned(data: bytes, bar: int) -> tuple[int, str, bytes]:
    """A message's ``{seq}|{epoch}|{json}`` as (seq, epoch, json); ``bar`` is the first ``|``."""
    bar2 = data.index(b"|", bar + 1)
    return int(data[:bar]), data[bar + 1 : bar2].decode(), data[bar2 + 1 :]


def _position(reply: Any) -> Position | BackendUnavailable:
    """The publish script's reply (or the error that answered it) as what a sender learns."""
    if isinstance(reply, Exception):
        return BackendUnavailable(f"Redis did not take the message: {reply}")
    seq, epoch, _ = reply
    return Position(epoch.decode(), int(seq))


class Messages:
    """Publish, history and delivery of room events for one node.

    Args:
        topology: One Redis or a Cluster.
        commands: Where the commands go (pipelined per shard).
        limits: History, idle and dedup bounds.
        emit: Called with every event to deliver (never blocks).
        resubscribed: Called with a room whose subscription came back after a
            loss (its presence may have changed meanwhile).
    """

    def __init__(
        self,
        topology: Topology,
        commands: Pipelines,
        limits: Limits,
        emit: Callable[[str, Delivery], None],
        resubscribed: Callable[[str], None],
    ) -> None:
        self.topology = topology
        self.commands = commands
        self.limits = limits
        self._emit = emit
        self._resubscribed = resubscribed
        self.rooms: dict[str, Room] = {}
        self._readers: dict[str, ShardReader] = {}
        self._group: TaskGroup | None = None
        self.reconnects = 0
        """How many times a pub/sub connection was re-established."""

    def start(self, group: TaskGroup) -> None:
        """Start readers and pipelines in ``group`` from now on."""
        self._group = group
        self.commands.start(group)

    # -- publish and history -----------------------------------------------------

    def publish_soon(self, room: str, message: ChatMessage, done: PublishDone) -> None:
        """Queue the publish for the room's shard's next pipeline; never blocks.

        ``done`` is called once with the position, or with
        :class:`BackendUnavailable` when Redis did not take the message (or did
        not say). A room's publishes run in the order they were queued.
        """

        def finished(reply: Any) -> None:
            done(_position(reply))

        room_keys, args = self._publish_args(room, message)
        command = ("EVALSHA", scripts.PUBLISH.sha, len(room_keys), *room_keys, *args)
        self.commands.submit(room_keys[0], command, finished)

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next position, store the message and publish it, atomically.

        Raises:
            BackendUnavailable: Redis did not take the message (or did not say).
        """
        try:
            reply = await scripts.PUBLISH(self.commands, *self._publish_args(room, message))
        except FAILURES as exc:
            reply = exc
        position = _position(reply)
        if isinstance(position, BackendUnavailable):
            raise position
        return position

    def _publish_args(self, room: str, message: ChatMessage) -> tuple[list[str], list[Any]]:
        """The publish script's keys and arguments."""
        head, tail = split_message(room, message)
        limits = self.limits
        return keys.message_keys(room), [
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
        ]

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """Publish an ephemeral event on the room's channel: no seq, no history.

        Raises:
            BackendUnavailable: Redis did not take it.
        """
        data = _RELAY_MARK + origin.encode() + b"|" + payload
        try:
            await self.commands.publish(keys.channel(room), data)
        except FAILURES as exc:
            raise BackendUnavailable(f"Redis did not relay the event: {exc}") from exc

    async def read_room(
        self, room: str, since: Position | None, delivered: bool = False
    ) -> tuple[str, int, list[tuple[int, bytes]]]:
        """The room's (epoch, seq) and the retained messages after ``since``.

        ``delivered``: ``since`` is what this node delivered, so Redis behind it
        means Redis lost writes and the room gets a new epoch.
        """
        reply = await scripts.READ(
            self.commands,
            keys.message_keys(room),
            [
                secrets.token_hex(6),
                since.epoch if since is not None else "",
                since.seq if since is not None else 0,
                self.limits.history_ttl_ms,
                self.limits.idle_ms,
                "1" if delivered else "0",
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
            state = self.rooms[room] = Room(keys.channel(room).encode(), shard)
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

    async def baseline(self, room: str, state: Room) -> None:
        """Record the room's position before subscribing: later messages get delivered."""
        meta = keys.room_key(room, "meta")
        epoch, seq = await self.commands.hmget(meta, ["epoch", "seq"])
        if state.epoch is None:
            state.epoch = epoch.decode() if isinstance(epoch, bytes) else ""
            state.seq = int(seq) if seq is not None else 0

    def _reader(self, shard: str) -> ShardReader:
        reader = self._readers.get(shard)
        if reader is None:
            reader = self._readers[shard] = ShardReader(self, shard)
            assert self._group is not None, "Messages.start() first"
            self._group.start_soon(reader.run, name=f"wschat redis reader {shard or 'main'}")
        return reader

    async def reroute(self, reader: ShardReader) -> None:
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

    def on_event_nowait(self, room: str, state: Room, data: bytes) -> bool:
        """One pub/sub message of ``room``, delivered now if it needs no gap fill.

        Returns False when it does (a seq skipped, or a new epoch): nothing was
        delivered or changed, and :meth:`on_event` must handle it. The reader
        calls this for every message, without creating a coroutine.
        """
        bar = data.index(b"|")
        if bar == 0:  # presence: no position
            self._emit(room, Delivery(data[1:], None))
            return True
        if data[:1] == _RELAY_MARK:  # an ephemeral event: R{origin}|{json}
            self._emit(room, Delivery(data[bar + 1 :], None, origin=data[1:bar].decode()))
            return True
        seq, epoch, payload = _positioned(data, bar)
        if epoch == state.epoch:
            if seq <= state.seq:
                return True  # already delivered (from the stream)
            if seq == state.seq + 1:
                state.seq = seq
                self._emit(room, Delivery(payload, seq))
                return True
        elif seq == 1 and state.epoch == "":  # a new room's first message
            state.epoch, state.seq = epoch, 1
            self._emit(room, Delivery(payload, seq))
            return True
        return False

    async def on_event(self, room: str, state: Room, data: bytes) -> None:
        """One pub/sub message of ``room``: deliver it in order, filling any gap first."""
        if not self.on_event_nowait(room, state, data):
            await self.on_event_after_fill(room, state, data)

    async def on_event_after_fill(self, room: str, state: Room, data: bytes) -> None:
        """A message :meth:`on_event_nowait` declined: the stream's messages first, then it."""
        seq, epoch, payload = _positioned(data, data.index(b"|"))
        await self.fill(room, state)
        if self.rooms.get(room) is state and epoch == state.epoch and seq > state.seq:
            state.seq = seq
            self._emit(room, Delivery(payload, seq))

    async def on_subscribed(self, room: str, state: Room) -> None:
        """Redis confirmed ``room``'s subscription: deliver what it missed meanwhile."""
        await self.fill(room, state)
        if state.active.is_set():
            self._resubscribed(room)  # came back after a loss
        state.active.set()

    async def fill(self, room: str, state: Room) -> None:
        """Deliver the stream's messages after the last one this node delivered.

        Emits a gap marker first when some of them are gone from Redis.
        """
        since = Position(state.epoch, state.seq) if state.epoch else None
        epoch, seq, entries = await self.read_room(room, since, delivered=True)
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
