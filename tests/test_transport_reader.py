"""The transport reader: plain TCP WebSockets on asyncio/uvloop read with no task while idle.

Once in its room, such a connection leaves its task for a
:class:`~wschat.server.reader.TransportReader` (an asyncio Protocol); TLS and
trio keep the stream and its read loop. The new path must behave like the old
one at every edge, so every test runs on every loop (and TLS where it
matters): resets, half-close, a hub that makes the client wait (reading
pauses: back-pressure), a failing dispatch, the drain at shutdown, and the
socket count that the listener's cap relies on. Beside each, another client
of the room loses nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wschat.app import App
from wschat.server import Server, ServerConfig

from . import helpers
from .helpers import ServerHandle, running_server, ws_url
from .test_limits import RawClient, assert_room_works, client_frame
from .test_server import recv_json, upgrade_request, wait_members
from .test_write_policy import TRANSPORTS, local_port, tls_options

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

PING = 0x9
QUIET: dict[str, Any] = {"ping_interval": 60, "pong_wait": 120, "write_timeout": 60}


def say(text: str, username: str = "raw") -> bytes:
    return client_frame(0x1, json.dumps({"username": username, "message": text}).encode())


def reads_by_transport(tls: bool) -> bool:
    return helpers.server_loop != "trio" and not tls


async def readers(server: ServerHandle) -> int:
    count: int = await server.call(lambda: len(server._pump.readers))
    return count


async def sockets(server: ServerHandle) -> int:
    count: int = await server.call(lambda: server.statistics()["sockets"])
    return count


async def wait_sockets(server: ServerHandle, count: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while await sockets(server) != count:
            await anyio.sleep(0.02)


async def is_reading(server: ServerHandle, client: RawClient) -> bool:
    """Whether the server's transport of ``client`` is reading (asyncio/uvloop only)."""
    port = local_port(client)

    def read() -> bool:
        (peer,) = [p for p in server.connections if p.address.endswith(f":{port}")]
        return bool(peer.writer.transport.is_reading())

    result: bool = await server.call(read)
    return result


