"""The Redis backend's pipelines: many publishes in flight, in order, exactly once.

On one Redis and on the Cluster (``redis_nodes``): publishes queued without
waiting (``publish_soon``) share round trips and keep each sender's order;
the pub/sub reader hands a read of many messages to the Hub before it yields.
Behind a TCP proxy that cuts the pipeline's connection (to one Redis, or to
the Cluster master that holds the room): every sender gets an error, retries
with the same ids publish nothing twice, and the backend works on.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import pytest
import redis
from anyio.abc import SocketStream
from redis.crc import key_slot

from wschat.chat import Position
from wschat.hub import BackendUnavailable, ChatMessage, Delivery
from wschat.hub.redis import RedisBackend, channel, room_key, scripts
from wschat.hub.redis.topology import ClusterRedis

from .helpers import RedisProcess
from .redis_cluster import (  # noqa: F401 (fixture)
    ClusterNode,
    RedisClusterProcess,
    redis_cluster_fixture,
)
from .test_backends import (  # noqa: F401 (redis_url: a fixture)
    REDIS_KINDS,
    TIME,
    WAIT,
    Nodes,
    Recorder,
    flush,
    redis_or_cluster_url,
    redis_url,
    started_nodes,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

Result = Position | BackendUnavailable


@pytest.fixture(params=REDIS_KINDS)
async def redis_nodes(request: pytest.FixtureRequest) -> AsyncIterator[Nodes]:
    """Nodes on one Redis, then on the Cluster."""
    url = await redis_or_cluster_url(request.param, request)
    async with started_nodes(request.param, url) as made:
        yield made


def said(username: str, i: int) -> ChatMessage:
    return ChatMessage(username, f"{username} {i}", TIME, f"{username}-{i}")


def texts(recorder: Recorder, room: str) -> list[str]:
    return [json.loads(d.payload)["message"] for d in recorder.messages(room)]


async def results_of(count: int, results: dict[str, Result]) -> None:
    with anyio.fail_after(WAIT):
        while len(results) < count:
            await anyio.sleep(0.005)


def queue(backend: RedisBackend, room: str, message: ChatMessage, into: dict[str, Any]) -> None:
    """publish_soon, recording the result (once) under the message id."""
    assert message.id is not None
    key = message.id

    def done(result: Result) -> None:
        assert key not in into, "done called twice"
        into[key] = result

    backend.publish_soon(room, message, done)


async def test_one_sender_many_in_flight_consecutive_seqs_in_order(redis_nodes: Nodes) -> None:
    sender, _ = await redis_nodes.new()
    reader, recorder = await redis_nodes.new()
    assert isinstance(sender, RedisBackend)
    await reader.subscribe("lobby")
    results: dict[str, Result] = {}
    for i in range(300):  # queued at once, none awaited
        queue(sender, "lobby", said("alice", i), results)
    await results_of(300, results)
    seqs = [results[f"alice-{i}"] for i in range(300)]
    assert all(isinstance(r, Position) for r in seqs)
    assert [r.seq for r in seqs if isinstance(r, Position)] == list(range(1, 301))
    # A few round trips carried them, not one each.
    assert sender.commands.pipelines < 30
    await recorder.wait(lambda: len(recorder.seqs("lobby")) >= 300)
    assert recorder.seqs("lobby") == list(range(1, 301))
    assert texts(recorder, "lobby") == [f"alice {i}" for i in range(300)]


async def test_two_senders_one_room_each_in_order_all_exactly_once(redis_nodes: Nodes) -> None:
    alice, _ = await redis_nodes.new()
    bob, _ = await redis_nodes.new()
    reader, recorder = await redis_nodes.new()
    assert isinstance(alice, RedisBackend) and isinstance(bob, RedisBackend)
    await reader.subscribe("lobby")
    results: dict[str, Result] = {}
    for burst in range(10):
        for i in range(burst * 40, burst * 40 + 40):
            queue(alice, "lobby", said("alice", i), results)
            queue(bob, "lobby", said("bob", i), results)
        await anyio.sleep(0)  # a pipeline may leave between bursts
    await results_of(800, results)
    positions = list(results.values())
    assert all(isinstance(p, Position) for p in positions)
    assert sorted(p.seq for p in positions if isinstance(p, Position)) == list(range(1, 801))
    for name in ("alice", "bob"):
        mine = [results[f"{name}-{i}"] for i in range(400)]
        seqs = [p.seq for p in mine if isinstance(p, Position)]
        assert seqs == sorted(seqs), f"{name}'s messages were reordered"
    await recorder.wait(lambda: len(recorder.seqs("lobby")) >= 800)
    assert recorder.seqs("lobby") == list(range(1, 801))
    delivered = texts(recorder, "lobby")
    for name in ("alice", "bob"):
        assert [t for t in delivered if t.startswith(name)] == [f"{name} {i}" for i in range(400)]


async def test_rooms_on_every_shard_keep_their_order(redis_nodes: Nodes) -> None:
    sender, _ = await redis_nodes.new()
    reader, recorder = await redis_nodes.new()
    assert isinstance(sender, RedisBackend)
    rooms = [f"room{n}" for n in range(12)]  # on a Cluster, spread over its masters
    for room in rooms:
        await reader.subscribe(room)
    results: dict[str, Result] = {}
    for i in range(50):
        for room in rooms:
            queue(sender, room, said(room, i), results)
    await results_of(50 * len(rooms), results)
    for room in rooms:
        positions = [results[f"{room}-{i}"] for i in range(50)]
        epoch = positions[0].epoch if isinstance(positions[0], Position) else None
        assert positions == [Position(epoch or "?", seq) for seq in range(1, 51)]
    await recorder.wait(lambda: sum(len(recorder.seqs(r)) for r in rooms) >= 50 * len(rooms))
    for room in rooms:
        assert texts(recorder, room) == [f"{room} {i}" for i in range(50)]


async def test_a_read_of_many_messages_reaches_the_hub_without_yielding(
    request: pytest.FixtureRequest,
) -> None:
    url: str = request.getfixturevalue("redis_url")  # one Redis: the reader is the same code
    await flush(url)
    async with started_nodes("redis", url) as nodes:
        reader, recorder = await nodes.new()
        assert isinstance(reader, RedisBackend)
        await reader.subscribe("lobby")
        turns = 0
        seen: list[int] = []  # the loop turn each delivery came in

        async def count_turns() -> None:
            nonlocal turns
            while True:
                turns += 1
                await anyio.sleep(0)

        def deliver(room: str, delivery: Delivery) -> None:
            recorder(room, delivery)
            seen.append(turns)

        reader._deliver = deliver  # type: ignore[attr-defined]
        publisher = redis.Redis.from_url(url)
        pipe = publisher.pipeline(transaction=False)
        for i in range(200):
            room_keys, args = reader._messages._publish_args("lobby", said("alice", i))
            pipe.eval(scripts.PUBLISH.text, len(room_keys), *room_keys, *args)
        async with anyio.create_task_group() as group:
            group.start_soon(count_turns)
            await anyio.sleep(0.05)
            # Blocking the loop: all 200 are on the reader's socket before it reads.
            pipe.execute()
            time.sleep(0.2)
            await recorder.wait(lambda: len(recorder.seqs("lobby")) >= 200)
            group.cancel_scope.cancel()
        publisher.close()
        assert recorder.seqs("lobby") == list(range(1, 201))
        # A loop turn per socket read (64 KiB), not one per message.
        assert len(set(seen)) <= 4, f"{len(set(seen))} loop turns for 200 messages"


# -- a connection that goes away mid-pipeline --------------------------------


class CuttingProxy:
    """TCP proxy to Redis; :meth:`cut_after` closes connections mid-reply."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.cut_at: int | None = None
        self.cuts = 0

    def cut_after(self, reply_bytes: int) -> None:
        """Close the next connection whose replies pass ``reply_bytes`` (once)."""
        self.cut_at = reply_bytes

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        task_status.started()
        await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        upstream_stream = await anyio.connect_tcp("127.0.0.1", self.target_port)
        async with client, upstream_stream as server, anyio.create_task_group() as group:

            async def upstream() -> None:
                try:
                    async for data in client:
                        await server.send(data)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
                group.cancel_scope.cancel()

            group.start_soon(upstream)
            sent = 0
            try:
                async for data in server:
                    cut_at = self.cut_at
                    if cut_at is not None and sent + len(data) > cut_at:
                        self.cut_at = None
                        self.cuts += 1
                        if cut_at > sent:
                            await client.send(data[: cut_at - sent])
                        break
                    sent += len(data)
                    await client.send(data)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            group.cancel_scope.cancel()


