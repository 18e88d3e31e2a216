"""Failure isolation: nothing one connection does ends the server or disturbs another.

Resets, half-closes and TLS clients that vanish; transports that raise on every
call the server makes; accept failing for lack of descriptors. Each runs with
the server on asyncio, uvloop and trio, beside well-behaved clients that must
lose nothing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import resource
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream, SocketListener
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wschat.server import Server, ServerConfig

from . import helpers
from .helpers import (
    ServerHandle,
    free_port,
    process_output,
    running_server,
    server_process,
    tls_files,
    wait_for_port,
    ws_url,
)
from .test_limits import RawClient, assert_room_works, client_frame
from .test_server import raw_http, recv_json, wait_members

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]


def reset_socket(port: int) -> None:
    """Connect and reset at once, before a byte of HTTP."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def url(server: ServerHandle, tls: bool) -> str:
    return ("wss" if tls else "ws") + ws_url(server)[2:]


class TestVanishingClients:
    @pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
    async def test_resets_and_half_closes_leave_the_server_serving(
        self, tls: bool, tmp_path: Path
    ) -> None:
        options, context = tls_files(tmp_path) if tls else ({}, None)
        ssl_context = context if tls else None
        async with running_server(close_timeout=1, **options) as server:
            for _ in range(10):
                reset_socket(server.port)
            idle = [await RawClient.open(server.port, ssl_context=ssl_context) for _ in range(6)]
            for client in idle[:3]:
                await client.reset()  # idle WebSockets that reset
            for client in idle[3:]:
                client.fin()  # FIN without a close frame
            await wait_members(server, 0)
            await assert_room_works(server, ssl_context=ssl_context)
            for client in idle[3:]:
                await client.stream.aclose()

    @pytest.mark.parametrize(
        ("tls", "readers", "resetting"), [(False, 100, 30), (True, 20, 10)], ids=["plain", "tls"]
    )
    async def test_resets_mid_broadcast_cost_no_reader_a_message(
        self, tls: bool, readers: int, resetting: int, tmp_path: Path
    ) -> None:
        options, context = tls_files(tmp_path) if tls else ({}, None)
        ssl_context = context if tls else None
        messages = 40
        async with running_server(**options) as server:
            good = [await connect(url(server, tls), ssl=ssl_context) for _ in range(readers)]
            bad = [
                await RawClient.open(server.port, ssl_context=ssl_context) for _ in range(resetting)
            ]
            await wait_members(server, readers + resetting)
            got: list[list[str]] = [[] for _ in good]

            async def read(index: int) -> None:
                while len(got[index]) < messages:
                    got[index].append((await recv_json(good[index], timeout=20))["message"])

            async with anyio.create_task_group() as group:
                for index in range(readers):
                    group.start_soon(read, index)
                for n in range(messages):
                    await good[0].send(json.dumps({"username": "s", "message": f"m{n}"}))
                    if n == 10:
                        for client in bad:
                            await client.reset()
            assert all(texts == [f"m{n}" for n in range(messages)] for texts in got)
            await wait_members(server, readers, timeout=10)
            for ws in good:
                await ws.close()
            await assert_room_works(server, ssl_context=ssl_context)


class FaultyTransport:
    """An asyncio transport whose ``fault`` method raises once the victim is armed."""

    def __init__(self, inner: Any, fault: str, victim: Victim) -> None:
        self._inner = inner
        self._fault = fault
        self._victim = victim

    def _check(self, name: str) -> None:
        if name == self._fault and self._victim.armed:
            self._victim.fired += 1
            raise RuntimeError(f"injected failure in {name}")

    def write(self, data: bytes) -> None:
        self._check("write")
        self._inner.write(data)

    def write_eof(self) -> None:
        self._check("write_eof")
        self._inner.write_eof()

    def get_write_buffer_size(self) -> int:
        self._check("get_write_buffer_size")
        return int(self._inner.get_write_buffer_size())

    def is_closing(self) -> bool:
        return bool(self._inner.is_closing())

    def abort(self) -> None:
        self._check("abort")
        self._inner.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FaultyStream(ByteStream):
    """Wraps an accepted stream; its transport (or, without one, the stream) fails on cue."""

    def __init__(self, inner: Any, fault: str, victim: Victim) -> None:
        self._inner = inner
        self._fault = fault
        self._victim = victim
        transport = getattr(inner, "_transport", None)
        if transport is not None:
            self._transport = FaultyTransport(transport, fault, victim)

    def _check(self, name: str) -> None:
        if name == self._fault and self._victim.armed:
            self._victim.fired += 1
            raise RuntimeError(f"injected failure in {name}")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        data: bytes = await self._inner.receive(max_bytes)
        return data

    async def send(self, item: bytes) -> None:
        self._check("send")
        await self._inner.send(item)

    async def send_eof(self) -> None:
        self._check("send_eof")
        if getattr(self, "_transport", None) is not None:
            self._transport.write_eof()  # as anyio's asyncio stream does
        else:
            await self._inner.send_eof()

    async def aclose(self) -> None:
        self._check("aclose")
        if getattr(self, "_transport", None) is not None:
            self._transport.abort()  # as anyio's asyncio stream does
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: Mapping[Any, Callable[[], Any]] = self._inner.extra_attributes
        return attributes


