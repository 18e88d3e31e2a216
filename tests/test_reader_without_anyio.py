"""A server started by plain asyncio (or uvloop), not anyio.run, serves plain TCP too.

The transport reader's callbacks run with no current task; where sniffio is
installed and nothing set it (asyncio.run), anyio cannot tell which loop runs,
so nothing they call may ask it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from websockets.asyncio.client import connect

from wschat.server import Server, ServerConfig


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_server_run_without_anyio_run_reads_and_answers(loop: str) -> None:
    # The reader's callbacks run with no current task: where sniffio is installed
    # and nothing set it (asyncio.run, not anyio.run), anyio cannot tell the loop.
    async def main() -> list[Any]:
        server = Server(ServerConfig(host="127.0.0.1", port=0, echo=True))
        serving = asyncio.ensure_future(server.serve())
        while not server.port:
            await asyncio.sleep(0.01)
        try:
            async with connect(f"ws://127.0.0.1:{server.port}/echo") as ws:
                pong = await ws.ping(b"there?")
                await asyncio.wait_for(pong, 5)
                await ws.send("echo me")
                echoed = await asyncio.wait_for(ws.recv(), 5)
                readers = len(server._pump.readers)
        finally:
            server.stop()
            await asyncio.wait_for(serving, 10)
        return [echoed, readers]

    if loop == "uvloop":
        import uvloop

        assert uvloop.run(main()) == ["echo me", 1]
    else:
        assert asyncio.run(main()) == ["echo me", 1]
