"""The plain HTTP routes beside the WebSocket endpoints: the page, /healthz, /metrics, /api/."""

from __future__ import annotations

from collections.abc import Callable

from ..app import App, is_api_path
from ..protocol import HttpRequest
from .http import Response, method_not_allowed, not_found, route_static
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics


class Routes:
    """Answers every HTTP request that is not to a WebSocket path.

    Args:
        app: Answers the HTTP API under ``/api/``.
        metrics: Rendered at ``/metrics``.
        draining: Tells whether the server is shutting down (``/healthz`` says 503 then).
    """

    def __init__(self, app: App, metrics: Metrics, draining: Callable[[], bool]) -> None:
        self._app = app
        self._metrics = metrics
        self._draining = draining

    async def answer(self, request: HttpRequest) -> Response:
        """The response to ``request``."""
        if is_api_path(request.path):
            return await self._app.handle_api(
                request.method, request.path, request.query, request.headers, request.body
            )
        if request.path == "/healthz":
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed("GET, HEAD")
            if self._draining():
                # Load balancers poll this through the drain: take the node out.
                return Response(503, b"draining\n")
            return Response(200, b"ok\n")
        if request.path == "/metrics":
            if request.method not in ("GET", "HEAD"):
                return method_not_allowed("GET, HEAD")
            return Response(200, self._metrics.render(), METRICS_CONTENT_TYPE)
        return route_static(request) or not_found(request)