@asynccontextmanager
async def proxy_to(port: int) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(port)
    async with anyio.create_task_group() as group:
        await group.start(proxy.serve)
        yield proxy
        group.cancel_scope.cancel()


@pytest.fixture(params=REDIS_KINDS)
async def behind_proxy(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[str, CuttingProxy, RedisBackend]]:
    """One Redis, then the Cluster master that holds the lobby, behind a proxy.

    Yields the direct URL, the proxy, and a backend (not started) whose
    commands to that server go through the proxy.
    """
    if request.param == "redis":
        with RedisProcess() as server:
            async with proxy_to(server.port) as proxy:
                yield server.url, proxy, RedisBackend(f"redis://127.0.0.1:{proxy.port}/0")
        return
    cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
    cluster.healthy()
    owner = ("127.0.0.1", cluster.owner("lobby").port)
    async with proxy_to(owner[1]) as proxy:
        sender = RedisBackend(cluster.url)
        assert isinstance(sender.topology, ClusterRedis)
        # The master's address as the cluster announces it, mapped to the proxy
        # (redis-py's address_remap, for clients that reach a cluster through one).
        sender.topology.cluster.nodes_manager.address_remap = lambda address: (
            ("127.0.0.1", proxy.port) if address == owner else address
        )
        yield cluster.url, proxy, sender


