"""Room presence over Redis: per-room leases, heartbeats, sweeps and heals.

Theory of operation
-------------------
Each connection is a field of the room's ``conns`` hash whose value names the
owning node; ``users`` counts connections per user, so ``joined`` goes out on a
user's first connection in the room and ``left`` on the last (published by the
same script, on the room's channel, so they are ordered with messages).

A node's connections in a room count only while its *lease* in that room (a
score in the room's ``leases`` zset: Redis time until which it holds) is alive.
Everything is per room, in the room's hash slot: no script touches two rooms,
which is what a Redis Cluster requires.

Every third of ``presence_ttl`` a node visits each room it is subscribed to or
has connections in (``room_beat.lua``): it renews its lease and the room's
keys, keeps the room's position alive, and removes the connections of nodes
whose lease expired, emitting their ``left`` events. So a node that died
without cleaning up leaves presence within the TTL plus one beat, and a room
nobody visits any more expires from Redis with its last lease.

Heals. The node's own table (``local``) is the truth about its connections. A
room whose Redis presence may differ from it (a join or leave that failed while
Redis was down; a lease found lost because Redis restarted or the node was cut
off past the TTL) is marked dirty, and the background task makes Redis match
the table with one script per room (``presence_heal.lua``). Joins and leaves
never wait for a heal, and a loss costs one heal per room however many joins
noticed it. After a room's subscription comes back from a loss, the node
re-reads its presence and sends its members the corrected list (a
``presence`` event): ``joined``/``left`` events published meanwhile were lost.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable

import anyio

from ...chat import membership_event, presence_event
from ..backend import BackendUnavailable, Delivery
from . import keys, scripts
from .pipeline import Pipelines
from .scripts import Limits
from .topology import FAILURES, Topology

# Room heartbeats sent at once (each one round trip): enough to hide latency,
# few enough to stay well inside redis-py's connection pool.
BEATS_IN_FLIGHT = 16

logger = logging.getLogger("wschat.hub.redis")


class Presence:
    """This node's presence in Redis: its connections per room, kept true in Redis.

    Args:
        topology: One Redis or a Cluster.
        commands: Where the commands go (pipelined per shard).
        node_id: This node's name in presence.
        ttl: Seconds a node's connections count after its last heartbeat.
        limits: The room bounds (the heartbeat keeps a subscribed room alive).
        emit: Called with presence lists to deliver (never blocks).
        subscribed: The rooms this node is subscribed to now.
    """

    def __init__(
        self,
        topology: Topology,
        commands: Pipelines,
        node_id: str,
        ttl: float,
        limits: Limits,
        emit: Callable[[str, Delivery], None],
        subscribed: Callable[[], Iterable[str]],
    ) -> None:
        self.topology = topology
        self.commands = commands
        self.node_id = node_id
        self.interval = ttl / 3
        self._ttl_ms = max(1, round(ttl * 1000))
        self._limits = limits
        self._emit = emit
        self._subscribed = subscribed
        self.local: dict[str, dict[str, str]] = {}
        """room -> conn_id -> username: this node's connections."""
        self._versions: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._resync: set[str] = set()
        self._wake = anyio.Event()
        self.heals = 0
        """How many room heals ran (one per room per loss)."""

    # -- changes -------------------------------------------------------------------

    async def join(self, room: str, conn_id: str, username: str) -> None:
        """Add a connection; if Redis cannot take it now, the background task will."""
        local = self.local.setdefault(room, {})
        if local.get(conn_id) == username:
            return
        local[conn_id] = username
        self._versions[room] += 1
        try:
            alive = await scripts.PRESENCE_JOIN(
                self.commands,
                keys.presence_keys(room),
                [
                    self.node_id,
                    conn_id,
                    username,
                    membership_event("joined", room, username),
                    membership_event("left", room, username),
                    keys.channel(room),
                    self.topology.publish_command,
                    self._ttl_ms,
                ],
            )
        except FAILURES as exc:
            logger.warning("presence join deferred (%s): %s", room, exc)
            self._mark_dirty(room)
            return
        if not alive and len(local) > 1:
            # Redis lost this node's other connections in the room: re-add them,
            # in the background, once.
            self._mark_dirty(room)

    async def leave(self, room: str, conn_id: str) -> None:
        """Remove a connection; if Redis cannot take it now, the background task will."""
        local = self.local.get(room)
        if local is None or local.pop(conn_id, None) is None:
            return
        if local:
            self._versions[room] += 1
        else:
            del self.local[room]
            if room in self._dirty:
                self._versions[room] += 1
            else:
                self._versions.pop(room, None)
        try:
            await scripts.PRESENCE_LEAVE(
                self.commands,
                keys.presence_keys(room),
                [
                    conn_id,
                    keys.channel(room),
                    self.topology.publish_command,
                    self.node_id,
                    "1" if local else "0",
                ],
            )
        except FAILURES as exc:
            logger.warning("presence leave deferred (%s): %s", room, exc)
            self._mark_dirty(room)

    async def members(self, room: str) -> list[str]:
        """Usernames present in ``room`` on nodes whose lease is alive, sorted.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        conns, _, leases = keys.presence_keys(room)
        try:
            names = await scripts.PRESENCE_LIST(self.commands, [conns, leases], [])
        except FAILURES as exc:
            raise BackendUnavailable(f"cannot read presence of {room!r}: {exc}") from exc
        return sorted(name.decode() for name in names)

    def resync(self, room: str) -> None:
        """``room``'s events were lost for a while: check it and resend its member list."""
        self._resync.add(room)
        self._wake.set()

    def _mark_dirty(self, room: str) -> None:
        self._dirty.add(room)
        self._wake.set()

    # -- the background task -------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat every ``interval``; heal and resync rooms as soon as asked.

        Never ends for an error (it would end the server's service group): a
        pass that fails is logged and the next one comes as usual.
        """
        next_beat = anyio.current_time() + self.interval
        while True:
            with anyio.move_on_after(max(0.0, next_beat - anyio.current_time())):
                await self._wake.wait()
            self._wake = anyio.Event()
            try:
                next_beat = await self._pass(next_beat)
            except Exception:
                logger.exception("presence upkeep failed; trying again at the next heartbeat")
                next_beat = anyio.current_time() + self.interval

    async def _pass(self, next_beat: float) -> float:
        if anyio.current_time() >= next_beat:
            next_beat = anyio.current_time() + self.interval
            await self.visit(set(self.local) | set(self._subscribed()))
        resync, self._resync = self._resync, set()
        await self.visit(resync)
        await self._heal_dirty()
        for room in resync:
            try:
                names = await self.members(room)
            except BackendUnavailable as exc:
                logger.debug("presence resync of %s failed: %s", room, exc)
                continue
            self._emit(room, Delivery(presence_event(room, names), None))
        return next_beat

    async def visit(self, rooms: Iterable[str]) -> None:
        """Heartbeat ``rooms``: renew leases, keep positions alive, sweep dead nodes.

        Up to :data:`BEATS_IN_FLIGHT` rooms at a time: one pass over thousands
        of rooms is bound by round trips, not by Redis.
        """
        down: set[str] = set()
        limiter = anyio.Semaphore(BEATS_IN_FLIGHT)
        async with anyio.create_task_group() as beats:
            for room in rooms:
                await limiter.acquire()
                beats.start_soon(self._beat, room, down, limiter)

    async def _beat(self, room: str, down: set[str], limiter: anyio.Semaphore) -> None:
        limits = self._limits
        shard = None
        try:
            shard = self.topology.shard_of(room)
            if shard in down:
                return  # one failure per shard and pass is enough
            alive = await scripts.ROOM_BEAT(
                self.commands,
                [
                    keys.room_key(room, "meta"),
                    keys.room_key(room, "history"),
                    *keys.presence_keys(room),
                ],
                [
                    self.node_id,
                    self._ttl_ms,
                    keys.channel(room),
                    self.topology.publish_command,
                    limits.idle_ms,
                    limits.history_ttl_ms,
                    "1" if room in self.local else "0",
                ],
            )
        except FAILURES as exc:
            logger.debug("presence heartbeat of %s failed: %s", room, exc)
            if shard is not None:
                down.add(shard)
            return
        finally:
            limiter.release()
        if not alive:
            logger.warning("node %s lost its presence in %s; re-adding", self.node_id, room)
            self._dirty.add(room)

    async def _heal_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for room in dirty:
            version = self._versions[room]
            try:
                await self._heal(room, self.local.get(room, {}))
            except FAILURES as exc:
                logger.debug("presence heal of %s failed: %s", room, exc)
                self._dirty.add(room)  # again at the next heartbeat or change
                continue
            if self._versions[room] != version:
                self._mark_dirty(room)  # changed while healing: once more
            elif room not in self.local:
                self._versions.pop(room, None)

    async def _heal(self, room: str, connections: dict[str, str]) -> None:
        args: list[str | int | bytes] = [
            self.node_id,
            self._ttl_ms,
            keys.channel(room),
            self.topology.publish_command,
        ]
        for conn_id, username in list(connections.items()):
            args += [
                conn_id,
                username,
                membership_event("joined", room, username),
                membership_event("left", room, username),
            ]
        await scripts.PRESENCE_HEAL(self.commands, keys.presence_keys(room), args)
        self.heals += 1

    async def goodbye(self) -> None:
        """Remove this node's connections from every room (emitting ``left``)."""
        rooms, self.local = self.local, {}
        self._dirty.clear()
        for room in rooms:
            try:
                await self._heal(room, {})
            except FAILURES as exc:  # its leases expire instead
                logger.warning("could not remove node %s from %s: %s", self.node_id, room, exc)
