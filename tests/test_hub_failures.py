"""The Hub under backend trouble: failed joins, lost live messages, big history.

In-process servers (loopback, the `websockets` client) on a private redis-server
or the memory backend.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import wschat.client
from wschat.client import History, Message
from wschat.hub import ChatMessage
from wschat.hub.redis import RedisBackend

from .helpers import RedisProcess, running_server, ws_url

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]
# redis-py is asyncio-only: the Redis backend runs on asyncio and uvloop.
ASYNCIO_ONLY = pytest.mark.every_loop(loops=("asyncio", "uvloop"))


async def next_event(ws: ClientConnection, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            if event.get("type") == kind:
                return event


async def join(ws: ClientConnection, username: str, room: str = "lobby") -> dict[str, Any]:
    await ws.send(json.dumps({"type": "join", "room": room, "username": username}))
    history = await next_event(ws, "history")
    await next_event(ws, "presence")
    return history


@pytest.mark.redis
@ASYNCIO_ONLY
async def test_failed_rejoin_keeps_the_member_in_the_room_and_leaves_no_ghost() -> None:
    with RedisProcess() as redis:
        async with running_server(hub_url=redis.url) as server:
            alice = await connect(ws_url(server))
            carol = await connect(ws_url(server))
            await join(alice, "alice")
            redis.stop()
            await carol.send(json.dumps({"type": "join", "room": "lobby", "username": "carol"}))
            assert (await next_event(carol, "error"))["code"] == "unavailable"
            # The failed re-join left carol where she was: in the room, not stranded.
            assert len(await server.call(server.hub.members, "lobby")) == 2
            redis.start()  # empty: the room's history is gone, so members must resync
            for ws in (alice, carol):
                with pytest.raises(ConnectionClosed) as info:
                    await next_event(ws, "never", timeout=20)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            with anyio.fail_after(10):
                while server.connections or await server.call(server.hub.backend.presence, "lobby"):
                    await anyio.sleep(0.05)  # nobody left behind in presence


@pytest.mark.redis
@ASYNCIO_ONLY
async def test_live_messages_lost_by_the_node_make_members_resync() -> None:
    with RedisProcess() as redis:
        async with running_server(hub_url=redis.url, history_size=2) as server:
            other = RedisBackend(redis.url, history_size=2)
            admin = Redis.from_url(redis.url)
            async with anyio.create_task_group() as group:
                await other.start(lambda room, delivery: None, group)
                ws = await connect(ws_url(server))
                await join(ws, "alice")
                await other.publish("lobby", ChatMessage("bob", "m1", "t"))
                assert (await next_event(ws, "message"))["seq"] == 1
                await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                for n in range(2, 7):  # more than history keeps, while the node is away
                    await other.publish("lobby", ChatMessage("bob", f"m{n}", "t"))
                with pytest.raises(ConnectionClosed) as info:
                    await next_event(ws, "never")
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012
                async with connect(ws_url(server)) as again:
                    await again.send(
                        json.dumps(
                            {
                                "type": "join",
                                "room": "lobby",
                                "username": "alice",
                                "since": {
                                    "epoch": (await other.history("lobby", None)).position.epoch,
                                    "seq": 1,
                                },
                            }
                        )
                    )
                    history = await next_event(again, "history")
                assert history["complete"] is False
                assert [m["seq"] for m in history["messages"]] == [5, 6]
                await other.aclose()
                await admin.aclose()
                group.cancel_scope.cancel()


async def test_history_bigger_than_the_outbox_limit_still_joins() -> None:
    # wschat's own client: this is about what a user gets, not the wire.
    url = None
    async with running_server(outbox_limit=64 * 1024) as server:
        url = ws_url(server)
        async with wschat.client.connect(url, username="w") as writer:
            for _ in range(20):  # each ~24 KB encoded: 480 KB of history
                await writer.say("\x01" * 4096)
        big = 1 << 20
        async with wschat.client.connect(url, username="r", max_message_size=big) as reader:
            history = await anext(e async for e in reader if isinstance(e, History))
            assert len(history.messages) == 20
            await reader.say("still here")
            mine = await anext(e async for e in reader if isinstance(e, Message))
            assert (mine.text, mine.mine) == ("still here", True)


async def test_empty_or_repeated_room_in_url_is_400() -> None:
    from .test_server import raw_http, upgrade_request

    async with running_server() as server:
        for path in ("/ws?room=", "/ws?room=ok&room=other"):
            status, _, body = await raw_http(server.port, upgrade_request(path))
            assert status == 400, path
            assert b"room" in body


async def test_memory_backend_forgets_abandoned_rooms_once_history_expires() -> None:
    from wschat.hub import MemoryBackend

    backend = MemoryBackend(history_ttl=0.1)
    async with anyio.create_task_group() as group:
        await backend.start(lambda room, delivery: None, group)
        for n in range(50):
            await backend.subscribe(f"r{n}")
            await backend.publish(f"r{n}", ChatMessage("u", "m", "t"))
            await backend.unsubscribe(f"r{n}")
        assert len(backend._rooms) == 50
        await anyio.sleep(0.3)  # the backend's own sweeper runs every ttl / 2
        assert len(backend._rooms) == 0
        await backend.aclose()
        group.cancel_scope.cancel()
