"""The chat state of one client across all its connections: rooms, positions, pending messages.

Theory of operation
-------------------
:class:`ClientSession` is sans-IO: the I/O layer tells it when a connection
is made or lost and feeds it every text frame; it answers with texts to send
(:meth:`~ClientSession.texts_to_send`), events for the user
(:meth:`~ClientSession.events_received`) and the results of joins and sends
(:meth:`~ClientSession.results`). It never reads a clock (``typing`` takes
``now``) and draws no random numbers (message ids come from a prefix the
caller chooses).

Recovery (:mod:`.rooms`). On every new connection each room is re-joined
with ``since`` the position of the last message the user was given; each
message reaches the user once and in order, a :class:`~.events.Gap` marking
what the server no longer has.

Pending messages (:mod:`.outgoing`). ``say`` gives each message an id. A
message is settled by its ``ack`` or by an ``error`` carrying its id. One that
is unsettled when a connection is lost is settled by its own copy in the
room's recovered history (its ack was lost with the connection), or else sent
again, with the same id, once its room has recovered on the next connection.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from ..chat import ChatError, Position, validate_room, validate_username
from ..chat.schema import validate_message
from .errors import SayError
from .events import (
    Ack,
    Error,
    Event,
    Gap,
    History,
    Message,
    Reconnected,
)
from .joins import JoinResult, PendingJoins
from .outgoing import Outgoing, SayResult
from .rooms import Placement, RoomState
from .wire import (
    Authenticated,
    Unknown,
    auth_command,
    decode_server_event,
    join_command,
    leave_command,
    message_command,
    typing_command,
)

# One typing notification per room this often at most: enough to keep a
# "typing..." indicator alive on the other side, few enough to stay well under
# the server's per-connection message rate (10/s by default).
TYPING_INTERVAL = 3.0

Result = JoinResult | SayResult


class ClientSession:
    """The chat state of one client: which rooms, where in each, what is unsettled.

    Args:
        username: The username every join binds; None when a token says who the
            client is (the server's ``authenticated`` event then names it).
        rooms: Rooms to be in from the first connection on (in order; the first
            is the URL room of each connection).
        id_prefix: Message ids are ``{id_prefix}.{n}``; make it unique per client
            (e.g. a few random characters), so that ids never repeat.

    Raises:
        ValueError: A username, room or prefix the server would refuse.
    """

    def __init__(self, username: str | None, rooms: Iterable[str], id_prefix: str) -> None:
        try:
            self._join_as = validate_username(username) if username is not None else None
            wanted = [validate_room(room) for room in rooms]
        except ChatError as exc:
            raise ValueError(exc.reason) from None
        self.username = self._join_as
        """Who this client is: the username given, or the one its token names."""
        self.name: str | None = None
        """The display name the server knows this client by, if any (from its token)."""
        self.token_expires: float | None = None
        """When the connection's token expires (Unix time), if it does."""
        self.authentications = 0
        """How many ``authenticated`` answers came on this connection (one per token)."""
        if not wanted:
            raise ValueError("give at least one room")
        self._first_room = wanted[0]
        self._rooms: dict[str, RoomState] = {room: RoomState() for room in wanted}
        self._id_prefix = id_prefix
        self._ids = itertools.count(1)
        self._outgoing = Outgoing()
        self._connected = False
        self._awaiting_joins = PendingJoins()
        self._typing_sent: dict[str, float] = {}
        self._out: list[str] = []
        self._events: list[Event] = []
        self._results: list[Result] = []
        self.unknown_events = 0
        """Texts from the server that were not a known event (skipped)."""
        self.rejoin_failed: str | None = None
        """Set when the server could not re-join a room (``unavailable``): the
        caller should reconnect later. Cleared by :meth:`connection_made`."""

    # -- state -------------------------------------------------------------------

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this client is in (or joining), in the order joined."""
        return tuple(self._rooms)

    @property
    def url_room(self) -> str:
        """The room to name in the next connection's URL (``/ws?room=...``)."""
        return next(iter(self._rooms), self._first_room)

    @property
    def connected(self) -> bool:
        """True between :meth:`connection_made` and :meth:`connection_lost`."""
        return self._connected

    @property
    def recovered(self) -> bool:
        """True when every room's join was answered on the current connection."""
        return self._connected and all(state.live for state in self._rooms.values())

    def position(self, room: str) -> Position | None:
        """The position of the last message of ``room`` given to the user."""
        state = self._rooms.get(room)
        return state.position if state is not None else None

    def pending(self) -> int:
        """Messages sent or queued and not settled yet."""
        return len(self._outgoing)

    # -- connection lifecycle ------------------------------------------------------

    def connection_made(self, url_room: str, reconnected: Reconnected | None = None) -> None:
        """A connection to ``/ws?room={url_room}`` is open: re-join every room.

        Args:
            url_room: The room its URL named (the server put it there).
            reconnected: The event to give the user first, for a reconnection.
        """
        self._connected = True
        self.rejoin_failed = None
        self.token_expires, self.authentications = None, 0
        self._awaiting_joins.clear()
        if reconnected is not None:
            self._events.append(reconnected)
        if url_room not in self._rooms:
            self._out.append(leave_command(url_room))  # left while connecting
        for room, state in self._rooms.items():
            self._send_join(room, state)

    def connection_lost(self) -> None:
        """The connection ended: what was unanswered waits for the next one."""
        self._connected = False
        self._awaiting_joins.clear()
        self._out.clear()
        for state in self._rooms.values():
            state.connection_lost()
        self._outgoing.connection_lost()

    # -- commands ------------------------------------------------------------------

    def join(self, room: str) -> bool:
        """Join ``room``. Returns False when already in it (nothing to wait for).

        A :class:`JoinResult` for the room follows in :meth:`results`.

        Raises:
            ValueError: Not a valid room name.
        """
        try:
            validate_room(room)
        except ChatError as exc:
            raise ValueError(exc.reason) from None
        if room in self._rooms:
            return False
        state = self._rooms[room] = RoomState()
        if self._connected:
            self._send_join(room, state)
        return True

    def leave(self, room: str) -> None:
        """Leave ``room`` (nothing happens when not in it).

        Its unsettled messages and an unanswered join fail with ``not_joined``.
        """
        if room not in self._rooms:
            return
        self._drop_room(room, Error("not_joined", "left before the join was answered", None, room))
        if self._connected:
            self._out.append(leave_command(room))

    def say(self, room: str, text: str) -> str:
        """Queue ``text`` for ``room``; returns its id. A :class:`SayResult` follows.

        Raises:
            SayError: The text is not a valid message (``bad_message``) or the
                room is not joined (``not_joined``): nothing was sent.
        """
        try:
            validate_message(text)
        except ChatError as exc:
            raise SayError(exc.code, exc.reason) from None
        if room not in self._rooms:
            raise SayError("not_joined", f"join {room!r} before sending to it")
        message_id = f"{self._id_prefix}.{next(self._ids)}"
        self._outgoing.add(message_id, room, text)
        self._send_queued(room)
        return message_id

    def resend(self, message_id: str) -> None:
        """Send a message that was refused with ``unavailable`` again, with the same id."""
        room = self._outgoing.resend(message_id)
        if room is not None:
            self._send_queued(room)

    def forget(self, message_id: str) -> None:
        """Stop tracking a message (its sender gave up waiting); it is not sent again."""
        self._outgoing.pop(message_id)

    def authenticate(self, token: str) -> None:
        """Send a fresh token on the open connection (before the current one expires)."""
        if self._connected:
            self._out.append(auth_command(token))

    def typing(self, room: str, now: float) -> bool:
        """Tell ``room`` this user is typing, at most every :data:`TYPING_INTERVAL` seconds.

        Args:
            room: A joined room.
            now: The caller's clock, in seconds.

        Returns:
            True when a notification was queued.
        """
        state = self._rooms.get(room)
        if state is None or not state.live:
            return False
        last = self._typing_sent.get(room)
        if last is not None and now - last < TYPING_INTERVAL:
            return False
        self._typing_sent[room] = now
        self._out.append(typing_command(room))
        return True

    # -- outputs -------------------------------------------------------------------

    def texts_to_send(self) -> list[str]:
        """Text frames to send, oldest first."""
        out, self._out = self._out, []
        return out

    def events_received(self) -> list[Event]:
        """Events for the user since the last call, in order."""
        events, self._events = self._events, []
        return events

    def results(self) -> list[Result]:
        """Join and send results since the last call."""
        results, self._results = self._results, []
        return results

    # -- input ---------------------------------------------------------------------

    def receive_text(self, text: str) -> None:
        """Feed one text frame from the server."""
        event = decode_server_event(text, self.username)
        if isinstance(event, Unknown):
            self.unknown_events += 1
        elif isinstance(event, History):
            self._on_history(event)
        elif isinstance(event, Ack):
            if not self._settle(event.id, event.position):
                self._events.append(event)  # of a message nobody waits for any more
        elif isinstance(event, Error):
            self._on_error(event)
        elif isinstance(event, Authenticated):
            self.username, self.name, self.token_expires = event.username, event.name, event.expires
            self.authentications += 1
        else:
            state = self._rooms.get(event.room)
            if state is None:
                return  # a room left a moment ago
            if not state.live:
                state.buffer.append(event)
            elif isinstance(event, Message):
                self._on_message(event.room, state, event, detect_holes=True)
            else:
                self._events.append(event)

    def _on_message(
        self, room: str, state: RoomState, message: Message, detect_holes: bool
    ) -> None:
        placement = state.place(message, detect_holes)
        if placement is Placement.HOLE:
            self._recover(room, state, message)
            return
        if placement is Placement.NEW:
            state.position = message.position
            self._events.append(message)
        if (
            message.mine
            and message.id is not None
            and self._outgoing.was_sent_before(message.id, room)
        ):
            self._settle(message.id, message.position)

    def _recover(self, room: str, state: RoomState, message: Message) -> None:
        state.buffer.append(message)
        self._send_join(room, state)  # not live until the join is answered

    def _on_history(self, reply: History) -> None:
        room = reply.room
        self._awaiting_joins.answered(room)
        state = self._rooms.get(room)
        if state is None:
            return  # left while joining
        if state.position is None:
            self._events.append(reply)  # a first join: the user gets the history as it is
        else:
            if not reply.complete:
                self._events.append(Gap(room, state.position, reply.position))
            for message in reply.messages:
                self._on_message(room, state, message, detect_holes=False)
        state.position = reply.position
        state.live = True
        for event in state.take_buffer():
            if isinstance(event, Message):
                self._on_message(room, state, event, detect_holes=True)
            elif state.live:
                self._events.append(event)
            else:
                state.buffer.append(event)  # recovering again: keep the order
        self._results.append(JoinResult(room))
        self._send_queued(room)

    def _on_error(self, error: Error) -> None:
        if error.id is not None:
            pending = self._outgoing.get(error.id)
            if pending is None:
                self._events.append(error)
            elif error.code == "unavailable" and self._outgoing.refused_unavailable(error.id):
                self._results.append(SayResult(error.id, retry=True))
            else:
                self._fail(error.id, Error(error.code, error.reason, error.id, pending.room))
            return
        room = self._awaiting_joins.refused_by(error)
        if room is not None:
            self._on_join_refused(room, error)
        else:
            self._events.append(error)

    def _on_join_refused(self, room: str, error: Error) -> None:
        state = self._rooms.get(room)
        if state is None:
            return
        if error.code in ("unavailable", "rate_limited") and state.position is not None:
            # The room was joined before: keep it, and recover it on a new connection
            # (after a backoff delay, which also lets a rate limit refill).
            self.rejoin_failed = f"cannot re-join {room!r}: {error.reason}"
            return
        refusal = Error(error.code, error.reason, None, room)
        self._events.append(refusal)
        self._drop_room(room, refusal)  # the server did not join it: no leave to send

    # -- helpers -------------------------------------------------------------------

    def _drop_room(self, room: str, join_error: Error) -> None:
        state = self._rooms.pop(room)
        if not state.live:
            self._results.append(JoinResult(room, join_error))
        for message_id in self._outgoing.in_room(room):
            self._fail(message_id, Error("not_joined", f"not in {room!r}", message_id, room))
        self._typing_sent.pop(room, None)

    def _send_join(self, room: str, state: RoomState) -> None:
        state.live = False
        self._awaiting_joins.sent(room)
        self._out.append(join_command(room, self._join_as, state.position))

    def _send_queued(self, room: str) -> None:
        state = self._rooms.get(room)
        if not self._connected or state is None or not state.live:
            return
        for message_id, text in self._outgoing.take_queued(room):
            self._out.append(message_command(room, text, message_id))

    def _settle(self, message_id: str, position: Position) -> bool:
        pending = self._outgoing.pop(message_id)
        if pending is None:
            return False
        self._events.append(Ack(pending.room, message_id, position))
        self._results.append(SayResult(message_id, position))
        return True

    def _fail(self, message_id: str, error: Error) -> None:
        self._outgoing.pop(message_id)
        self._events.append(error)
        self._results.append(SayResult(message_id, error=error))
