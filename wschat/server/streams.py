"""Stream helpers of a connection's ends (the pump's stream path): who it is, how it closes."""

from __future__ import annotations

import logging

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .constants import RECEIVE_SIZE

logger = logging.getLogger("wschat.server")


def peer_address(stream: ByteStream) -> tuple[str, str]:
    """``host:port`` of the client for logs, and its IP address alone."""
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except Exception:
        return "?", "?"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}", str(address[0])
    return str(address), str(address)


async def half_close(stream: ByteStream, deadline: float) -> None:
    """After a clean close: shut our side, then let the client finish (until ``deadline``).

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our close frame before the client reads it; so we shut down our
    side first and read until the client closes too. Any error here means the
    client is already gone.
    """
    with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
        try:
            await stream.send_eof()
            while await stream.receive(RECEIVE_SIZE):
                pass
        except Exception:
            # uvloop raises RuntimeError on a transport that is closed, anyio's
            # TLSStream TypeError or NotImplementedError: the client is gone.
            return


async def close_quietly(stream: ByteStream) -> None:
    try:
        await anyio.aclose_forcefully(stream)
    except Exception as exc:
        logger.info("! closing a socket failed: %r", exc)
