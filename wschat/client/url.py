"""Where a client connects: the server URL, split into what the I/O layer needs. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit

DEFAULT_PATH = "/ws"
_SCHEMES = {"ws": False, "http": False, "wss": True, "https": True}


@dataclass(frozen=True, slots=True)
class ServerAddress:
    """A parsed ``ws://`` / ``wss://`` URL.

    Attributes:
        url: The URL as given.
        host: Host name or address to connect to (IPv6 without brackets).
        port: TCP port.
        secure: True for ``wss://`` (and ``https://``): TLS.
        host_header: The ``Host`` header value (``host`` or ``host:port``).
        path: The WebSocket path (``/ws`` when the URL has none).
        query: Query parameters of the URL other than ``room`` and ``token``.
    """

    url: str
    host: str
    port: int
    secure: bool
    host_header: str
    path: str
    query: tuple[tuple[str, str], ...]

    def target(self, room: str) -> str:
        """The request target naming ``room`` (a token goes in ``Authorization``, not here)."""
        params = [*self.query, ("room", room)]
        return f"{self.path}?{urlencode(params)}"


def parse_server_url(url: str) -> ServerAddress:
    """Parse the URL of a wschat server.

    ``ws://host:port/ws`` is the usual form; ``http(s)://`` is accepted as the
    same server (the page's address works), and a URL without a path gets
    ``/ws``. ``room`` and ``token`` in its query are dropped: the client sets them.

    Raises:
        ValueError: Not a ws/wss/http/https URL with a host (the message says why).
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {url!r}: {exc}") from None
    if parts.scheme not in _SCHEMES:
        raise ValueError(f"invalid URL {url!r}: use ws://HOST:PORT/ws or wss://...")
    if not parts.hostname:
        raise ValueError(f"invalid URL {url!r}: no host")
    if parts.fragment:
        raise ValueError(f"invalid URL {url!r}: a WebSocket URL has no #fragment")
    secure = _SCHEMES[parts.scheme]
    default_port = 443 if secure else 80
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    query = tuple(
        (key, value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
        if key not in ("room", "token")
    )
    return ServerAddress(
        url=url,
        host=host,
        port=port if port is not None else default_port,
        secure=secure,
        host_header=shown if port is None or port == default_port else f"{shown}:{port}",
        path=parts.path if parts.path not in ("", "/") else DEFAULT_PATH,
        query=query,
    )
