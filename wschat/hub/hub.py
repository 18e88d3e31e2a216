"""The Hub: this node's rooms and members, and the broadcast fan-out.

Theory of operation
-------------------
The Hub is the node-local owner of rooms (the Go chat's Hub). A member's
message goes to ``backend.publish``; the backend assigns its position and
delivers it back to every subscribed node, this one included, through
:meth:`Hub._deliver`. There the event is framed once (:class:`PreparedMessage`;
once per compression setting for members with permessage-deflate) and the
same bytes are handed to every local member. Handing over never
blocks: a member whose backlog is over its byte limit closes itself (slow consumer); the room
goes on at full speed.

Joining is ordered so that a member never misses or reorders a message
between history and live delivery: the member first goes into a per-room
``joining`` buffer that collects live events, then history is read, sent, and
the buffered events newer than history are flushed before the member joins the
room proper. History is read on another connection than live delivery, so it
can be ahead of it: live messages the member already got in history (seq at
or below the history position) are dropped for that member until a newer one
arrives (a per-member *floor*, :mod:`.floors`).

A gap marker from the backend (live messages lost on the way to this node)
reaches joining members too: their history may predate the loss.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
from anyio.abc import TaskGroup

from ..chat import (
    Position,
    format_time,
    history_event,
    presence_event,
)
from .backend import Backend, BackendError, ChatMessage, Delivery, PublishDone
from .floors import Floors
from .members import Member, PreparedMessage

logger = logging.getLogger("wschat.hub")


class Hub:
    """Owns this node's rooms and members and fans room events out to them.

    Args:
        backend: Carries rooms between nodes and keeps history and presence.
        clock: Wall clock for message timestamps (injectable for tests).
    """

    def __init__(self, backend: Backend, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self._clock = clock
        self._rooms: dict[str, set[Member]] = {}
        self._joining: dict[str, dict[Member, list[tuple[int | None, PreparedMessage]]]] = {}
        self._floors = Floors()
        self._member_rooms: dict[Member, set[str]] = {}
        self._present: dict[Member, set[str]] = {}
        self._subscribed: set[str] = set()
        self._room_locks: dict[str, anyio.Lock] = {}
        self.broadcasts = 0
        self.deliveries = 0
        self.fanout_observer: Callable[[float], None] | None = None
        """Called with the seconds each fan-out took (e.g. a metrics histogram)."""

    async def start(self, task_group: TaskGroup) -> None:
        """Start the backend, with its background work in ``task_group``."""
        await self.backend.start(self._deliver, task_group)

    async def aclose(self) -> None:
        """Stop the backend."""
        await self.backend.aclose()

    # -- membership ------------------------------------------------------------

    async def enter(self, member: Member, room: str) -> None:
        """Put a new connection into its URL room: live messages only, no history."""
        self._member_rooms.setdefault(member, set())
        try:
            await self._ensure_subscribed(room)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._release(room)  # nothing of the room is kept for a failed enter
            raise
        self._rooms.setdefault(room, set()).add(member)
        self._member_rooms[member].add(room)
        await self._update_presence(member, room)

    async def join(
        self, member: Member, room: str, since: Position | None, *, history: bool = True
    ) -> None:
        """Join ``room`` (again): history (recovery from ``since``), presence, then live.

        With ``history=False`` (a member not allowed to read it) the ``history``
        event carries the room's position but no messages.

        If the backend fails, the member is left as it was: still in the room
        (and receiving what was published meanwhile) when it was re-joining, not
        in it when it was new.

        Raises:
            BackendUnavailable: History could not be read.
        """
        rooms = self._member_rooms.setdefault(member, set())
        rejoining = room in rooms
        members = self._rooms.get(room)
        if members is not None:
            members.discard(member)  # re-join: live events go to the buffer below
        buffer: list[tuple[int | None, PreparedMessage]] = []
        self._joining.setdefault(room, {})[member] = buffer
        rooms.add(room)
        try:
            await self._ensure_subscribed(room)
            retained = await self.backend.history(room, since)
        except BaseException:
            self._end_joining(room, member)
            if rejoining and room in rooms:
                self._rooms.setdefault(room, set()).add(member)
                for _, message in buffer:
                    member.send(message)
            else:
                rooms.discard(room)
                with anyio.CancelScope(shield=True):
                    await self._release(room)
            raise
        self._end_joining(room, member)
        if room not in self._member_rooms.get(member, ()):
            return  # left (or disconnected) while history was read
        if history:
            messages, complete = retained.messages, retained.complete
        else:  # not allowed to read it: nothing, and complete only if nothing was missed
            messages, complete = [], since is None or since == retained.position
        member.send(PreparedMessage(history_event(room, messages, retained.position, complete)))
        for seq, message in buffer:
            if seq is None or seq > retained.position.seq:
                member.send(message)
        self._floors.joined(room, member, retained.position.seq)
        self._rooms.setdefault(room, set()).add(member)
        await self._update_presence(member, room)
        try:
            present = await self.backend.presence(room)
        except BackendError as exc:
            # The member has joined; the list comes with its next join.
            logger.warning("! presence of %s unavailable: %s", room, exc)
            return
        member.send(PreparedMessage(presence_event(room, present)))

    def _end_joining(self, room: str, member: Member) -> None:
        joining = self._joining.get(room)
        if joining is not None:
            joining.pop(member, None)
            if not joining:
                del self._joining[room]

    async def update_presence(self, member: Member) -> None:
        """Call after the member's username was bound: it becomes present in its rooms."""
        for room in list(self._member_rooms.get(member, ())):
            await self._update_presence(member, room)

    async def _update_presence(self, member: Member, room: str) -> None:
        username = member.username
        present = self._present.setdefault(member, set())
        if username is not None and room not in present:
            present.add(room)
            try:
                await self.backend.presence_join(room, member.conn_id, username)
            except BaseException:
                present.discard(room)  # tried again at the next join or bind
                raise

    async def leave(self, member: Member, room: str) -> None:
        """Leave ``room``: out of its members and presence; unsubscribe if it was the last."""
        rooms = self._member_rooms.get(member)
        if rooms is None or room not in rooms:
            return
        rooms.discard(room)
        members = self._rooms.get(room)
        if members is not None:
            members.discard(member)
        self._floors.drop(room, member)
        present = self._present.get(member)
        if present is not None and room in present:
            present.discard(room)
            try:
                await self.backend.presence_leave(room, member.conn_id)
            except Exception:
                # The room must still be released; the backend's presence of a
                # dead connection expires with its node's heartbeat.
                logger.exception("! presence leave of %s from %s failed", member.conn_id, room)
        await self._release(room)

    async def disconnect(self, member: Member) -> None:
        """Remove every trace of ``member``: all rooms, presence, subscriptions.

        Never raises: a failure in one room is logged and the other rooms are
        still left.
        """
        try:
            for room in list(self._member_rooms.get(member, ())):
                try:
                    await self.leave(member, room)
                except Exception:
                    logger.exception("! leaving %s for %s failed", room, member.conn_id)
        finally:
            for room in self._member_rooms.pop(member, ()):
                members = self._rooms.get(room)
                if members is not None:
                    members.discard(member)
            self._present.pop(member, None)

    # -- messages --------------------------------------------------------------

    async def say(
        self,
        room: str,
        username: str,
        message: str,
        message_id: str | None = None,
        *,
        name: str | None = None,
        server: bool = False,
    ) -> Position:
        """Publish ``message`` from ``username`` to ``room``, stamped with the server time.

        ``message_id`` is the sender's id for the message, carried in the event;
        ``name`` the sender's display name; ``server`` marks a message the server
        itself published.

        Raises:
            BackendUnavailable: The message was not published.
        """
        stamped = ChatMessage(
            username, message, format_time(self._clock()), message_id, name, server
        )
        return await self.backend.publish(room, stamped)

    @property
    def pipelined(self) -> bool:
        """Whether :meth:`say_soon` queues without waiting (the backend has ``publish_soon``)."""
        return hasattr(self.backend, "publish_soon")

    def say_soon(
        self,
        room: str,
        username: str,
        message: str,
        message_id: str | None,
        done: PublishDone,
        *,
        name: str | None = None,
    ) -> None:
        """:meth:`say` without waiting, on a :attr:`pipelined` backend; never blocks.

        ``done`` is called once (maybe before this returns) with the position,
        or with the :class:`~wschat.hub.BackendUnavailable` that refused it. A
        room's messages are published in the order of these calls.
        """
        stamped = ChatMessage(username, message, format_time(self._clock()), message_id, name)
        self.backend.publish_soon(room, stamped, done)  # type: ignore[attr-defined]

    async def relay(self, room: str, payload: bytes, exclude: Member) -> None:
        """Relay an ephemeral event (e.g. ``typing``) to ``room``'s members on every node.

        Typed clients only (seed clients know no such events), never back to
        ``exclude`` (the sender); nothing is stored.

        Raises:
            BackendUnavailable: The event was not relayed.
        """
        await self.backend.relay(room, payload, exclude.conn_id)

    def _deliver(self, room: str, delivery: Delivery) -> None:
        members = self._rooms.get(room)
        joining = self._joining.get(room)
        if not members and not joining:
            return
        if delivery.gap:
            self._floors.forget(room)
            for member in [*(members or ()), *(joining or ())]:
                member.missed(room)
            return
        started = time.perf_counter()
        message = PreparedMessage(delivery.payload)
        seq = delivery.seq
        if seq is not None:
            self._floors.delivered(room, seq)
        if members:
            if delivery.origin is not None:
                for member in members:
                    if not member.legacy and member.conn_id != delivery.origin:
                        member.send(message)
                self.deliveries += len(members)
            elif seq is None:
                for member in members:
                    if not member.legacy:
                        member.send(message)
                self.deliveries += len(members)
            elif not self._floors.any_in(room):
                for member in members:
                    member.send(message)
                self.deliveries += len(members)
            else:
                self.deliveries += self._floors.send_above(room, members, seq, message)
        if joining:
            for buffer in joining.values():
                buffer.append((delivery.seq, message))
        self.broadcasts += 1
        if self.fanout_observer is not None:
            self.fanout_observer(time.perf_counter() - started)

    # -- subscriptions ---------------------------------------------------------

    def _lock(self, room: str) -> anyio.Lock:
        lock = self._room_locks.get(room)
        if lock is None:
            lock = self._room_locks[room] = anyio.Lock()
        return lock

    async def _ensure_subscribed(self, room: str) -> None:
        if room in self._subscribed:
            return
        async with self._lock(room):
            if room not in self._subscribed:
                await self.backend.subscribe(room)
                self._subscribed.add(room)

    async def _release(self, room: str) -> None:
        if self._rooms.get(room) or self._joining.get(room):
            return
        async with self._lock(room):
            if (
                room in self._subscribed
                and not self._rooms.get(room)
                and not self._joining.get(room)
            ):
                self._subscribed.discard(room)
                self._rooms.pop(room, None)
                self._floors.forget(room)
                try:
                    await self.backend.unsubscribe(room)
                except BackendError as exc:
                    # Harmless: deliveries for a room with no members are dropped,
                    # and a later join subscribes again.
                    logger.warning("! unsubscribe %s failed: %s", room, exc)
                except Exception:
                    logger.exception("! unsubscribe %s failed", room)
        if not self._rooms.get(room) and not self._lock(room).locked():
            self._room_locks.pop(room, None)

    # -- introspection ---------------------------------------------------------

    def members(self, room: str) -> set[Member]:
        """This node's members of ``room`` (a copy)."""
        return set(self._rooms.get(room, ()))

    def statistics(self) -> dict[str, int]:
        """Counters: rooms, members, broadcasts and deliveries on this node."""
        return {
            "rooms": len(self._rooms),
            "members": len(self._member_rooms),
            "broadcasts": self.broadcasts,
            "deliveries": self.deliveries,
        }
