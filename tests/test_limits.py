"""Limits, timeouts and misbehaving clients, over real loopback sockets.

Each test runs a deliberately bad client beside well-behaved ones and checks
both the answer the bad client gets and that the good ones lose nothing.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import ssl
import struct
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .helpers import ServerHandle, running_server, ws_url
from .test_server import raw_http, recv_json, recv_type, rst, upgrade_request, wait_members

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A masked client frame (RFC 6455 5.2)."""
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += struct.pack("!BH", 0x80 | 126, length)
    else:
        head += struct.pack("!BQ", 0x80 | 127, length)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """A hand-driven WebSocket client on a plain socket: it never answers pings by itself."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(
        cls,
        port: int,
        path: str = "/ws",
        ssl_context: ssl.SSLContext | None = None,
        rcvbuf: int | None = None,
    ) -> RawClient:
        """Connect and upgrade (over TLS with ``ssl_context``); a small ``rcvbuf``
        makes the kernel push back as soon as the client stops reading."""
        stream: Any = await anyio.connect_tcp(
            "127.0.0.1",
            port,
            tls=ssl_context is not None,
            ssl_context=ssl_context,
            tls_standard_compatible=False,
        )
        if rcvbuf is not None:
            with raw_socket(stream) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client = cls(stream)
        await stream.send(upgrade_request(path))
        while b"\r\n\r\n" not in client.buffer:
            client.buffer += await stream.receive()
        head, _, client.buffer = client.buffer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return client

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def reset(self) -> None:
        """Drop the connection with a TCP reset (a phone losing signal, a scanner)."""
        with raw_socket(self.stream) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.stream.aclose()

    def fin(self) -> None:
        """Send FIN without a close frame (TCP half-close under TLS too)."""
        with raw_socket(self.stream) as sock:
            sock.shutdown(socket.SHUT_WR)

    def pop_frame(self) -> tuple[int, bytes] | None:
        """(opcode, payload) of the next complete server frame in the buffer, if any."""
        if len(self.buffer) < 2:
            return None
        length = self.buffer[1] & 0x7F
        offset = 2
        if length == 126:
            if len(self.buffer) < 4:
                return None
            length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
        elif length == 127:
            if len(self.buffer) < 10:
                return None
            length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
        if len(self.buffer) < offset + length:
            return None
        opcode = self.buffer[0] & 0x0F
        payload = self.buffer[offset : offset + length]
        self.buffer = self.buffer[offset + length :]
        return opcode, payload

    async def next_frame(self, max_bytes: int = 65536) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame; (-1, b"") at EOF."""
        while (frame := self.pop_frame()) is None:
            try:
                chunk = await self.stream.receive(max_bytes)
            except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
                return -1, b""
            self.buffer += chunk
        return frame

    async def close_code(self, timeout: float = 5.0) -> int:
        """Read until the server's close frame; return its code."""
        with anyio.fail_after(timeout):
            while True:
                opcode, payload = await self.next_frame()
                if opcode == 8:
                    return int(struct.unpack("!H", payload[:2])[0])
                if opcode == -1:
                    return 1006


