"""The JSON wire schema, client to server: parsing and validating what clients send.

Client to server (text frames, JSON objects)::

    {"type": "join", "room": "lobby", "username": "alice", "since": {"epoch": "...", "seq": 41}}
    {"type": "message", "room": "lobby", "message": "hello"}
    {"type": "leave", "room": "lobby"}
    {"username": "alice", "message": "hi"}          # the seed's format: a message

The app layer adds ``auth`` and the ephemeral types it registers (``typing``):
see :mod:`wschat.chat.frames`.

A ``message`` may carry an ``id`` chosen by the client: the server then answers
the sender with an ``ack`` (or an ``error`` carrying the same ``id``), and a
retry with the same ``id`` is not published twice.

What the server sends is encoded in :mod:`.events`. Everything here is pure:
no I/O, no clock (the caller passes the time in).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from .errors import ChatError
from .names import enforce_username

# DESIGN.md: 4 KiB of chat text (gorilla chat: 512 B per message).
MAX_MESSAGE_LENGTH = 4096
# Room names: letters, digits, "_", "-", and ":" after the first character, so that
# namespaces ("team:dev", matched by "team:*" patterns) and direct rooms
# ("dm:alice:bob") can be spelled. 128 characters hold a direct room of two 62-character
# user ids (a UUID is 36). Precedents: Django Channels groups are < 100 characters,
# Centrifugo's channel_max_length is 255. None of these characters is special in Redis
# keys, hash tags ("{room}" stops at "}") or pub/sub glob patterns.
MAX_ROOM_LENGTH = 128
ROOM_NAME = re.compile(rf"[A-Za-z0-9_-][A-Za-z0-9_:-]{{0,{MAX_ROOM_LENGTH - 1}}}")
# Long enough for a UUID or a ULID, short enough to keep per room (idempotent publish).
MESSAGE_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
DEFAULT_ROOM = "lobby"

_json_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class Position:
    """A place in a room's stream: ``seq`` within the room's ``epoch``.

    Attributes:
        epoch: Names one life of the room's history; a new epoch means the old
            history is gone.
        seq: The sequence number of a message (1 for the first; 0 for "none yet").
    """

    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Join:
    """Join ``room`` (and bind ``username`` if given), optionally recovering from ``since``."""

    room: str
    username: str | None
    since: Position | None


@dataclass(frozen=True, slots=True)
class Say:
    """Send ``message`` to ``room`` (None: the connection's URL room).

    ``typed`` is False for the seed's format (no ``type`` field). ``id`` is the
    client's name for this message (acknowledged, and published at most once).
    """

    room: str | None
    message: str
    username: str | None
    typed: bool = True
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Leave:
    """Leave ``room``."""

    room: str


Command = Join | Say | Leave


def parse_command(text: str) -> Command:
    """Parse one client text frame.

    Raises:
        ChatError: The frame is not a valid command; ``code`` says why.
    """
    obj = _decode_object(text)
    command = _command(obj, _kind(obj))
    if command is None:
        raise ChatError("bad_type", f"unknown type {_kind(obj)!r}: expected join, message or leave")
    return command


def _decode_object(text: str) -> dict[str, Any]:
    try:
        obj = _json_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ChatError("bad_json", f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ChatError("bad_json", "expected a JSON object")
    return obj


def _kind(obj: dict[str, Any]) -> Any:
    return obj.get("type", "message" if "message" in obj else None)


def _command(
    obj: dict[str, Any], kind: Any, username: Callable[[Any], str] | None = None
) -> Command | None:
    """The chat command ``obj`` is, or None when its type is not a chat command.

    ``username`` normalizes a ``username`` value (default :func:`validate_username`;
    a connection's memo of it, see :class:`UsernameMemo`).
    """
    if kind == "message":
        message_id = _optional_id(obj)
        try:
            return Say(
                room=_optional_room(obj),
                message=validate_message(obj.get("message")),
                username=_optional_username(obj, username),
                typed="type" in obj,
                id=message_id,
            )
        except ChatError as exc:
            exc.id = message_id  # the sender learns which message was refused
            raise
    if kind == "join":
        return Join(
            room=validate_room(obj.get("room", DEFAULT_ROOM)),
            username=_optional_username(obj, username),
            since=_since(obj.get("since")),
        )
    if kind == "leave":
        return Leave(room=validate_room(obj.get("room")))
    return None


def validate_room(value: Any) -> str:
    """Return ``value`` if it is a valid room name, else raise ChatError('bad_room')."""
    if not isinstance(value, str) or not ROOM_NAME.fullmatch(value):
        raise ChatError(
            "bad_room",
            f"room must be 1-{MAX_ROOM_LENGTH} characters of A-Z, a-z, 0-9, _, - or : "
            "(not : first)",
        )
    return value


def validate_username(value: Any) -> str:
    """The normal form of username ``value`` (RFC 8266 nickname, see :mod:`.names`).

    Fullwidth ``admin`` (U+FF41 ...) comes back as ``admin``, ``"  Bob  Smith "`` as
    ``"Bob Smith"``: the connection is bound to the normal form, and compared in it.

    Raises:
        ChatError: ``bad_username``, with a reason that names the broken rule
            (a :class:`~.names.UsernameRefused`).
    """
    return enforce_username(value)


def validate_message(value: Any) -> str:
    """Return ``value`` if it is a valid chat message, else raise ChatError('bad_message').

    The length is counted in Unicode code points, as the page counts it.
    """
    if not isinstance(value, str) or not value.strip():
        raise ChatError("bad_message", "message must be a non-empty string")
    if len(value) > MAX_MESSAGE_LENGTH:
        raise ChatError(
            "bad_message",
            f"message is {len(value)} characters long; at most {MAX_MESSAGE_LENGTH} are "
            "allowed (counted in Unicode code points)",
        )
    return value


def peek_message_id(text: str) -> str | None:
    """The valid ``id`` of a message frame, or None: for replies to frames not carried out."""
    try:
        obj = _json_decoder.decode(text)
    except (msgspec.DecodeError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    try:
        return _optional_id(obj)
    except ChatError:
        return None


def validate_message_id(value: Any) -> str:
    """Return ``value`` if it is a valid message id, else raise ChatError('bad_id')."""
    if not isinstance(value, str) or not MESSAGE_ID.fullmatch(value):
        raise ChatError("bad_id", "id must be 1-64 characters of A-Z, a-z, 0-9, _ . : or -")
    return value


def _optional_id(obj: dict[str, Any]) -> str | None:
    return validate_message_id(obj["id"]) if obj.get("id") is not None else None


def _optional_room(obj: dict[str, Any]) -> str | None:
    return validate_room(obj["room"]) if obj.get("room") is not None else None


def _optional_username(
    obj: dict[str, Any], username: Callable[[Any], str] | None = None
) -> str | None:
    value = obj.get("username")
    if value is None:
        return None
    return (username or validate_username)(value)


class UsernameMemo:
    """:func:`validate_username` for one connection, remembering its last answer.

    A client names itself in every frame of the seed's format, nearly always
    the same way; RFC 8266 enforcement is most of what parsing such a frame
    costs. The normal form of the last value accepted is kept (the value itself
    only when it differs from it); refusals are not kept.
    """

    __slots__ = ("_normal", "_raw")

    def __init__(self) -> None:
        self._raw: str | None = None
        self._normal = ""

    def __call__(self, value: Any) -> str:
        """The normal form of ``value``, as :func:`validate_username` gives it."""
        if type(value) is str and value == self._raw:
            return self._normal
        normal = validate_username(value)
        self._raw = normal if normal == value else value
        self._normal = normal
        return normal


def _since(value: Any) -> Position | None:
    if value is None:
        return None
    if (
        isinstance(value, dict)
        and isinstance(value.get("epoch"), str)
        and isinstance(value.get("seq"), int)
        and not isinstance(value.get("seq"), bool)
        and value["seq"] >= 0
    ):
        return Position(value["epoch"], value["seq"])
    raise ChatError("bad_since", 'since must be {"epoch": string, "seq": integer >= 0}')
