"""The write path's one policy, on both writers (direct transport, writer task), every loop.

- The byte limit covers everything queued for a client: a ping or echo flood
  from a client that never reads cannot grow the server past it.
- The write timeout means no progress: a slow but steady reader is never
  dropped by it; one that falls too far behind is closed with 1013, and that
  close frame reaches it.
- A deflate member's pending pong and close are never lost to a refused
  broadcast: they leave with the close frame, past the limit.
- Plain TCP on asyncio and uvloop takes the direct path; TLS and trio a task.
- Shutdown keeps /healthz answering 503 through the drain; the WebSocket cap
  holds under concurrent upgrades.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketAttribute
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from wschat.app import App, Identity, UpgradeRequest
from wschat.server import Server, ServerConfig

from . import helpers
from .helpers import ServerHandle, running_server, tls_files, ws_url
from .test_limits import RawClient, assert_room_works, client_frame
from .test_server import raw_http, recv_json, upgrade_request, wait_members

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

TRANSPORTS = pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])


def tls_options(tls: bool, tmp_path: Path) -> tuple[dict[str, str], Any]:
    if not tls:
        return {}, None
    return tls_files(tmp_path)


def local_port(client: RawClient) -> int:
    port: int = client.stream.extra(SocketAttribute.local_port)
    return port


async def backlog_of(server: ServerHandle, port: int) -> tuple[int, int] | None:
    """(backlog, unsent) of the writer of the client on local ``port``, read on the
    server's loop; None once the server has no such connection."""

    def read() -> tuple[int, int] | None:
        for peer in list(server.connections):
            if peer.address.endswith(f":{port}"):
                return peer.writer.backlog(), peer.writer.unsent()
        return None

    result: tuple[int, int] | None = await server.call(read)
    return result


async def peer_is_open(server: ServerHandle, port: int) -> bool:
    """Whether the server still counts the client on local ``port`` open (not closing)."""

    def read() -> bool:
        return any(
            peer.open for peer in list(server.connections) if peer.address.endswith(f":{port}")
        )

    result: bool = await server.call(read)
    return result


def small_send_buffers(config: ServerConfig) -> Server:
    """A server whose accepted sockets have a 16 KiB kernel send buffer, so that what a
    slow reader has not taken waits in user space (loopback buffers hold megabytes).
    Smaller buffers (below the loopback MSS) make TCP stall on zero-window probes."""
    server = Server(config)
    handle = server._pump.handle

    async def handle_small(stream: ByteStream, closed: Callable[[], None]) -> None:
        with socket.socket(fileno=os.dup(stream.extra(SocketAttribute.raw_socket).fileno())) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        await handle(stream, closed)

    server._pump.handle = handle_small  # type: ignore[method-assign]
    return server


