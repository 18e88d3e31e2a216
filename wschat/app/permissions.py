"""Room permissions, pure: who may ``join``, ``say`` in, and read the ``history`` of which room.

The built-in rules (:func:`default_authorize`), each of which can only narrow:

- A token's ``rooms`` claim, when present, lists where it may go: room names
  (``lobby``), namespace patterns (``team:*`` matches ``team:dev`` but not
  ``team``), or ``*``. No claim: no limit from the token.
- Direct rooms are named ``dm:<user>:<user>`` with the two user ids sorted
  (:func:`direct_room` spells one) and admit exactly those two authenticated
  users. Any other room under ``dm:`` (unsorted, one id, three ids) admits no
  one, so that a room's name alone says who is in it.
- Anonymous connections (no token: ``--auth off`` or ``optional``) may go
  anywhere but ``dm:`` rooms: nothing proves who they are.

An app's own ``authorize`` hook replaces these rules; it can call
:func:`default_authorize` to keep them and add its own.
"""

from __future__ import annotations

from typing import Literal

from ..chat import ChatError, validate_room
from .identity import Identity, Rejection

Action = Literal["join", "say", "history"]
"""What a connection wants to do in a room: join it, send to it, read its history."""
ACTIONS: tuple[Action, ...] = ("join", "say", "history")

DIRECT_PREFIX = "dm:"


def default_authorize(identity: Identity | None, action: Action, room: str) -> bool:
    """The built-in permission rules (module docstring); the same for every action.

    Args:
        identity: Who asks; None for an anonymous connection that has no username yet.
        action: ``"join"``, ``"say"`` or ``"history"``.
        room: A valid room name.
    """
    return explain_denial(identity, action, room) is None


def explain_denial(identity: Identity | None, action: Action, room: str) -> str | None:
    """Why the built-in rules refuse ``action`` in ``room``, or None when they allow it."""
    limits = identity.rooms if identity is not None else None
    if limits is not None and not rooms_allow(limits, room):
        return f"your token does not allow room {room!r}"
    if room.startswith(DIRECT_PREFIX):
        members = direct_members(room)
        if members is None:
            return f"{room!r} is not a direct room: spell it dm:<user>:<user>, ids sorted"
        if identity is None or not identity.authenticated:
            return "direct rooms are for authenticated users"
        if identity.user_id not in members:
            return f"{room!r} is a direct room of two other users"
    return None


def forbidden(identity: Identity | None, action: Action, room: str) -> Rejection:
    """The :class:`Rejection` for a denied ``action``, with the built-in reason if there is one."""
    reason = explain_denial(identity, action, room) or f"not allowed to {action} in {room!r}"
    return Rejection.forbidden(reason)


def rooms_allow(patterns: tuple[str, ...], room: str) -> bool:
    """True if one of ``patterns`` (names, ``prefix:*``, ``*``) matches ``room``."""
    for pattern in patterns:
        if pattern == "*" or pattern == room:
            return True
        if pattern.endswith(":*") and room.startswith(pattern[:-1]) and len(room) >= len(pattern):
            return True
    return False


def direct_members(room: str) -> tuple[str, str] | None:
    """The two user ids of a well-formed direct room ``dm:<a>:<b>`` (a < b), else None."""
    if not room.startswith(DIRECT_PREFIX):
        return None
    parts = room[len(DIRECT_PREFIX) :].split(":")
    if len(parts) != 2:
        return None
    first, second = parts
    if not first or not second or not first < second:
        return None
    return first, second


def direct_room(user: str, other: str) -> str:
    """The name of the direct room of two users: ``dm:`` and their ids, sorted.

    Raises:
        ValueError: The ids are equal, contain ``:``, or make no valid room name.
    """
    if user == other or ":" in user or ":" in other:
        raise ValueError("a direct room is of two different user ids without ':'")
    room = DIRECT_PREFIX + ":".join(sorted((user, other)))
    try:
        return validate_room(room)
    except ChatError as exc:
        raise ValueError(f"{room!r}: {exc.reason}") from None
