"""The Backend protocol: what a Hub asks of the thing that carries rooms between nodes.

A Hub (one per node) owns its local members and fans out to them. A Backend
assigns each published message its room position (epoch, seq), delivers every
room event to every node subscribed to the room (this node included), keeps a
bounded history per room and tracks presence. Backends are chosen by URL
(``memory://``, ``redis://host:port/db``) through :func:`wschat.hub.open_backend`.

Every backend must pass the shared suite in ``tests/test_backends.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from anyio.abc import TaskGroup

from ..chat import Position, message_event

# Centrifugo recovers up to 300 publications and most chat UIs show the last
# screenful; 100 keeps a reconnect cheap while covering a short outage.
DEFAULT_HISTORY_SIZE = 100
# Centrifugo's presence_ttl is 60 s; half of it removes a dead node's members sooner
# while a node heartbeats every third of it.
DEFAULT_PRESENCE_TTL = 30.0
# Idempotent publish: a retried message (same sender, same id) within this window
# returns the original position. Precedents: Centrifugo keeps idempotent publish
# results for 5 minutes, NATS JetStream's duplicate window is 2 minutes. A client
# retries within seconds, or after a reconnect: 5 minutes covers both.
DEFAULT_DEDUP_TTL = 300.0
# ...and among the last this many ids of the room (the bound on what a room keeps:
# a room busier than ~3 messages with ids a second remembers them for less long).
DEFAULT_DEDUP_SIZE = 1000


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A message to publish; the backend adds the room position.

    Attributes:
        username: The sender, as bound to its connection.
        message: The text.
        time: Server time, RFC 3339 UTC (stamped by the Hub).
        id: The sender's id for the message, if it gave one.
        name: The sender's display name, for an authenticated sender.
        server: True for a message the server published (HTTP API, ``App.publish``).
    """

    username: str
    message: str
    time: str
    id: str | None = None
    name: str | None = None
    server: bool = False


def message_payload(room: str, position: Position, message: ChatMessage) -> bytes:
    """``message`` at ``position`` as the encoded ``message`` event backends store and deliver."""
    return message_event(
        room,
        position,
        message.username,
        message.message,
        message.time,
        message.id,
        name=message.name,
        server=message.server,
    )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One room event arriving at this node.

    Attributes:
        payload: The encoded JSON event, ready to frame.
        seq: The room sequence number of a ``message`` event; None for
            presence events (``joined``/``left``), which have no position.
        gap: True for a marker (empty payload) saying this node missed some of
            the room's messages that the backend no longer has; the Hub then
            makes its members reconnect and recover.
        origin: For a relayed ephemeral event, the connection that sent it (it
            does not get its own event back).
    """

    payload: bytes
    seq: int | None
    gap: bool = False
    origin: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    """The answer to a history request.

    Attributes:
        messages: Encoded ``message`` events, oldest first.
        position: The room's latest position when history was read.
        complete: False when messages were missed that history no longer holds
            (or the epoch changed): never a partial list presented as complete.
    """

    messages: list[bytes]
    position: Position
    complete: bool


Deliver = Callable[[str, Delivery], None]
"""The Hub's callback for room events: ``deliver(room, delivery)``. Never blocks."""

PublishDone = Callable[["Position | BackendUnavailable"], None]
"""Called once with a queued publish's position, or the error that refused it."""


class BackendError(Exception):
    """Base class of backend errors."""


class BackendUnavailable(BackendError):
    """The backend cannot take the request now (e.g. Redis is down).

    A message refused with this error was not published; its sender gets an
    ``error`` reply with code ``unavailable``.
    """


class Backend(Protocol):
    """What every hub backend provides. See the module docstring."""

    async def start(self, deliver: Deliver, task_group: TaskGroup) -> None:
        """Connect, and start delivering subscribed rooms' events to ``deliver``.

        Background work (readers, heartbeats) runs in ``task_group``.

        Raises:
            BackendUnavailable: The backend cannot be reached at start-up.
        """

    async def aclose(self) -> None:
        """Stop background work and release connections."""

    async def subscribe(self, room: str) -> None:
        """Deliver ``room``'s events to this node from now on.

        Returns once deliveries are flowing, so nothing published after it returns
        is missed.

        Raises:
            BackendUnavailable: The backend cannot be reached.
        """

    async def unsubscribe(self, room: str) -> None:
        """Stop delivering ``room``'s events to this node."""

    async def publish(self, room: str, message: ChatMessage) -> Position:
        """Assign the next position in ``room``, store it in history and deliver it.

        Idempotent for messages with an ``id``: when the same ``(username, id)``
        was published in ``room`` within the backend's dedup TTL (and is among
        the room's last dedup-size ids), this returns the original position and
        publishes nothing.

        Raises:
            BackendUnavailable: The message was not published.
        """

    # A backend whose publish waits for a round trip may also offer
    # ``publish_soon(room, message, done: PublishDone) -> None``: the same
    # publish, queued without waiting (a room's in the order queued), ``done``
    # called with the position or the BackendUnavailable. The Hub's ``say_soon``
    # uses it; a backend without it (memory: publish never suspends) is awaited.

    async def history(self, room: str, since: Position | None) -> History:
        """Messages after ``since`` (None: the latest retained window).

        Raises:
            BackendUnavailable: The backend cannot be reached.
        """

    async def relay(self, room: str, payload: bytes, origin: str) -> None:
        """Deliver an ephemeral event to every node subscribed to ``room``, as it is.

        No position, no history, no recovery: a node that misses it misses it.
        ``origin`` (the sending connection) comes back in ``Delivery.origin``.

        Raises:
            BackendUnavailable: The event was not relayed.
        """

    async def presence_join(self, room: str, conn_id: str, username: str) -> None:
        """Record that connection ``conn_id`` of ``username`` is in ``room``.

        Emits ``joined`` to the room when it is the user's first connection there.
        """

    async def presence_leave(self, room: str, conn_id: str) -> None:
        """Remove connection ``conn_id`` from ``room``'s presence.

        Emits ``left`` to the room when it was the user's last connection there.
        """

    async def presence(self, room: str) -> list[str]:
        """The usernames present in ``room`` (each once).

        Raises:
            BackendUnavailable: The backend cannot be reached.
        """

    async def rooms(self) -> dict[str, int]:
        """Every room with users present on any node → how many users (each once).

        For the HTTP API's ``GET /api/rooms``: may cost a pass over every room.

        Raises:
            BackendUnavailable: The backend cannot be reached.
        """
