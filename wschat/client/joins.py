"""Joins waiting for their answer, and which of them an ``error`` refuses."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .events import Error

# Error codes with which a server that does not name the refused frame (no
# ``command`` in its errors) refuses a join, while one is unanswered. Leave and
# typing refusals use other codes (not_joined, bad_type on servers without
# typing), except rate_limited, which a typing notification can get too; a join
# is the likelier while one is unanswered.
JOIN_ERRORS = frozenset(
    {
        "unavailable",
        "forbidden",
        "too_many_rooms",
        "bad_username",
        "username_mismatch",
        "bad_since",
        "bad_room",
        "rate_limited",  # a join counts against the server's --rate like any text
    }
)


@dataclass(frozen=True, slots=True)
class JoinResult:
    """A join was answered.

    Attributes:
        room: The room.
        error: Why it failed, or None when the room is joined.
    """

    room: str
    error: Error | None = None


class PendingJoins:
    """The rooms whose join was sent on this connection and not answered yet, oldest first."""

    def __init__(self) -> None:
        self._rooms: deque[str] = deque()

    def sent(self, room: str) -> None:
        """A join of ``room`` went out."""
        self._rooms.append(room)

    def answered(self, room: str) -> None:
        """The join of ``room`` was answered (its history came)."""
        if room in self._rooms:
            self._rooms.remove(room)

    def clear(self) -> None:
        """The connection changed: no join is waiting any more."""
        self._rooms.clear()

    def refused_by(self, error: Error) -> str | None:
        """The room whose join ``error`` refuses (no longer waiting), or None when
        it refuses something else.

        A server that names the refused frame says so; one that does not (an
        older wschat) is taken to refuse the oldest join waiting, when the code
        is one a join gets.
        """
        if error.id is not None:
            return None  # a message's
        if error.command == "join":
            if error.room in self._rooms:
                assert error.room is not None
                self._rooms.remove(error.room)
                return error.room
            return None
        if error.command is None and error.code in JOIN_ERRORS and self._rooms:
            return self._rooms.popleft()
        return None
