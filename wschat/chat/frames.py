"""The frames apps add to the wire protocol, and the events they make. Pure.

Client to server, beside :mod:`~wschat.chat.schema`'s chat commands::

    {"type": "auth", "token": "..."}                # authenticate (or refresh) the connection
    {"type": "typing", "room": "lobby"}             # an ephemeral type the app registered
    {"type": "reaction", "room": "lobby", "data": {"emoji": "+1"}}

Server to client::

    {"type": "authenticated", "username": "alice", "name": "Alice", "expires": 1767225600}
    {"type": "typing", "room": "lobby", "username": "alice", "name": "Alice"}

:func:`parse_frame` decodes a frame once and returns a chat command, an
:class:`Auth` or an :class:`Ephemeral`; what is done with them is the app
layer's (``wschat.app``), which this module does not know.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from .errors import ChatError
from .events import encode
from .schema import Command, _command, _decode_object, _kind, _optional_room

# A JWT of a few claims is ~300 characters; 8 KiB is nginx's header buffer
# (large_client_header_buffers) and bounds the work a bogus token can cause.
MAX_TOKEN_LENGTH = 8192


@dataclass(frozen=True, slots=True)
class Auth:
    """``{"type": "auth", "token": ...}``: authenticate the connection, or refresh its token.

    Attributes:
        token: The credential as sent (checked by the app, not here).
    """

    token: str


@dataclass(frozen=True, slots=True)
class Ephemeral:
    """An event of a type the app registered (e.g. ``typing``): relayed, never stored.

    Attributes:
        kind: The event type, e.g. ``"typing"``.
        room: The room (None: the connection's URL room).
        data: The client's ``data`` value, re-encoded as JSON, or None when absent.
    """

    kind: str
    room: str | None
    data: bytes | None


Frame = Command | Auth | Ephemeral
"""Anything a client may send: a chat command, an ``auth`` or an ephemeral event."""


def parse_frame(
    text: str,
    ephemeral: Collection[str] = (),
    username: Callable[[Any], str] | None = None,
) -> Frame:
    """Parse one client text frame: a command, an ``auth``, or an ``ephemeral`` type.

    Args:
        text: The frame.
        ephemeral: The ephemeral event types the app registered (e.g. ``{"typing"}``).
        username: Normalizes a ``username`` (default ``validate_username``; a
            connection passes its :class:`~.schema.UsernameMemo`).

    Raises:
        ChatError: The frame is not valid; ``code`` says why.
    """
    obj = _decode_object(text)
    kind = _kind(obj)
    command = _command(obj, kind, username)
    if command is not None:
        return command
    if kind == "auth":
        token = obj.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH:
            raise ChatError(
                "bad_token", f"token must be a string of 1-{MAX_TOKEN_LENGTH} characters"
            )
        return Auth(token)
    if isinstance(kind, str) and kind in ephemeral:
        data = obj.get("data")
        return Ephemeral(kind, _optional_room(obj), None if data is None else encode(data))
    expected = ", ".join(["join", "message", "leave", "auth", *sorted(ephemeral)])
    raise ChatError("bad_type", f"unknown type {kind!r}: expected one of {expected}")


def ephemeral_event(
    kind: str, room: str, username: str, name: str | None = None, data: bytes | None = None
) -> bytes:
    """An ephemeral event (e.g. ``typing``) as the room's other members receive it.

    ``data`` is the sender's ``data`` value, already JSON-encoded (spliced in as is).
    """
    event: dict[str, Any] = {"type": kind, "room": room, "username": username}
    if name is not None:
        event["name"] = name
    payload = encode(event)
    if data is None:
        return payload
    return payload[:-1] + b',"data":' + data + b"}"


def authenticated_event(username: str, name: str, expires: int | None) -> bytes:
    """Tells a connection who it is: after a token was accepted (at the upgrade or later).

    ``expires`` is the token's ``exp`` (Unix seconds), or None for a token that does
    not expire: send a fresh ``auth`` before it to stay connected.
    """
    return encode({"type": "authenticated", "username": username, "name": name, "expires": expires})
