"""Constants the server's modules share (kept apart so no module imports another for them)."""

from __future__ import annotations

import ssl

import anyio

# One read per wakeup; websockets and uvicorn read 64 KiB too.
RECEIVE_SIZE = 65536
CHAT_PATH = "/ws"
ECHO_PATH = "/echo"

# Errors that mean the peer or its TCP connection went away: not bugs, not logged as failures.
DISCONNECTED: tuple[type[BaseException], ...] = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    ssl.SSLError,
)
