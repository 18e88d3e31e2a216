"""The plain HTTP routes beside the WebSocket endpoints: the page, /healthz, /metrics."""

from __future__ import annotations

from collections.abc import Callable

from ..protocol import HttpRequest
from .http import Response, method_not_allowed, not_found, route_static
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics


class Routes:
    """Answers every HTTP request that is not a WebSocket upgrade.

    Args:
        metrics: Rendered at ``/metrics``.
        draining: Tells whether the server is shutting down (``/healthz`` says 503 then).
    """

    def __init__(self, metrics: Metrics, draining: Callable[[], bool]) -> None:
        self._metrics = metrics
        self._draining = draining

    def answer(self, request: HttpRequest) -> Response:
        """The response to ``request``."""
        if request.path == "/healthz":
            if request.method != "GET":
                return method_not_allowed()
            if self._draining():
                # Load balancers poll this through the drain: take the node out.
                return Response(503, b"draining\n")
            return Response(200, b"ok\n")
        if request.path == "/metrics":
            if request.method != "GET":
                return method_not_allowed()
            return Response(200, self._metrics.render(), METRICS_CONTENT_TYPE)
        return route_static(request) or not_found(request)
