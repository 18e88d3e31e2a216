"""A node's pub/sub connection to one shard, and the task that reads it.

One reader per shard (one Redis: one; a Cluster: one per master the node has
rooms on), so a room's events reach the node in the order Redis published them.
It subscribes every room of its shard when it connects (SSUBSCRIBE grouped by
slot on a Cluster), hands each event to :class:`~.messages.Messages` (which
fills gaps), reconnects with exponential backoff (50 ms to 1 s) and, on a
Cluster, moves rooms whose slot another master owns now. A connection that
stops answering PING, or a subscription Redis drops itself (the slot moved),
is a failure like any other: reconnect, resubscribe, fill.

Each wait for the socket reads what Redis has sent (up to redis-py's read
size); the messages that read brought are then taken straight from redis-py's
hiredis reader and delivered without a coroutine, a timeout or a dict each
(:func:`_buffered`, ~4.6x fewer instructions per message in a burst). Other
replies take redis-py's own path, and so does every reply without hiredis or
with health checks on. This reads redis-py 8's parser (pyproject caps redis
below 9); redis-py's per-message observability hooks do not run for messages
taken this way.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio
from redis.asyncio.client import PubSub
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from . import keys
from .topology import FAILURES

# Replies redis-py's hiredis parser has read are taken from its reader directly
# (see _buffered); an empty tuple matches no parser: redis-py's path throughout.
_HIREDIS_PARSER: tuple[type[Any], ...] = ()
_HIREDIS_READER: tuple[type[Any], ...] = ()
_NOT_ENOUGH_DATA: Any = object()
with contextlib.suppress(ImportError):
    from hiredis import Reader
    from redis._parsers.hiredis import NOT_ENOUGH_DATA, _AsyncHiredisParser

    _HIREDIS_PARSER, _HIREDIS_READER, _NOT_ENOUGH_DATA = (
        (_AsyncHiredisParser,),
        (Reader,),
        NOT_ENOUGH_DATA,
    )

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


def _buffered(pubsub: PubSub) -> Callable[[], Any] | None:
    """A function returning the next reply the connection has read, or ``_NOT_ENOUGH_DATA``.

    ``gets`` of the hiredis reader inside redis-py's parser (private:
    ``Connection._parser._reader``): a complete reply costs one C call, where
    ``PubSub.parse_response`` adds a timeout, a health check, its retry and
    push layers per message. None, and every reply takes redis-py's public
    path, without hiredis, with redis-py's health checks (their replies are
    filtered there), on a disconnected parser, or when the internals differ.
    Valid until the reader next awaits: redis-py may reconnect meanwhile (a
    new parser or hiredis reader).
    """
    conn: Any = pubsub.connection
    if conn is None or conn.health_check_interval:
        return None
    if pubsub.push_handler_func is not None:  # it sees every push (RESP3) in redis-py's path
        return None
    parser = getattr(conn, "_parser", None)
    if not isinstance(parser, _HIREDIS_PARSER) or getattr(parser, "_connected", 0) is not True:
        return None
    reader = getattr(parser, "_reader", None)
    return reader.gets if isinstance(reader, _HIREDIS_READER) else None


async def _pushed(reply: Any) -> Any:
    """A pub/sub push (RESP3) as it is: redis-py's default handler formats each for a debug log."""
    return reply


def _quiet_pushes(pubsub: PubSub) -> None:
    """Have the connection's parser return pub/sub pushes without formatting them.

    ``set_pubsub_push_handler`` of the parser (private object; absent on the
    RESP2 parsers, which get no pushes). Kept if the PubSub has a handler.
    """
    setter = getattr(getattr(pubsub.connection, "_parser", None), "set_pubsub_push_handler", None)
    if callable(setter) and pubsub.push_handler_func is None:
        setter(_pushed)


