"""wschat: a real-time chat server and a small framework for building one.

Layers: :mod:`wschat.protocol` (sans-IO HTTP + WebSocket), :mod:`wschat.chat`
(wire schema and rules, pure), :mod:`wschat.hub` (rooms, fan-out, backends),
:mod:`wschat.server` (the anyio transport) and :mod:`wschat.web` (the page).
"""

__version__ = "0.1.0"
