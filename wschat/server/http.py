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
    "/style.css": ("style.css", "text/css; charset=utf-8"),
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
