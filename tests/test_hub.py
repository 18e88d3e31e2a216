"""The Hub's own rules: joins that race live delivery, gap markers, failing leaves.

Members are small recording objects (the Hub's Member protocol); backends are
real: the memory backend, and Redis and Redis Cluster started by the tests.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup

from wschat.chat import Position
from wschat.hub import ChatMessage, History, Hub, MemoryBackend, PreparedMessage
from wschat.hub.redis import RedisBackend

from .redis_cluster import (  # noqa: F401 (fixtures)
    Deployment,
    deployment_fixture,
    pubsub_outage,
    redis_cluster_fixture,
)

pytestmark = pytest.mark.anyio

WAIT = 5.0


class Conn:
    """A connection as the Hub sees it; keeps what it was sent."""

    def __init__(self, conn_id: str, username: str | None = None) -> None:
        self.conn_id = conn_id
        self.username = username
        self.legacy = False
        self.received: list[dict[str, Any]] = []
        self.missed_rooms: list[str] = []

    def send(self, message: PreparedMessage) -> None:
        self.received.append(json.loads(message.payload))

    def missed(self, room: str) -> None:
        self.missed_rooms.append(room)

    def seqs(self) -> list[int]:
        """Every message seq this connection got, from history and live, in order."""
        out: list[int] = []
        for event in self.received:
            if event["type"] == "history":
                out += [m["seq"] for m in event["messages"]]
            elif event["type"] == "message":
                out.append(event["seq"])
        return out

    async def wait(self, predicate: Any) -> None:
        with anyio.fail_after(WAIT):
            while not predicate():
                await anyio.sleep(0.005)


@pytest.fixture
async def group() -> AsyncIterator[TaskGroup]:
    async with anyio.create_task_group() as tasks:
        yield tasks
        tasks.cancel_scope.cancel()


def say(n: int) -> ChatMessage:
    return ChatMessage("bob", f"m{n}", "2026-01-01T00:00:00.000Z")


# -- failures on the way out (issue 8, item 12) ----------------------------------------


class LeaveFails(MemoryBackend):
    """Presence leave raises for one room (a backend bug, or a failure it does not catch)."""

    async def presence_leave(self, room: str, conn_id: str) -> None:
        if room == "broken":
            raise RuntimeError("presence store exploded")
        await super().presence_leave(room, conn_id)


async def test_a_failing_presence_leave_still_releases_every_room(
    group: TaskGroup, caplog: pytest.LogCaptureFixture
) -> None:
    backend = LeaveFails()
    hub = Hub(backend)
    await hub.start(group)
    alice, bob = Conn("a1", "alice"), Conn("b1", "bob")
    rooms = ["first", "broken", "last"]
    for room in rooms:
        await hub.join(alice, room, None)
    await hub.join(bob, "last", None)
    with caplog.at_level(logging.ERROR, logger="wschat.hub"):
        await hub.disconnect(alice)  # never raises into the server
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failures) == 1 and "broken" in failures[0].getMessage()
    assert hub.members("first") == hub.members("broken") == set()
    assert hub.members("last") == {bob}
    assert backend._subscribed == {"last"}  # the other two were unsubscribed
    assert await backend.presence("last") == ["bob"]
    assert hub.statistics()["members"] == 1


async def test_a_join_without_history_is_complete_only_if_nothing_was_missed(
    group: TaskGroup,
) -> None:
    # A member the app does not let read history gets no messages, and learns
    # whether it missed any (complete), never an empty list presented as all of it.
    hub = Hub(MemoryBackend())
    await hub.start(group)
    first = await hub.say("lobby", "bob", "one")
    for n in range(2, 6):
        last = await hub.say("lobby", "bob", f"m{n}")
    reader = Conn("r1", "rita")
    await hub.join(reader, "lobby", Position(first.epoch, 1), history=False)
    behind = reader.received[0]
    assert (behind["type"], behind["messages"], behind["complete"]) == ("history", [], False)
    await hub.join(reader, "lobby", last, history=False)
    assert reader.received[-2]["complete"] is True  # nothing missed (then presence)
    await hub.join(reader, "lobby", None, history=False)
    assert reader.received[-2]["complete"] is True


# -- joins that race live delivery (issue 13, fixes 2 and 3) ----------------------------


class GatedHistory(RedisBackend):
    """Holds a history reply (already read from Redis) until the test opens the gate."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.gated = False
        self.read = anyio.Event()
        self.gate = anyio.Event()

    async def history(self, room: str, since: Position | None) -> History:
        history = await super().history(room, since)
        if self.gated:
            self.read.set()
            await self.gate.wait()
        return history


async def test_a_gap_marker_reaches_members_still_joining(
    deployment: Deployment, group: TaskGroup
) -> None:
    # Fix 2: the joiner's history was read before messages that this node then
    # lost; without the marker it would go live behind `complete: true` over a hole.
    backend = GatedHistory(deployment.url, history_size=0)
    hub = Hub(backend)
    await hub.start(group)
    other = RedisBackend(deployment.url, history_size=0)
    await other.start(lambda room, delivery: None, group)
    try:
        alice, carol = Conn("a1", "alice"), Conn("c1", "carol")
        await hub.join(alice, "lobby", None)
        backend.gated = True
        joined = anyio.Event()

        async def join_carol() -> None:
            await hub.join(carol, "lobby", None)
            joined.set()

        group.start_soon(join_carol)
        with anyio.fail_after(WAIT):
            await backend.read.wait()
        with pubsub_outage(deployment):
            await other.publish("lobby", say(1))
            await other.publish("lobby", say(2))
        await alice.wait(lambda: alice.missed_rooms == ["lobby"])
        backend.gate.set()
        with anyio.fail_after(WAIT):
            await joined.wait()
        history = next(e for e in carol.received if e["type"] == "history")
        assert history["complete"] is True and history["seq"] == 0
        assert carol.missed_rooms == ["lobby"]  # told: reconnect and recover
    finally:
        with anyio.fail_after(WAIT):
            await hub.aclose()
            await other.aclose()


async def test_a_joiner_never_gets_a_message_twice_when_history_is_ahead(
    deployment: Deployment, group: TaskGroup
) -> None:
    # Fix 3: history comes from another connection than live delivery; what it
    # already holds must not be delivered to the joiner again when the live
    # stream catches up.
    hub = Hub(RedisBackend(deployment.url))
    await hub.start(group)
    other = RedisBackend(deployment.url)
    await other.start(lambda room, delivery: None, group)
    try:
        alice, carol = Conn("a1", "alice"), Conn("c1", "carol")
        await hub.join(alice, "lobby", None)
        with pubsub_outage(deployment):
            for n in range(1, 4):
                await other.publish("lobby", say(n))
            await hub.join(carol, "lobby", None)  # history: 1, 2, 3; live: behind
            assert carol.seqs() == [1, 2, 3]
        await alice.wait(lambda: alice.seqs() == [1, 2, 3])  # the node caught up
        await other.publish("lobby", say(4))
        await carol.wait(lambda: 4 in carol.seqs())
        await alice.wait(lambda: alice.seqs() == [1, 2, 3, 4])
        assert carol.seqs() == [1, 2, 3, 4]  # each once
        assert alice.missed_rooms == carol.missed_rooms == []
    finally:
        with anyio.fail_after(WAIT):
            await hub.aclose()
            await other.aclose()