def raw_socket(stream: Any) -> socket.socket:
    """The stream's socket as a real ``socket.socket`` (uvloop hands out a pseudo-socket
    without ``shutdown``); a duplicate descriptor: options and shutdown apply to both."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    return socket.socket(fileno=os.dup(sock.fileno()))


async def assert_room_works(
    server: ServerHandle,
    room: str = "lobby",
    count: int = 3,
    ssl_context: ssl.SSLContext | None = None,
) -> None:
    """A well-behaved pair still chats: every message arrives, in order."""
    url = ws_url(server) + f"?room={room}"
    if ssl_context is not None:
        url = "wss" + url[2:]
    async with (
        connect(url, ssl=ssl_context) as a,
        connect(url, ssl=ssl_context) as b,
    ):
        for n in range(count):
            await a.send(json.dumps({"username": "good", "message": f"ok{n}"}))
        for ws in (a, b):
            assert [(await recv_json(ws))["message"] for _ in range(count)] == [
                f"ok{n}" for n in range(count)
            ]


class TestHandshakeLimits:
    async def test_slowloris_dropped_after_handshake_timeout(self) -> None:
        async with running_server(handshake_timeout=0.5) as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            request = upgrade_request()
            started = anyio.current_time()
            closed = False
            with anyio.fail_after(5):
                async with stream:
                    for byte in request:
                        try:
                            await stream.send(bytes([byte]))
                            await assert_room_works(server, count=1) if byte == request[5] else None
                            await anyio.sleep(0.05)
                        except (anyio.BrokenResourceError, OSError):
                            closed = True
                            break
                    if not closed:
                        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                            await stream.receive()
            assert anyio.current_time() - started < 3

    async def test_max_connections_answers_503_with_retry_after(self) -> None:
        async with running_server(max_connections=2) as server:
            async with connect(ws_url(server)), connect(ws_url(server)):
                with pytest.raises(InvalidStatus) as info:
                    await connect(ws_url(server))
                assert info.value.response.status_code == 503
                assert info.value.response.headers["Retry-After"]
            await wait_members(server, 0)
            async with connect(ws_url(server)):  # capacity is back
                pass

    async def test_metrics_count_rejections(self) -> None:
        async with running_server() as server:
            await raw_http(server.port, upgrade_request(Sec_WebSocket_Version="8"))
            _, _, body = await raw_http(
                server.port, b"GET /metrics HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
            )
        assert b'wschat_handshakes_rejected_total{reason="426"} 1.0' in body


class TestKeepalive:
    async def test_silent_client_closed_with_1011(self) -> None:
        async with running_server(ping_interval=0.2, pong_wait=0.6, close_timeout=0.5) as server:
            raw = await RawClient.open(server.port)
            opcode, _ = await raw.next_frame()
            assert opcode == 0x9  # the server pings
            assert await raw.close_code() == 1011
            await wait_members(server, 0)

    async def test_clients_that_connect_together_are_not_pinged_together(self) -> None:
        async with running_server(ping_interval=1.0, pong_wait=30) as server:
            clients = [await RawClient.open(server.port) for _ in range(20)]
            started = anyio.current_time()
            first_ping: list[float] = []

            async def wait_ping(client: RawClient) -> None:
                opcode, _ = await client.next_frame()
                assert opcode == 0x9
                first_ping.append(anyio.current_time() - started)

            with anyio.fail_after(5):
                async with anyio.create_task_group() as group:
                    for client in clients:
                        group.start_soon(wait_ping, client)
            # Spread over the interval, not all in one watchdog tick.
            assert max(first_ping) - min(first_ping) > 0.3, sorted(first_ping)
            for client in clients:
                await client.stream.aclose()

    async def test_client_that_answers_pings_stays(self) -> None:
        async with (
            running_server(ping_interval=0.2, pong_wait=0.6) as server,
            connect(ws_url(server)) as ws,
        ):
            await anyio.sleep(1.5)  # websockets answers pings itself
            await ws.send(json.dumps({"username": "alive", "message": "still"}))
            assert (await recv_json(ws))["message"] == "still"


class TestMessageLimits:
    async def test_oversized_message_closed_with_1009(self) -> None:
        async with (
            running_server(max_message_size=1024) as server,
            connect(ws_url(server), max_size=None) as ws,
        ):
            await ws.send("x" * 2000)
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
            await assert_room_works(server)

    async def test_oversized_across_fragments_closed_with_1009(self) -> None:
        async with running_server(max_message_size=1024) as server:
            raw = await RawClient.open(server.port)
            for _ in range(5):
                await raw.send(client_frame(0x1 if _ == 0 else 0x0, b"y" * 300, fin=False))
            assert await raw.close_code() == 1009
            await assert_room_works(server)

    async def test_invalid_utf8_closed_with_1007(self) -> None:
        async with running_server() as server:
            raw = await RawClient.open(server.port)
            await raw.send(client_frame(0x1, b"\xff\xfe bad"))
            assert await raw.close_code() == 1007

    async def test_binary_on_chat_closed_with_1003(self) -> None:
        async with running_server() as server, connect(ws_url(server)) as ws:
            await ws.send(b"\x00\x01")
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(ws)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1003

    async def test_garbage_frame_closed_with_1002(self) -> None:
        async with running_server() as server:
            raw = await RawClient.open(server.port)
            await raw.send(b"\x8f\x80\x00\x00\x00\x00")  # reserved opcode 0xF
            assert await raw.close_code() == 1002
            await assert_room_works(server)

    async def test_tcp_dropped_mid_frame_leaves_no_member(self) -> None:
        async with running_server() as server:
            raw = await RawClient.open(server.port)
            frame = client_frame(0x1, json.dumps({"username": "x", "message": "half"}).encode())
            await raw.send(frame[: len(frame) // 2])
            sock = raw.stream.extra(anyio.abc.SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await raw.stream.aclose()
            await wait_members(server, 0)
            await assert_room_works(server)


class TestRateLimit:
    async def test_over_rate_gets_error_and_message_dropped(self) -> None:
        async with running_server(rate=1, burst=3) as server, connect(ws_url(server)) as ws:
            for n in range(5):
                await ws.send(json.dumps({"username": "fast", "message": f"m{n}"}))
            events = [await recv_json(ws) for _ in range(5)]
            delivered = [e["message"] for e in events if e.get("type") == "message"]
            errors = [e["code"] for e in events if e.get("type") == "error"]
            assert delivered == ["m0", "m1", "m2"]
            assert errors == ["rate_limited", "rate_limited"]

    async def test_sustained_flood_closed_with_1008_room_unharmed(self) -> None:
        async with running_server(rate=5, burst=5) as server, connect(ws_url(server)) as victim:
            async with connect(ws_url(server)) as flooder:
                with pytest.raises(ConnectionClosed) as info:
                    for n in range(200):
                        await flooder.send(json.dumps({"username": "flood", "message": f"f{n}"}))
                        await anyio.sleep(0.001)
                    await asyncio.wait_for(flooder.recv(), 5)
                    while True:
                        await asyncio.wait_for(flooder.recv(), 5)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1008
            got = [(await recv_json(victim))["message"] for _ in range(5)]
            assert got == [f"f{n}" for n in range(5)]  # only the burst went through


class TestLimitsPerAddress:
    async def test_reconnecting_does_not_escape_the_message_limit(self) -> None:
        # The limit is per client address, across its connections; a client
        # behind the (trusted) proxy on 127.0.0.1 counts as the address it names.
        async with running_server(address_rate=0.01, address_burst=4) as server:
            elsewhere = {"X-Forwarded-For": "198.51.100.7"}
            async with connect(ws_url(server), additional_headers=elsewhere) as other:
                errors: list[dict[str, Any]] = []
                for n in range(4):
                    async with connect(ws_url(server)) as flooder:
                        for k in range(3):
                            message = {"username": "f", "message": f"f{n}.{k}", "id": f"{n}.{k}"}
                            await flooder.send(json.dumps(message))
                            event = await recv_json(flooder)
                            while event.get("id") != message["id"] or event["type"] == "message":
                                event = await recv_json(flooder)  # the answer: ack or error
                            if event["type"] == "error":
                                errors.append(event)
                assert len(errors) == 12 - 4
                assert {e["code"] for e in errors} == {"rate_limited"}
                assert all("your address" in e["reason"] and e["id"] for e in errors)
                got = [(await recv_json(other))["message"] for _ in range(4)]
                assert got == ["f0.0", "f0.1", "f0.2", "f1.0"]
                await other.send(json.dumps({"username": "o", "message": "not limited"}))
                assert (await recv_json(other))["message"] == "not limited"
            metrics = server.metrics.render()
            assert b"wschat_address_rate_limited_messages_total 8.0" in metrics

    async def test_too_many_new_connections_from_one_address_get_429(self) -> None:
        async with running_server(connect_rate=0.5, connect_burst=3) as server:
            opened = [await connect(ws_url(server)) for _ in range(3)]
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server))
            response = info.value.response
            assert response.status_code == 429
            assert b"too many connections from your address" in response.body
            assert int(response.headers["retry-after"]) >= 1
            headers = {"X-Forwarded-For": "203.0.113.9"}
            async with connect(ws_url(server), additional_headers=headers) as ws:
                await ws.send(json.dumps({"username": "n", "message": "another address"}))
                assert (await recv_json(ws))["message"] == "another address"
            for ws in opened:
                await ws.close()


class TestSlowConsumer:
    async def test_non_reader_closed_with_1013_others_get_everything(self) -> None:
        text = "z" * 4000
        # What the kernel holds counts as sent: the burst must overflow the server's send
        # buffer, which autotuning may grow to tcp_wmem's maximum, before the outbox fills.
        messages = (kernel_send_buffer_max() + 2 * 64 * 1024) // len(text) + 1
        # The readers negotiate permessage-deflate, the non-reader does not: a slow plain
        # client among compressed ones.
        async with running_server(
            outbox_limit=64 * 1024, write_timeout=2, close_timeout=1, compression=True
        ) as server:
            # The receive buffer is set before connecting: set after, the window is
            # already scaled and the kernel's autotuning can absorb the whole burst,
            # so the server's backlog never reaches the limit (seen on trio).
            non_reader = socket.socket()
            non_reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            non_reader.connect(("127.0.0.1", server.port))  # loopback: at once
            non_reader.sendall(upgrade_request())  # then never read again
            readers = [await connect(ws_url(server)) for _ in range(3)]
            await wait_members(server, 4)
            received: list[list[int]] = [[] for _ in readers]
            # In step: every reader has each message before the next is sent, so only the
            # non-reader's backlog grows.
            for n in range(messages):
                await readers[0].send(json.dumps({"username": "s", "message": f"{n}:{text}"}))
                for index, reader in enumerate(readers):
                    event = await recv_json(reader, timeout=20)
                    received[index].append(int(event["message"].split(":")[0]))
            assert all(got == list(range(messages)) for got in received)
            # The non-reader is gone: its close frame cannot arrive, so it goes after the
            # close timeout (1 s) and a watchdog tick; more on a loop the whole suite loads.
            await wait_members(server, 3, timeout=15)
            metrics = server.metrics.render()
            assert b"wschat_slow_consumer_closes_total 1.0" in metrics
            for ws in readers:
                await ws.close()
            non_reader.close()


def kernel_send_buffer_max() -> int:
    """The most a TCP socket's send buffer can grow to (bytes), 4 MiB if unknown."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, IndexError, ValueError):
        return 4 * 1024 * 1024


