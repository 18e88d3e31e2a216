"""The cross-node benchmark's clients: raw WebSocket clients as asyncio protocols.

Each client sits in one room (``/ws?room=...``) on one wschat node and speaks
the seed format (``{"username", "message"}``), so it receives ``message`` events
only. A message's text starts with its send time (ns) and the sender's node
number, so every delivery's latency is known, and whether it crossed nodes.
Frames come from ``wire`` (the broadcast benchmark's client frames).
"""

from __future__ import annotations

import array
import asyncio
import base64
import os
import time
from typing import Any

from wire import MESSAGE_SIZE, chat_payload, mask_frame


class Clients:
    """Every benchmark client, and what they received in the current phase."""

    def __init__(self) -> None:
        self.all: list[Client] = []
        self.reset()

    def reset(self) -> None:
        self.deliveries = 0
        self.latencies: array.array[int] = array.array("q")
        self.cross: array.array[int] = array.array("q")
        self.last_receipt = 0
        for client in self.all:
            client.count = 0

    def received(self, client: Client, payload: bytes, now: int) -> None:
        start = payload.find(b'"message":"')
        if start < 0 or b'"seq":' not in payload:
            return
        start += 11
        self.deliveries += 1
        client.count += 1
        self.last_receipt = now
        sent = int(payload[start : start + 19])
        node = payload[start + 20] - 48
        latency = now - sent
        self.latencies.append(latency)
        if node != client.node:
            self.cross.append(latency)
        if client.sender and payload.find(client.tag) > 0:
            client.acked += 1
            client.pump()


class Client(asyncio.Protocol):
    """One WebSocket client in ``room`` on wschat node ``node`` (seed-format messages)."""

    def __init__(self, clients: Clients, node: int, port: int, room: str, index: int) -> None:
        self.clients = clients
        self.node = node
        self.port = port
        self.room = room
        self.username = f"u{index}"
        self.tag = b'"username":"%s"' % self.username.encode()
        self.sender = False
        self.count = self.acked = self.sent = self.quota = self.window = 0
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.buf = b""
        self.handshaking = True

    def connection_made(self, transport: Any) -> None:  # uvloop's is no asyncio.Transport
        self.transport = transport
        key = base64.b64encode(os.urandom(16))
        transport.write(
            b"GET /ws?room=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.room.encode(), self.port, key)
        )

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buf + data
        if self.handshaking:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.opened.set_exception(ConnectionError(buf[:200].decode(errors="replace")))
                return
            self.handshaking = False
            self.opened.set_result(None)
            buf = buf[end + 4 :]
        at = 0
        while len(buf) - at >= 2:
            opcode, length = buf[at] & 0x0F, buf[at + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buf) - at < 4:
                    break
                length, head = int.from_bytes(buf[at + 2 : at + 4], "big"), 4
            elif length == 127:
                if len(buf) - at < 10:
                    break
                length, head = int.from_bytes(buf[at + 2 : at + 10], "big"), 10
            if len(buf) - at < head + length:
                break
            payload = buf[at + head : at + head + length]
            at += head + length
            if opcode == 0x1:
                self.clients.received(self, payload, now)
            elif opcode == 0x9 and self.transport is not None:
                self.transport.write(mask_frame(payload, 0xA))
        self.buf = buf[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed"))

    def say(self, k: int) -> None:
        head = f"{time.time_ns():019d}|{self.node}|{k:09d}|"
        if self.transport is not None:
            text = head + "x" * (MESSAGE_SIZE - len(head))
            self.transport.write(mask_frame(chat_payload(self.username, text)))
        self.sent += 1

    def pump(self) -> None:
        """Throughput phase: keep ``window`` of this sender's messages in flight."""
        while self.sent < self.quota and self.sent - self.acked < self.window:
            self.say(self.sent)


async def connect_all(clients: Clients, plan: list[tuple[int, int, str]]) -> None:
    """Open one client per (node, port, room) in ``plan``, 100 at a time."""
    loop = asyncio.get_running_loop()
    limit = asyncio.Semaphore(100)

    async def one(index: int, node: int, port: int, room: str) -> None:
        async with limit:
            _, client = await loop.create_connection(
                lambda: Client(clients, node, port, room, index), "127.0.0.1", port
            )
            await asyncio.wait_for(client.opened, 30)
            clients.all.append(client)

    await asyncio.gather(*(one(i, *entry) for i, entry in enumerate(plan)))


async def settle(clients: Clients, senders: list[Client], expected: int, timeout: float) -> None:
    """Until every expected delivery arrived (or ``timeout``)."""
    deadline = time.monotonic() + timeout
    while clients.deliveries < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.02)


async def warm_up(clients: Clients, senders: list[Client]) -> None:
    """Every client has received a message: every node is subscribed, every client in."""
    for _ in range(50):
        for sender in senders:
            sender.say(0)
        await asyncio.sleep(0.1)
        if all(client.count for client in clients.all):
            return
    raise TimeoutError("some clients never received a message")