async def test_a_connection_lost_mid_pipeline_fails_its_senders_and_retries_dedup(
    behind_proxy: tuple[str, CuttingProxy, RedisBackend],
) -> None:
    url, proxy, sender = behind_proxy
    async with anyio.create_task_group() as group:
        reader = RedisBackend(url)  # direct: sees what Redis really published
        recorder = Recorder()
        await sender.start(lambda room, delivery: None, group)
        await reader.start(recorder, group)
        await reader.subscribe("lobby")
        first = await sender.publish("lobby", said("alice", 0))  # the script is cached
        assert first.seq == 1
        proxy.cut_after(2000)  # some replies in, then the connection is gone
        results: dict[str, Result] = {}
        for i in range(1, 301):
            queue(sender, "lobby", said("alice", i), results)
        await results_of(300, results)
        assert proxy.cuts == 1
        failed = [i for i in range(1, 301) if isinstance(results[f"alice-{i}"], BackendUnavailable)]
        assert failed, "the cut failed nobody"
        # The cut came after replies: Redis ran some of the failed ones.
        await recorder.wait(lambda: len(recorder.seqs("lobby")) > 1)
        # The senders retry with the same ids: nothing is published twice.
        retried: dict[str, Result] = {}
        for i in failed:
            queue(sender, "lobby", said("alice", i), retried)
        await results_of(len(failed), retried)
        assert all(isinstance(r, Position) for r in retried.values())
        seqs = {i: (results if i not in failed else retried)[f"alice-{i}"] for i in range(1, 301)}
        assert [p.seq for p in seqs.values() if isinstance(p, Position)] == list(range(2, 302))
        later = await sender.publish("lobby", said("alice", 301))
        assert later.seq == 302
        await recorder.wait(lambda: len(recorder.seqs("lobby")) == 302)
        assert recorder.seqs("lobby") == list(range(1, 303))
        assert texts(recorder, "lobby") == [f"alice {i}" for i in range(302)]
        await sender.aclose()
        await reader.aclose()
        group.cancel_scope.cancel()


async def test_redis_down_fails_every_queued_publish_and_later_ones_work() -> None:
    with RedisProcess() as redis:
        async with anyio.create_task_group() as group:
            backend = RedisBackend(redis.url)
            recorder = Recorder()
            await backend.start(recorder, group)
            await backend.subscribe("lobby")
            redis.stop()
            results: dict[str, Result] = {}
            for i in range(50):
                queue(backend, "lobby", said("alice", i), results)
            await results_of(50, results)
            assert all(isinstance(r, BackendUnavailable) for r in results.values())
            redis.start()  # empty
            again: dict[str, Result] = {}
            for i in range(50):
                queue(backend, "lobby", said("alice", i), again)
            await results_of(50, again)
            assert [r.seq for r in again.values() if isinstance(r, Position)] == list(range(1, 51))
            await recorder.wait(lambda: len(recorder.seqs("lobby")) >= 50)
            assert recorder.seqs("lobby") == list(range(1, 51))
            await backend.aclose()
            group.cancel_scope.cancel()


