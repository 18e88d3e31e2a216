"""Plain HTTP routes: the browser page and its assets, /healthz and /metrics."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

from ..protocol import Headers, HttpRequest

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
    """An HTTP answer to hand to ``ServerConnection.send_response``."""

    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: Headers = ()


@cache
def static_file(name: str) -> bytes:
    """A file of ``wschat/web/static``, read once."""
    return resources.files("wschat.web").joinpath("static", name).read_bytes()


def route_static(request: HttpRequest) -> Response | None:
    """Serve the page and its assets; None when the path is not a static file."""
    entry = STATIC_FILES.get(request.path)
    if entry is None:
        return None
    if request.method != "GET":
        return method_not_allowed()
    name, content_type = entry
    return Response(200, static_file(name), content_type, (("cache-control", "no-cache"),))


def method_not_allowed() -> Response:
    """405 for a method other than GET."""
    return Response(405, b"method not allowed: use GET\n", headers=(("allow", "GET"),))


def not_found(request: HttpRequest) -> Response:
    """404 for an unknown path."""
    return Response(404, f"not found: {request.path}\n".encode())


CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
