"""The Redis backend when Redis fails, on one Redis and on a Redis Cluster.

Restart mid-chat, dropped pub/sub, gaps with nothing left to fill, presence
after outages, heal storms, unreachable Redis; on the Cluster, one master down
while the others serve. One Redis is a private ``redis-server`` per test
(``tests.helpers.RedisProcess``), stopped and started again on the same port;
the Cluster is the shared three-master one (``tests/redis_cluster.py``), whose
room owner is stopped and started. Nothing is persisted, so a server comes back
empty, as after a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest
import redis
from anyio.abc import TaskGroup

from wschat.chat import Position, message_event, presence_event
from wschat.hub import BackendUnavailable, ChatMessage
from wschat.hub.redis import RedisBackend, room_key

from .helpers import free_port
from .redis_cluster import (  # noqa: F401 (fixtures)
    Deployment,
    RedisClusterProcess,
    deployment_fixture,
    pubsub_outage,
    redis_cluster_fixture,
)
from .test_backends import TIME, WAIT, Recorder

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


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


def gaps(recorder: Recorder, room: str = "lobby") -> int:
    return sum(1 for r, d in recorder.events if r == room and d.gap)


def say(text: str, username: str = "alice", message_id: str | None = None) -> ChatMessage:
    return ChatMessage(username, text, TIME, message_id)


class Started:
    """Backends started in one task group, closed at the end."""

    def __init__(self, url: str, group: TaskGroup) -> None:
        self.url = url
        self.group = group
        self.backends: list[RedisBackend] = []

    async def new(self, **options: object) -> tuple[RedisBackend, Recorder]:
        backend = RedisBackend(self.url, **options)  # type: ignore[arg-type]
        recorder = Recorder()
        await backend.start(recorder, self.group)
        self.backends.append(backend)
        return backend, recorder


@pytest.fixture
async def started(deployment: Deployment) -> AsyncIterator[Started]:
    async with anyio.create_task_group() as group:
        made = Started(deployment.url, group)
        try:
            yield made
        finally:
            with anyio.fail_after(WAIT):
                for backend in made.backends:
                    await backend.aclose()
            group.cancel_scope.cancel()


async def _present(backend: RedisBackend, room: str, names: list[str]) -> bool:
    return await backend.presence(room) == names


async def test_restart_mid_chat(deployment: Deployment, started: Started) -> None:
    a, rec_a = await started.new(presence_ttl=1.0)
    b, rec_b = await started.new(presence_ttl=1.0)
    await a.subscribe("lobby")
    await b.subscribe("lobby")
    await a.presence_join("lobby", "a1", "alice")
    before = await a.publish("lobby", say("before 1"))
    await b.publish("lobby", say("before 2", "bob"))
    await both(rec_a, rec_b, lambda rec: rec.seqs("lobby") == [1, 2])

    server = deployment.owner("lobby")
    server.stop()
    with anyio.fail_after(WAIT):
        with pytest.raises(BackendUnavailable):
            await a.publish("lobby", say("lost?"))
        with pytest.raises(BackendUnavailable):
            await b.publish("lobby", say("lost?", "bob"))
        with pytest.raises(BackendUnavailable):
            await a.history("lobby", None)
    await anyio.sleep(0.2)  # the readers notice and start backing off

    await anyio.to_thread.run_sync(server.start)  # same port, empty; serving on return
    after = await a.publish("lobby", say("after 1"))  # works at once
    assert after.seq == 1
    assert after.epoch != before.epoch
    # Delivered to both nodes, once each, although neither was subscribed when
    # it was published (filled from the stream on resubscribe), after a gap
    # marker: the old epoch's messages cannot be recovered.
    expected = message_event("lobby", after, "alice", "after 1", TIME)
    await both(rec_a, rec_b, lambda rec: expected in payloads(rec))
    assert a.reconnects >= 1 and b.reconnects >= 1
    assert gaps(rec_a) == 1 and gaps(rec_b) == 1
    # Live delivery over the new subscriptions.
    live = await b.publish("lobby", say("after 2", "bob"))
    assert live == Position(after.epoch, 2)
    await both(rec_a, rec_b, lambda rec: rec.seqs("lobby") == [1, 2, 1, 2])
    assert payloads(rec_a) == payloads(rec_b)
    # The old epoch is gone: recovery from it cannot be complete.
    history = await a.history("lobby", Position(before.epoch, 2))
    assert not history.complete
    assert history.position == Position(after.epoch, 2)
    # a's connection is present again.
    await eventually(lambda: _present(b, "lobby", ["alice"]))


async def reader_and_writer(
    started: Started, **options: object
) -> tuple[RedisBackend, Recorder, RedisBackend]:
    """Node a subscribed to the lobby, node b publishing; a got b's first message."""
    a, rec_a = await started.new(**options)
    b, _ = await started.new(**options)
    await a.subscribe("lobby")
    await b.publish("lobby", say("1"))
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1])
    return a, rec_a, b


