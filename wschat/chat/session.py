"""Per-connection chat rules: who this connection is and which rooms it is in.

Pure: the server feeds it parsed commands, it answers with the command to
carry out (made complete: room resolved, username bound) or a ChatError.
"""

from __future__ import annotations

from dataclasses import replace

from .errors import ChatError
from .schema import Command, Join, Leave, Say, parse_command

# Centrifugo's client.channel_limit is 128; a chat tab rarely needs more than a few.
DEFAULT_MAX_ROOMS = 32


class ChatSession:
    """The chat state of one connection.

    As in the seed, a connection is in its URL's room from the moment it
    connects. Its username is bound by its first join or message that names
    one; after that no message can speak as someone else.

    Args:
        url_room: The room named by ``/ws?room=NAME`` (default ``lobby``).
        max_rooms: How many rooms one connection may be in at once.
    """

    def __init__(self, url_room: str, max_rooms: int = DEFAULT_MAX_ROOMS) -> None:
        self.url_room = url_room
        self.max_rooms = max_rooms
        self.username: str | None = None
        self.rooms: set[str] = {url_room}
        self.legacy = True
        """True while the client has only spoken the seed's untyped format."""

    def handle(self, text: str) -> Command:
        """Parse and check one client frame against this connection's state.

        Returns the command to carry out, with ``room`` and ``username``
        filled in. State (bound username, rooms) is updated as a side effect.

        Raises:
            ChatError: The frame is invalid or not allowed now.
        """
        return self.apply(parse_command(text))

    def apply(self, command: Command) -> Command:
        """Check an already-parsed command against this connection's state (see :meth:`handle`).

        Raises:
            ChatError: The command is not allowed now.
        """
        if not isinstance(command, Say) or command.typed:
            self.legacy = False
        if isinstance(command, Say):
            room = command.room or self.url_room
            if room not in self.rooms:
                raise ChatError(
                    "not_joined", f"join room {room!r} before sending to it", command.id
                )
            try:
                username = self._bind(command.username)
            except ChatError as exc:
                exc.id = command.id
                raise
            if username is None:
                raise ChatError(
                    "no_username", "send a username (in a join or message) first", command.id
                )
            return Say(room, command.message, username, command.typed, command.id)
        if isinstance(command, Join):
            if command.room not in self.rooms and len(self.rooms) >= self.max_rooms:
                raise ChatError("too_many_rooms", f"a connection may be in {self.max_rooms} rooms")
            username = self._bind(command.username)
            self.rooms.add(command.room)
            return replace(command, username=username)
        assert isinstance(command, Leave)
        if command.room not in self.rooms:
            raise ChatError("not_joined", f"not in room {command.room!r}")
        self.rooms.discard(command.room)
        return command

    def _bind(self, username: str | None) -> str | None:
        if username is None:
            return self.username
        if self.username is None:
            self.username = username
        elif username != self.username:
            raise ChatError("username_mismatch", f"this connection speaks as {self.username!r}")
        return self.username
