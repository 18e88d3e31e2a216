"""wschat.client over real loopback sockets, against a real in-process wschat server.

Every test runs on asyncio, uvloop and trio (client and server both). Servers
that misbehave on purpose (silent after the handshake) are small raw-socket
listeners written here.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
from anyio.abc import SocketStream, TaskStatus

import wschat.client
from wschat.client import (
    Ack,
    Backoff,
    ChatClient,
    ConnectError,
    ConnectionClosedError,
    Disconnected,
    Gap,
    HandshakeRejectedError,
    History,
    Joined,
    JoinError,
    Left,
    Message,
    Presence,
    Reconnected,
    SayError,
)
from wschat.hub import Hub, MemoryBackend
from wschat.server import Server, ServerConfig

from .helpers import free_port, running_server, tls_files

pytestmark = pytest.mark.anyio

FAST = Backoff(initial=0.05, maximum=0.2)
E = TypeVar("E")


@pytest.fixture(
    params=[
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
        pytest.param("trio", id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


def url(server: Server | int, scheme: str = "ws") -> str:
    port = server if isinstance(server, int) else server.port
    return f"{scheme}://127.0.0.1:{port}/ws"


async def next_event(
    chat: ChatClient,
    kind: type[E],
    timeout: float = 5.0,
    where: Callable[[E], bool] = lambda _: True,
) -> E:
    """The next event of type ``kind`` (for which ``where`` is true), skipping others."""
    with anyio.fail_after(timeout):
        async for event in chat:
            if isinstance(event, kind) and where(event):
                return event
    raise AssertionError(f"the client ended before a {kind.__name__}")


async def events_until(
    chat: ChatClient, done: Callable[[Any], bool], timeout: float = 5.0
) -> list[Any]:
    """Every event up to and including the first for which ``done`` is true."""
    seen: list[Any] = []
    with anyio.fail_after(timeout):
        async for event in chat:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"the client ended after {seen}")


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


async def serve(
    port: int,
    stop: anyio.Event,
    stopped: anyio.Event,
    hub: Hub | None = None,
    *,
    task_status: TaskStatus[Server],
) -> None:
    """An in-process server on a fixed ``port`` until ``stop`` is set (then it drains).

    Given a ``hub``, the server uses it, so its history outlives the server.
    """
    limits = {"rate": 0, "address_rate": 0, "connect_rate": 0, "user_rate": 0}
    server = Server(ServerConfig(host="127.0.0.1", port=port, **limits), hub=hub)
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        task_status.started(server)
        await stop.wait()
        server.stop()
    stopped.set()  # the port is free again


# -- chatting ----------------------------------------------------------------------


async def test_round_trip_between_two_clients() -> None:
    async with (
        running_server() as server,
        wschat.client.connect(url(server), room="lobby", username="alice") as alice,
        wschat.client.connect(url(server), room="lobby", username="bob") as bob,
    ):
        first = await next_event(bob, History)
        assert first.room == "lobby" and first.messages == () and first.complete
        assert "alice" in (await next_event(bob, Presence)).members
        position = await alice.say("hello bob")
        message = await next_event(bob, Message)
        assert (message.username, message.text, message.mine) == ("alice", "hello bob", False)
        assert message.position == position and message.id is not None
        mine = await next_event(alice, Message)
        assert mine.mine and mine.text == "hello bob"
        assert await next_event(alice, Ack) == Ack("lobby", mine.id or "", position)
        # The server's clock stamped it (RFC 3339, UTC).
        assert message.time.utcoffset() is not None
        assert alice.position("lobby") == position


async def test_history_on_join_then_several_rooms_at_once() -> None:
    async with (
        running_server() as server,
        wschat.client.connect(url(server), room="lobby", username="alice") as alice,
    ):
        await alice.say("one")
        await alice.say("two")
        async with wschat.client.connect(url(server), room="lobby", username="bob") as bob:
            history = await next_event(bob, History)
            assert texts(list(history.messages)) == ["one", "two"]
            await bob.join("dev")
            await alice.join("dev")
            assert bob.rooms == ("lobby", "dev")
            await alice.say("in dev", room="dev")
            assert (await next_event(bob, Message)).room == "dev"
            bob.leave("lobby")
            await alice.say("lobby only")
            await alice.say("dev again", room="dev")
            later = await events_until(bob, lambda e: isinstance(e, Message))
            assert texts(later) == ["dev again"]  # nothing of the room left
            assert all(getattr(e, "room", "dev") == "dev" for e in later)


async def test_presence_joined_and_left() -> None:
    async with (
        running_server() as server,
        wschat.client.connect(url(server), username="alice") as alice,
    ):
        await next_event(alice, Presence)
        async with wschat.client.connect(url(server), username="carol"):
            assert await next_event(alice, Joined) == Joined("lobby", "carol")
        assert await next_event(alice, Left) == Left("lobby", "carol")


async def test_refusals_raise_say_and_join_errors() -> None:
    async with (
        running_server(rate=1, burst=2) as server,
        wschat.client.connect(url(server), username="alice") as alice,
    ):
        with pytest.raises(SayError) as too_long:
            await alice.say("x" * (wschat.client.MAX_MESSAGE_LENGTH + 1))
        assert too_long.value.code == "bad_message"
        await alice.say("within the burst")
        with pytest.raises(SayError) as limited:
            await alice.say("over the rate")
        assert limited.value.code == "rate_limited" and limited.value.id is not None
        assert "rate_limited" in str(limited.value)
    async with (
        running_server() as server,
        wschat.client.connect(url(server), username="alice") as alice,
    ):
        for n in range(31):  # the server allows 32 rooms per connection
            await alice.join(f"r{n}")
        with pytest.raises(JoinError) as refused:
            await alice.join("one-too-many")
        assert refused.value.code == "too_many_rooms"
        assert "one-too-many" not in alice.rooms
        await alice.say("still connected")
        await alice.say("x" * wschat.client.MAX_MESSAGE_LENGTH)  # the longest text published


# -- refused and closed connections ----------------------------------------------


async def test_refused_handshakes_raise_with_status_and_body() -> None:
    async with running_server() as server:
        with pytest.raises(HandshakeRejectedError) as forbidden:
            async with wschat.client.connect(
                url(server), username="x", origin="http://evil.example"
            ):
                pass
        assert forbidden.value.status == 403
        assert "origin not allowed: http://evil.example" in forbidden.value.body
        assert "HTTP 403" in str(forbidden.value)
        # A second, conflicting version header: the server speaks only version 13.
        with pytest.raises(HandshakeRejectedError) as upgrade_required:
            async with wschat.client.connect(
                url(server), username="x", headers=[("Sec-WebSocket-Version", "8")]
            ):
                pass
        assert upgrade_required.value.status == 426
        assert ("sec-websocket-version", "13") in upgrade_required.value.headers
        assert "version 13" in upgrade_required.value.body
        with pytest.raises(HandshakeRejectedError) as bad_path:
            async with wschat.client.connect(f"ws://127.0.0.1:{server.port}/nowhere", username="x"):
                pass
        assert bad_path.value.status == 404


async def test_nothing_listening_is_a_connect_error() -> None:
    port = free_port()
    with pytest.raises(ConnectError) as caught:
        async with wschat.client.connect(url(port), username="x"):
            pass
    assert caught.value.url == url(port) and "refused" in caught.value.cause


async def test_without_reconnect_a_server_shutdown_ends_the_iteration() -> None:
    async with (
        running_server() as server,
        wschat.client.connect(url(server), username="x", reconnect=None) as chat,
    ):
        await next_event(chat, Presence)
        server.stop()
        with pytest.raises(ConnectionClosedError) as closed, anyio.fail_after(5):
            async for _ in chat:
                pass
        assert closed.value.code == 1001 and "shutting down" in closed.value.reason
        with pytest.raises(ConnectionClosedError):
            await chat.say("too late")


async def test_leaving_the_block_closes_with_1000() -> None:
    async with running_server() as server:
        async with wschat.client.connect(url(server), username="x") as chat:
            assert chat.connected and len(server.connections) == 1
        assert not chat.connected
        with anyio.fail_after(5):
            while server.connections:
                await anyio.sleep(0.01)
    with pytest.raises(ConnectionClosedError):
        await chat.say("after the block")


# -- reconnecting ----------------------------------------------------------------


async def test_restarted_memory_hub_reconnects_and_reports_a_gap() -> None:
    port = free_port()
    async with anyio.create_task_group() as group:
        first_stop, first_stopped = anyio.Event(), anyio.Event()
        await group.start(serve, port, first_stop, first_stopped)
        async with (
            wschat.client.connect(url(port), username="bot", reconnect=FAST) as bot,
            wschat.client.connect(url(port), username="alice", reconnect=FAST) as alice,
        ):
            await alice.say("before")
            before = await next_event(bot, Message)
            first_stop.set()  # drains: 1001 to everyone; history is gone with the process
            disconnected = await next_event(bot, Disconnected)
            assert disconnected.code == 1001
            await first_stopped.wait()
            second_stop = anyio.Event()
            await group.start(serve, port, second_stop, anyio.Event())
            reconnected = await next_event(bot, Reconnected)
            assert reconnected.code == 1001 and reconnected.attempts >= 1
            gap = await next_event(bot, Gap)
            assert gap.since == before.position and gap.position.epoch != before.position.epoch
            await next_event(alice, Reconnected)
            await alice.say("after")
            after = await next_event(bot, Message)
            assert after.text == "after" and after.position.epoch == gap.position.epoch
            second_stop.set()


async def test_a_restart_that_keeps_history_recovers_every_room_each_message_once() -> None:
    port, rooms = free_port(), ["a", "b"]
    hub = Hub(MemoryBackend())  # outlives the server, as a Redis hub's history outlives a node
    async with anyio.create_task_group() as group:
        first_stop, first_stopped = anyio.Event(), anyio.Event()
        await group.start(serve, port, first_stop, first_stopped, hub)
        async with (
            wschat.client.connect(url(port), room=rooms, username="bot", reconnect=FAST) as bot,
            wschat.client.connect(url(port), room=rooms, username="alice", reconnect=FAST) as alice,
        ):
            await alice.say("a1", room="a")
            await alice.say("b1", room="b")
            await next_event(bot, Message, where=lambda m: m.text == "b1")
            first_stop.set()
            await next_event(bot, Disconnected)
            await first_stopped.wait()
            # Said while no server is up (as through another node): the bot missed them.
            for room, text in (("a", "a2"), ("b", "b2"), ("a", "a3")):
                await hub.say(room, "carol", text)
            second_stop = anyio.Event()
            await group.start(serve, port, second_stop, anyio.Event(), hub)
            await next_event(alice, Reconnected)
            with anyio.fail_after(5):  # say waits for a room to be joined again
                await alice.say("a4", room="a")
                await alice.say("b3", room="b")
            seen: list[Any] = []
            while not {"a4", "b3"} <= set(texts(seen)):
                seen += await events_until(bot, lambda e: isinstance(e, Message))
            second_stop.set()
    assert any(isinstance(e, Reconnected) for e in seen)
    assert not any(isinstance(e, Gap) for e in seen)
    in_room = {
        room: [e.text for e in seen if isinstance(e, Message) and e.room == room] for room in rooms
    }
    assert in_room == {"a": ["a2", "a3", "a4"], "b": ["b2", "b3"]}
    assert bot.rooms == ("a", "b")


async def test_a_message_sent_while_disconnected_goes_out_after_reconnecting() -> None:
    port = free_port()
    async with anyio.create_task_group() as group:
        first_stop, first_stopped = anyio.Event(), anyio.Event()
        await group.start(serve, port, first_stop, first_stopped)
        async with wschat.client.connect(url(port), username="bot", reconnect=FAST) as bot:
            first_stop.set()
            await next_event(bot, Disconnected)
            assert not bot.connected
            sent: list[Any] = []

            async def say_while_away() -> None:
                sent.append(await bot.say("queued"))

            group.start_soon(say_while_away)
            await first_stopped.wait()
            second_stop = anyio.Event()
            await group.start(serve, port, second_stop, anyio.Event())
            mine = await next_event(bot, Message)
            assert mine.mine and mine.text == "queued"
            with anyio.fail_after(5):
                while not sent:
                    await anyio.sleep(0.01)
            assert sent == [mine.position]
            second_stop.set()


# -- keepalive, TLS, token -------------------------------------------------------


@asynccontextmanager
async def silent_server(requests: list[bytes]) -> AsyncIterator[int]:
    """Accepts the WebSocket handshake, then never sends or reads anything."""

    async def handle(stream: SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            try:
                head += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
        requests.append(head)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(
            hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
        )
        await stream.send(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handle)
        try:
            yield port
        finally:
            group.cancel_scope.cancel()


async def test_keepalive_drops_a_silent_server() -> None:
    async with silent_server([]) as port:
        client = wschat.client.connect(
            url(port), username="x", reconnect=None, ping_interval=0.1, ping_timeout=0.2
        )
        with pytest.raises(ConnectionClosedError) as dropped, anyio.fail_after(5):
            async with client:
                pass  # the joins are never answered; nor are the pings
        assert (dropped.value.code, dropped.value.reason) == (1011, "keepalive timeout")


async def test_keepalive_does_not_drop_a_user_who_is_not_reading() -> None:
    async with (
        running_server(ping_interval=0.05) as server,
        wschat.client.connect(
            url(server),
            username="x",
            reconnect=None,
            ping_interval=0.05,
            ping_timeout=0.1,
            max_queue=1,  # full after the History: reading pauses
        ) as chat,
    ):
        await anyio.sleep(0.3)  # a keepalive would have dropped a silent server twice
        assert chat.connected
        assert isinstance(await next_event(chat, History), History)
        await chat.say("still here")


async def test_token_goes_in_a_header_fresh_for_each_connection() -> None:
    requests: list[bytes] = []
    issued = itertools.count(1)

    async def token() -> str:
        return f"t{next(issued)}"

    async def enter(port: int) -> None:
        async with wschat.client.connect(
            f"ws://127.0.0.1:{port}/ws?lang=en&room=ignored",
            room="dev",
            username="x",
            token=token,
            ping_interval=0.05,
            ping_timeout=0.05,  # the silent server is dropped, and connected to again
            reconnect=FAST,
        ):
            pass  # never reached: the joins are never answered

    async with silent_server(requests) as port, anyio.create_task_group() as group:
        group.start_soon(enter, port)
        with anyio.fail_after(5):
            while len(requests) < 2:
                await anyio.sleep(0.01)
        group.cancel_scope.cancel()  # entering is cancellable
    # Never in the URL (URLs end up in proxies' logs): an Authorization header.
    lines = [request.split(b"\r\n", 1)[0] for request in requests[:2]]
    assert lines == [b"GET /ws?lang=en&room=dev HTTP/1.1"] * 2
    assert [b"Authorization: Bearer t%d" % n in requests[n - 1] for n in (1, 2)] == [True, True]


async def test_wss_with_an_ssl_context(tmp_path: Path) -> None:
    options, trusted = tls_files(tmp_path)
    async with running_server(**options) as server:
        async with wschat.client.connect(url(server, "wss"), username="x", ssl=trusted) as chat:
            position = await chat.say("over TLS")
            assert (await next_event(chat, Message)).position == position
        with pytest.raises(ConnectError) as untrusted:
            async with wschat.client.connect(url(server, "wss"), username="x"):
                pass
        assert "certificate" in untrusted.value.cause
    with pytest.raises(ValueError):
        wschat.client.connect(url(server), username="x", ssl=trusted)


async def test_bad_arguments_raise_value_error_before_connecting() -> None:
    for bad in ("http//nope", "ftp://host/", "ws:///ws", "ws://host/ws#frag"):
        with pytest.raises(ValueError):
            wschat.client.connect(bad, username="x")
    with pytest.raises(ValueError):
        wschat.client.connect("ws://127.0.0.1:1/ws", username="")
    with pytest.raises(ValueError):
        wschat.client.connect("ws://127.0.0.1:1/ws", username="x", room="a b")
