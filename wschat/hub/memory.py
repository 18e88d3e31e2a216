"""The embedded, single-process backend (the default: ``memory://``).

Rooms, history and presence live in this process's memory. Delivery is a
direct call into the Hub, so a publish fans out before it returns. A restart
loses history, so every room gets a new random epoch, which tells reconnecting
clients that what they missed cannot be recovered.

State stays bounded however many rooms are used. A room someone is in (this
node is subscribed to it, or a connection is present in it) is kept whole. Of
the rooms nobody is in, at most ``max_idle_rooms`` are kept (epoch, seq and
history): past that, rooms with nothing in history are forgotten first, then
the least recently used. With a history TTL, the sweep that expires history
also forgets every room nobody is in that has no history left. A forgotten
room that is used again starts afresh with a new epoch, so a client asking to
recover from the old one gets ``complete: false``.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskGroup

from ..chat import Position, membership_event
from .backend import (
    DEFAULT_DEDUP_SIZE,
    DEFAULT_DEDUP_TTL,
    DEFAULT_HISTORY_SIZE,
    ChatMessage,
    Deliver,
    Delivery,
    History,
    message_payload,
)

# Rooms nobody is in that are kept. Each holds up to history_size
# messages (100 by default, ~300 B each for a short message; 4 KiB text at
# most), so 1,000 such rooms are ~30 MiB typical, ~400 MiB at worst, while
# covering the rooms people come back to. Deployments with more rooms that must
# keep history when empty raise it or use the Redis backend.
DEFAULT_MAX_IDLE_ROOMS = 1000


@dataclass(slots=True)
class _Room:
    epoch: str
    seq: int = 0
    # (seq, encoded event, monotonic time stored)
    history: deque[tuple[int, bytes, float]] = field(default_factory=deque)
    connections: dict[str, str] = field(default_factory=dict)  # conn_id -> username
    users: Counter[str] = field(default_factory=Counter)
    # (username, message id) -> (seq, monotonic time published), oldest first
    ids: OrderedDict[tuple[str, str], tuple[int, float]] = field(default_factory=OrderedDict)


class MemoryBackend:
    """In-process backend: one node, history and presence in memory.

    Args:
        history_size: Messages kept per room.
        history_ttl: Seconds a message stays in history (None: no expiry).
        max_idle_rooms: Rooms nobody is in that are kept, at most (those with
            no history left forgotten first, then the least recently used); 0
            forgets a room as soon as nobody is in it.
        clock: Monotonic clock, injectable for tests.
        dedup_ttl: Seconds a message id is remembered (idempotent publish).
        dedup_size: Message ids remembered per room.
    """

    def __init__(
        self,
        history_size: int = DEFAULT_HISTORY_SIZE,
        history_ttl: float | None = None,
        max_idle_rooms: int = DEFAULT_MAX_IDLE_ROOMS,
        clock: Callable[[], float] = time.monotonic,
        dedup_ttl: float = DEFAULT_DEDUP_TTL,
        dedup_size: int = DEFAULT_DEDUP_SIZE,
    ) -> None:
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.max_idle_rooms = max_idle_rooms
        self.dedup_ttl = dedup_ttl
        self.dedup_size = dedup_size
        self._clock = clock
        self._rooms: dict[str, _Room] = {}
        # Rooms nobody is in, least recently used first (values unused): those
        # with history, and those without (forgotten first).
        self._idle: OrderedDict[str, None] = OrderedDict()
        self._idle_empty: OrderedDict[str, None] = OrderedDict()
        self._subscribed: set[str] = set()
        self._deliver: Deliver | None = None

    async def start(self, deliver: Deliver, task_group: TaskGroup) -> None:
        """Start delivering events to ``deliver`` (and expiring history, with a TTL)."""
        self._deliver = deliver
        if self.history_ttl is not None:
            task_group.start_soon(self._sweep_forever, self.history_ttl)

    async def _sweep_forever(self, ttl: float) -> None:
        while self._deliver is not None:
            await anyio.sleep(max(ttl / 2, 0.05))
            self.sweep()

    def sweep(self) -> None:
        """Expire old history; forget the rooms nobody is in that have none left."""
        for state in self._rooms.values():
            self._expire(state)
        for room in [room for room in self._idle if not self._rooms[room].history]:
            del self._idle[room]
            del self._rooms[room]
        for room in self._idle_empty:
            del self._rooms[room]
        self._idle_empty.clear()

    def statistics(self) -> dict[str, int]:
        """``rooms``: rooms held; ``idle_rooms``: those of them nobody is in."""
        return {"rooms": len(self._rooms), "idle_rooms": len(self._idle) + len(self._idle_empty)}

    def _settle(self, room: str) -> None:
        """File ``room`` as in use or idle after something changed in it; keep the cap."""
        state = self._rooms.get(room)
        if state is None:
            return
        if state.connections or room in self._subscribed:
            self._idle.pop(room, None)
            self._idle_empty.pop(room, None)
            return
        self._expire(state)
        into, out_of = self._idle, self._idle_empty
        if not state.history:
            into, out_of = out_of, into
        out_of.pop(room, None)
        into[room] = None
        into.move_to_end(room)
        while len(self._idle) + len(self._idle_empty) > self.max_idle_rooms:
            victims = self._idle_empty or self._idle
            forgotten, _ = victims.popitem(last=False)
            del self._rooms[forgotten]

    async def aclose(self) -> None:
        """Nothing to release; stops deliveries."""
        self._deliver = None

    async def subscribe(self, room: str) -> None:
        """Deliver ``room``'s events from now on."""
        self._subscribed.add(room)
        self._settle(room)

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events; the room may now be forgotten (see above)."""
        self._subscribed.discard(room)
        self._settle(room)

    def _room(self, room: str) -> _Room:
        state = self._rooms.get(room)
        if state is None:
            state = self._rooms[room] = _Room(epoch=secrets.token_hex(6))
        return state

    def _emit(self, room: str, delivery: Delivery) -> None:
        if self._deliver is not None and room in self._subscribed:
            self._deliver(room, delivery)

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next seq, keep the message in history and deliver it.

        A retry of a message id (same sender) within ``dedup_ttl`` returns the
        original position and publishes nothing.
        """
        state = self._rooms.get(room) or self._room(room)
        now = self._clock()
        ids = state.ids
        if ids:
            horizon = now - self.dedup_ttl
            while ids and next(iter(ids.values()))[1] <= horizon:
                ids.popitem(last=False)
        if message.id is not None:
            seen = ids.get((message.username, message.id))
            if seen is not None:
                return Position(state.epoch, seen[0])
            ids[(message.username, message.id)] = (state.seq + 1, now)
            while len(ids) > self.dedup_size:
                ids.popitem(last=False)
        seq = state.seq = state.seq + 1
        position = Position(state.epoch, seq)
        payload = message_payload(room, position, message)
        history = state.history
        history.append((seq, payload, now))
        while len(history) > self.history_size:
            history.popleft()
        if self.history_ttl is not None:
            self._expire(state)
        self._emit(room, Delivery(payload, seq))
        self._settle(room)
        return position

    async def history(self, room: str, since: Position | None) -> History:
        """Messages after ``since``; ``complete`` is False when some are gone."""
        state = self._room(room)
        self._expire(state)
        answer = _read_history(state, since)
        self._settle(room)  # reading a room nobody is in counts as using it
        return answer

    def _expire(self, state: _Room) -> None:
        if self.history_ttl is None:
            return
        horizon = self._clock() - self.history_ttl
        while state.history and state.history[0][2] < horizon:
            state.history.popleft()

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """Deliver an ephemeral event to this node's members of ``room``."""
        self._emit(room, Delivery(payload, None, origin=origin))

    async def presence_join(self, room: str, conn_id: str, username: str) -> None:
        """Add a connection; emit ``joined`` for the user's first connection."""
        state = self._room(room)
        if conn_id in state.connections:
            return
        state.connections[conn_id] = username
        self._settle(room)
        state.users[username] += 1
        if state.users[username] == 1:
            self._emit(room, Delivery(membership_event("joined", room, username), None))

    async def presence_leave(self, room: str, conn_id: str) -> None:
        """Remove a connection; emit ``left`` when the user's last one leaves."""
        state = self._rooms.get(room)
        if state is None or conn_id not in state.connections:
            return
        username = state.connections.pop(conn_id)
        state.users[username] -= 1
        if state.users[username] == 0:
            del state.users[username]
            self._emit(room, Delivery(membership_event("left", room, username), None))
        self._settle(room)

    async def rooms(self) -> dict[str, int]:
        """Every room someone is in, with how many users (each once)."""
        return {room: len(state.users) for room, state in self._rooms.items() if state.users}

    async def presence(self, room: str) -> list[str]:
        """Usernames present in ``room``."""
        state = self._rooms.get(room)
        return sorted(state.users) if state is not None else []


def _read_history(state: _Room, since: Position | None) -> History:
    position = Position(state.epoch, state.seq)
    retained = state.history
    if since is None:
        return History([payload for _, payload, _ in retained], position, True)
    if since.epoch != state.epoch or since.seq > state.seq:
        return History([payload for _, payload, _ in retained], position, False)
    missed = [payload for seq, payload, _ in retained if seq > since.seq]
    oldest_needed = since.seq + 1
    complete = oldest_needed > state.seq or (bool(retained) and retained[0][0] <= oldest_needed)
    return History(missed, position, complete)