class TestIdle:
    @TRANSPORTS
    async def test_an_idle_connection_holds_no_task_on_asyncio_and_uvloop(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_options(tls, tmp_path)
        async with running_server(**QUIET, **options) as server:
            before = None if server.loop == "trio" else await server.call(_tasks)
            clients = [await RawClient.open(server.port, ssl_context=context) for _ in range(20)]
            await wait_members(server, 20)
            expected = 20 if reads_by_transport(tls) else 0
            assert await readers(server) == expected
            if before is not None and expected:
                # Each connection's task ends once the reader has it (a little slack
                # for the watchdog's and the flusher's own coming and going).
                with anyio.fail_after(5):
                    while await server.call(_tasks) > before + 2:
                        await anyio.sleep(0.02)
            elif before is not None:
                assert await server.call(_tasks) >= before + 20  # TLS: a task each
            await clients[0].send(say("hello"))
            for client in clients:
                # (a keepalive ping may come first: each ping clock starts at a random
                # point of its interval, so one of 20 can be due within the test)
                while (frame := await client.next_frame())[0] == PING:
                    pass
                opcode, payload = frame
                assert opcode == 1 and json.loads(payload)["message"] == "hello"
            for client in clients:
                await client.stream.aclose()
            await wait_members(server, 0)
            assert await readers(server) == 0
            await wait_sockets(server, 0)


def _tasks() -> int:
    return len(asyncio.all_tasks())


class TestEdges:
    @TRANSPORTS
    async def test_resets_and_half_closes_end_only_their_connection(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_options(tls, tmp_path)
        async with running_server(close_timeout=1, **QUIET, **options) as server:
            url = ("wss" if tls else "ws") + ws_url(server)[2:]
            async with connect(url, ssl=context) as good:
                reset = await RawClient.open(server.port, ssl_context=context)
                fin = await RawClient.open(server.port, ssl_context=context)
                await wait_members(server, 3)
                await reset.reset()
                fin.fin()  # FIN without a close frame: the server closes with 1006
                await wait_members(server, 1)
                assert await fin.next_frame() == (-1, b"")  # and closes TCP
                await fin.stream.aclose()
                await good.send(json.dumps({"username": "good", "message": "still here"}))
                assert (await recv_json(good))["message"] == "still here"
                metrics = await server.call(server.metrics.render)
                assert b'wschat_close_codes_total{code="1006"} 2.0' in metrics
                await wait_sockets(server, 1)
            await assert_room_works(server, ssl_context=context)
            await wait_sockets(server, 0)

    @TRANSPORTS
    async def test_a_polite_close_completes_the_handshake(self, tls: bool, tmp_path: Path) -> None:
        options, context = tls_options(tls, tmp_path)
        async with running_server(**QUIET, **options) as server:
            client = await RawClient.open(server.port, ssl_context=context)
            await wait_members(server, 1)
            await client.send(client_frame(0x9, b"are you there") + say("last words"))
            assert await next_not_text(client) == (0xA, b"are you there")
            await client.send(client_frame(0x8, (1000).to_bytes(2, "big")))
            assert await client.close_code() == 1000  # the echo of our close
            client.fin()
            assert await client.next_frame() == (-1, b"")  # then the server's FIN
            await wait_members(server, 0)
            await wait_sockets(server, 0)
            await client.stream.aclose()


async def next_not_text(client: RawClient) -> tuple[int, bytes]:
    """The next frame that is not a text frame (room events and chat are skipped)."""
    while (frame := await client.next_frame())[0] == 1:
        pass
    return frame


def gated(gate: dict[str, Any]) -> Any:
    """A server factory whose app's on_message waits for ``gate["open"]`` (a slow hub)."""

    async def on_message(identity: Any, room: str, text: str) -> str:
        if "event" not in gate:
            gate["event"] = anyio.Event()
        gate["entered"] = gate.get("entered", 0) + 1
        if "slow" in text:
            await gate["event"].wait()
        return text

    def make(config: ServerConfig) -> Server:
        return Server(config, app=App(config, on_message=on_message))

    return make


def burst(count: int) -> bytes:
    """``count`` chat frames in one write; the first ("slow 0") waits at the gate."""
    return b"".join(say(f"slow {n}" if n == 0 else f"m{n}") for n in range(count))


async def waits_its_turn(
    server: ServerHandle, gate: dict[str, Any], sender: RawClient, watcher: Any, count: int
) -> None:
    """While the first frame of ``burst(count)`` waits at the gate, the rest and one
    more wait their turn (reading paused: back-pressure); once it opens, the room
    gets all of them in order and reading resumes."""
    with anyio.fail_after(5):
        while gate.get("entered", 0) < 1:
            await anyio.sleep(0.01)
    await sender.send(say("more"))
    await anyio.sleep(0.2)  # "more" reaches the server
    assert gate["entered"] == 1  # one at a time: the others wait their turn
    if helpers.server_loop != "trio":
        assert not await is_reading(server, sender)  # back-pressure
    await server.call(gate["event"].set)
    got = [(await recv_json(watcher))["message"] for _ in range(count + 1)]
    assert got == ["slow 0", *(f"m{n}" for n in range(1, count)), "more"]
    if helpers.server_loop != "trio":
        assert await is_reading(server, sender)


class TestSlowDispatch:
    async def test_a_waiting_dispatch_pauses_reading_and_loses_nothing(self) -> None:
        gate: dict[str, Any] = {}
        async with (
            running_server(gated(gate), **QUIET) as server,
            connect(ws_url(server)) as watcher,
        ):
            sender = await RawClient.open(server.port)
            await wait_members(server, 2)
            await sender.send(burst(30))
            await waits_its_turn(server, gate, sender, watcher, 30)
            await sender.stream.aclose()

    async def test_frames_sent_with_the_handshake_wait_like_the_others(self) -> None:
        # The upgrade request and a burst of frames in one write: anyio's first
        # receive had it all without waiting, so it left the transport reading.
        # The reader must still pause while the first frame's dispatch waits.
        gate: dict[str, Any] = {}
        async with (
            running_server(gated(gate), **QUIET) as server,
            connect(ws_url(server)) as watcher,
        ):
            # Sent with a blocking socket, so on asyncio and uvloop (the server runs
            # in this loop) it is all there when the server first reads.
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(upgrade_request() + burst(10))
            stream = await SocketStream.from_socket(sock)
            sender = RawClient(stream)
            while b"\r\n\r\n" not in sender.buffer:
                sender.buffer += await stream.receive()
            assert sender.buffer.startswith(b"HTTP/1.1 101")
            sender.buffer = sender.buffer.partition(b"\r\n\r\n")[2]
            await waits_its_turn(server, gate, sender, watcher, 10)
            await stream.aclose()

    async def test_the_drain_ends_a_connection_whose_dispatch_never_returns(self) -> None:
        gate: dict[str, Any] = {}
        async with running_server(gated(gate), drain_timeout=1, close_timeout=1) as server:
            stuck = await RawClient.open(server.port)
            async with connect(ws_url(server)) as polite:
                await wait_members(server, 2)
                await stuck.send(say("slow forever"))
                with anyio.fail_after(5):
                    while gate.get("entered", 0) < 1:
                        await anyio.sleep(0.01)
                started = anyio.current_time()
                with anyio.fail_after(10):
                    await server.call(server.shutdown)
                assert anyio.current_time() - started < 5
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(polite)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert await stuck.close_code() == 1001
            assert await stuck.next_frame() == (-1, b"")
            await stuck.stream.aclose()
            assert server.connections == set()
            assert server.hub.statistics()["members"] == 0