async def test_dropped_pubsub_gap_filled(deployment: Deployment, started: Started) -> None:
    a, rec_a, b = await reader_and_writer(started)
    with pubsub_outage(deployment):
        for text in ("2", "3", "4"):
            await b.publish("lobby", say(text))
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4])
    assert a.reconnects >= 1 and gaps(rec_a) == 0
    await b.publish("lobby", say("5"))
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4, 5])


@pytest.mark.parametrize("history", ["size 0", "expired"])
async def test_a_gap_with_nothing_left_to_fill_is_never_silent(
    history: str, deployment: Deployment, started: Started
) -> None:
    # Fix 1: the stream is empty (history size 0) or its messages expired while
    # the node was away: the node must say so (a gap marker), not resume over a hole.
    options = {"history_size": 0} if history == "size 0" else {"history_ttl": 0.2}
    _, rec_a, b = await reader_and_writer(started, **options)
    with pubsub_outage(deployment):
        for text in ("2", "3", "4"):
            await b.publish("lobby", say(text))
        if history == "expired":
            await anyio.sleep(0.3)
    await rec_a.wait(lambda: gaps(rec_a) == 1)
    assert rec_a.seqs("lobby") == [1]  # nothing delivered over the hole
    await b.publish("lobby", say("5"))
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 5])  # live again, behind the marker
    assert gaps(rec_a) == 1


async def test_redis_that_lost_writes_starts_a_new_epoch_never_reuses_seqs(
    deployment: Deployment, started: Started
) -> None:
    # Redis restored from an older snapshot, or a failover to a replica that
    # lagged: the room is back at seq 2 in the same epoch while the nodes have
    # delivered up to 4. Left alone, new messages would reuse seqs 3 and 4 and
    # every node would drop them as already delivered.
    a, rec_a, b = await reader_and_writer(started)
    for text in ("2", "3", "4"):
        await b.publish("lobby", say(text))
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4])
    before = await a.history("lobby", None)
    owner = deployment.owner("lobby").port
    with pubsub_outage(deployment), redis.Redis(host="127.0.0.1", port=owner) as admin:
        admin.hset(room_key("lobby", "meta"), "seq", 2)
        admin.xdel(room_key("lobby", "history"), "3-0", "4-0")
    await rec_a.wait(lambda: gaps(rec_a) == 1)  # the members must resync: never silence
    after = await b.publish("lobby", say("5"))
    assert after.epoch != before.position.epoch and after.seq == 1
    await rec_a.wait(lambda: rec_a.seqs("lobby") == [1, 2, 3, 4, 1])
    history = await a.history("lobby", before.position)
    assert not history.complete and history.position == after