class Victim:
    """Makes a server whose next accepted connection fails on ``fault`` once armed."""

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.wanted = False
        self.armed = False
        self.fired = 0
        """How many times the injected failure was raised."""

    def factory(self, config: ServerConfig) -> Server:
        server = Server(config)
        handle = server._pump.handle

        async def handle_with_fault(stream: ByteStream, closed: Callable[[], None]) -> None:
            if self.wanted:
                self.wanted = False
                stream = FaultyStream(stream, self.fault, self)
            await handle(stream, closed)

        server._pump.handle = handle_with_fault  # type: ignore[method-assign]
        return server


# What each writer calls: the transport's methods on the direct path, the
# stream's with a writer task (trio, TLS).
TRANSPORT_FAULTS = ("write", "get_write_buffer_size", "write_eof", "abort")
STREAM_FAULTS = ("send", "send_eof", "aclose")


class TestFaultInjection:
    @pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
    async def test_a_raising_transport_costs_only_its_connection(
        self, tls: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        options, context = tls_files(tmp_path) if tls else ({}, None)
        ssl_context = context if tls else None
        direct = helpers.server_loop != "trio" and not tls
        # (TLS never half-closes the TCP stream under it: anyio's TLS streams have no send_eof.)
        faults = (
            TRANSPORT_FAULTS
            if direct
            else tuple(f for f in STREAM_FAULTS if not (tls and f == "send_eof"))
        )
        for fault in faults:
            victim = Victim(fault)
            caplog.clear()
            async with running_server(victim.factory, close_timeout=1, **options) as server:
                a = await connect(url(server, tls), ssl=ssl_context)
                victim.wanted = True
                bad = await RawClient.open(server.port, ssl_context=ssl_context)
                b = await connect(url(server, tls), ssl=ssl_context)
                await wait_members(server, 3)
                victim.armed = True
                for n in range(20):
                    await a.send(json.dumps({"username": "a", "message": f"m{n}"}))
                    if n == 5 and fault in ("write_eof", "send_eof", "aclose", "abort"):
                        await bad.send(client_frame(0x8, b"\x03\xe8"))  # a polite close
                for ws in (a, b):
                    assert [(await recv_json(ws))["message"] for _ in range(20)] == [
                        f"m{n}" for n in range(20)
                    ], fault
                await wait_members(server, 2, timeout=10)
                await assert_room_works(server, ssl_context=ssl_context)
                await a.close()
                await b.close()
            assert victim.fired >= 1, f"{fault}: the injected failure never fired"
            failures = [r for r in caplog.records if "injected failure" in r.getMessage()]
            assert len(failures) <= 1, (fault, [r.getMessage() for r in failures])

    @pytest.mark.every_loop(loops=("asyncio", "uvloop"))
    async def test_a_batched_flush_past_a_raising_transport_writes_everyone_else(self) -> None:
        # Only the flusher's batches (several frames per connection, joined)
        # write outside Peer.send's guard: the victim must fail there, between
        # good connections in the same batch.
        victim = Victim("write")
        async with running_server(victim.factory, close_timeout=1) as server:
            before = [await connect(ws_url(server)) for _ in range(2)]
            victim.wanted = True
            bad = await RawClient.open(server.port)
            after = [await connect(ws_url(server)) for _ in range(2)]
            sender = await RawClient.open(server.port)
            await wait_members(server, 6)

            def burst(first: int) -> bytes:
                """Ten messages in one TCP write: one batch, ten frames per recipient."""
                return b"".join(
                    client_frame(0x1, json.dumps({"username": "s", "message": f"m{n}"}).encode())
                    for n in range(first, first + 10)
                )

            good = (*before, *after)
            await sender.send(burst(0))  # unarmed: it turns the flusher to batches
            for ws in good:
                assert [(await recv_json(ws))["message"] for _ in range(10)] == [
                    f"m{n}" for n in range(10)
                ]
            assert not await server.call(lambda: server._flusher.direct)
            victim.armed = True
            await sender.send(burst(10))
            for ws in good:
                assert [(await recv_json(ws))["message"] for _ in range(10)] == [
                    f"m{n}" for n in range(10, 20)
                ]
            await wait_members(server, 5, timeout=10)  # the victim was dropped
            assert victim.fired == 1
            assert server.statistics()["write_failures"] == 1  # in a flush, not a direct write
            await assert_room_works(server)
            for ws in good:
                await ws.close()
            await sender.stream.aclose()
            await bad.stream.aclose()


class TestFaultsDuringRoomWideCloses:
    async def test_the_drain_reaches_everyone_past_a_failing_transport(self) -> None:
        # The drain closes every client; one whose transport raises under the
        # close frame must not stop the others' 1001, nor the shutdown.
        fault = "get_write_buffer_size" if helpers.server_loop != "trio" else "send"
        victim = Victim(fault)
        async with running_server(victim.factory, drain_timeout=3, close_timeout=1) as server:
            good = [await connect(ws_url(server)) for _ in range(2)]
            victim.wanted = True
            bad = await RawClient.open(server.port)
            more = await connect(ws_url(server))
            await wait_members(server, 4)
            victim.armed = True
            with anyio.fail_after(10):
                await server.call(server.shutdown)
            for ws in (*good, more):
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(ws)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            await bad.stream.aclose()


class FlakyListener(SocketListener):
    """A listener whose first ``failures`` accepts fail with EMFILE."""

    def __init__(self, inner: SocketListener, failures: int) -> None:
        self._inner = inner
        self.failures = failures

    async def accept(self) -> Any:
        if self.failures:
            self.failures -= 1
            await anyio.sleep(0)
            raise OSError(errno.EMFILE, "Too many open files")
        return await self._inner.accept()

    async def aclose(self) -> None:
        await self._inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        attributes: Mapping[Any, Callable[[], Any]] = self._inner.extra_attributes
        return attributes


def flaky_accepts(config: ServerConfig) -> Server:
    server = Server(config)
    bind = server._bind

    async def bind_flaky() -> list[SocketListener]:
        return [FlakyListener(listener, 5) for listener in await bind()]

    server._bind = bind_flaky  # type: ignore[method-assign]
    return server


class TestDescriptors:
    async def test_accept_out_of_descriptors_backs_off_and_keeps_serving(self) -> None:
        async with running_server(flaky_accepts) as server:
            await assert_room_works(server)
            assert server.statistics()["accept_failures"] == 5


def test_more_sockets_than_descriptors_pauses_accepting_and_the_server_lives(
    tmp_path: Path,
) -> None:
    """The issue's case, scaled: a soft and hard limit of 200, 400 idle sockets."""
    port = free_port()
    log = tmp_path / "server.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (200, 200))

    command = [sys.executable, "-m", "wschat", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--handshake-timeout", "30"],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=low_limit,
        )
    try:
        wait_for_port(port)
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
        anyio.run(anyio.sleep, 0.5)
        assert proc.poll() is None, log.read_text()
        for sock in idle:
            sock.close()
        status, _, body = anyio.run(
            raw_http, port, b"GET /healthz HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n", 10
        )
        assert (status, body) == (200, b"ok\n")
        assert proc.poll() is None
        text = log.read_text()
        assert "accepting paused" in text
        assert "Traceback" not in text
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture(autouse=True)
def quiet_injected_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="wschat")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_pipeliners_that_never_read_cost_bounded_memory(loop: str) -> None:
    """The issue's case: 20 clients each pipeline 5,000 `GET /app.js` and never read
    (it grew the server by 501 MiB on uvloop, 954 MiB on asyncio). Now the answers
    wait while 64 KiB of them are unsent, and the write timeout (no progress)
    drops the clients."""
    with server_process("--write-timeout", "1", "--loop", loop) as (proc, port):
        assert anyio.run(raw_http, port, HEALTHZ)[0] == 200
        before = rss_kib(proc.pid)
        request = b"GET /app.js HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 5000
        clients = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(request)
            clients.append(sock)
        peak = before
        deadline = time.monotonic() + 10
        while process_output(proc).count("write timeout") < 20 and time.monotonic() < deadline:
            peak = max(peak, rss_kib(proc.pid))
            time.sleep(0.1)
        assert peak - before < 40 * 1024, f"grew {peak - before} KiB"
        # Dropped by the write timeout: reset, their unread answers discarded.
        for sock in clients:
            sock.settimeout(10)
            with pytest.raises(ConnectionResetError):
                while sock.recv(1 << 20):
                    pass
            sock.close()
        assert process_output(proc).count("write timeout: no progress") == 20
        assert anyio.run(raw_http, port, HEALTHZ)[:3:2] == (200, b"ok\n")
        assert "Traceback" not in process_output(proc)


async def test_a_plain_tcp_probe_of_the_tls_port_is_one_info_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    options, context = tls_files(tmp_path)
    async with running_server(**options) as server:
        status_line = b""
        with anyio.fail_after(5):
            stream = await anyio.connect_tcp("127.0.0.1", server.port)
            async with stream:
                await stream.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    status_line = await stream.receive()
        assert not status_line.startswith(b"HTTP/1.1 200")
        await assert_room_works(server, ssl_context=context)
    lines = [r for r in caplog.records if "TLS handshake failed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "INFO"
