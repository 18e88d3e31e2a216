"""The shared backend suite: every hub backend must pass it (memory, Redis, Redis Cluster).

The Redis cases start a private ``redis-server`` (skipped locally when it is
missing, a failure under CI=true); the Cluster cases run on a real three-master
Redis Cluster (``tests/redis_cluster.py``). Two-node cases run two RedisBackend
instances on one Redis, and on the Cluster.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from redis.asyncio import Redis

from wschat.chat import Position, decode_event, membership_event, message_event
from wschat.hub import Backend, ChatMessage, Delivery, MemoryBackend
from wschat.hub.redis import RedisBackend

from .helpers import redis_server
from .redis_cluster import RedisClusterProcess, redis_cluster_fixture  # noqa: F401 (fixture)

pytestmark = pytest.mark.anyio

TIME = "2026-11-26T16:00:00.000Z"
WAIT = 5.0  # bound on any single wait for an event


class Recorder:
    """A ``deliver`` callback that keeps every event it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Delivery]] = []

    def __call__(self, room: str, delivery: Delivery) -> None:
        self.events.append((room, delivery))

    def messages(self, room: str) -> list[Delivery]:
        return [d for r, d in self.events if r == room and d.seq is not None]

    def seqs(self, room: str) -> list[int]:
        return [d.seq for d in self.messages(room) if d.seq is not None]

    def presence(self, room: str) -> list[tuple[str, str]]:
        """(type, username) of the joined/left events of ``room``."""
        out = []
        for r, d in self.events:
            if r == room and d.seq is None and not d.gap:
                event = decode_event(d.payload)
                if event["type"] in ("joined", "left"):
                    out.append((event["type"], event["username"]))
        return out

    async def wait(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        with anyio.fail_after(timeout):
            while not predicate():
                await anyio.sleep(0.005)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Nodes:
    """Makes started backends of one kind; closes them at teardown."""

    def __init__(self, kind: str, url: str | None, group: TaskGroup) -> None:
        self.kind = kind
        self.url = url
        self.group = group
        self.clock = FakeClock()
        self.backends: list[Backend] = []

    async def new(self, **options: Any) -> tuple[Backend, Recorder]:
        backend: Backend
        if self.kind == "memory":
            options.pop("presence_ttl", None)
            backend = MemoryBackend(clock=self.clock, **options)
        else:
            assert self.url is not None
            backend = RedisBackend(self.url, **options)  # redis:// or redis-cluster://
        recorder = Recorder()
        await backend.start(recorder, self.group)
        self.backends.append(backend)
        return backend, recorder

    async def elapse(self, seconds: float) -> None:
        """Let ``seconds`` pass for history expiry (fake clock for memory)."""
        if self.kind == "memory":
            self.clock.now += seconds
        else:
            await anyio.sleep(seconds)

    async def settle(self, backend: Backend, recorder: Recorder, room: str = "settle") -> None:
        """Return once every event published before now has reached ``recorder``.

        Publishes a marker to a subscribed room and waits for it: a node's
        pub/sub connection delivers in order.
        """
        await backend.subscribe(room)
        position = await backend.publish(room, ChatMessage("marker", "x", TIME))
        await recorder.wait(lambda: position.seq in recorder.seqs(room))


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


async def flush(url: str) -> None:
    client = Redis.from_url(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def redis_or_cluster_url(kind: str, request: pytest.FixtureRequest) -> str:
    """A flushed Redis (``redis``) or Redis Cluster (``cluster``) URL."""
    if kind == "redis":
        url: str = request.getfixturevalue("redis_url")
        await flush(url)
        return url
    cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
    cluster.healthy()
    return cluster.url


@asynccontextmanager
async def started_nodes(kind: str, url: str | None) -> AsyncIterator[Nodes]:
    async with anyio.create_task_group() as group:
        made = Nodes(kind, url, group)
        try:
            yield made
        finally:
            with anyio.fail_after(WAIT):
                for backend in made.backends:
                    await backend.aclose()
            group.cancel_scope.cancel()


REDIS_KINDS = [
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("cluster", marks=pytest.mark.redis),
]


@pytest.fixture(params=["memory", *REDIS_KINDS])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    url = None if request.param == "memory" else await redis_or_cluster_url(request.param, request)
    async with started_nodes(request.param, url) as made:
        yield made


@pytest.fixture(params=REDIS_KINDS)
async def redis_nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """Nodes on one Redis, then on the Cluster."""
    url = await redis_or_cluster_url(request.param, request)
    async with started_nodes(request.param, url) as made:
        yield made


def say(i: int, username: str = "alice") -> ChatMessage:
    return ChatMessage(username, f'message {i} \u00e9\U0001f600 "quoted" \\ </script>', TIME)


def seqs_of(payloads: list[bytes]) -> list[int]:
    return [decode_event(p)["seq"] for p in payloads]


# -- positions and delivery ----------------------------------------------------


async def test_seq_from_one_no_gaps_same_epoch_exact_payload(nodes: Nodes) -> None:
    backend, recorder = await nodes.new()
    await backend.subscribe("lobby")
    positions = [await backend.publish("lobby", say(i)) for i in range(10)]
    assert [p.seq for p in positions] == list(range(1, 11))
    assert len({p.epoch for p in positions}) == 1
    await recorder.wait(lambda: len(recorder.messages("lobby")) == 10)
    deliveries = recorder.messages("lobby")
    assert [d.seq for d in deliveries] == list(range(1, 11))
    for i, (position, delivery) in enumerate(zip(positions, deliveries, strict=True)):
        expected = message_event("lobby", position, "alice", say(i).message, TIME)
        assert delivery.payload == expected
    # A room's seq is its own.
    assert (await backend.publish("other", say(0))).seq == 1


async def test_delivers_subscribed_rooms_only_and_unsubscribe_stops(nodes: Nodes) -> None:
    backend, recorder = await nodes.new()
    await backend.subscribe("a")
    await backend.publish("a", say(1))
    await backend.publish("b", say(2))
    await nodes.settle(backend, recorder)
    assert recorder.seqs("a") == [1]
    assert recorder.messages("b") == []
    await backend.unsubscribe("a")
    await backend.publish("a", say(3))
    await nodes.settle(backend, recorder)
    assert recorder.seqs("a") == [1]
    # Subscribing again delivers what is published from then on.
    await backend.subscribe("a")
    await backend.publish("a", say(4))
    await recorder.wait(lambda: recorder.seqs("a") == [1, 3])


# -- idempotent publish ------------------------------------------------------------


def said(username: str, message_id: str | None, text: str = "hi") -> ChatMessage:
    return ChatMessage(username, text, TIME, message_id)


async def test_retry_with_the_same_id_returns_the_original_position(nodes: Nodes) -> None:
    backend, recorder = await nodes.new()
    # Another node of the same deployment sees the same ids (memory: one node).
    other = backend if nodes.kind == "memory" else (await nodes.new())[0]
    await backend.subscribe("lobby")
    first = await backend.publish("lobby", said("alice", "m1"))
    assert await backend.publish("lobby", said("alice", "m1")) == first
    assert await other.publish("lobby", said("alice", "m1", "typed again")) == first
    # Per sender: bob's "m1" is his own message, not a retry of alice's.
    bobs = await other.publish("lobby", said("bob", "m1"))
    assert bobs == Position(first.epoch, 2)
    # Per room: the same id elsewhere is another message.
    assert (await backend.publish("elsewhere", said("alice", "m1"))).seq == 1
    # Without ids nothing is deduplicated.
    assert (await backend.publish("lobby", said("alice", None))).seq == 3
    assert (await backend.publish("lobby", said("alice", None))).seq == 4
    await nodes.settle(backend, recorder)
    assert recorder.seqs("lobby") == [1, 2, 3, 4]  # each published once
    history = await backend.history("lobby", None)
    assert [decode_event(m).get("id") for m in history.messages] == ["m1", "m1", None, None]
    assert [decode_event(m)["username"] for m in history.messages[:2]] == ["alice", "bob"]


async def test_remembered_ids_are_bounded_in_count_and_time(nodes: Nodes) -> None:
    ttl = 0.5
    backend, _ = await nodes.new(dedup_ttl=ttl, dedup_size=3)
    for n in range(1, 5):  # m1..m4: only the last three are remembered
        assert (await backend.publish("lobby", said("alice", f"m{n}"))).seq == n
    assert (await backend.publish("lobby", said("alice", "m4"))).seq == 4
    assert (await backend.publish("lobby", said("alice", "m2"))).seq == 2
    assert (await backend.publish("lobby", said("alice", "m1"))).seq == 5  # forgotten: new
    await nodes.elapse(ttl * 1.5)
    assert (await backend.publish("lobby", said("alice", "m4"))).seq == 6  # expired: new
    assert (await backend.publish("lobby", said("alice", "m4"))).seq == 6


# -- history and recovery --------------------------------------------------------


async def test_history_window(nodes: Nodes) -> None:
    backend, _ = await nodes.new(history_size=5)
    positions = [await backend.publish("lobby", say(i)) for i in range(8)]
    history = await backend.history("lobby", None)
    assert seqs_of(history.messages) == [4, 5, 6, 7, 8]
    assert history.position == positions[-1]
    assert history.complete
    assert history.messages[-1] == message_event(
        "lobby", positions[-1], "alice", say(7).message, TIME
    )


async def test_recovery_since(nodes: Nodes) -> None:
    backend, _ = await nodes.new(history_size=5)
    positions = [await backend.publish("lobby", say(i)) for i in range(8)]
    epoch = positions[0].epoch

    exact = await backend.history("lobby", Position(epoch, 5))
    assert seqs_of(exact.messages) == [6, 7, 8]
    assert exact.complete
    assert exact.position == Position(epoch, 8)

    up_to_date = await backend.history("lobby", Position(epoch, 8))
    assert up_to_date.messages == [] and up_to_date.complete

    oldest_kept = await backend.history("lobby", Position(epoch, 3))  # needs 4..8: all kept
    assert seqs_of(oldest_kept.messages) == [4, 5, 6, 7, 8] and oldest_kept.complete

    too_old = await backend.history("lobby", Position(epoch, 2))  # 3 is gone
    assert seqs_of(too_old.messages) == [4, 5, 6, 7, 8]
    assert not too_old.complete

    wrong_epoch = await backend.history("lobby", Position("not-" + epoch, 7))
    assert seqs_of(wrong_epoch.messages) == [4, 5, 6, 7, 8]
    assert not wrong_epoch.complete

    beyond = await backend.history("lobby", Position(epoch, 9))
    assert not beyond.complete
    assert beyond.position == Position(epoch, 8)


async def test_empty_room_history_and_epoch_kept(nodes: Nodes) -> None:
    backend, _ = await nodes.new()
    empty = await backend.history("quiet", None)
    assert empty.messages == [] and empty.complete and empty.position.seq == 0
    since_start = await backend.history("quiet", Position(empty.position.epoch, 0))
    assert since_start.complete
    first = await backend.publish("quiet", say(1))
    assert first == Position(empty.position.epoch, 1)  # the epoch history named stays
    recovered = await backend.history("quiet", Position(empty.position.epoch, 0))
    assert seqs_of(recovered.messages) == [1] and recovered.complete


async def test_history_ttl(nodes: Nodes) -> None:
    backend, _ = await nodes.new(history_ttl=0.4)
    await backend.publish("lobby", say(1))
    await backend.publish("lobby", say(2))
    assert seqs_of((await backend.history("lobby", None)).messages) == [1, 2]
    await nodes.elapse(0.6)
    last = await backend.publish("lobby", say(3))
    latest = await backend.history("lobby", None)
    assert seqs_of(latest.messages) == [3] and latest.complete
    gone = await backend.history("lobby", Position(last.epoch, 0))
    assert seqs_of(gone.messages) == [3] and not gone.complete
    kept = await backend.history("lobby", Position(last.epoch, 2))
    assert seqs_of(kept.messages) == [3] and kept.complete
    # Expiry also applies on read, without a new publish.
    await nodes.elapse(0.6)
    assert (await backend.history("lobby", None)).messages == []
    assert not (await backend.history("lobby", Position(last.epoch, 2))).complete


# -- presence --------------------------------------------------------------------


async def test_presence_counts_users_once(nodes: Nodes) -> None:
    backend, recorder = await nodes.new()
    await backend.subscribe("lobby")
    await backend.presence_join("lobby", "c1", "alice")
    await backend.presence_join("lobby", "c2", "alice")
    await backend.presence_join("lobby", "c1", "alice")  # again: no change
    await backend.presence_join("lobby", "c3", "bob")
    await backend.presence_join("elsewhere", "c4", "carol")
    assert await backend.presence("lobby") == ["alice", "bob"]
    assert await backend.presence("elsewhere") == ["carol"]
    await nodes.settle(backend, recorder)
    assert recorder.presence("lobby") == [("joined", "alice"), ("joined", "bob")]
    joined = next(d for r, d in recorder.events if r == "lobby" and d.seq is None)
    assert joined.payload == membership_event("joined", "lobby", "alice")

    await backend.presence_leave("lobby", "c1")
    await backend.presence_leave("lobby", "nobody")  # unknown: no change
    assert await backend.presence("lobby") == ["alice", "bob"]
    await backend.presence_leave("lobby", "c2")
    assert await backend.presence("lobby") == ["bob"]
    await recorder.wait(lambda: len(recorder.presence("lobby")) == 3)
    assert recorder.presence("lobby")[-1] == ("left", "alice")
    left = [d for r, d in recorder.events if r == "lobby" and d.seq is None][-1]
    assert left.payload == membership_event("left", "lobby", "alice")
    await backend.presence_leave("lobby", "c3")
    assert await backend.presence("lobby") == []
    assert await backend.presence("never") == []


async def test_rooms_lists_rooms_with_users_counted_once(nodes: Nodes) -> None:
    backend, _ = await nodes.new()
    await backend.presence_join("lobby", "c1", "alice")
    await backend.presence_join("lobby", "c2", "alice")
    await backend.presence_join("team:dev", "c3", "bob")
    await backend.presence_join("gone", "c4", "carol")
    await backend.presence_leave("gone", "c4")
    assert await backend.rooms() == {"lobby": 1, "team:dev": 1}


async def test_presence_events_only_to_subscribers(nodes: Nodes) -> None:
    backend, recorder = await nodes.new()
    await backend.presence_join("lobby", "c1", "alice")
    await nodes.settle(backend, recorder)
    assert recorder.presence("lobby") == []
    assert await backend.presence("lobby") == ["alice"]


# -- two Redis nodes ---------------------------------------------------------------


@pytest.mark.redis
async def test_two_nodes_same_order_same_bytes(redis_nodes: Nodes) -> None:
    a, rec_a = await redis_nodes.new()
    b, rec_b = await redis_nodes.new()
    await a.subscribe("lobby")
    await b.subscribe("lobby")

    async def burst(node: Backend, name: str) -> None:
        for i in range(50):
            await node.publish("lobby", say(i, name))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            group.start_soon(burst, a, "alice")
            group.start_soon(burst, b, "bob")
    await rec_a.wait(lambda: len(rec_a.messages("lobby")) == 100)
    await rec_b.wait(lambda: len(rec_b.messages("lobby")) == 100)
    assert rec_a.seqs("lobby") == list(range(1, 101))
    assert rec_a.messages("lobby") == rec_b.messages("lobby")
    senders = [decode_event(d.payload)["username"] for d in rec_a.messages("lobby")]
    assert sorted(senders) == ["alice"] * 50 + ["bob"] * 50
    history = await b.history("lobby", None)
    assert history.messages == [d.payload for d in rec_a.messages("lobby")]


@pytest.mark.redis
async def test_presence_across_nodes(redis_nodes: Nodes) -> None:
    a, _ = await redis_nodes.new()
    b, rec_b = await redis_nodes.new()
    await b.subscribe("lobby")
    await a.presence_join("lobby", "a1", "alice")
    await b.presence_join("lobby", "b1", "alice")
    await b.presence_join("lobby", "b2", "bob")
    assert await a.presence("lobby") == ["alice", "bob"]
    assert await b.presence("lobby") == ["alice", "bob"]
    await rec_b.wait(lambda: len(rec_b.presence("lobby")) == 2)
    await a.presence_leave("lobby", "a1")
    await b.presence_leave("lobby", "b1")
    await rec_b.wait(lambda: len(rec_b.presence("lobby")) == 3)
    assert rec_b.presence("lobby") == [("joined", "alice"), ("joined", "bob"), ("left", "alice")]
    assert await a.rooms() == {"lobby": 1}  # bob, on node b: every node lists every room
    # A node that closes takes its members with it.
    await b.aclose()
    assert await a.presence("lobby") == []
    assert await a.rooms() == {}


@pytest.mark.redis
async def test_dead_node_members_removed(redis_nodes: Nodes) -> None:
    ttl = 1.0
    a, rec_a = await redis_nodes.new(presence_ttl=ttl)
    await a.subscribe("lobby")
    await a.presence_join("lobby", "a1", "alice")
    assert redis_nodes.url is not None
    doomed = RedisBackend(redis_nodes.url, presence_ttl=ttl)
    async with anyio.create_task_group() as doomed_group:
        await doomed.start(Recorder(), doomed_group)
        await doomed.presence_join("lobby", "d1", "dave")
        await doomed.presence_join("lobby", "d2", "alice")
        await rec_a.wait(lambda: ("joined", "dave") in rec_a.presence("lobby"))
        assert await a.presence("lobby") == ["alice", "dave"]
        doomed_group.cancel_scope.cancel()  # no more heartbeats, no cleanup
    died = anyio.current_time()
    # Gone within the TTL plus a sweep period (and some slack).
    await rec_a.wait(lambda: ("left", "dave") in rec_a.presence("lobby"), timeout=ttl * 2.5)
    assert anyio.current_time() - died >= ttl * 0.5
    assert await a.presence("lobby") == ["alice"]
    assert ("left", "alice") not in rec_a.presence("lobby")  # alice is still on a
    await doomed.aclose()


async def test_many_commands_at_once_all_succeed(nodes: Nodes) -> None:
    """A busy node has hundreds of hub calls in flight; none is refused for want of a connection.

    redis-py's default pool refuses past 100 connections ("Too many connections"):
    the backend's pool makes the 101st command wait instead.
    """
    backend, recorder = await nodes.new()
    rooms = [f"r{i}" for i in range(50)]
    for room in rooms:
        await backend.subscribe(room)
    positions: list[tuple[str, Position]] = []

    async def publish(i: int) -> None:
        room = rooms[i % len(rooms)]
        positions.append((room, await backend.publish(room, say(i))))

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as group:
            for i in range(500):
                group.start_soon(publish, i)
    assert len(positions) == 500
    for room in rooms:
        assert sorted(p.seq for r, p in positions if r == room) == list(range(1, 11))
    await recorder.wait(lambda: all(len(recorder.messages(room)) == 10 for room in rooms))
