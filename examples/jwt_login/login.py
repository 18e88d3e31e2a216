"""The login side of the JWT example: a form, and an endpoint that trades a password for a token.

This stands in for *your* backend: whatever already knows your users signs a
short-lived JWT for the chat (docs/howto-jwt.md). Run it beside the chat::

    python -m examples.jwt_login.login          # http://127.0.0.1:8081

``POST /token`` with ``{"username", "password"}`` answers ``{"token", "expires"}``
(401 otherwise); ``POST /refresh`` with ``Authorization: Bearer <token>`` answers
a fresh one while the old one is still valid. The page (``login.html``) logs in,
opens the chat with the token in its first message, and refreshes it before it
expires.
"""

from __future__ import annotations

import hmac
import json
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

from wschat.app import JwtVerifier, Rejection

from .settings import AUDIENCE, CHAT_URL, ISSUER, LOGIN_HOST, LOGIN_PORT, SECRET, TOKEN_LIFETIME

# Demo users: user id -> (display name, password). Use your real user store.
USERS = {
    "alice": ("Alice", "wonderland"),
    "bob": ("Bob", "builder"),
    "carol": ("Carol", "christmas"),
}
PAGE = Path(__file__).with_name("login.html")
_verifier = JwtVerifier.from_secret(SECRET, audience=AUDIENCE, issuer=ISSUER, leeway=0)


def issue_token(user_id: str, now: float) -> tuple[str, int]:
    """A token for ``user_id`` and its expiry (Unix seconds)."""
    expires = int(now) + TOKEN_LIFETIME
    claims = {
        "sub": user_id,
        "name": USERS[user_id][0],
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": int(now),
        "exp": expires,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256"), expires


def login(body: bytes, now: float) -> tuple[int, dict[str, Any]]:
    """``POST /token``: check the password, answer a token (or 400/401)."""
    try:
        form = json.loads(body)
        user_id, password = str(form["username"]), str(form["password"])
    except (ValueError, KeyError, TypeError):
        return 400, {"error": 'send {"username": ..., "password": ...}'}
    known = USERS.get(user_id)
    # Compare even for unknown users, so the answer takes as long either way.
    expected = known[1] if known else "\0"
    if not hmac.compare_digest(password.encode(), expected.encode()) or known is None:
        return 401, {"error": "wrong username or password"}
    token, expires = issue_token(user_id, now)
    return 200, {"token": token, "expires": expires}


def refresh(authorization: str | None, now: float) -> tuple[int, dict[str, Any]]:
    """``POST /refresh``: a fresh token for the holder of a still-valid one."""
    scheme, _, old = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return 401, {"error": "send Authorization: Bearer <token>"}
    try:
        identity = _verifier.verify(old.strip())
    except Rejection as exc:
        return 401, {"error": exc.reason}
    if identity.user_id not in USERS:
        return 401, {"error": "unknown user"}
    token, expires = issue_token(identity.user_id, now)
    return 200, {"token": token, "expires": expires}


def page() -> bytes:
    """The login page, told where the chat is."""
    return PAGE.read_text().replace("{{CHAT_URL}}", json.dumps(CHAT_URL)).encode()


class LoginHandler(BaseHTTPRequestHandler):
    """Serves the page, ``/token`` and ``/refresh``."""

    def do_GET(self) -> None:
        if self.path in ("/", "/index.html"):
            self._send(200, page(), "text/html; charset=utf-8")
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(min(length, 4096))
        if self.path == "/token":
            self._send_json(*login(body, time.time()))
        elif self.path == "/refresh":
            self._send_json(*refresh(self.headers.get("authorization"), time.time()))
        else:
            self._send_json(404, {"error": "not found"})

    def _send_json(self, status: int, obj: dict[str, Any]) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus(status))
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep tokens and passwords out of the console


def make_server(host: str = LOGIN_HOST, port: int = LOGIN_PORT) -> ThreadingHTTPServer:
    """The login server, bound (``port`` 0: any free port)."""
    return ThreadingHTTPServer((host, port), LoginHandler)


if __name__ == "__main__":
    server = make_server()
    print(f"login page: http://{LOGIN_HOST}:{server.server_port}/  (chat at {CHAT_URL})")
    server.serve_forever()