def count_tasks() -> int:
    """Tasks on the calling event loop (the server's, through ``ServerHandle.call``)."""
    return len(anyio.get_running_tasks())


class TestChurn:
    async def test_connect_disconnect_cycles_leave_nothing_behind(self) -> None:
        async with running_server() as server:
            await assert_room_works(server)
            await wait_members(server, 0)
            await anyio.sleep(0.2)
            tasks_before = await server.call(count_tasks)
            fds_before = len(os.listdir("/proc/self/fd"))
            for cycle in range(150):
                ws = await connect(ws_url(server) + f"?room=r{cycle % 7}")
                if cycle % 3 == 0:
                    await ws.send(
                        json.dumps({"type": "join", "room": "lobby", "username": f"u{cycle}"})
                    )
                    await recv_type(ws, "presence")
                if cycle % 2:
                    rst(ws)
                else:
                    await ws.close()
            await wait_members(server, 0)
            await anyio.sleep(0.3)
            assert server.hub.statistics()["rooms"] == 0
            assert await server.call(server.hub.backend.presence, "lobby") == []
            assert await server.call(count_tasks) <= tasks_before
            assert len(os.listdir("/proc/self/fd")) <= fds_before + 2

    async def test_closed_connections_are_freed_without_the_cycle_collector(self) -> None:
        # Whatever a connection holds must go when it closes, by reference counting: left
        # to the cyclic collector, thousands of closed connections pile up until a full
        # collection, which stalls every other connection for as long as it takes.
        server_types = {"Peer", "TransportWriter", "TaskWriter", "ServerConnection", "ChatSession"}
        async with running_server() as server:
            gc.collect()
            gc.disable()
            try:
                for cycle in range(20):
                    ws = await connect(ws_url(server) + "?room=lobby")
                    await ws.send(json.dumps({"username": f"u{cycle}", "message": "hi"}))
                    await recv_type(ws, "message")
                    if cycle % 2:
                        rst(ws)
                    else:
                        await ws.close()
                await wait_members(server, 0)
                await anyio.sleep(0.2)
                gc.set_debug(gc.DEBUG_SAVEALL)
                gc.collect()
                left = sorted({type(o).__name__ for o in gc.garbage} & server_types)
            finally:
                gc.set_debug(0)
                gc.garbage.clear()
                gc.enable()
            assert left == []