async def wait_connections(server: ServerHandle, count: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while len(server.connections) != count:
            await anyio.sleep(0.02)


class TestByteLimitCoversEverything:
    @TRANSPORTS
    @pytest.mark.parametrize("kind", ["ping", "echo"])
    async def test_a_flood_from_a_non_reader_stays_under_the_limit(
        self, kind: str, tls: bool, tmp_path: Path
    ) -> None:
        limit = 64 * 1024
        options, context = tls_options(tls, tmp_path)
        path = "/echo" if kind == "echo" else "/ws"
        frame = client_frame(0x9, b"p" * 125) if kind == "ping" else client_frame(0x1, b"e" * 1000)
        async with running_server(
            small_send_buffers,
            outbox_limit=limit,
            close_timeout=0.5,
            write_timeout=5,
            echo=True,
            **options,
        ) as server:
            flooder = await RawClient.open(server.port, path, ssl_context=context, rcvbuf=4096)
            await wait_connections(server, 1)
            port = local_port(flooder)
            peak = 0
            with anyio.move_on_after(20):
                for _ in range(600):  # up to ~7.5 MB of pongs or 60 MB of echoes
                    try:
                        await flooder.send(frame * 100)
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        break
                    sample = await backlog_of(server, port)
                    if sample is None:
                        break
                    peak = max(peak, sample[0])
            # The flooder was refused more: closed (1013) and dropped.
            await wait_connections(server, 0, timeout=10)
            # One read's worth of replies may go into an empty backlog, past the limit.
            assert peak <= 2 * limit + 4096, peak
            await assert_room_works(server, ssl_context=context)
            await flooder.stream.aclose()


async def slow_read(
    client: RawClient, messages: int, chunk: int = 4096, pause: float = 0.02
) -> tuple[list[int], int | None]:
    """Read ~chunk/pause bytes a second: the message numbers, and the close code if one came."""
    numbers: list[int] = []
    while len(numbers) < messages:
        try:
            client.buffer += await client.stream.receive(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return numbers, None
        while (frame := client.pop_frame()) is not None:
            opcode, payload = frame
            if opcode == 0x8:
                return numbers, struct.unpack("!H", payload[:2])[0]
            if opcode == 0x1:
                numbers.append(int(json.loads(payload)["message"].split(":")[0]))
        await anyio.sleep(pause)
    return numbers, None


async def broadcast(server: ServerHandle, messages: int, size: int, context: Any = None) -> None:
    url = ws_url(server) if context is None else "wss" + ws_url(server)[2:]
    async with connect(url, ssl=context, max_queue=None) as sender:
        text = "s" * size
        for n in range(messages):
            await sender.send(json.dumps({"username": "s", "message": f"{n}:{text}"}))


async def open_deflate_client(port: int) -> RawClient:
    """A :class:`RawClient` that negotiated permessage-deflate (it never inflates:
    it reads opcodes, and control frames are never compressed)."""
    stream: Any = await anyio.connect_tcp("127.0.0.1", port)
    client = RawClient(stream)
    await stream.send(upgrade_request(Sec_WebSocket_Extensions="permessage-deflate"))
    while b"\r\n\r\n" not in client.buffer:
        client.buffer += await stream.receive()
    head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head, head
    return client


def incompressible(size: int) -> str:
    return base64.b64encode(os.urandom(size))[:size].decode()


class TestProtocolOutputPastTheLimit:
    async def test_a_deflate_members_pong_and_close_survive_its_refused_broadcast(self) -> None:
        # The member pings and chats in one write: the pong is pending in its
        # protocol state while its own message fans out to it, and that send is
        # refused (the backlog is near the limit). The pong must go out with the
        # 1013, not be taken along by the refused send and dropped with it.
        limit = 64 * 1024
        headroom = 2000  # less than the member's message compressed, more than a filler's
        async with running_server(
            small_send_buffers,
            outbox_limit=limit,
            compression=True,
            write_timeout=30,
            close_timeout=2,
        ) as server:
            member = await open_deflate_client(server.port)
            await wait_members(server, 1)
            port = local_port(member)
            async with connect(ws_url(server), max_queue=None) as filler:
                await wait_members(server, 2)
                n = 0
                while True:
                    sample = await backlog_of(server, port)
                    assert sample is not None, "the member was dropped while filling"
                    if sample[0] > limit - headroom:
                        await anyio.sleep(0.1)  # the kernel has taken all it will
                        sample = await backlog_of(server, port)
                        assert sample is not None
                        if sample[0] > limit - headroom:
                            break
                    text = f"{n}:{incompressible(1400)}"
                    await filler.send(json.dumps({"username": "f", "message": text}))
                    assert (await recv_json(filler))["message"] == text
                    n += 1
                ping = b"pending pong"
                message = json.dumps({"username": "m", "message": incompressible(3500)})
                await member.send(client_frame(0x9, ping) + client_frame(0x1, message.encode()))
                # Read only once the server has refused the broadcast: reading earlier lets
                # the kernel take the backlog and the message fit (seen on a loaded machine).
                with anyio.fail_after(10):
                    while await peer_is_open(server, port):
                        await anyio.sleep(0.02)
                frames: list[tuple[int, bytes]] = []
                with anyio.fail_after(10):
                    while not frames or frames[-1][0] not in (0x8, -1):
                        frames.append(await member.next_frame())
                assert frames[-1][0] == 0x8, "no close frame"
                assert struct.unpack("!H", frames[-1][1][:2])[0] == 1013
                assert ping in [payload for opcode, payload in frames if opcode == 0xA]
                await member.send(client_frame(0x8, struct.pack("!H", 1000)))
                await wait_members(server, 1, timeout=10)
            await member.stream.aclose()


class TestWriteTimeoutMeansNoProgress:
    @TRANSPORTS
    async def test_a_slow_steady_reader_is_never_dropped(self, tls: bool, tmp_path: Path) -> None:
        # Bytes wait unsent for longer than the write timeout, while the kernel keeps
        # taking some. (2 s: on a loaded machine the reading process itself can stall
        # for a second, which is no progress, rightly dropped.)
        messages, write_timeout = 600, 2.0
        options, context = tls_options(tls, tmp_path)
        async with running_server(
            small_send_buffers, write_timeout=write_timeout, **options
        ) as server:
            reader = await RawClient.open(server.port, ssl_context=context, rcvbuf=16384)
            await wait_members(server, 1)
            port = local_port(reader)
            longest_wait = 0.0
            async with anyio.create_task_group() as group:
                group.start_soon(broadcast, server, messages, 1000, context)

                async def watch() -> None:
                    nonlocal longest_wait
                    since = None
                    while (sample := await backlog_of(server, port)) is not None:
                        now = anyio.current_time()
                        if sample[1]:
                            since = since or now
                            longest_wait = max(longest_wait, now - since)
                        else:
                            since = None
                        await anyio.sleep(0.02)

                group.start_soon(watch)
                numbers, code = await slow_read(reader, messages, chunk=8192, pause=0.04)
                group.cancel_scope.cancel()
            assert (numbers, code) == (list(range(messages)), None)
            # The premise: bytes waited unsent for longer than the write timeout.
            assert longest_wait > write_timeout, longest_wait
            await reader.stream.aclose()

    @TRANSPORTS
    async def test_a_reader_too_far_behind_is_told_1013(self, tls: bool, tmp_path: Path) -> None:
        options, context = tls_options(tls, tmp_path)
        # The sender (websockets) receives its own 600 messages too, compressed (~126
        # bytes each, the raw reader offers no deflate) and queued faster than they are
        # flushed: 75 KB at most, under the limit. Uncompressed they would be 660 KB.
        async with running_server(
            small_send_buffers,
            outbox_limit=96 * 1024,
            write_timeout=1.5,
            close_timeout=10,
            compression=True,
            **options,
        ) as server:
            reader = await RawClient.open(server.port, ssl_context=context, rcvbuf=16384)
            await wait_members(server, 1)
            async with anyio.create_task_group() as group:
                group.start_soon(broadcast, server, 600, 1000, context)
                numbers, code = await slow_read(reader, 600, chunk=8192, pause=0.04)
            assert code == 1013
            assert numbers == list(range(len(numbers)))  # in order, up to the close
            await reader.stream.aclose()
            await wait_members(server, 0)
            metrics = server.metrics.render()
            assert b'wschat_close_codes_total{code="1013"} 1.0' in metrics
            assert b'code="1006"' not in metrics


class TestFastPath:
    @TRANSPORTS
    async def test_plain_tcp_on_asyncio_and_uvloop_writes_to_the_transport(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_options(tls, tmp_path)
        async with running_server(**options) as server:
            client = await RawClient.open(server.port, ssl_context=context)
            await wait_members(server, 1)
            kind = await server.call(lambda: type(next(iter(server.connections)).writer).__name__)
            direct = helpers.server_loop != "trio"
            assert server.direct_writes is direct
            assert kind == ("TransportWriter" if direct and not tls else "TaskWriter")
            await client.stream.aclose()


class TestShutdown:
    async def test_healthz_answers_503_through_the_drain(self) -> None:
        async with running_server(drain_timeout=1, close_timeout=1) as server:
            holder = await RawClient.open(server.port)  # never answers the close
            await wait_members(server, 1)
            server.stop()
            assert await holder.close_code() == 1001
            request = b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
            status, _, body = await raw_http(server.port, request)
            assert (status, body) == (503, b"draining\n")
            with anyio.fail_after(10):
                await server.call(server.shutdown)  # returns once drained
            await holder.stream.aclose()

    async def test_the_websocket_cap_holds_under_concurrent_upgrades(self) -> None:
        # The app takes its time admitting: all 30 upgrades are past it together,
        # so a capacity check made before the await would let them all in.
        async def slow_authenticate(request: UpgradeRequest) -> Identity:
            await anyio.sleep(0.2)
            return Identity("guest", "Guest")

        def make(config: ServerConfig) -> Server:
            return Server(config, app=App(config, authenticate=slow_authenticate))

        async with running_server(factory=make, max_connections=5) as server:
            opened: list[Any] = []
            refused: list[int] = []

            async def attempt() -> None:
                try:
                    opened.append(await connect(ws_url(server)))
                except InvalidStatus as exc:
                    refused.append(exc.response.status_code)

            async with anyio.create_task_group() as group:
                for _ in range(30):
                    group.start_soon(attempt)
            assert (len(opened), refused) == (5, [503] * 25)
            for ws in opened:
                await ws.close()
