"""What the login server and the chat app of this example share: the key and the names."""

from __future__ import annotations

import os

# The HS256 secret both sides know. Set EXAMPLE_JWT_SECRET (32+ bytes) outside a demo:
# anyone who knows this value can sign in as anyone.
SECRET = os.environ.get("EXAMPLE_JWT_SECRET", "dev-only-secret-change-me-0123456789")
# Who the tokens are for and who issues them: the chat refuses tokens for other services.
AUDIENCE = "wschat-example"
ISSUER = "wschat-example-login"
# Where each side listens (the variables move them, e.g. when 8080 or 8081 is taken).
LOGIN_HOST, LOGIN_PORT = "127.0.0.1", int(os.environ.get("EXAMPLE_LOGIN_PORT", "8081"))
CHAT_URL = os.environ.get("EXAMPLE_CHAT_URL", "ws://127.0.0.1:8080")
# A token is good for an hour; the page asks for a fresh one a minute before then.
# (EXAMPLE_TOKEN_LIFETIME=65: a refresh 5 s after signing in, to watch one happen.)
TOKEN_LIFETIME = int(os.environ.get("EXAMPLE_TOKEN_LIFETIME", "3600"))