class TestDrainAndHealth:
    async def test_stop_sends_1001_and_healthz_reports_draining(self) -> None:
        async with running_server(drain_timeout=5) as server:
            status, _, body = await raw_http(
                server.port, b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n"
            )
            assert (status, body) == (200, b"ok\n")
            ws = await connect(ws_url(server))
            server.stop()
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert server.draining


class TestTLS:
    async def test_https_page_and_wss_chat_on_one_port(self, tmp_path: Any) -> None:
        authority = trustme.CA()
        cert = authority.issue_cert("127.0.0.1", "localhost")
        certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
        cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
        cert.private_key_pem.write_to_path(str(keyfile))
        client_context = ssl.create_default_context()
        authority.configure_trust(client_context)
        async with running_server(certfile=str(certfile), keyfile=str(keyfile)) as server:
            url = f"wss://127.0.0.1:{server.port}/ws"
            async with connect(url, ssl=client_context) as a, connect(url, ssl=client_context) as b:
                await a.send(json.dumps({"username": "tls", "message": "secret"}))
                assert (await recv_json(b))["message"] == "secret"
            with anyio.fail_after(5):
                stream = await anyio.connect_tcp(
                    "127.0.0.1",
                    server.port,
                    tls=True,
                    ssl_context=client_context,
                    tls_standard_compatible=False,
                )
                async with stream:
                    await stream.send(b"GET / HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
                    data = b""
                    try:
                        while chunk := await stream.receive():
                            data += chunk
                    except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError):
                        pass
            assert data.startswith(b"HTTP/1.1 200") and b"<!doctype html>" in data.lower()