async def test_a_burst_of_subscriptions_is_filled_in_a_few_round_trips(redis_nodes: Nodes) -> None:
    backend, recorder = await redis_nodes.new()
    assert isinstance(backend, RedisBackend)
    rooms = [f"burst{n}" for n in range(300)]
    before = backend.commands.pipelines
    async with anyio.create_task_group() as group:
        for room in rooms:  # as 300 clients joining their rooms at once
            group.start_soon(backend.subscribe, room)
    # Baselines, then the reads after Redis confirmed, share pipelines: not one each.
    assert backend.commands.pipelines - before < 100  # one each: 600
    results: dict[str, Result] = {}
    for room in rooms:
        queue(backend, room, said(room, 0), results)
    await results_of(len(rooms), results)
    await recorder.wait(lambda: all(recorder.seqs(room) == [1] for room in rooms))


async def test_a_bug_in_one_round_trip_fails_its_batch_and_the_shard_serves_on() -> None:
    with RedisProcess() as redis_server:
        async with anyio.create_task_group() as group:
            backend = RedisBackend(redis_server.url)
            recorder = Recorder()
            await backend.start(recorder, group)
            await backend.subscribe("lobby")
            assert (await backend.publish("lobby", said("alice", 0))).seq == 1
            pipelines = backend.commands
            round_trip = pipelines._round_trip
            calls = 0
            first_batch = anyio.Event()
            go_on = anyio.Event()

            async def buggy_once(shard: Any, batch: list[Any]) -> list[Any]:
                nonlocal calls
                calls += 1
                if calls == 1:
                    first_batch.set()
                    await go_on.wait()  # the rest queue meanwhile: later batches
                    raise RuntimeError("injected bug")
                return await round_trip(shard, batch)

            pipelines._round_trip = buggy_once  # type: ignore[method-assign]
            results: dict[str, Result] = {}
            for i in range(1, 11):
                queue(backend, "lobby", said("alice", i), results)
            with anyio.fail_after(WAIT):
                await first_batch.wait()
            for i in range(11, 101):
                queue(backend, "lobby", said("alice", i), results)
            go_on.set()
            await results_of(100, results)
            failed = [
                i for i in range(1, 101) if isinstance(results[f"alice-{i}"], BackendUnavailable)
            ]
            assert failed == list(range(1, 11))  # the first batch, and only it
            assert "the pipeline failed" in str(results["alice-1"])
            # Nothing of the failed batch was sent; the rest went on the same task.
            published = [results[f"alice-{i}"] for i in range(11, 101)]
            assert [p.seq for p in published if isinstance(p, Position)] == list(range(2, 92))
            later = await backend.publish("lobby", said("alice", 101))
            assert later.seq == 92
            await recorder.wait(lambda: recorder.seqs("lobby")[-1:] == [later.seq])
            assert recorder.seqs("lobby") == list(range(1, later.seq + 1))
            await backend.aclose()
            group.cancel_scope.cancel()


@contextmanager
def slot_moved(cluster: RedisClusterProcess, room: str) -> Iterator[ClusterNode]:
    """Move ``room``'s slot (and its keys) to another master for the block; the
    new owner is yielded."""
    slot = key_slot(channel(room).encode())
    source = cluster.owner(room)
    target = next(node for node in cluster.nodes if node is not source)
    cluster.move_slot(slot, target)
    with target.client() as client:
        client.script_flush()  # as a new master would be: no script cached yet
        client.config_resetstat()
    try:
        yield target
    finally:
        cluster.move_slot(slot, source)