async def test_presence_is_resent_after_resubscribing(
    deployment: Deployment, started: Started
) -> None:
    # Fix 5: joined/left events published while a node's pub/sub was down are
    # lost; once resubscribed, the node sends its members the corrected list.
    a, rec_a = await started.new()
    b, _ = await started.new()
    await a.subscribe("lobby")
    await a.presence_join("lobby", "a1", "alice")
    await b.presence_join("lobby", "b1", "carol")
    await rec_a.wait(lambda: ("joined", "carol") in rec_a.presence("lobby"))
    with pubsub_outage(deployment):
        await b.presence_join("lobby", "b2", "bob")
        await b.presence_leave("lobby", "b1")
    corrected = presence_event("lobby", ["alice", "bob"])
    await rec_a.wait(lambda: any(d.payload == corrected for r, d in rec_a.events))
    assert ("joined", "bob") not in rec_a.presence("lobby")  # that event was lost...
    assert await a.presence("lobby") == ["alice", "bob"]  # ...the list is right


async def test_node_dropped_from_presence_rejoins(deployment: Deployment, started: Started) -> None:
    a, _ = await started.new(presence_ttl=1.0)
    b, rec_b = await started.new(presence_ttl=1.0)
    await b.subscribe("lobby")
    await a.presence_join("lobby", "a1", "alice")
    await rec_b.wait(lambda: rec_b.presence("lobby") == [("joined", "alice")])
    # As if a had been cut off for longer than the TTL: its lease in the room
    # expires, b's heartbeat sweeps its connection; then a comes back.
    async with deployment.admin() as admin:
        await admin.zadd(room_key("lobby", "leases"), {a.node_id: 0})
    await rec_b.wait(
        lambda: (
            rec_b.presence("lobby") == [("joined", "alice"), ("left", "alice"), ("joined", "alice")]
        )
    )
    assert await b.presence("lobby") == ["alice"]


async def test_presence_changes_during_outage_replayed(
    deployment: Deployment, started: Started
) -> None:
    a, _ = await started.new(presence_ttl=1.0)
    b, _ = await started.new(presence_ttl=1.0)
    await a.presence_join("lobby", "a1", "alice")
    assert await b.presence("lobby") == ["alice"]
    server = deployment.owner("lobby")
    server.stop()
    with anyio.fail_after(WAIT):
        await a.presence_leave("lobby", "a1")  # deferred, not raised
        await a.presence_join("lobby", "a2", "carol")
    await anyio.to_thread.run_sync(server.start)
    await eventually(lambda: _present(b, "lobby", ["carol"]))


async def test_one_heal_per_loss_however_many_joins_notice_it(
    deployment: Deployment, started: Started
) -> None:
    # Fix 4: after Redis lost a node's presence, the joins that notice it do not
    # each re-add everything (K joins x N connections); one heal per room does.
    a, _ = await started.new(presence_ttl=3.0)
    await a.subscribe("lobby")
    present, joiners = 200, 20
    for n in range(present):
        await a.presence_join("lobby", f"c{n}", f"user{n}")
    async with anyio.create_task_group() as group:  # one pooled connection per joiner
        for _ in range(joiners):
            group.start_soon(a.presence, "lobby")
    async with deployment.admin() as admin:
        await admin.flushall()  # Redis lost everything (as after a restart, quicker)
        before = await _script_calls(admin)
        heals = a.presence_heals
        with anyio.fail_after(WAIT):
            async with anyio.create_task_group() as group:
                for n in range(joiners):
                    group.start_soon(a.presence_join, "lobby", f"j{n}", f"joiner{n}")
        await eventually(lambda: _count_present(a, "lobby", present + joiners))
        assert a.presence_heals - heals <= 2
        # The joins, the heal(s) and the reads above: nowhere near joiners x present.
        assert await _script_calls(admin) - before < joiners + 100


