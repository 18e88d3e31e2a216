"""Plain HTTP routes: the browser page and its assets, /healthz and /metrics.

Every :class:`Response` (page, asset, API, error) carries
:data:`~wschat.protocol.http.SECURITY_HEADERS`, unless a route sets one of
them itself (the protocol adds them to the responses it makes on its own too).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from ..protocol import Headers, HttpRequest
from ..protocol.http import SECURITY_HEADERS

STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/connection.js": ("connection.js", "text/javascript; charset=utf-8"),
    "/conversation.js": ("conversation.js", "text/javascript; charset=utf-8"),
    "/names.js": ("names.js", "text/javascript; charset=utf-8"),
    "/outbox.js": ("outbox.js", "text/javascript; charset=utf-8"),
    "/reasons.js": ("reasons.js", "text/javascript; charset=utf-8"),
    "/store.js": ("store.js", "text/javascript; charset=utf-8"),
    "/typing.js": ("typing.js", "text/javascript; charset=utf-8"),
    "/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@dataclass(frozen=True, slots=True)
class Response:
    """An HTTP answer to hand to ``ServerConnection.send_response``.

    Attributes:
        status: HTTP status code.
        body: The body (left out by the connection for HEAD).
        content_type: The Content-Type header.
        headers: Extra headers; :data:`SECURITY_HEADERS` are added in front,
            except those the route sets itself.
    """

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Headers = ()

    def __post_init__(self) -> None:
        names = {name.lower() for name, _ in self.headers}
        defaults = tuple(h for h in SECURITY_HEADERS if h[0] not in names)
        object.__setattr__(self, "headers", defaults + tuple(self.headers))


@cache
def static_file(name: str) -> bytes:
    """A file of ``wschat/web/static``, read once."""
    return resources.files("wschat.web").joinpath("static", name).read_bytes()


def route_static(request: HttpRequest) -> Response | None:
    """Serve the page and its assets; None when the path is not a static file."""
    entry = STATIC_FILES.get(request.path)
    if entry is None:
        return None
    if request.method not in ("GET", "HEAD"):
        return method_not_allowed("GET, HEAD")
    # HEAD gets GET's answer; ServerConnection leaves the body out.
    name, content_type = entry
    return Response(200, static_file(name), content_type, (("cache-control", "no-cache"),))


def method_not_allowed(allow: str = "GET") -> Response:
    """405 naming the methods the path takes (``allow``, e.g. ``"GET, HEAD"``)."""
    return Response(405, f"method not allowed: use {allow}\n".encode(), headers=(("allow", allow),))


def not_found(request: HttpRequest) -> Response:
    """404 for an unknown path."""
    return Response(404, f"not found: {request.path}\n".encode())


CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
