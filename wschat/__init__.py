"""wschat: a real-time chat server and a small framework for building one.

Layers: :mod:`wschat.protocol` (sans-IO HTTP + WebSocket), :mod:`wschat.chat`
(wire schema and rules, pure), :mod:`wschat.hub` (rooms, fan-out, backends),
:mod:`wschat.server` (the anyio transport), :mod:`wschat.app` (the application
object: identities, permissions, hooks, HTTP API) and :mod:`wschat.web` (the page).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import App, Identity, Rejection

__version__ = "0.1.0"
__all__ = ["App", "Identity", "Rejection", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy (PEP 562): importing wschat.protocol or wschat.chat must not pull in the
    # app layer, which imports anyio and the server.
    if name in ("App", "Identity", "Rejection"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'wschat' has no attribute {name!r}")
