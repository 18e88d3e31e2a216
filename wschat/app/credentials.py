"""The upgrade request as hooks see it, where a token can be in it, and keeping it out of logs.

A browser cannot set headers on ``new WebSocket(url)``, so a token reaches the
server in one of four places, looked at in this order:

1. ``Authorization: Bearer <token>`` (non-browser clients);
2. the query: ``/ws?token=<token>``;
3. a cookie named by ``--jwt-cookie`` (sent by the browser on its own, so it
   relies on the Origin check: see docs/explanation-identity.md);
4. the first WebSocket message, ``{"type": "auth", "token": "..."}``, announced
   by ``/ws?auth=message`` (the message itself: see :mod:`wschat.app.session`).

Query strings end up in access logs and proxies' logs; the server must log
:func:`redact_target` (or :func:`redact_query`) of what it received, never the
raw target.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from ..protocol import Headers
from .identity import Rejection

TOKEN_PARAMETER = "token"
# ``/ws?auth=message``: the client will authenticate with its first message, so a
# missing token is not refused at the upgrade (it must come within the handshake timeout).
FIRST_MESSAGE_PARAMETER = "auth"
FIRST_MESSAGE = "message"
REDACTED = "REDACTED"


@dataclass(frozen=True, slots=True)
class UpgradeRequest:
    """A WebSocket upgrade request, as the ``authenticate`` hook receives it.

    Attributes:
        path: The path, e.g. ``"/ws"``.
        query: The raw query string (without ``?``), e.g. ``"room=lobby"``.
        headers: Request headers, names lower-cased, in the order received.
        peer: The client's address, ``"host:port"`` (a proxy's, behind a proxy).
    """

    path: str
    query: str
    headers: Headers
    peer: str = "?"

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (any case), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def query_values(self, name: str) -> list[str]:
        """Every value of query parameter ``name``, decoded, in order."""
        return [value for key, value in _query_pairs(self.query) if key == name]

    @property
    def cookies(self) -> dict[str, str]:
        """The request's cookies (RFC 6265 5.4); the first of a repeated name wins."""
        return parse_cookies(value for key, value in self.headers if key == "cookie")


def find_token(request: UpgradeRequest, cookie: str | None = None) -> str | None:
    """The token the request carries (header, query, then cookie ``cookie``), or None.

    Raises:
        Rejection: 401 ``unauthorized`` for a token given twice in the query, or an
            empty one.
    """
    authorization = request.header("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        # RFC 7235 2.1: the scheme is case-insensitive. Other schemes (e.g. a proxy's
        # Basic) are not ours to judge.
        if scheme.lower() == "bearer":
            return _non_empty(credentials.strip(), "Authorization: Bearer")
    values = request.query_values(TOKEN_PARAMETER)
    if len(values) > 1:
        raise Rejection.unauthorized("give token once")
    if values:
        return _non_empty(values[0], "token")
    if cookie is not None and cookie in request.cookies:
        return _non_empty(request.cookies[cookie], f"cookie {cookie}")
    return None


def _non_empty(token: str, where: str) -> str:
    if not token:
        raise Rejection.unauthorized(f"{where} is empty")
    return token


def parse_cookies(headers: Iterable[str]) -> dict[str, str]:
    """Cookie name → value from ``Cookie`` header values (RFC 6265 5.4's cookie-string).

    Lenient like browsers and servers are: pairs without ``=`` are skipped,
    whitespace around names and values is dropped, and a value in double quotes
    loses them.
    """
    cookies: dict[str, str] = {}
    for header in headers:
        for pair in header.split(";"):
            name, found, value = pair.partition("=")
            name, value = name.strip(), value.strip()
            if not found or not name:
                continue
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies.setdefault(name, value)
    return cookies


def redact_query(query: str) -> str:
    """``query`` with the value of every ``token`` parameter replaced by ``REDACTED``.

    Parameters are recognised as the server reads them (percent-decoded names), so
    ``%74oken=...`` is redacted too; everything else is kept byte for byte.
    """
    parts = query.split("&")
    for index, part in enumerate(parts):
        name, found, _ = part.partition("=")
        if unquote_plus(name) == TOKEN_PARAMETER:
            parts[index] = f"{name}={REDACTED}" if found else name
    return "&".join(parts)


def redact_target(target: str) -> str:
    """A request target (``/ws?room=a&token=...``) safe to log: see :func:`redact_query`."""
    path, found, query = target.partition("?")
    return f"{path}?{redact_query(query)}" if found else path


def _query_pairs(query: str) -> list[tuple[str, str]]:
    # As urllib.parse.parse_qsl(keep_blank_values=True), and split exactly as
    # redact_query splits, so that whatever is read as a token is also redacted.
    pairs = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote_plus(name), unquote_plus(value)))
    return pairs