async def test_joins_never_wait_for_a_heal(deployment: Deployment, started: Started) -> None:
    # Fix 4: the heal runs in the background; a join that notices the loss, and
    # the joins after it, are answered while the heal is still running.
    a, _ = await started.new(presence_ttl=3.0)
    await a.subscribe("lobby")
    present, joiners = 20, 5
    for n in range(present):
        await a.presence_join("lobby", f"c{n}", f"user{n}")
    presence = a._presence  # the seam: this backend's own heal, held on an event
    heal = presence._heal
    healing, release = anyio.Event(), anyio.Event()

    async def held_heal(room: str, connections: dict[str, str]) -> None:
        healing.set()
        await release.wait()
        await heal(room, connections)

    presence._heal = held_heal  # type: ignore[method-assign]
    try:
        async with deployment.admin() as admin:
            await admin.flushall()
        heals = a.presence_heals
        with anyio.fail_after(WAIT):
            await a.presence_join("lobby", "j0", "joiner0")  # notices the loss
            await healing.wait()
            for n in range(1, joiners):
                await a.presence_join("lobby", f"j{n}", f"joiner{n}")
        assert a.presence_heals == heals and not release.is_set()  # all while it was held
        assert len(await a.presence("lobby")) == joiners  # only the joins are in Redis yet
    finally:
        release.set()
    await eventually(lambda: _count_present(a, "lobby", present + joiners))
    assert a.presence_heals > heals


async def _count_present(backend: RedisBackend, room: str, count: int) -> bool:
    return len(await backend.presence(room)) == count


async def _script_calls(admin: object) -> int:
    stats = await admin.info("commandstats")  # type: ignore[attr-defined]
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))


async def test_unreachable_redis() -> None:
    for url in (
        f"redis://127.0.0.1:{free_port()}/0",
        f"redis-cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}",
    ):
        backend = RedisBackend(url)
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


def test_bad_cluster_urls_are_refused() -> None:
    for url in (
        "redis-cluster://",
        "redis-cluster://host:notaport",
        "redis-cluster://host:0",
        "redis-cluster://host:6379/1",
        "redis-cluster://host:6379?db=1",
    ):
        with pytest.raises(ValueError):
            RedisBackend(url)


async def test_a_cluster_master_down_fails_only_its_rooms(
    redis_cluster: RedisClusterProcess,
) -> None:
    redis_cluster.healthy()
    rooms = redis_cluster.rooms_on_every_shard()
    doomed, *others = rooms
    master = redis_cluster.owner(doomed)
    failures: list[str] = []
    async with anyio.create_task_group() as group:
        started = Started(redis_cluster.url, group)
        a, rec_a = await started.new()
        b, _ = await started.new()
        try:
            for room in rooms:
                await a.subscribe(room)
                await a.presence_join(room, f"a-{room}", "alice")
                await b.publish(room, say("before"))
            await rec_a.wait(lambda: all(rec_a.seqs(room) == [1] for room in rooms))

            async def keep_publishing(stop: anyio.Event) -> None:
                while not stop.is_set():
                    for room in others:
                        try:
                            await b.publish(room, say("meanwhile"))
                        except BackendUnavailable as exc:
                            failures.append(f"{room}: {exc}")
                    await anyio.sleep(0.01)

            stop = anyio.Event()
            group.start_soon(keep_publishing, stop)
            master.stop(kill=True)
            with anyio.fail_after(WAIT):
                with pytest.raises(BackendUnavailable):
                    await b.publish(doomed, say("lost?"))
                with pytest.raises(BackendUnavailable):
                    await b.history(doomed, None)
            await anyio.sleep(0.3)
            master.start(ready=False)  # empty; serves again after its rejoin delay
            await eventually(lambda: _published(b, doomed), timeout=WAIT * 2)
            await anyio.sleep(0.3)
            stop.set()
            assert failures == []  # the other masters' rooms never failed
            await rec_a.wait(lambda: gaps(rec_a, doomed) == 1)  # its history is gone
            assert all(gaps(rec_a, room) == 0 for room in others)
            for room in others:
                count = len(rec_a.seqs(room))
                assert rec_a.seqs(room) == list(range(1, count + 1))
            # a's presence in the restarted master's room is back; the others kept it.
            await eventually(lambda: _present(b, doomed, ["alice"]))
            for room in others:
                assert await b.presence(room) == ["alice"]
        finally:
            with anyio.fail_after(WAIT):
                for backend in started.backends:
                    await backend.aclose()
            group.cancel_scope.cancel()


async def _published(backend: RedisBackend, room: str) -> bool:
    await backend.publish(room, say("after"))
    return True
