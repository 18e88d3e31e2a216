"""Ending a connection's read loop without a timer per read, on every loop, plain and TLS.

- Close timeout: a client that never answers our close frame is dropped once
  ``close_timeout`` has passed (the watchdog shuts its socket's read side),
  during normal service and during the drain at shutdown.
- Abort: an aborted connection's pending read returns at once, even when the
  client stays silent (no FIN, no data) and its writer is a task (TLS, trio).
- Shutdown: what outlives the drain timeout (a WebSocket, a socket still in
  its HTTP phase) is cancelled and closed, on asyncio from the listener's own
  tasks.

Beside each, another client of the room loses nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import connect

from .helpers import ServerHandle, running_server, ws_url
from .test_limits import RawClient, assert_room_works
from .test_server import recv_json, wait_members
from .test_write_policy import TRANSPORTS, local_port, tls_options, wait_connections

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

# Long enough that neither keepalive nor write timeout ends a connection in these tests.
QUIET: dict[str, Any] = {"ping_interval": 60, "pong_wait": 120, "write_timeout": 60}


def url(server: ServerHandle, tls: bool) -> str:
    return ("wss" if tls else "ws") + ws_url(server)[2:]


async def call_on_peer(server: ServerHandle, client: RawClient, method: str, *args: Any) -> None:
    """Call ``method(*args)`` on the server's Peer of ``client``, on the server's loop."""
    port = local_port(client)

    def call() -> None:
        (peer,) = [p for p in server.connections if p.address.endswith(f":{port}")]
        getattr(peer, method)(*args)

    await server.call(call)


async def wait_gone(server: ServerHandle, client: RawClient, timeout: float) -> None:
    port = local_port(client)
    with anyio.fail_after(timeout):
        while any(p.address.endswith(f":{port}") for p in list(server.connections)):
            await anyio.sleep(0.01)


class TestCloseTimeout:
    @TRANSPORTS
    async def test_a_client_that_never_answers_our_close_is_dropped_in_time(
        self, tls: bool, tmp_path: Path
    ) -> None:
        close_timeout = 0.6
        options, context = tls_options(tls, tmp_path)
        async with running_server(close_timeout=close_timeout, **QUIET, **options) as server:
            async with connect(url(server, tls), ssl=context) as good:
                silent = await RawClient.open(server.port, ssl_context=context)
                await wait_members(server, 2)
                started = anyio.current_time()
                await call_on_peer(server, silent, "close", 4000, "test")
                assert await silent.close_code() == 4000  # it reads it, and never answers
                await wait_gone(server, silent, timeout=close_timeout + 3)
                elapsed = anyio.current_time() - started
                # Given its close timeout, and not (much) more: one watchdog tick.
                assert close_timeout - 0.05 <= elapsed <= close_timeout + 1.0, elapsed
                assert await silent.next_frame() == (-1, b"")  # TCP is closed too
                await good.send(json.dumps({"username": "good", "message": "still here"}))
                assert (await recv_json(good))["message"] == "still here"
            await silent.stream.aclose()
            await assert_room_works(server, ssl_context=context)

    @TRANSPORTS
    async def test_the_drain_drops_silent_clients_after_the_close_timeout(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_options(tls, tmp_path)
        async with running_server(
            close_timeout=0.5, drain_timeout=30, **QUIET, **options
        ) as server:
            silent = [await RawClient.open(server.port, ssl_context=context) for _ in range(3)]
            await wait_members(server, 3)
            started = anyio.current_time()
            server.stop()
            for client in silent:
                assert await client.close_code() == 1001
            await wait_connections(server, 0, timeout=5)  # not the 30 s drain timeout
            assert anyio.current_time() - started < 3
            for client in silent:
                await client.stream.aclose()


class TestAbort:
    @TRANSPORTS
    async def test_an_aborted_connection_stops_reading_at_once(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_options(tls, tmp_path)
        messages = 30
        async with running_server(close_timeout=3, **QUIET, **options) as server:
            async with (
                # It never reads: it must not stop reading TCP when its queue fills.
                connect(url(server, tls), ssl=context, max_queue=None) as sender,
                connect(url(server, tls), ssl=context) as reader,
            ):
                victim = await RawClient.open(server.port, ssl_context=context)
                await wait_members(server, 3)
                got: list[str] = []

                async def read() -> None:
                    while len(got) < messages:
                        message = await recv_json(reader, timeout=10)
                        if "message" in message:
                            got.append(message["message"])

                async with anyio.create_task_group() as group:
                    group.start_soon(read)
                    for n in range(messages):
                        await sender.send(json.dumps({"username": "s", "message": f"m{n}"}))
                        if n == messages // 2:
                            # Silent and idle: only the abort can end its pending read.
                            await call_on_peer(server, victim, "abort", "test abort")
                            await wait_gone(server, victim, timeout=2)
                assert got == [f"m{n}" for n in range(messages)]
                with anyio.fail_after(5):  # and TCP is closed: what it still gets ends
                    while (await victim.next_frame())[0] != -1:
                        pass
            await victim.stream.aclose()
            await wait_connections(server, 0)


class TestShutdown:
    async def test_what_outlives_the_drain_timeout_is_cancelled_and_closed(self) -> None:
        # On asyncio the connections run in the listener's own tasks, on trio in a
        # task group: either way shutdown ends them, closes their sockets, empties the hub.
        async with running_server(
            drain_timeout=0.5, close_timeout=30, handshake_timeout=30, **QUIET
        ) as server:
            silent = await RawClient.open(server.port)  # never answers the 1001
            http = await anyio.connect_tcp("127.0.0.1", server.port)  # never sends a request
            await wait_members(server, 1)
            started = anyio.current_time()
            with anyio.fail_after(10):
                await server.call(server.shutdown)
            assert anyio.current_time() - started < 5
            assert server.hub.statistics()["members"] == 0
            assert server.statistics()["sockets"] == 0
            assert await silent.close_code() == 1001
            with anyio.fail_after(5):  # then TCP ends
                while (await silent.next_frame())[0] != -1:
                    pass
            with anyio.fail_after(5):
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError, OSError)):
                    await http.receive()
            await silent.stream.aclose()
            await http.aclose()
