"""permessage-deflate over loopback, on every event loop.

Off by default: Chromium's offer gets no extension. With ``compression=True``
every member receives every message compressed, a broadcast is compressed once
per negotiated setting (counted by the server's statistics), small events stay
plain, and history replies arrive compressed. The clients are the `websockets`
library, which offers deflate as Chromium does, and a bare TCP client that
reads each frame's RSV1 bit and inflates it with zlib itself.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

import anyio
import pytest
from anyio.abc import SocketStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)

from tests.protocol_helpers import OP_TEXT, SAMPLE_KEY, raw_frame

from .helpers import ServerHandle, running_server, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

CHROMIUM_OFFER = "permessage-deflate; client_max_window_bits"
TEXTS = [
    f"message {i}: are we still meeting at three, or should we move it to tomorrow morning?"
    for i in range(5)
]


class RawClient:
    """A WebSocket client on a bare TCP stream that reads the server's frames as bytes."""

    def __init__(self, stream: SocketStream, extensions: str | None) -> None:
        self.stream = stream
        self.extensions = extensions
        """The server's Sec-WebSocket-Extensions answer (None: no extension)."""
        self._buffer = b""

    @classmethod
    async def open(cls, port: int, offer: str | None = CHROMIUM_OFFER) -> RawClient:
        stream = await anyio.connect_tcp("127.0.0.1", port)
        lines = [
            "GET /ws HTTP/1.1",
            f"Host: 127.0.0.1:{port}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {SAMPLE_KEY}",
            "Sec-WebSocket-Version: 13",
        ]
        if offer is not None:
            lines.append(f"Sec-WebSocket-Extensions: {offer}")
        await stream.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        client = cls(stream, None)
        head = await client._read_until(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert status_line.startswith("HTTP/1.1 101"), head
        headers = dict(line.split(": ", 1) for line in header_lines)
        client.extensions = {k.lower(): v for k, v in headers.items()}.get(
            "sec-websocket-extensions"
        )
        return client

    async def send_json(self, event: dict[str, Any]) -> None:
        await self.stream.send(raw_frame(OP_TEXT, json.dumps(event).encode()))

    async def join(self, room: str, username: str) -> None:
        await self.send_json({"type": "join", "room": room, "username": username})

    async def next_event(self, kind: str) -> tuple[bool, dict[str, Any]]:
        """The next event of type ``kind`` (others skipped), and whether it came compressed."""
        with anyio.fail_after(5):
            while True:
                first, payload = await self._frame()
                if first & 0x0F != OP_TEXT:
                    continue  # a ping
                compressed = bool(first & 0x40)
                if compressed:
                    # RFC 7692 7.2.2; Chromium's offer left the server window at up to 15 bits.
                    inflater = zlib.decompressobj(-15)
                    payload = inflater.decompress(payload + b"\x00\x00\xff\xff")
                event: dict[str, Any] = json.loads(payload)
                if event.get("type") == kind:
                    return compressed, event

    async def _frame(self) -> tuple[int, bytes]:
        header = await self._read(2)
        length = header[1] & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self._read(8))
        return header[0], await self._read(length)

    async def _read(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._buffer += await self.stream.receive()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    async def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._buffer += await self.stream.receive()
        head, _, self._buffer = self._buffer.partition(marker)
        return head


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    with anyio.fail_after(5):
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            if event.get("type") == kind:
                return event


async def join(ws: ClientConnection, username: str, room: str = "lobby") -> None:
    await ws.send(json.dumps({"type": "join", "room": room, "username": username}))
    await recv_type(ws, "presence")


async def say_all(sender: ClientConnection, texts: list[str]) -> None:
    for text in texts:
        await sender.send(json.dumps({"type": "message", "room": "lobby", "message": text}))


async def received_texts(ws: ClientConnection, count: int) -> list[str]:
    return [(await recv_type(ws, "message"))["message"] for _ in range(count)]


def deflate_of(ws: ClientConnection) -> PerMessageDeflate:
    (extension,) = ws.protocol.extensions
    assert isinstance(extension, PerMessageDeflate)
    return extension


async def compressions(server: ServerHandle) -> int:
    stats: dict[str, int] = await server.call(server.server.statistics)
    return stats["compressions"]


async def test_off_by_default_a_chromium_offer_gets_no_extension() -> None:
    async with running_server() as server:
        raw = await RawClient.open(server.port)
        async with raw.stream, connect(ws_url(server)) as ws:
            assert raw.extensions is None
            assert ws.protocol.extensions == []  # websockets offered deflate too
            await raw.join("lobby", "raw")
            await raw.next_event("presence")
            await join(ws, "alice")
            await say_all(ws, TEXTS[:1])
            compressed, event = await raw.next_event("message")
            assert event["message"] == TEXTS[0] and not compressed
            assert await compressions(server) == 0


async def test_every_member_receives_every_message_compressed() -> None:
    async with running_server(compression=True) as server:
        url = ws_url(server)
        async with connect(url) as alice, connect(url) as bob, connect(url) as carol:
            raw = await RawClient.open(server.port)
            async with raw.stream:
                assert raw.extensions == (
                    "permessage-deflate; server_no_context_takeover; "
                    "client_no_context_takeover; client_max_window_bits=10"
                )
                for ws, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
                    await join(ws, name)
                    # websockets keeps no context either way, as negotiated.
                    assert deflate_of(ws).remote_no_context_takeover
                    assert deflate_of(ws).local_no_context_takeover
                await raw.join("lobby", "raw")
                compressed, _ = await raw.next_event("presence")
                assert not compressed, "under --compression-min-size: sent plain"

                await say_all(alice, TEXTS)
                for ws in (alice, bob, carol):
                    assert await received_texts(ws, len(TEXTS)) == TEXTS
                for text in TEXTS:
                    compressed, event = await raw.next_event("message")
                    assert compressed and event["message"] == text

            # The big payload: a late joiner's history reply comes compressed too.
            late = await RawClient.open(server.port)
            async with late.stream:
                await late.join("lobby", "late")
                compressed, history = await late.next_event("history")
                assert compressed
                assert [m["message"] for m in history["messages"]] == TEXTS


@pytest.mark.parametrize(
    ("min_size", "compressed"), [(1 << 20, False), (0, True)], ids=["above-all", "zero"]
)
async def test_compression_min_size_decides_which_events_go_compressed(
    min_size: int, compressed: bool
) -> None:
    # The default (128 B) would send the small events plain and the message compressed:
    # each case differs from it in one direction, so the setting must reach the server.
    async with running_server(compression=True, compression_min_size=min_size) as server:
        raw = await RawClient.open(server.port)
        async with raw.stream, connect(ws_url(server), compression=None) as alice:
            assert raw.extensions is not None, "negotiated either way"
            await raw.join("lobby", "raw")
            assert (await raw.next_event("presence"))[0] is compressed  # ~50 B
            await join(alice, "alice")
            assert (await raw.next_event("joined"))[0] is compressed  # ~50 B
            await say_all(alice, TEXTS[:1])
            was_compressed, event = await raw.next_event("message")  # ~200 B
            assert was_compressed is compressed and event["message"] == TEXTS[0]


async def test_a_broadcast_is_compressed_once_per_negotiated_setting() -> None:
    async with running_server(compression=True) as server:
        url = ws_url(server)
        small_window = [ClientPerMessageDeflateFactory(server_max_window_bits=10)]
        async with (
            connect(url) as chromium_like_1,
            connect(url) as chromium_like_2,
            connect(url) as chromium_like_3,
            connect(url, extensions=small_window) as small_1,
            connect(url, extensions=small_window) as small_2,
            connect(url, compression=None) as plain,
        ):
            members = [chromium_like_1, chromium_like_2, chromium_like_3, small_1, small_2, plain]
            for index, ws in enumerate(members):
                await join(ws, f"user{index}")
            assert deflate_of(small_1).remote_max_window_bits == 10
            assert plain.protocol.extensions == []
            before = await compressions(server)

            await say_all(plain, TEXTS)
            for ws in members:
                assert await received_texts(ws, len(TEXTS)) == TEXTS
            # Six members, two compression settings (12 and 10 bits), one uncompressed:
            # each broadcast was compressed twice, not once per member.
            assert await compressions(server) - before == 2 * len(TEXTS)
            stats = await server.call(server.server.statistics)
            assert stats["deflate_settings"] == 2