class TestWriteTimeout:
    async def test_blocked_send_closes_the_connection_room_unharmed(self) -> None:
        text = "w" * 4000
        messages = 1500  # ~6 MB: more than loopback socket buffers hold
        async with running_server(outbox_limit=0, write_timeout=1.5) as server:
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            await stream.send(upgrade_request())  # and never read
            async with connect(ws_url(server), max_queue=None) as reader:
                await wait_members(server, 2)
                for n in range(messages):
                    await reader.send(json.dumps({"username": "r", "message": f"{n}:{text}"}))
                got = [
                    int((await recv_json(reader))["message"].split(":")[0]) for _ in range(messages)
                ]
                assert got == list(range(messages))
                await wait_members(server, 1, timeout=10)  # the blocked one was dropped
            metrics = server.metrics.render()
            assert b'wschat_close_codes_total{code="1006"} 1.0' in metrics
            assert b"wschat_slow_consumer_closes_total 0.0" in metrics
            await stream.aclose()


class TestDrainRefusesNewUpgrades:
    async def test_upgrade_completed_during_drain_gets_503(self) -> None:
        async with running_server(drain_timeout=3, close_timeout=3) as server:
            holder = await RawClient.open(server.port)  # never answers the close: drain waits
            late = await anyio.connect_tcp("127.0.0.1", server.port)
            request = upgrade_request()
            await late.send(request[:20])
            await anyio.sleep(0.1)
            server.stop()
            assert await holder.close_code() == 1001
            await late.send(request[20:])
            data = b""
            with anyio.fail_after(5):
                try:
                    while chunk := await late.receive():
                        data += chunk
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    pass
            assert data.startswith(b"HTTP/1.1 503")
            assert b"retry-after: 5" in data.lower()
            await late.aclose()
            await holder.stream.aclose()