async def _finish(pubsub: PubSub, reply: Any) -> Any:
    """What ``Connection.read_response`` makes of a reply taken from :func:`_buffered`.

    Error replies are raised and push notifications (RESP3) go through the
    parser's push handlers, which answer redis-py's own (maintenance ones)
    and return the pub/sub ones as they are.
    """
    if isinstance(reply, Exception):
        raise reply
    parser: Any = getattr(pubsub.connection, "_parser", None)
    push_type = getattr(parser, "_hiredis_PushNotificationType", None)
    if push_type is not None and isinstance(reply, push_type):
        return await parser.handle_push_response(reply)
    if isinstance(reply, list) and reply and isinstance(reply[0], RedisConnectionError):
        raise reply[0]
    return reply


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
                await pubsub.connect()  # type: ignore[no-untyped-call, unused-ignore]
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
                        await pubsub.aclose()
            await anyio.sleep(delay)
            delay = min(delay * 2, _RECONNECT_MAX)
            if topology.sharded:
                await messages.reroute(self)

    async def _consume(self, pubsub: PubSub) -> None:
        """Deliver pub/sub messages until the connection fails.

        Each wait for the socket is one :meth:`_read` (one timeout); the other
        replies that read brought are then taken straight from the hiredis
        reader (:func:`_buffered`) and their messages delivered synchronously
        (:meth:`~.messages.Messages.on_event_nowait`; one that needs a gap fill
        is awaited, then the buffer is taken on), up to the first reply that is
        not a message. So a read of many messages reaches the Hub
        before this task yields (one batch for the server's flusher), and
        costs a fraction of redis-py's path per message.
        """
        messages = self.messages
        on_event_nowait = messages.on_event_nowait
        rooms = self.rooms
        room_of_channel = keys.room_of_channel
        kind = self._message_kind.encode()
        silent = 0
        following: dict[str, Any] | None = None
        msg: dict[str, Any] | None
        _quiet_pushes(pubsub)
        while True:
            if following is not None:
                msg, following = following, None
            else:
                reply: Any = await self._read(pubsub)
                raw = False  # True: taken from the buffer, read_response's steps still due
                buffered = _buffered(pubsub)
                while isinstance(reply, list) and reply and reply[0] == kind:
                    silent = 0
                    room = room_of_channel(reply[1])
                    state = rooms.get(room)
                    if state is not None and not on_event_nowait(room, state, reply[2]):
                        await messages.on_event_after_fill(room, state, reply[2])
                        buffered = _buffered(pubsub)
                    if buffered is None:
                        reply = _NOT_ENOUGH_DATA
                        break
                    reply = buffered()
                    raw = True
                if reply is _NOT_ENOUGH_DATA:
                    continue
                if raw:
                    reply = await _finish(pubsub, reply)
                msg = await pubsub.handle_message(reply) if reply else None  # type: ignore[no-untyped-call, unused-ignore]
                if msg is None:
                    silent += 1
                    if silent > 2:
                        raise RedisConnectionError("pub/sub connection stopped answering PING")
                    await pubsub.ping()
                    continue
            silent = 0
            following = await self._handle(pubsub, msg)

    @staticmethod
    async def _read(pubsub: PubSub) -> Any:
        """The next reply, waiting up to ``_PING_INTERVAL`` for it (None: none came).

        ``PubSub.parse_response`` less the layers the hiredis path does not
        need: health checks (there are none then) and its retry layer (the
        clients retry nothing: it would only reconnect before raising, and
        :meth:`run` reconnects).
        """
        if _buffered(pubsub) is None:
            return await pubsub.parse_response(block=False, timeout=_PING_INTERVAL)
        conn: Any = pubsub.connection  # connected: _buffered found its parser connected
        return await conn.read_response(
            timeout=_PING_INTERVAL, disconnect_on_error=False, push_request=True
        )

    async def _handle(self, pubsub: PubSub, msg: dict[str, Any]) -> dict[str, Any] | None:
        """A reply other than a buffered message, as ``PubSub.handle_message`` made it.

        Returns the message that followed a batch of subscription
        confirmations (:meth:`_subscribed`), to handle next.
        """
        kind = msg["type"]
        if kind == self._message_kind:  # the one after a confirmation batch
            room = keys.room_of_channel(msg["channel"])
            state = self.rooms.get(room)
            if state is not None:
                await self.messages.on_event(room, state, msg["data"])
        elif kind == self._subscribed_kind:
            return await self._subscribed(pubsub, msg)
        elif kind == "sunsubscribe":
            name: bytes = msg["channel"]
            if self._unsubscribing[name] > 0:
                self._unsubscribing[name] -= 1
                if not self._unsubscribing[name]:
                    del self._unsubscribing[name]
            elif keys.room_of_channel(name) in self.rooms:
                # Redis dropped the subscription itself: the slot moved.
                raise RedisConnectionError(f"{name.decode()} moved to another shard")
        return None

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
