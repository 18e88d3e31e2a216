"""Where a client is in one room, and which of the room's messages the user gets.

Each room keeps the position (epoch, seq) of the last message the user was
given. On every new connection each room is re-joined with ``since`` that
position; until the room's ``history`` answer arrives, its live events are
buffered. The answer's messages are then given out, minus those already seen
(same epoch, seq not newer), a :class:`~.events.Gap` first when the server says
``complete: false``, then the buffered live events, minus duplicates again. So
each message reaches the user once and in order. A live message that skips a
seq, or comes from a new epoch, starts the same recovery without reconnecting.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..chat import Position
from .events import Event, Message


class Placement(enum.Enum):
    """Where a message falls against what the user was given in its room."""

    NEW = "new"
    """Next (or the first): give it to the user."""
    SEEN = "seen"
    """At or before the room's position: given already, drop it."""
    HOLE = "hole"
    """Past a missing message, or of a new epoch: recover the room first."""


@dataclass(slots=True)
class RoomState:
    """One room of a client session."""

    position: Position | None = None
    """The last message given to the user (or the history position on joining)."""
    live: bool = False
    """The room's join was answered on the current connection."""
    buffer: list[Event] = field(default_factory=list)
    """Live events that came while the join was unanswered."""

    def place(self, message: Message, detect_holes: bool) -> Placement:
        """Where ``message`` falls; ``detect_holes`` False (history) never says HOLE."""
        last = self.position
        if last is None:
            return Placement.NEW
        if message.position.epoch != last.epoch:
            return Placement.HOLE if detect_holes else Placement.NEW
        if message.position.seq > last.seq + 1 and detect_holes:
            return Placement.HOLE
        return Placement.NEW if message.position.seq > last.seq else Placement.SEEN

    def connection_lost(self) -> None:
        """Not live any more; what was buffered is recovered from history next time."""
        self.live = False
        self.buffer.clear()

    def take_buffer(self) -> list[Event]:
        """The buffered live events, oldest first; the buffer starts empty again."""
        buffered, self.buffer = self.buffer, []
        return buffered
