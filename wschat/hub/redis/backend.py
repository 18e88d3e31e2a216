"""The Redis backend: :class:`RedisBackend`, on one Redis or on a Redis Cluster."""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

import anyio
from anyio.abc import TaskGroup, TaskStatus

from ...chat import Position
from ..backend import (
    DEFAULT_DEDUP_SIZE,
    DEFAULT_DEDUP_TTL,
    DEFAULT_HISTORY_SIZE,
    DEFAULT_PRESENCE_TTL,
    BackendUnavailable,
    ChatMessage,
    Deliver,
    Delivery,
    History,
    PublishDone,
)
from .keys import room_key
from .messages import Messages
from .pipeline import Pipelines
from .presence import Presence
from .scripts import Limits
from .topology import CLUSTER_SCHEME, FAILURES, ClusterRedis, SingleRedis, Topology

logger = logging.getLogger("wschat.hub.redis")

# How long an idle room's keys stay when history never expires. Centrifugo's
# history_meta_ttl (the same idea: the stream position outlives its messages)
# defaults to 30 days.
DEFAULT_ROOM_IDLE_TTL = 30 * 24 * 3600.0
_CLOSE_TIMEOUT = 2.0


class RedisBackend:
    """A backend shared by every node connected to one Redis or one Redis Cluster.

    Args:
        url: ``redis://[user:password@]host:port/db`` (or ``rediss://``) for one
            Redis (>= 6.2: ``XTRIM MINID``);
            ``redis-cluster://[user:password@]host:port[,host:port...]`` for a
            Cluster (Redis >= 7.0: sharded pub/sub).
        history_size: Messages kept per room (exactly).
        history_ttl: Seconds a message stays in history (None: no expiry).
        presence_ttl: Seconds after its last heartbeat that a node's members
            are removed from presence.
        node_id: This node's name in presence (default: random).
        idle_ttl: Seconds after which an idle room's keys expire (None:
            ``history_ttl`` if set, else 30 days). Never less than
            ``presence_ttl``, so subscribed nodes keep their rooms alive.
        dedup_ttl: Seconds a message id is remembered (idempotent publish).
        dedup_size: Message ids remembered per room.

    Raises:
        ValueError: A bad argument or URL.
    """

    def __init__(
        self,
        url: str,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: float | None = None,
        presence_ttl: float = DEFAULT_PRESENCE_TTL,
        node_id: str | None = None,
        idle_ttl: float | None = None,
        dedup_ttl: float = DEFAULT_DEDUP_TTL,
        dedup_size: int = DEFAULT_DEDUP_SIZE,
    ) -> None:
        if history_size < 0:
            raise ValueError("history_size must be >= 0")
        if presence_ttl <= 0:
            raise ValueError("presence_ttl must be > 0")
        if dedup_ttl <= 0 or dedup_size < 1:
            raise ValueError("dedup_ttl must be > 0 and dedup_size >= 1")
        if node_id is not None and (not node_id or "\n" in node_id):
            raise ValueError("node_id must be non-empty, without newlines")
        self.url = url
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.presence_ttl = presence_ttl
        self.node_id = node_id or secrets.token_hex(8)
        idle = idle_ttl if idle_ttl is not None else history_ttl or DEFAULT_ROOM_IDLE_TTL
        self.idle_ttl = max(idle, presence_ttl)
        self.limits = Limits(
            history_size=history_size,
            history_ttl_ms=round(history_ttl * 1000) if history_ttl else 0,
            idle_ms=max(1, round(self.idle_ttl * 1000)),
            dedup_ms=max(1, round(dedup_ttl * 1000)),
            dedup_size=dedup_size,
        )
        self.topology: Topology = (
            ClusterRedis(url) if urlsplit(url).scheme == CLUSTER_SCHEME else SingleRedis(url)
        )
        self.commands = Pipelines(self.topology)
        """Every command to Redis goes here: one pipeline per round trip per shard."""
        self._messages = Messages(
            self.topology, self.commands, self.limits, self._emit, self._resubscribed
        )
        self._presence = Presence(
            self.topology,
            self.commands,
            self.node_id,
            presence_ttl,
            self.limits,
            self._emit,
            lambda: self._messages.rooms,
        )
        self._deliver: Deliver | None = None
        self._scope: anyio.CancelScope | None = None
        self._stopped = anyio.Event()
        self._closed = False

    @property
    def reconnects(self) -> int:
        """How many times a pub/sub connection was re-established."""
        return self._messages.reconnects

    @property
    def presence_heals(self) -> int:
        """How many room presence heals ran (one per room per loss)."""
        return self._presence.heals

    # -- lifecycle -------------------------------------------------------------

    async def start(self, deliver: Deliver, task_group: TaskGroup) -> None:
        """Connect, then read pub/sub and heartbeat in ``task_group``.

        Raises:
            BackendUnavailable: Redis cannot be reached now.
        """
        try:
            await self.topology.connect()
        except FAILURES as exc:
            where = self.topology.where()
            raise BackendUnavailable(f"cannot reach Redis at {where}: {exc}") from exc
        self._deliver = deliver
        self._scope = anyio.CancelScope()
        await task_group.start(self._run, name=f"wschat redis backend {self.node_id}")

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
        self.commands.stop()  # the goodbye's commands run on their own
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self._presence.goodbye()
        with anyio.move_on_after(_CLOSE_TIMEOUT, shield=True):
            await self.topology.aclose()

    async def _run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        assert self._scope is not None
        try:
            with self._scope:
                async with anyio.create_task_group() as group:
                    self._messages.start(group)
                    group.start_soon(self._presence.run, name="wschat redis presence")
                    task_status.started()
        finally:
            self.commands.stop()
            self._stopped.set()

    def _emit(self, room: str, delivery: Delivery) -> None:
        deliver = self._deliver
        if deliver is None:
            return
        try:
            deliver(room, delivery)
        except Exception:
            logger.exception("delivering an event of room %r failed", room)

    def _resubscribed(self, room: str) -> None:
        self._presence.resync(room)

    # -- the Backend protocol ----------------------------------------------------------

    async def subscribe(self, room: str) -> None:
        """Deliver ``room``'s events from now on; returns once Redis confirmed it.

        Messages published after the call starts are delivered even if they
        beat the subscription (from the history stream). Call after :meth:`start`.

        Raises:
            BackendUnavailable: Redis could not tell the room's position or did
                not confirm the subscription in time.
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        await self._messages.subscribe(room)

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events."""
        await self._messages.unsubscribe(room)

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next position, store the message and publish it, atomically.

        A retry of a message id (same sender) within ``dedup_ttl`` returns the
        original position and publishes nothing.

        Raises:
            BackendUnavailable: Redis did not take the message (or did not say).
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        return await self._messages.publish(room, message)

    def publish_soon(self, room: str, message: ChatMessage, done: PublishDone) -> None:
        """:meth:`publish` without waiting: queued for the room's shard's next pipeline.

        ``done`` is called once (maybe before this returns) with the position,
        or with :class:`~wschat.hub.BackendUnavailable`. Publishes to a room
        run in the order they were queued.
        """
        if self._closed:
            done(BackendUnavailable("the Redis backend is closed"))
            return
        self._messages.publish_soon(room, message, done)

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """Deliver an ephemeral event to every node subscribed to ``room`` (no seq, no history).

        Raises:
            BackendUnavailable: Redis did not take it.
        """
        if self._closed:
            raise BackendUnavailable("the Redis backend is closed")
        await self._messages.relay(room, payload, origin)

    async def history(self, room: str, since: Position | None) -> History:
        """Messages after ``since``; ``complete`` is False when some are gone.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        return await self._messages.history(room, since)

    async def presence_join(self, room: str, conn_id: str, username: str) -> None:
        """Add a connection; ``joined`` goes out for the user's first in the room.

        If Redis cannot be reached the change is kept and made when it can.
        """
        await self._presence.join(room, conn_id, username)

    async def presence_leave(self, room: str, conn_id: str) -> None:
        """Remove a connection; ``left`` goes out when it was the user's last.

        If Redis cannot be reached the change is kept and made when it can.
        """
        await self._presence.leave(room, conn_id)

    async def presence(self, room: str) -> list[str]:
        """Usernames present in ``room`` on live nodes, sorted, each once.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        return await self._presence.members(room)

    async def rooms(self) -> dict[str, int]:
        """Every room with users present on a live node, with how many (each user once).

        SCANs for rooms' user counts on every shard, then reads each room's
        presence (so a dead node's users do not count): a call for an
        operator's API, not for a hot path.

        Raises:
            BackendUnavailable: Redis cannot be read now.
        """
        try:
            keys = await self.topology.scan(room_key("*", "users"))
        except FAILURES as exc:
            raise BackendUnavailable(f"Redis cannot list rooms: {exc}") from exc
        counts: dict[str, int] = {}
        for key in keys:
            room = key.decode()[len("wschat:{") : -len("}:users")]
            members = await self.presence(room)
            if members:
                counts[room] = len(members)
        return counts
