"""The typed events a :class:`~wschat.client.ChatClient` yields.

Each is a frozen, slotted dataclass. ``async for event in chat`` yields them in
the order they happened; after a reconnect, what was missed comes first (each
message exactly once), then live events again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..chat import Position

__all__ = [
    "Ack",
    "Disconnected",
    "Error",
    "Event",
    "Gap",
    "History",
    "Joined",
    "Left",
    "Message",
    "Position",
    "Presence",
    "Reconnected",
    "Typing",
]


@dataclass(frozen=True, slots=True)
class Message:
    """A chat message in a room (live, or recovered after a reconnect).

    Attributes:
        room: The room it was sent to.
        username: Who sent it (the user id the server bound to the sender).
        text: The message.
        time: When the server published it (timezone-aware, UTC).
        position: Its place in the room's stream; unique per room.
        id: The sender's id for it, if the sender gave one.
        mine: True when it was sent under this client's username.
        name: The sender's display name, when the server knows one (authenticated
            users); show it instead of ``username`` when present.
        server: True when the server itself published it (HTTP API, app code).
    """

    room: str
    username: str
    text: str
    time: datetime
    position: Position
    id: str | None = None
    mine: bool = False
    name: str | None = None
    server: bool = False


@dataclass(frozen=True, slots=True)
class History:
    """A room's recent messages, on joining it (not on re-joining after a reconnect).

    Attributes:
        room: The room joined.
        messages: Its latest messages, oldest first.
        position: The room's position when history was read.
        complete: False when the server said messages were lost that history no
            longer holds.
    """

    room: str
    messages: tuple[Message, ...]
    position: Position
    complete: bool


@dataclass(frozen=True, slots=True)
class Presence:
    """Who is in a room, sent after each (re-)join.

    Attributes:
        room: The room.
        members: Usernames present, each once, sorted.
    """

    room: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Joined:
    """A user came into a room (their first connection there).

    Attributes:
        room: The room.
        username: The user.
        name: Their display name, if the server knows one.
    """

    room: str
    username: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Left:
    """A user left a room (their last connection there).

    Attributes:
        room: The room.
        username: The user.
        name: Their display name, if the server knows one.
    """

    room: str
    username: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Typing:
    """Another member of a room is typing (ephemeral: no position, no history).

    Attributes:
        room: The room.
        username: Who is typing.
        name: Their display name, if the server knows one.
    """

    room: str
    username: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Ack:
    """A message this client sent was published (the answer ``say`` returns, too).

    Attributes:
        room: The room it went to.
        id: The message id the client sent it with.
        position: Where it was published.
    """

    room: str
    id: str
    position: Position


@dataclass(frozen=True, slots=True)
class Error:
    """The server refused something this client sent; the connection stays open.

    Attributes:
        code: What went wrong, e.g. ``rate_limited``, ``forbidden``, ``bad_message``
            (the README's bad-input table lists them all).
        reason: A human-readable explanation.
        id: The id of the refused message, when it was one.
        room: The room of what was refused (a join, a message, an event), when known.
        command: The ``type`` of the refused frame (``join``, ``leave``, ``message``,
            ``typing``...), when the server says.
    """

    code: str
    reason: str
    id: str | None = None
    room: str | None = None
    command: str | None = None


@dataclass(frozen=True, slots=True)
class Gap:
    """Messages of a room were lost: the server's history no longer holds them.

    Comes after a reconnect when the server answers the re-join with
    ``complete: false`` (history trimmed, or the room's epoch changed, e.g. a
    restarted memory hub). The messages that history still holds follow it.

    Attributes:
        room: The room.
        since: The last position this client had seen (None if none).
        position: The room's position now.
    """

    room: str
    since: Position | None
    position: Position


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The connection was lost; the client will reconnect after ``delay`` seconds.

    Attributes:
        code: The close code (1006 when TCP ended without a close frame, or the
            connection could not be opened).
        reason: The close reason or the connection error.
        delay: Seconds until the next attempt.
    """

    code: int
    reason: str
    delay: float


@dataclass(frozen=True, slots=True)
class Reconnected:
    """A new connection is open; missed events of every room follow.

    Attributes:
        attempts: Connection attempts it took (1 when the first one worked).
        code: The close code that ended the previous connection.
        reason: Its close reason.
    """

    attempts: int
    code: int
    reason: str


Event = (
    Message
    | History
    | Presence
    | Joined
    | Left
    | Typing
    | Ack
    | Error
    | Gap
    | Disconnected
    | Reconnected
)
"""Everything ``async for event in chat`` can yield."""
