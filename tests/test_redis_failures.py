"""The Redis backend when Redis fails: restart mid-chat, dropped pub/sub, unreachable.

Each test runs its own ``redis-server`` (``tests.helpers.RedisProcess``) so it
can be stopped and started again on the same port: no persistence, so Redis
comes back empty, as after a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest
from redis.asyncio import Redis

from wschat.chat import Position, message_event
from wschat.hub import BackendUnavailable, ChatMessage
from wschat.hub.redis import _SWEEP, RedisBackend, node_key

from .helpers import RedisProcess, free_port
from .test_backends import TIME, WAIT, Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def server() -> Iterator[RedisProcess]:
    with RedisProcess() as process:
        yield process


@pytest.fixture
async def admin(server: RedisProcess) -> AsyncIterator[Redis]:
    client = Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT) -> None:
    """Wait until ``check()`` is true, ignoring BackendUnavailable meanwhile."""
    with anyio.fail_after(timeout):
        while True:
            try:
                if await check():
                    return
            except BackendUnavailable:
                pass
            await anyio.sleep(0.02)


async def both(a: Recorder, b: Recorder, predicate: Callable[[Recorder], bool]) -> None:
    await a.wait(lambda: predicate(a))
    await b.wait(lambda: predicate(b))


def payloads(recorder: Recorder, room: str = "lobby") -> list[bytes]:
    return [d.payload for d in recorder.messages(room)]


def say(text: str, username: str = "alice") -> ChatMessage:
    return ChatMessage(username, text, TIME)


async def test_restart_mid_chat(server: RedisProcess) -> None:
    a = RedisBackend(server.url, presence_ttl=1.0)
    b = RedisBackend(server.url, presence_ttl=1.0)
    rec_a, rec_b = Recorder(), Recorder()
    async with anyio.create_task_group() as group:
        await a.start(rec_a, group)
        await b.start(rec_b, group)
        try:
            await a.subscribe("lobby")
            await b.subscribe("lobby")
            await a.presence_join("lobby", "a1", "alice")
            before = await a.publish("lobby", say("before 1"))
            await b.publish("lobby", say("before 2", "bob"))
            await both(rec_a, rec_b, lambda rec: rec.seqs("lobby") == [1, 2])

            server.stop()
            with anyio.fail_after(WAIT):
                with pytest.raises(BackendUnavailable):
                    await a.publish("lobby", say("lost?"))
                with pytest.raises(BackendUnavailable):
                    await b.publish("lobby", say("lost?", "bob"))
                with pytest.raises(BackendUnavailable):
                    await a.history("lobby", None)
            await anyio.sleep(0.2)  # the readers notice and start backing off

            server.start()  # same port, empty
            after = await a.publish("lobby", say("after 1"))  # works at once
            assert after.seq == 1
            assert after.epoch != before.epoch
            # Delivered to both nodes, once each, although neither was subscribed
            # when it was published (gap filled from the stream on resubscribe).
            expected = message_event("lobby", after, "alice", "after 1", TIME)
            await both(rec_a, rec_b, lambda rec: expected in payloads(rec))
            assert a.reconnects >= 1 and b.reconnects >= 1
            # Live delivery over the new subscriptions.
            live = await b.publish("lobby", say("after 2", "bob"))
            assert live == Position(after.epoch, 2)
            await both(rec_a, rec_b, lambda rec: rec.seqs("lobby") == [1, 2, 1, 2])
            assert payloads(rec_a) == payloads(rec_b)
            # The old epoch is gone: recovery from it cannot be complete.
            history = await a.history("lobby", Position(before.epoch, 2))
            assert not history.complete
            assert history.position == Position(after.epoch, 2)
            # Heartbeats resumed and a's connection is present again.
            await eventually(lambda: _present(b, "lobby", ["alice"]))
        finally:
            with anyio.fail_after(WAIT):
                await a.aclose()
                await b.aclose()


async def _present(backend: RedisBackend, room: str, names: list[str]) -> bool:
    return await backend.presence(room) == names


async def test_dropped_pubsub_gap_filled(server: RedisProcess, admin: Redis) -> None:
    a = RedisBackend(server.url)
    b = RedisBackend(server.url)
    rec_a = Recorder()
    async with anyio.create_task_group() as group:
        await a.start(rec_a, group)
        await b.start(Recorder(), group)
        try:
            await a.subscribe("lobby")
            await b.publish("lobby", say("1"))
            await rec_a.wait(lambda: rec_a.seqs("lobby") == [1])
            # Drop a's pub/sub connection; publish before it can resubscribe
            # (its first reconnect waits 50 ms).
            killed = await admin.client_kill_filter(_type="pubsub")
            assert killed == 1
            for text in ("2", "3", "4"):
                await b.publish("lobby", say(text))
            await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4])
            assert a.reconnects == 1
            await b.publish("lobby", say("5"))
            await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4, 5])
        finally:
            with anyio.fail_after(WAIT):
                await a.aclose()
                await b.aclose()


async def test_node_dropped_from_presence_rejoins(server: RedisProcess, admin: Redis) -> None:
    a = RedisBackend(server.url, presence_ttl=1.0)
    b = RedisBackend(server.url, presence_ttl=1.0)
    rec_b = Recorder()
    async with anyio.create_task_group() as group:
        await a.start(Recorder(), group)
        await b.start(rec_b, group)
        try:
            await b.subscribe("lobby")
            await a.presence_join("lobby", "a1", "alice")
            await rec_b.wait(lambda: rec_b.presence("lobby") == [("joined", "alice")])
            # As if a had been cut off for longer than the TTL: its heartbeat
            # expires and a sweep removes its members (atomically here, so a's
            # own heartbeat cannot come in between); then a comes back.
            expire_and_sweep = "redis.call('DEL', KEYS[1])\n" + _SWEEP
            await admin.eval(expire_and_sweep, 1, node_key(a.node_id))
            await rec_b.wait(
                lambda: (
                    rec_b.presence("lobby")
                    == [("joined", "alice"), ("left", "alice"), ("joined", "alice")]
                )
            )
            assert await b.presence("lobby") == ["alice"]
        finally:
            with anyio.fail_after(WAIT):
                await a.aclose()
                await b.aclose()


async def test_presence_changes_during_outage_replayed(server: RedisProcess) -> None:
    a = RedisBackend(server.url, presence_ttl=1.0)
    b = RedisBackend(server.url, presence_ttl=1.0)
    async with anyio.create_task_group() as group:
        await a.start(Recorder(), group)
        await b.start(Recorder(), group)
        try:
            await a.presence_join("lobby", "a1", "alice")
            assert await b.presence("lobby") == ["alice"]
            server.stop()
            with anyio.fail_after(WAIT):
                await a.presence_leave("lobby", "a1")  # deferred, not raised
                await a.presence_join("lobby", "a2", "carol")
            server.start()
            await eventually(lambda: _present(b, "lobby", ["carol"]))
        finally:
            with anyio.fail_after(WAIT):
                await a.aclose()
                await b.aclose()


async def test_unreachable_redis() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0")
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            with pytest.raises(BackendUnavailable):
                await backend.start(Recorder(), group)
            with pytest.raises(BackendUnavailable):
                await backend.publish("lobby", say("hello"))
            with pytest.raises(BackendUnavailable):
                await backend.history("lobby", None)
            with pytest.raises(BackendUnavailable):
                await backend.subscribe("lobby")
            await backend.aclose()
