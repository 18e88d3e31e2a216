"""Loopback integration tests: a real server on 127.0.0.1, the `websockets` library as client."""

from __future__ import annotations

import json
import re
import socket
import struct
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from .helpers import ServerHandle, running_server, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


async def recv_json(ws: ClientConnection, timeout: float = 5.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        result: dict[str, Any] = json.loads(await ws.recv())
        return result


async def recv_type(ws: ClientConnection, kind: str, timeout: float = 5.0) -> dict[str, Any]:
    """The next event of type ``kind``, skipping others."""
    with anyio.fail_after(timeout):
        while True:
            event = await recv_json(ws, timeout)
            if event.get("type") == kind:
                return event


async def join(ws: ClientConnection, room: str, username: str) -> dict[str, Any]:
    await ws.send(json.dumps({"type": "join", "room": room, "username": username}))
    history = await recv_type(ws, "history")
    await recv_type(ws, "presence")
    return history


async def raw_http(
    port: int, request: bytes, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """Send raw request bytes; read the whole response until the server closes."""
    with anyio.fail_after(timeout):
        stream = await anyio.connect_tcp("127.0.0.1", port)
        async with stream:
            await stream.send(request)
            data = b""
            try:
                while chunk := await stream.receive():
                    data += chunk
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


def upgrade_request(path: str = "/ws", **overrides: str | None) -> bytes:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    lines = [f"GET {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def masked_text_frame(text: str) -> bytes:
    payload = text.encode()
    mask = b"\x01\x02\x03\x04"
    assert len(payload) < 126
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


class TestChat:
    async def test_two_clients_broadcast_both_ways(self) -> None:
        async with (
            running_server() as server,
            connect(ws_url(server)) as alice,
            connect(ws_url(server)) as bob,
        ):
            await join(alice, "lobby", "alice")
            await join(bob, "lobby", "bob")
            await alice.send(json.dumps({"type": "message", "room": "lobby", "message": "hi bob"}))
            for ws in (alice, bob):
                event = await recv_type(ws, "message")
                assert (event["username"], event["message"], event["room"]) == (
                    "alice",
                    "hi bob",
                    "lobby",
                )
                assert event["time"].endswith("Z") and event["seq"] == 1
            await bob.send(json.dumps({"type": "message", "room": "lobby", "message": "hi alice"}))
            for ws in (alice, bob):
                event = await recv_type(ws, "message")
                assert (event["username"], event["message"], event["seq"]) == ("bob", "hi alice", 2)

    async def test_bytes_out_counts_every_frame_delivered(self) -> None:
        # Frames written at once and frames flushed in batches are both counted, exactly.
        async with running_server() as server:
            clients = [await connect(ws_url(server)) for _ in range(3)]
            for index, ws in enumerate(clients):
                await join(ws, "lobby", f"u{index}")
            delivered = 0

            def frame_size(text: str | bytes) -> int:
                payload = len(text.encode() if isinstance(text, str) else text)
                return payload + (2 if payload < 126 else 4)  # the server does not mask

            async def bytes_out_when_settled() -> float:
                # Once each client has this message, it has everything sent before it.
                nonlocal delivered
                marker = json.dumps({"type": "message", "room": "lobby", "message": "."})
                await clients[0].send(marker)
                for ws in clients:
                    while True:
                        text = await ws.recv()
                        delivered += frame_size(text)
                        if json.loads(text).get("message") == ".":
                            break
                # A writer task (trio) counts a send once the stream returns, which can be
                # after the client has the bytes: read until the counter holds still.
                value, previous = read_bytes_out(), -1.0
                with anyio.fail_after(5):
                    while value != previous:
                        await anyio.sleep(0.1)
                        value, previous = read_bytes_out(), value
                return value

            def read_bytes_out() -> float:
                text = server.metrics.render().decode()
                found = re.search(r"^wschat_bytes_out_total (\S+)$", text, re.M)
                assert found is not None
                return float(found[1])

            before = await bytes_out_when_settled()
            delivered = 0
            for n in range(20):
                message = {"type": "message", "room": "lobby", "message": f"m{n} " * (3 * n)}
                await clients[0].send(json.dumps(message))  # one sender: in order before the marker
            after = await bytes_out_when_settled()
            assert after - before == delivered
            for ws in clients:
                await ws.close()

    async def test_seed_format_client_without_join(self) -> None:
        async with (
            running_server() as server,
            connect(ws_url(server)) as a,
            connect(ws_url(server) + "?room=lobby") as b,
        ):
            await a.send(json.dumps({"username": "A", "message": "hi"}))
            for ws in (a, b):
                event = await recv_json(ws)
                assert {"username", "message", "time"} <= event.keys()
                assert (event["username"], event["message"]) == ("A", "hi")
            # A seed client cannot later speak as someone else.
            await a.send(json.dumps({"username": "B", "message": "spoof"}))
            error = await recv_json(a)
            assert error["type"] == "error" and error["code"] == "username_mismatch"

    async def test_rooms_are_separate(self) -> None:
        async with (
            running_server() as server,
            connect(ws_url(server) + "?room=red") as red,
            connect(ws_url(server) + "?room=blue") as blue,
        ):
            await red.send(json.dumps({"username": "r", "message": "in red"}))
            assert (await recv_json(red))["message"] == "in red"
            await blue.send(json.dumps({"username": "b", "message": "in blue"}))
            assert (await recv_json(blue))["message"] == "in blue"  # not "in red"

    async def test_bad_input_gets_error_and_connection_stays_open(self) -> None:
        async with running_server() as server, connect(ws_url(server)) as ws:
            for frame, code in [
                ("not json", "bad_json"),
                ('{"type": "dance"}', "bad_type"),
                ('{"type": "join", "room": "no spaces", "username": "x"}', "bad_room"),
                ('{"type": "join", "room": "ok", "username": ""}', "bad_username"),
                ('{"type": "message", "message": ""}', "bad_message"),
                ('{"type": "message", "message": "hi"}', "no_username"),
            ]:
                await ws.send(frame)
                event = await recv_json(ws)
                assert (event["type"], event["code"]) == ("error", code), frame
            await ws.send(json.dumps({"username": "ok", "message": "still here"}))
            assert (await recv_type(ws, "message"))["message"] == "still here"

    async def test_a_name_that_looks_like_a_present_one_is_refused(self) -> None:
        async with (
            running_server() as server,
            connect(ws_url(server)) as alice,
            connect(ws_url(server)) as mimic,
            connect(ws_url(server)) as tab,
        ):
            await join(alice, "lobby", "alice")
            await mimic.send(json.dumps({"type": "join", "room": "lobby", "username": "ALICE"}))
            error = await recv_type(mimic, "error")
            assert error["code"] == "name_confusable" and "alice" in error["reason"]
            await mimic.send(json.dumps({"username": "a1ice", "message": "it is me"}))
            assert (await recv_type(mimic, "error"))["code"] == "name_confusable"
            # Unbound again: a name that looks like no one is fine, and it is in the room.
            await join(mimic, "lobby", "mallory")
            await join(tab, "lobby", "alice")  # the same name (another tab) is not a look-alike
            await tab.send(json.dumps({"type": "message", "message": "second tab"}))
            assert (await recv_type(mimic, "message"))["username"] == "alice"

    async def test_message_with_id_is_acknowledged_to_its_sender_only(self) -> None:
        async with (
            running_server() as server,
            connect(ws_url(server)) as alice,
            connect(ws_url(server)) as bob,
        ):
            await join(alice, "lobby", "alice")
            await join(bob, "lobby", "bob")
            await alice.send(json.dumps({"type": "message", "message": "hi", "id": "a-1"}))
            seen = {(await recv_type(alice, kind))["type"] for kind in ("message", "ack")}
            assert seen == {"message", "ack"}
            message = await recv_type(bob, "message")
            assert (message["id"], message["seq"]) == ("a-1", 1)
            await alice.send(json.dumps({"type": "message", "message": "", "id": "a-2"}))
            error = await recv_type(alice, "error")
            assert (error["code"], error["id"]) == ("bad_message", "a-2")
            # bob saw no ack of alice's message: his next event is his own ack.
            await bob.send(json.dumps({"type": "message", "message": "yo", "id": "b-1"}))
            events = [await recv_json(bob) for _ in range(2)]
            assert sorted(e["type"] for e in events) == ["ack", "message"]
            ack = next(e for e in events if e["type"] == "ack")
            assert (ack["id"], ack["room"], ack["seq"]) == ("b-1", "lobby", 2)
            assert ack["epoch"] == message["epoch"]

    async def test_hundred_clients_receive_every_message_once_in_order(self) -> None:
        clients = 100
        messages = 20
        async with running_server() as server:
            received: list[list[str]] = [[] for _ in range(clients)]
            sockets: list[ClientConnection] = []
            try:
                for _ in range(clients):
                    sockets.append(await connect(ws_url(server) + "?room=crowd"))
                async with anyio.create_task_group() as group:

                    async def reader(index: int) -> None:
                        while len(received[index]) < messages:
                            event = await recv_json(sockets[index], timeout=20)
                            received[index].append(event["message"])

                    for index in range(clients):
                        group.start_soon(reader, index)
                    for n in range(messages):
                        sender = sockets[n % clients]
                        await sender.send(
                            json.dumps({"username": f"u{n % clients}", "message": f"m{n}"})
                        )
            finally:
                for ws in sockets:
                    await ws.close()
        # Twenty senders on twenty connections: the server may order them in any
        # way, but every client sees that one order, every message exactly once.
        assert sorted(received[0], key=lambda m: int(m[1:])) == [f"m{n}" for n in range(messages)]
        assert all(got == received[0] for got in received)

    async def test_first_frame_in_same_packet_as_handshake(self) -> None:
        async with running_server() as server:
            with anyio.fail_after(5):
                stream = await anyio.connect_tcp("127.0.0.1", server.port)
                async with stream:
                    frame = masked_text_frame('{"username":"fast","message":"same packet"}')
                    await stream.send(upgrade_request() + frame)
                    data = b""
                    while b"same packet" not in data:
                        data += await stream.receive()
            assert data.startswith(b"HTTP/1.1 101 ")
            assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in data


class TestHandshakeRejections:
    @pytest.mark.parametrize(
        ("request_bytes", "status", "body_part"),
        [
            (upgrade_request(Sec_WebSocket_Key=None), 400, b"Sec-WebSocket-Key"),
            (upgrade_request(Sec_WebSocket_Key="short"), 400, b"Sec-WebSocket-Key"),
            (upgrade_request(Upgrade=None), 400, b"Upgrade"),
            (upgrade_request(Sec_WebSocket_Version="8"), 426, b"version 13"),
            (upgrade_request(Origin="http://evil.example"), 403, b"origin not allowed"),
            (upgrade_request("/ws?room=bad%20room"), 400, b"room"),
            (b"GET /nope HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n", 404, b"not found"),
            (
                b"POST / HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                405,
                b"method not allowed",
            ),
            (
                b"POST /ws HTTP/1.1\r\nHost: [::1]\r\nContent-Length: 0\r\n"
                b"Connection: close\r\n\r\n",
                405,
                b"GET",
            ),
            (b"GET / HTTP/1.1\r\nHost: [::1]\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, b""),
            (b"NOT HTTP AT ALL\r\n\r\n", 400, b""),
        ],
    )
    async def test_rejection(self, request_bytes: bytes, status: int, body_part: bytes) -> None:
        async with running_server() as server:
            got_status, headers, body = await raw_http(server.port, request_bytes)
        assert got_status == status
        assert body_part in body
        if status == 426:
            assert headers["sec-websocket-version"] == "13"
        if status == 405:
            assert "GET" in headers["allow"]

    async def test_rejection_seen_by_websockets_client(self) -> None:
        async with running_server() as server:
            with pytest.raises(InvalidStatus) as info:
                await connect(ws_url(server), origin="http://evil.example")  # type: ignore[arg-type]
        assert info.value.response.status_code == 403

    async def test_same_origin_and_allowlist_accepted(self) -> None:
        async with running_server(allowed_origins=("https://app.example.com",)) as server:
            same = f"http://127.0.0.1:{server.port}"
            for origin in (same, "https://app.example.com"):
                async with connect(ws_url(server), origin=origin) as ws:  # type: ignore[arg-type]
                    await ws.send(json.dumps({"username": "o", "message": origin}))
                    assert (await recv_json(ws))["message"] == origin

    async def test_plain_http_keep_alive_and_page(self) -> None:
        async with running_server() as server:
            # Two pipelined requests on one connection; the second asks to close.
            status, _, body = await raw_http(
                server.port,
                b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n"
                b"GET /app.js HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n",
            )
        assert status == 200
        assert b"<!doctype html>" in body.lower()
        assert b"HTTP/1.1 200" in body and b"text/javascript" in body


def rst(ws: ClientConnection) -> None:
    """Drop a client's TCP connection with a reset (no close frame, no FIN)."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()


async def wait_members(server: ServerHandle, count: int, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout):
        while server.hub.statistics()["members"] != count or len(server.connections) != count:
            await anyio.sleep(0.02)


class TestDisconnects:
    async def test_rst_mid_broadcast_leaves_no_member_and_others_get_everything(self) -> None:
        async with running_server() as server:
            keep = [await connect(ws_url(server)) for _ in range(5)]
            drop = [await connect(ws_url(server)) for _ in range(10)]
            await join(keep[0], "lobby", "sender")
            await wait_members(server, 15)
            for n in range(30):
                await keep[0].send(json.dumps({"type": "message", "message": f"m{n}"}))
                if n == 10:
                    for ws in drop:
                        rst(ws)
            await wait_members(server, 5)
            for ws in keep:
                texts: list[str] = []
                while len(texts) < 30:
                    event = await recv_json(ws)
                    if event.get("type") == "message":
                        texts.append(event["message"])
                assert texts == [f"m{n}" for n in range(30)]
                await ws.close()
            await wait_members(server, 0)
            assert server.hub.statistics()["rooms"] == 0

    async def test_clean_close_removes_member_and_presence(self) -> None:
        async with running_server() as server, connect(ws_url(server)) as watcher:
            await join(watcher, "lobby", "watcher")
            async with connect(ws_url(server)) as leaver:
                await join(leaver, "lobby", "leaver")
                assert (await recv_type(watcher, "joined"))["username"] == "leaver"
            left = await recv_type(watcher, "left")
            assert left["username"] == "leaver"
            await wait_members(server, 1)
            assert await server.call(server.hub.backend.presence, "lobby") == ["watcher"]
