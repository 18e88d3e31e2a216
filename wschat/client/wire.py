"""The client's half of the JSON wire schema: server events in, commands out.

Pure. Server events are decoded and validated with msgspec into the typed
events of :mod:`.events` (a ``history`` becomes a :class:`~.events.History`,
which the session then gives out or turns into recovered messages); a text
that is not one of them decodes to :class:`Unknown` (newer servers may add
types: a client skips what it does not know rather than fail).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from ..chat import Position
from .events import Ack, Error, History, Joined, Left, Message, Presence, Typing

_encoder = msgspec.json.Encoder()


class _Message(msgspec.Struct, tag="message", tag_field="type"):
    room: str
    seq: int
    epoch: str
    username: str
    message: str
    time: str
    id: str | None = None
    name: str | None = None
    server: bool = False


class _History(msgspec.Struct, tag="history", tag_field="type"):
    room: str
    epoch: str
    seq: int
    complete: bool
    messages: list[_Message]


class _Presence(msgspec.Struct, tag="presence", tag_field="type"):
    room: str
    members: list[str]


class _Member(msgspec.Struct, tag_field="type"):
    room: str
    username: str
    name: str | None = None


class _Joined(_Member, tag="joined"):
    pass


class _Left(_Member, tag="left"):
    pass


class _Typing(_Member, tag="typing"):
    pass


class _Ack(msgspec.Struct, tag="ack", tag_field="type"):
    id: str
    room: str
    epoch: str
    seq: int


class _Error(msgspec.Struct, tag="error", tag_field="type"):
    code: str
    reason: str
    id: str | None = None
    command: str | None = None
    room: str | None = None


class _Authenticated(msgspec.Struct, tag="authenticated", tag_field="type"):
    username: str
    name: str | None = None
    expires: float | None = None


_decoder = msgspec.json.Decoder(
    _Message | _History | _Presence | _Joined | _Left | _Typing | _Ack | _Error | _Authenticated
)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The server accepted this connection's token: who the client is, and until when.

    Attributes:
        username: The user id the token names (the server binds it).
        name: The display name, if the token has one.
        expires: When the token expires (Unix time), if it does: send a fresh one
            before then or the server closes with 4408.
    """

    username: str
    name: str | None
    expires: float | None


@dataclass(frozen=True, slots=True)
class Unknown:
    """A text that is not a server event this client knows.

    Attributes:
        text: The text received.
        problem: Why it was not understood.
    """

    text: str
    problem: str


ServerEvent = (
    Message | History | Presence | Joined | Left | Typing | Ack | Error | Authenticated | Unknown
)


def decode_server_event(text: str, username: str | None) -> ServerEvent:
    """Decode one text frame from the server.

    Args:
        text: The frame's text.
        username: This client's username (to mark its own messages ``mine``).

    Returns:
        The typed event, or :class:`Unknown` for anything else (never raises).
    """
    try:
        wire = _decoder.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        return Unknown(text, str(exc))
    try:
        return _typed(wire, username)
    except ValueError as exc:  # a ``time`` that is not RFC 3339
        return Unknown(text, str(exc))


def _typed(wire: Any, username: str | None) -> ServerEvent:
    if isinstance(wire, _Message):
        return _message(wire, username)
    if isinstance(wire, _History):
        return History(
            wire.room,
            tuple(_message(m, username) for m in wire.messages),
            Position(wire.epoch, wire.seq),
            wire.complete,
        )
    if isinstance(wire, _Presence):
        return Presence(wire.room, tuple(sorted(set(wire.members))))
    if isinstance(wire, _Joined):
        return Joined(wire.room, wire.username, wire.name)
    if isinstance(wire, _Left):
        return Left(wire.room, wire.username, wire.name)
    if isinstance(wire, _Typing):
        return Typing(wire.room, wire.username, wire.name)
    if isinstance(wire, _Ack):
        return Ack(wire.room, wire.id, Position(wire.epoch, wire.seq))
    if isinstance(wire, _Authenticated):
        return Authenticated(wire.username, wire.name, wire.expires)
    assert isinstance(wire, _Error)
    return Error(wire.code, wire.reason, wire.id, wire.room, wire.command)


def _message(wire: _Message, username: str | None) -> Message:
    return Message(
        room=wire.room,
        username=wire.username,
        text=wire.message,
        time=datetime.fromisoformat(wire.time),
        position=Position(wire.epoch, wire.seq),
        id=wire.id,
        mine=wire.username == username and not wire.server,
        name=wire.name,
        server=wire.server,
    )


# -- client to server -----------------------------------------------------------


def join_command(room: str, username: str | None, since: Position | None) -> str:
    """``{"type": "join", ...}``, with ``since`` when recovering (no username: the token's)."""
    command: dict[str, Any] = {"type": "join", "room": room}
    if username is not None:
        command["username"] = username
    if since is not None:
        command["since"] = {"epoch": since.epoch, "seq": since.seq}
    return _encode(command)


def leave_command(room: str) -> str:
    """``{"type": "leave", "room": ...}``."""
    return _encode({"type": "leave", "room": room})


def message_command(room: str, text: str, message_id: str) -> str:
    """``{"type": "message", ...}`` carrying the id the server acknowledges."""
    return _encode({"type": "message", "room": room, "message": text, "id": message_id})


def auth_command(token: str) -> str:
    """``{"type": "auth", "token": ...}``: a fresh token for the open connection."""
    return _encode({"type": "auth", "token": token})


def typing_command(room: str) -> str:
    """``{"type": "typing", "room": ...}``."""
    return _encode({"type": "typing", "room": room})


def _encode(command: dict[str, Any]) -> str:
    return _encoder.encode(command).decode()
