"""Constants the server's modules share (kept apart so no module imports another for them)."""

from __future__ import annotations

import asyncio
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


def loop_time() -> float:
    """``anyio.current_time()``, also where anyio cannot tell which loop runs: in an
    asyncio Protocol's callbacks (no current task), when sniffio is installed and the
    server was not started by ``anyio.run``. The same clock: asyncio's ``loop.time()``."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return anyio.current_time()  # trio
