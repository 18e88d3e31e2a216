"""The server on trio (through anyio), with hand-driven raw WebSocket clients."""

from __future__ import annotations

import json

import anyio
import pytest

from .helpers import running_server
from .test_limits import RawClient, client_frame


@pytest.fixture
def anyio_backend() -> str:
    return "trio"


@pytest.mark.anyio
async def test_chat_round_trip_and_close_on_trio() -> None:
    async with running_server() as server:
        alice = await RawClient.open(server.port)
        bob = await RawClient.open(server.port)
        await alice.send(client_frame(0x1, json.dumps({"username": "a", "message": "hi"}).encode()))
        for client in (alice, bob):
            with anyio.fail_after(5):
                opcode, payload = await client.next_frame()
            assert opcode == 0x1
            assert json.loads(payload)["message"] == "hi"
        await alice.send(client_frame(0x8, b"\x03\xe8"))  # close 1000
        assert await alice.close_code() == 1000
        with anyio.fail_after(5):
            while len(server.connections) != 1:
                await anyio.sleep(0.02)
        await alice.stream.aclose()
        await bob.stream.aclose()