async def test_a_moved_slot_sends_its_publishes_to_the_new_owner(
    redis_cluster: RedisClusterProcess,
) -> None:
    room = "resharded-publishes"
    async with anyio.create_task_group() as group:
        sender = RedisBackend(redis_cluster.url)
        await sender.start(lambda room, delivery: None, group)
        watcher = RedisBackend(redis_cluster.url)
        watched = Recorder()
        await watcher.start(watched, group)
        await watcher.subscribe(room)  # on the old owner
        with slot_moved(redis_cluster, room) as target:
            reader = RedisBackend(redis_cluster.url)  # reads the map after the move
            recorder = Recorder()
            await reader.start(recorder, group)
            await reader.subscribe(room)
            results: dict[str, Result] = {}
            for i in range(1, 51):  # queued on the old owner: MOVED, then the new one
                queue(sender, room, said("alice", i), results)
            await results_of(50, results)
            assert [r.seq for r in results.values() if isinstance(r, Position)] == list(
                range(1, 51)
            )
            await recorder.wait(lambda: len(recorder.seqs(room)) == 50)
            assert texts(recorder, room) == [f"alice {i}" for i in range(1, 51)]
            with target.client() as client:
                assert client.exists(room_key(room, "history"))
                # Moved, then reloaded there: EVALSHA met NOSCRIPT and went as EVAL.
                stats = client.info("commandstats")
                assert stats.get("cmdstat_eval", {}).get("calls", 0) >= 1, stats
            # Redis dropped the watcher's subscription: it moved to the new owner, lost nothing.
            await watched.wait(lambda: len(watched.seqs(room)) >= 50)
            assert watched.seqs(room) == list(range(1, 51))
            await reader.aclose()
            await watcher.aclose()
        await sender.aclose()
        group.cancel_scope.cancel()


@pytest.mark.parametrize("failure", ["stopped", "bug"])
async def test_publishes_held_for_a_moved_slot_are_answered_when_its_lookup_fails(
    redis_cluster: RedisClusterProcess, failure: str
) -> None:
    # The slot map is read again after MOVED; the backend stops meanwhile, or the
    # lookup has a bug: either way every publish it held is answered.
    room = f"resharded-{failure}"
    async with anyio.create_task_group() as group:
        sender = RedisBackend(redis_cluster.url)
        await sender.start(lambda room, delivery: None, group)
        first = await sender.publish(room, said("alice", 0))
        topology = sender.commands.topology
        refresh = topology.refresh
        looking = anyio.Event()

        async def failing_refresh() -> None:
            looking.set()
            if failure == "bug":
                raise RuntimeError("injected bug")
            await anyio.sleep_forever()

        topology.refresh = failing_refresh  # type: ignore[method-assign]
        with slot_moved(redis_cluster, room):
            results: dict[str, Result] = {}
            for i in range(1, 11):
                queue(sender, room, said("alice", i), results)
            with anyio.fail_after(WAIT):
                await looking.wait()
            if failure == "stopped":
                await sender.aclose()
            await results_of(10, results)
            assert all(isinstance(r, BackendUnavailable) for r in results.values())
            if failure == "bug":
                assert "injected bug" in str(results["alice-1"])
                # The shard's task lives on: with the lookup mended, the room is found.
                topology.refresh = refresh  # type: ignore[method-assign]
                later: dict[str, Result] = {}
                queue(sender, room, said("alice", 11), later)
                await results_of(1, later)
                position = later["alice-11"]
                assert isinstance(position, Position) and position.seq == first.seq + 1
                await sender.aclose()
        group.cancel_scope.cancel()


async def test_a_redis_that_stops_answering_fails_its_pipeline_by_the_deadline() -> None:
    # SIGSTOP: the connection stays up and the kernel takes the bytes, nothing answers.
    with RedisProcess() as redis_server:
        assert redis_server.proc is not None
        async with anyio.create_task_group() as group:
            backend = RedisBackend(redis_server.url)
            await backend.start(lambda room, delivery: None, group)
            assert (await backend.publish("lobby", said("alice", 0))).seq == 1
            backend.commands.timeout = 0.5
            redis_server.proc.send_signal(signal.SIGSTOP)
            try:
                results: dict[str, Result] = {}
                started = time.monotonic()
                for i in range(1, 11):
                    queue(backend, "lobby", said("alice", i), results)
                await results_of(10, results)
                assert time.monotonic() - started < 3
                assert all(isinstance(r, BackendUnavailable) for r in results.values())
                assert "did not answer a pipeline within 0.5 s" in str(results["alice-1"])
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
            # Redis may still run what it had received; the next publish comes after it.
            later = await backend.publish("lobby", said("alice", 11))
            assert 2 <= later.seq <= 12
            await backend.aclose()
            group.cancel_scope.cancel()
