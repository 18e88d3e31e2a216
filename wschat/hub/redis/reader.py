"""A node's pub/sub connection to one shard, and the task that reads it.

One reader per shard (one Redis: one; a Cluster: one per master the node has
rooms on), so a room's events reach the node in the order Redis published them.
It subscribes every room of its shard when it connects (SSUBSCRIBE grouped by
slot on a Cluster), hands each event to :class:`~.messages.Messages` (which
fills gaps), reconnects with exponential backoff (50 ms to 1 s) and, on a
Cluster, moves rooms whose slot another master owns now. A connection that
stops answering PING, or a subscription Redis drops itself (the slot moved),
is a failure like any other: reconnect, resubscribe, fill.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import anyio
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from . import keys
from .topology import FAILURES

if TYPE_CHECKING:
    from .messages import Messages, Room

logger = logging.getLogger("wschat.hub.redis")

_RECONNECT_MIN = 0.05
_RECONNECT_MAX = 1.0
# The reader PINGs after this long without traffic and gives the connection up
# after two unanswered intervals (TCP keepalive alone takes minutes).
_PING_INTERVAL = 5.0
_CLOSE_TIMEOUT = 2.0
# Subscription confirmations filled together (their reads share a pipeline).
_FILL_BATCH = 1000


class ShardReader:
    """The pub/sub connection to one shard and the task that reads it."""

    def __init__(self, messages: Messages, shard: str) -> None:
        self.messages = messages
        self.shard = shard
        self.rooms: dict[str, Room] = {}
        self.pubsub: PubSub | None = None
        self._unsubscribing: Counter[bytes] = Counter()
        topology = messages.topology
        self._sharded = topology.sharded
        self._message_kind = "smessage" if topology.sharded else "message"
        self._subscribed_kind = "ssubscribe" if topology.sharded else "subscribe"

    async def add(self, room: str, state: Room) -> None:
        """Carry ``room`` on this shard (subscribe now if connected)."""
        self.rooms[room] = state
        pubsub = self.pubsub
        if pubsub is not None and state.epoch is not None:
            try:
                await self._subscribe(pubsub, [state.channel])
            except FAILURES as exc:  # the reader reconnects and subscribes it
                logger.debug("subscribing %s failed: %s", room, exc)

    async def remove(self, room: str, state: Room) -> None:
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
        """Deliver pub/sub messages until the connection fails.

        A message redis-py has already buffered is parsed without awaiting the
        socket, so a read of many messages reaches the Hub before this task
        yields: one batch for the server's flusher.
        """
        messages = self.messages
        rooms = self.rooms
        silent = 0
        following: dict[str, Any] | None = None
        while True:
            msg: dict[str, Any] | None = following
            following = None
            if msg is None:
                msg = await pubsub.get_message(timeout=_PING_INTERVAL)
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
                following = await self._subscribed(pubsub, msg)
            elif kind == "sunsubscribe":
                name: bytes = msg["channel"]
                if self._unsubscribing[name] > 0:
                    self._unsubscribing[name] -= 1
                    if not self._unsubscribing[name]:
                        del self._unsubscribing[name]
                elif keys.room_of_channel(name) in rooms:
                    # Redis dropped the subscription itself: the slot moved.
                    raise RedisConnectionError(f"{name.decode()} moved to another shard")

    async def _subscribed(self, pubsub: PubSub, first: dict[str, Any]) -> dict[str, Any] | None:
        """Fill every room whose confirmation is in this read, together.

        A burst of joins confirms hundreds of subscriptions at once; filling
        them one after another would cost a round trip each. The
        confirmations that follow ``first`` in redis-py's buffer are taken
        too, up to the first other message (returned: it is handled after
        the fills, so every room's events stay in order), and the rooms'
        reads share the next pipeline.
        """
        batch = {keys.room_of_channel(first["channel"])}
        following: dict[str, Any] | None = None
        while len(batch) < _FILL_BATCH:
            msg: dict[str, Any] | None = await pubsub.get_message(timeout=0)
            if msg is None:
                break
            if msg["type"] != self._subscribed_kind:
                following = msg
                break
            batch.add(keys.room_of_channel(msg["channel"]))
        failures: list[Exception] = []

        async def fill(room: str, state: Room) -> None:
            try:
                await self.messages.on_subscribed(room, state)
            except FAILURES as exc:
                failures.append(exc)

        async with anyio.create_task_group() as group:
            for room in batch:
                state = self.rooms.get(room)
                if state is not None and state.epoch is not None:
                    group.start_soon(fill, room, state)
        if failures:
            raise failures[0]
        return following
