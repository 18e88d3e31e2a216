"""The chat app of the JWT login example: every identity comes from a login token.

Run it from the repository's root (the login server, ``login.py``, runs beside it)::

    wschat serve examples.jwt_login.chat:app --allow-origin http://127.0.0.1:8081

Tokens must be signed with the shared secret, name this chat as their audience
and the login server as their issuer. Authentication is required (a JWT key is
configured), so a connection without a token must send ``{"type": "auth"}``
first; direct rooms ``dm:<user>:<user>`` admit only their two users.
"""

from __future__ import annotations

from wschat import App
from wschat.app import AppConfig
from wschat.server import ServerConfig

from .settings import AUDIENCE, ISSUER, LOGIN_PORT, SECRET

app = App(
    ServerConfig(
        allowed_origins=(f"http://127.0.0.1:{LOGIN_PORT}", f"http://localhost:{LOGIN_PORT}")
    ),
    AppConfig(jwt_secret=SECRET, jwt_audience=AUDIENCE, jwt_issuer=ISSUER),
)
