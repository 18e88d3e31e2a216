"""Who a connection is (:class:`Identity`) and the one way an app says no (:class:`Rejection`).

An identity comes from a verified token (or an app's own ``authenticate``
hook): the user id is the token's ``sub``, the display name its ``name`` (else
the ``sub``), and an optional ``rooms`` claim limits where it may go. On the
wire the user id is the ``username`` every event carries, so it is held to the
same rules as a username a client chooses, widened to fit the ids identity
providers issue (a UUID is 36 characters).

A :class:`Rejection` is raised by hooks and by the built-in checks alike. It
carries every form of "no" the server may have to give, and the server picks
the one that fits the moment: the HTTP status at the upgrade, the close code
on an open connection, the ``error`` code and reason for one refused frame.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..chat import MAX_ROOM_LENGTH

# Close codes in RFC 6455 7.4.2's private range (4000-4999), numbered after the
# HTTP status they stand for, as Centrifugo numbers its 3xxx codes after meanings.
CLOSE_UNAUTHORIZED = 4401
"""First-message authentication failed or did not arrive within the handshake timeout."""
CLOSE_FORBIDDEN = 4403
"""Authenticated by a first message, but the connection's URL room is not allowed."""
CLOSE_TOKEN_EXPIRED = 4408
"""The token expired while connected and no fresh one came in."""

# Long enough for the ids identity providers issue (UUIDs: 36, Auth0: ~35),
# short enough that two fit in a direct room name (dm:<id>:<id>, 128 characters).
MAX_USER_ID_LENGTH = 62
# Slack caps display names at 80, Discord at 32; 64 shows in a member list.
MAX_DISPLAY_NAME_LENGTH = 64
# A rooms claim is a short allowlist, not a database.
MAX_ROOM_PATTERNS = 256
# A room name, "prefix:*" (a room name ending in ":", then "*"), or "*".
ROOM_PATTERN = re.compile(
    rf"\*|[A-Za-z0-9_-][A-Za-z0-9_:-]{{0,{MAX_ROOM_LENGTH - 1}}}"
    rf"|[A-Za-z0-9_-][A-Za-z0-9_:-]{{0,{MAX_ROOM_LENGTH - 2}}}:\*"
)


class Rejection(Exception):
    """A documented refusal: the upgrade, the connection, or one frame is not allowed.

    Raise it from any hook. Which field the client sees depends on where it is
    raised: at the upgrade, ``status`` and ``reason`` (the HTTP answer); during
    first-message authentication or on an expired token, ``close_code`` and
    ``reason``; from ``authorize`` or ``on_message``, an ``error`` event with
    ``code`` and ``reason`` that only the sender receives.

    Attributes:
        code: A stable, machine-readable code, e.g. ``"forbidden"``.
        reason: A human-readable explanation (sent to the client: no secrets).
        status: The HTTP status for a refused upgrade (401 or 403).
        close_code: The WebSocket close code for a connection that must end.
    """

    def __init__(
        self,
        code: str,
        reason: str,
        *,
        status: int = 403,
        close_code: int = CLOSE_FORBIDDEN,
    ) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.status = status
        self.close_code = close_code

    @classmethod
    def unauthorized(cls, reason: str) -> Rejection:
        """No valid credentials: HTTP 401, close code 4401, error ``unauthorized``."""
        return cls("unauthorized", reason, status=401, close_code=CLOSE_UNAUTHORIZED)

    @classmethod
    def token_expired(cls, reason: str = "token expired") -> Rejection:
        """An expired token: HTTP 401, close code 4408, error ``token_expired``."""
        return cls("token_expired", reason, status=401, close_code=CLOSE_TOKEN_EXPIRED)

    @classmethod
    def forbidden(cls, reason: str) -> Rejection:
        """Authenticated but not allowed: HTTP 403, close code 4403, error ``forbidden``."""
        return cls("forbidden", reason, status=403, close_code=CLOSE_FORBIDDEN)

    def __repr__(self) -> str:
        return f"Rejection({self.code!r}, {self.reason!r}, status={self.status})"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a connection is.

    Attributes:
        user_id: The stable user id (a token's ``sub``); the ``username`` on the wire.
        name: The display name (a token's ``name``, else the user id).
        claims: Every claim of the token, read-only (empty for anonymous users).
        expires_at: The token's ``exp`` (Unix seconds), or None when it never expires.
        rooms: The rooms (names and ``prefix:*`` patterns) the identity is limited
            to, or None for no limit (a token without a ``rooms`` claim).
        authenticated: False for an anonymous connection whose username the client
            chose (authentication off or optional): such an identity proves nothing.
    """

    user_id: str
    name: str
    claims: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)
    expires_at: float | None = None
    rooms: tuple[str, ...] | None = None
    authenticated: bool = True

    @classmethod
    def anonymous(cls, username: str) -> Identity:
        """The identity of a connection that chose its own ``username`` (no token)."""
        return cls(username, username, MappingProxyType({}), None, None, authenticated=False)


def identity_from_claims(claims: Mapping[str, Any]) -> Identity:
    """Build an :class:`Identity` from a verified token's claims.

    Raises:
        Rejection: A claim is unusable (401 ``unauthorized``): ``sub`` missing or
            not a valid user id, ``name`` not a short printable string, ``rooms``
            not a list of room names and ``prefix:*`` patterns.
    """
    user_id = validate_user_id(claims.get("sub"))
    name = claims.get("name")
    if name is None:
        name = user_id
    elif not is_display_name(name):
        raise Rejection.unauthorized(
            f"token name claim must be 1-{MAX_DISPLAY_NAME_LENGTH} printable characters"
        )
    exp = claims.get("exp")
    expires_at = float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None
    return Identity(
        user_id=user_id,
        name=name,
        claims=MappingProxyType(dict(claims)),
        expires_at=expires_at,
        rooms=validate_room_patterns(claims["rooms"]) if "rooms" in claims else None,
    )


def is_display_name(value: Any) -> bool:
    """True if ``value`` can be a display name: 1-64 printable characters, not all spaces."""
    return (
        isinstance(value, str)
        and 1 <= len(value) <= MAX_DISPLAY_NAME_LENGTH
        and value.isprintable()
        and bool(value.strip())
    )


def validate_user_id(value: Any) -> str:
    """Return ``value`` if it can be a user id (a token's ``sub``), else raise a 401 Rejection.

    A user id is 1-62 printable characters without leading or trailing spaces.
    """
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_USER_ID_LENGTH
        or not value.isprintable()
        or value != value.strip()
    ):
        raise Rejection.unauthorized(
            f"token sub claim must be 1-{MAX_USER_ID_LENGTH} printable characters"
        )
    return value


def validate_room_patterns(value: Any) -> tuple[str, ...]:
    """Return a ``rooms`` claim as a tuple, else raise a 401 Rejection.

    Each entry is a room name (``lobby``), a namespace pattern ending in ``:*``
    (``team:*`` matches ``team:dev``) or ``*`` (every room).
    """
    if (
        isinstance(value, list)
        and len(value) <= MAX_ROOM_PATTERNS
        and all(isinstance(item, str) and ROOM_PATTERN.fullmatch(item) for item in value)
    ):
        return tuple(value)
    raise Rejection.unauthorized(
        f"token rooms claim must be a list of at most {MAX_ROOM_PATTERNS} room names "
        'or "prefix:*" patterns'
    )
