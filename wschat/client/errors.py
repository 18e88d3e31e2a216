"""The exceptions of :mod:`wschat.client`: one base class, one subclass per failure.

Every error the client raises is a :class:`ClientError`; ``str(error)`` is one
line fit to show a user (the ``wschat`` commands print exactly that).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from ..protocol.events import Headers


class ClientError(Exception):
    """Base class of every error :mod:`wschat.client` raises."""


class ConnectError(ClientError):
    """The TCP (or TLS) connection to the server could not be opened.

    Attributes:
        url: The URL the client tried.
        cause: What went wrong, e.g. ``connection refused``.
    """

    def __init__(self, url: str, cause: str) -> None:
        url = _without_token(url)
        super().__init__(f"cannot connect to {url}: {cause}")
        self.url = url
        self.cause = cause


class HandshakeRejectedError(ClientError):
    """The server answered the WebSocket upgrade with an HTTP error.

    Attributes:
        status: The HTTP status, e.g. 403 (origin or room not allowed), 401
            (a token is needed), 426 (WebSocket version), 503 (draining, full).
        body: The response body (wschat says why in it), decoded leniently.
        headers: The response headers, names lower-cased.
    """

    def __init__(self, status: int, body: str, headers: Headers = ()) -> None:
        text = body.strip() or "no reason given"
        super().__init__(f"the server refused the WebSocket handshake: HTTP {status}: {text}")
        self.status = status
        self.body = body
        self.headers = headers


class ConnectionClosedError(ClientError):
    """The connection closed and the client will not reconnect.

    Raised when reconnecting is off, when the close code says retrying cannot
    help (e.g. 1008 policy violation, 4401 authentication failed), or when the
    reconnect attempts ran out.

    Attributes:
        code: The close code (1006: TCP ended without a close frame).
        reason: The close reason, possibly empty.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"connection closed: {code} {reason or '(no reason)'}".rstrip())
        self.code = code
        self.reason = reason


class SayError(ClientError):
    """A message was not published.

    Attributes:
        code: Why: an error code of the server (``rate_limited``,
            ``unavailable``, ``not_joined``, ...) or of the same checks done
            before sending (``bad_message``).
        reason: A human-readable explanation.
        id: The message id it was sent with, if it was sent.
    """

    def __init__(self, code: str, reason: str, id: str | None = None) -> None:
        super().__init__(f"message not sent: {code}: {reason}")
        self.code = code
        self.reason = reason
        self.id = id


class JoinError(ClientError):
    """A room could not be joined.

    Attributes:
        room: The room.
        code: The server's error code (``forbidden``, ``too_many_rooms``, ...),
            or ``bad_room`` for a name refused before sending.
        reason: A human-readable explanation.
    """

    def __init__(self, room: str, code: str, reason: str) -> None:
        super().__init__(f"cannot join {room!r}: {code}: {reason}")
        self.room = room
        self.code = code
        self.reason = reason


def _without_token(url: str) -> str:
    """``url`` with a ``token`` in its query blanked: messages end up in logs."""
    parts = urlsplit(url)
    if "token=" not in parts.query:
        return url
    query = "&".join(
        "token=REDACTED" if pair.startswith("token=") else pair for pair in parts.query.split("&")
    )
    return urlunsplit(parts._replace(query=query))
