"""The pub/sub reader's fast path, on one Redis and on a Redis Cluster.

The reader takes the replies redis-py's hiredis parser has already read
straight from its reader and delivers their messages without a coroutine each
(``wschat.hub.redis.reader``); every test runs on that path and on redis-py's
own (``read_path`` "redis-py": ``_buffered`` finds no hiredis reader), which
must behave the same. A burst reaches the reader while it is busy (held in a
gap fill): messages of several rooms, a PONG, a subscription confirmation and
a relayed event in one read, all delivered once and in the order Redis
published them.
"""

from __future__ import annotations

import signal
from typing import Any

import anyio
import pytest

from wschat.chat import decode_event
from wschat.hub import ChatMessage, Delivery
from wschat.hub.redis import RedisBackend, room_key, scripts
from wschat.hub.redis import reader as reader_module
from wschat.hub.redis.messages import Messages, Room
from wschat.hub.redis.reader import ShardReader

from .redis_cluster import (  # noqa: F401 (fixtures)
    Deployment,
    deployment_fixture,
    redis_cluster_fixture,
)
from .test_backends import WAIT, Recorder
from .test_redis_failures import Started, eventually, gaps, say, started  # noqa: F401

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture(params=["hiredis", "redis-py"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Which path the reader takes the replies by (redis-py's: as without hiredis)."""
    if request.param == "redis-py":
        monkeypatch.setattr(reader_module, "_buffered", lambda pubsub: None)
    return str(request.param)


def shard_reader(backend: RedisBackend, room: str) -> ShardReader:
    """The reader of ``room``'s shard, connected."""
    reader = backend._messages._readers[backend.topology.shard_of(room)]
    assert reader.pubsub is not None
    return reader


def rooms_on_one_shard(deployment: Deployment, count: int) -> list[str]:
    """``count`` rooms whose channels share a server (one pub/sub connection)."""
    owner = deployment.owner("lobby")
    found = ["lobby"]
    index = 0
    while len(found) < count:
        name = f"lobby-{index}"
        if deployment.owner(name) is owner:
            found.append(name)
        index += 1
    return found


async def publish_unheard(backend: RedisBackend, room: str, message: ChatMessage) -> None:
    """Publish ``message`` into the room's history and seq, but on a channel nobody reads."""
    room_keys, args = backend._messages._publish_args(room, message)
    args[6] = room_key(room, "unheard")  # same slot, no subscriber
    await scripts.PUBLISH(backend.commands, room_keys, args)


async def wait_subscribed(deployment: Deployment, room: str) -> None:
    """Until Redis routes ``room``'s channel to a subscriber."""
    name = room_key(room, "events")
    command = "SHARDNUMSUB" if deployment.kind == "cluster" else "NUMSUB"
    admin = deployment.admin(room)
    try:
        with anyio.fail_after(WAIT):
            while (await admin.execute_command("PUBSUB", command, name))[1] < 1:
                await anyio.sleep(0.005)
    finally:
        await admin.aclose()


async def hold(
    a: RedisBackend, b: RedisBackend, held: str, monkeypatch: pytest.MonkeyPatch
) -> anyio.Event:
    """Hold ``a``'s reader in a gap fill of room ``held`` until the returned event is set.

    ``b`` publishes the room's next message where nobody hears it, then one
    more: the reader sees the seq skip and fills, and is held there.
    """
    fill = a._messages.fill
    stuck, release = anyio.Event(), anyio.Event()

    async def held_fill(name: str, state: Room) -> None:
        if name == held and not stuck.is_set():
            stuck.set()
            await release.wait()
        await fill(name, state)

    monkeypatch.setattr(a._messages, "fill", held_fill)
    await publish_unheard(b, held, say("held 1"))
    await b.publish(held, say("held 2"))
    with anyio.fail_after(WAIT):
        await stuck.wait()
    return release


def events(recorder: Recorder, room: str) -> list[int | str]:
    """The room's events in delivery order: seqs, ``gap``, and relayed events' origins."""
    out: list[int | str] = []
    for r, d in recorder.events:
        if r == room:
            out.append("gap" if d.gap else d.seq if d.seq is not None else f"relay {d.origin}")
    return out


async def test_a_burst_read_while_the_reader_is_busy_is_delivered_whole_and_in_order(
    deployment: Deployment,
    started: Started,  # noqa: F811
    read_path: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    room, held, joined = rooms_on_one_shard(deployment, 3)
    a, recorder = await started.new()
    b, _ = await started.new()
    await a.subscribe(room)
    await a.subscribe(held)
    await b.publish(room, say("1"))
    await recorder.wait(lambda: recorder.seqs(room) == [1])
    reader = shard_reader(a, room)
    pubsub = reader.pubsub
    assert pubsub is not None
    if read_path == "hiredis":  # the installed redis-py and hiredis take the fast path
        assert reader_module._buffered(pubsub) is not None

    # The reader is held in the gap fill of ``held``...
    release = await hold(a, b, held, monkeypatch)

    # ...while its connection takes messages, a subscription's confirmation
    # (and messages after it), a relayed event and a PONG, in this order.
    for i in range(2, 31):
        await b.publish(room, say(str(i)))
    subscribed = anyio.Event()

    async def subscribe_joined() -> None:
        await a.subscribe(joined)
        subscribed.set()

    started.group.start_soon(subscribe_joined)
    await wait_subscribed(deployment, joined)
    for i in range(1, 6):
        await b.publish(joined, say(f"joined {i}"))
    await b.relay(room, b'{"type":"typing"}', "b1")
    for i in range(31, 46):
        await b.publish(room, say(str(i)))
    await pubsub.ping()
    for i in range(46, 61):
        await b.publish(room, say(str(i)))

    reads = 0
    read = ShardReader._read

    async def counted(pubsub: Any) -> Any:
        nonlocal reads
        reads += 1
        return await read(pubsub)

    monkeypatch.setattr(ShardReader, "_read", staticmethod(counted))
    release.set()
    await recorder.wait(lambda: recorder.seqs(room)[-1:] == [60])
    with anyio.fail_after(WAIT):
        await subscribed.wait()
    await recorder.wait(lambda: len(recorder.seqs(joined)) == 5)

    assert events(recorder, room) == [*range(1, 31), "relay b1", *range(31, 61)]
    assert events(recorder, held) == [1, 2]
    # From the fill (it read them from the stream): pub/sub's copies were dropped.
    assert [decode_event(d.payload)["message"] for d in recorder.messages(joined)] == [
        f"joined {i}" for i in range(1, 6)
    ]
    assert a.reconnects == 0
    assert gaps(recorder, room) == gaps(recorder, held) == gaps(recorder, joined) == 0
    if read_path == "hiredis":
        # 67 replies: one read for the socket, one after each reply that is not
        # a message (the confirmation, the message it returned, the PONG).
        assert reads <= 8, reads
    else:
        assert reads >= 60, reads

    # Still reading, and the PONG did not count as a reply to anything else.
    await b.publish(room, say("61"))
    await recorder.wait(lambda: recorder.seqs(room)[-1:] == [61])
    assert a.reconnects == 0


@pytest.mark.parametrize("deployment", ["redis"], indirect=True)
async def test_an_error_reply_among_buffered_messages_fails_the_connection_like_redis_py(
    deployment: Deployment,
    started: Started,  # noqa: F811
    read_path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    room, held = rooms_on_one_shard(deployment, 2)
    a, recorder = await started.new()
    b, _ = await started.new()
    await a.subscribe(room)
    await a.subscribe(held)
    pubsub = shard_reader(a, room).pubsub
    assert pubsub is not None
    release = await hold(a, b, held, monkeypatch)
    for i in range(1, 6):
        await b.publish(room, say(str(i)))
    await pubsub.execute_command("NO-SUCH-COMMAND")  # its error reply follows the messages
    for i in range(6, 9):
        await b.publish(room, say(str(i)))
    release.set()
    # Delivered up to the error, then the connection failed (as a failure, not a
    # bug), and the reconnect filled the rest from the stream.
    await recorder.wait(lambda: recorder.seqs(room)[-1:] == [8])
    assert recorder.seqs(room) == list(range(1, 9))
    assert a.reconnects >= 1
    assert "pub/sub connection to" in caplog.text and "lost" in caplog.text
    assert "pub/sub reader failed" not in caplog.text


@pytest.mark.parametrize("deployment", ["redis"], indirect=True)
async def test_silence_is_pinged_and_a_redis_that_stops_answering_is_left(
    deployment: Deployment,
    started: Started,  # noqa: F811
    read_path: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(reader_module, "_PING_INTERVAL", 0.1)
    a, recorder = await started.new()
    b, _ = await started.new()
    await a.subscribe("lobby")
    admin = deployment.admin()
    try:

        async def pinged_thrice() -> bool:  # silent intervals, each PINGed and answered
            stats = await admin.info("commandstats")
            return int(stats.get("cmdstat_ping", {}).get("calls", 0)) >= 3

        await eventually(pinged_thrice)
        assert a.reconnects == 0
        await b.publish("lobby", say("1"))
        await recorder.wait(lambda: recorder.seqs("lobby") == [1])

        server = deployment.owner("lobby").proc
        assert server is not None
        server.send_signal(signal.SIGSTOP)  # the connection stays up, nothing answers
        try:
            # Two unanswered intervals (0.2 s), then the reader gives up.
            with anyio.fail_after(WAIT):
                while "stopped answering PING" not in caplog.text:
                    await anyio.sleep(0.05)
        finally:
            server.send_signal(signal.SIGCONT)

        async def reconnected() -> bool:
            return a.reconnects >= 1

        await eventually(reconnected)
        await b.publish("lobby", say("2"))
        await recorder.wait(lambda: recorder.seqs("lobby") == [1, 2])
    finally:
        await admin.aclose()


def test_on_event_nowait_delivers_in_order_and_leaves_gaps_to_on_event() -> None:
    emitted: list[Delivery] = []
    none: Any = None
    messages = Messages(none, none, none, lambda room, d: emitted.append(d), lambda room: None)
    state = Room(b"channel", "", epoch="E", seq=4)
    assert messages.on_event_nowait("r", state, b"5|E|five")
    assert messages.on_event_nowait("r", state, b"5|E|five again")  # delivered already
    assert messages.on_event_nowait("r", state, b"|joined")
    assert messages.on_event_nowait("r", state, b"Rb1|typing")
    # A gap and a new epoch need a fill: nothing delivered, nothing changed.
    assert not messages.on_event_nowait("r", state, b"7|E|seven")
    assert not messages.on_event_nowait("r", state, b"1|F|new epoch")
    assert (state.epoch, state.seq) == ("E", 5)
    assert emitted == [
        Delivery(b"five", 5),
        Delivery(b"joined", None),
        Delivery(b"typing", None, origin="b1"),
    ]
    fresh = Room(b"channel", "", epoch="", seq=0)  # a room without an epoch yet
    assert messages.on_event_nowait("r", fresh, b"1|F|first")
    assert (fresh.epoch, fresh.seq) == ("F", 1)
