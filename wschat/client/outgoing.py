"""Messages this client sent that the server has not settled yet. Pure.

Each has an id, a room and a state: queued (to send when its room is live on a
connection), sent (on the current connection, unanswered) or waiting (refused
with ``unavailable`` once: its sender decides when to send it again). A lost
connection puts what was sent back in the queue: it goes out again, with the
same id, once its room has recovered on the next connection.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ..chat import Position
from .events import Error


@dataclass(frozen=True, slots=True)
class SayResult:
    """A message was settled (or must be retried).

    Attributes:
        id: The message id.
        position: Where it was published, when it was.
        error: Why it was not, when it was not.
        retry: True when the server answered ``unavailable`` the first time:
            the caller may wait a little and call ``resend``.
    """

    id: str
    position: Position | None = None
    error: Error | None = None
    retry: bool = False


class SayState(enum.Enum):
    """Where an unsettled message is."""

    QUEUED = "queued"
    SENT = "sent"
    WAITING = "waiting"


@dataclass(slots=True)
class PendingSay:
    """One unsettled message."""

    room: str
    text: str
    state: SayState = SayState.QUEUED
    retried: bool = False


class Outgoing:
    """The unsettled messages of one client, by id, in the order they were said."""

    def __init__(self) -> None:
        self._pending: dict[str, PendingSay] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, message_id: str, room: str, text: str) -> None:
        """A new message, queued."""
        self._pending[message_id] = PendingSay(room, text)

    def get(self, message_id: str) -> PendingSay | None:
        """The unsettled message with this id, if any."""
        return self._pending.get(message_id)

    def pop(self, message_id: str) -> PendingSay | None:
        """Remove (settle or forget) a message; returns it if it was unsettled."""
        return self._pending.pop(message_id, None)

    def in_room(self, room: str) -> list[str]:
        """The ids of ``room``'s unsettled messages."""
        return [message_id for message_id, p in self._pending.items() if p.room == room]

    def take_queued(self, room: str) -> list[tuple[str, str]]:
        """``(id, text)`` of ``room``'s queued messages, now marked sent."""
        taken = []
        for message_id, pending in self._pending.items():
            if pending.room == room and pending.state is SayState.QUEUED:
                pending.state = SayState.SENT
                taken.append((message_id, pending.text))
        return taken

    def connection_lost(self) -> None:
        """What was sent and not answered goes back in the queue."""
        for pending in self._pending.values():
            if pending.state is SayState.SENT:
                pending.state = SayState.QUEUED

    def was_sent_before(self, message_id: str, room: str) -> bool:
        """True for a message of ``room`` sent on a connection since lost.

        Such a message is settled by its copy in the room: its ack, if any, was
        lost with that connection. On the current connection the ack will come.
        """
        pending = self._pending.get(message_id)
        return pending is not None and pending.room == room and pending.state is SayState.QUEUED

    def refused_unavailable(self, message_id: str) -> bool:
        """The server answered ``unavailable``: True the first time (retry), else False."""
        pending = self._pending.get(message_id)
        if pending is None or pending.retried:
            return False
        pending.retried = True
        pending.state = SayState.WAITING
        return True

    def resend(self, message_id: str) -> str | None:
        """Queue a waiting message again; returns its room (None if not waiting)."""
        pending = self._pending.get(message_id)
        if pending is None or pending.state is not SayState.WAITING:
            return None
        pending.state = SayState.QUEUED
        return pending.room
