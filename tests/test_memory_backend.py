"""The memory backend's state stays bounded however many rooms come and go.

Driven through the Backend protocol only (subscribe/publish/presence/unsubscribe),
as the Hub drives it: a loop that visits thousands of rooms, says one thing in
each and leaves must leave at most ``max_idle_rooms`` rooms behind, and never
touch a room someone is in.
"""

from __future__ import annotations

import tracemalloc
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import pytest

from wschat.chat import Position
from wschat.hub import ChatMessage, Delivery, MemoryBackend, open_backend
from wschat.hub.memory import DEFAULT_MAX_IDLE_ROOMS

pytestmark = pytest.mark.anyio

CAP = 1000


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def started(
    backend: MemoryBackend, keep: int = 100
) -> AsyncIterator[deque[tuple[str, Delivery]]]:
    """The backend, started; yields the last ``keep`` deliveries it made."""
    delivered: deque[tuple[str, Delivery]] = deque(maxlen=keep)
    async with anyio.create_task_group() as group:
        await backend.start(lambda room, delivery: delivered.append((room, delivery)), group)
        try:
            yield delivered
        finally:
            await backend.aclose()
            group.cancel_scope.cancel()


def _message(text: str) -> ChatMessage:
    return ChatMessage("alice", text, "2026-11-26T16:00:00.000Z")


async def _visit(backend: MemoryBackend, room: str, conn_id: str = "c1") -> Position:
    """What one connection does: join the room, say one thing, leave."""
    await backend.subscribe(room)
    await backend.history(room, None)
    await backend.presence_join(room, conn_id, "alice")
    position = await backend.publish(room, _message(f"hello {room}"))
    await backend.presence_leave(room, conn_id)
    await backend.unsubscribe(room)
    return position


async def test_50000_one_message_rooms_leave_at_most_the_cap() -> None:
    backend = MemoryBackend(max_idle_rooms=CAP)
    async with started(backend):
        for i in range(50_000):
            await _visit(backend, f"room-{i}")
            if i % 5000 == 0:
                assert backend.statistics()["rooms"] <= CAP
        assert backend.statistics() == {"rooms": CAP, "idle_rooms": CAP}
        # The most recent rooms kept their message; the oldest were forgotten.
        kept = await backend.history("room-49999", None)
        assert len(kept.messages) == 1 and kept.position.seq == 1
        forgotten = await backend.history("room-0", None)
        assert forgotten.messages == [] and forgotten.position.seq == 0


async def test_memory_stops_growing_once_the_cap_is_reached() -> None:
    backend = MemoryBackend(max_idle_rooms=CAP)
    async with started(backend):
        tracemalloc.start()
        try:
            for i in range(CAP):
                await _visit(backend, f"room-{i:05}")
            full, _ = tracemalloc.get_traced_memory()
            for i in range(CAP, 10 * CAP):
                await _visit(backend, f"room-{i:05}")
            after, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    # Nine times as many rooms again went through; what is held grew by a fraction
    # of what the first CAP rooms took (unbounded, it would be 10x).
    assert after - full < full / 4, (full, after)


async def test_a_room_someone_is_in_is_never_evicted_and_keeps_its_position() -> None:
    backend = MemoryBackend(max_idle_rooms=10)
    async with started(backend) as delivered:
        await backend.subscribe("lobby")
        await backend.presence_join("lobby", "bob-1", "bob")
        first = await backend.publish("lobby", _message("one"))
        await backend.publish("lobby", _message("two"))
        # A room present elsewhere but not subscribed here (another node's member,
        # as a shared backend would see it) is kept too.
        await backend.presence_join("annex", "carol-1", "carol")
        annex = await backend.publish("annex", _message("kept"))
        for i in range(5000):
            await _visit(backend, f"churn-{i}")
        assert backend.statistics() == {"rooms": 2 + 10, "idle_rooms": 10}
        history = await backend.history("lobby", first)
        assert history.complete and history.position == Position(first.epoch, 2)
        third = await backend.publish("lobby", _message("three"))
        assert third == Position(first.epoch, 3)
        assert await backend.presence("lobby") == ["bob"]
        assert (await backend.history("annex", None)).position == annex
        assert ("lobby", third.seq) in [(room, delivery.seq) for room, delivery in delivered]


async def test_idle_rooms_used_recently_are_kept_over_older_ones() -> None:
    backend = MemoryBackend(max_idle_rooms=3)
    async with started(backend):
        for room in ("a", "b", "c"):
            await _visit(backend, room)
        await backend.history("a", None)  # reading "a" makes it the most recently used
        await _visit(backend, "d")  # one too many: "b" goes
        assert (await backend.history("a", None)).position.seq == 1
        assert (await backend.history("c", None)).position.seq == 1
        assert (await backend.history("b", None)).position.seq == 0


async def test_a_forgotten_room_gets_a_new_epoch_so_recovery_says_incomplete() -> None:
    backend = MemoryBackend(max_idle_rooms=1)
    async with started(backend):
        old = await _visit(backend, "a")
        await _visit(backend, "b")  # "a" is forgotten
        await backend.subscribe("a")
        history = await backend.history("a", old)
        assert history.position.epoch != old.epoch
        assert history.complete is False


async def test_rooms_whose_history_expired_are_forgotten() -> None:
    clock = FakeClock()
    backend = MemoryBackend(history_ttl=60, max_idle_rooms=CAP, clock=clock)
    async with started(backend):
        for i in range(100):
            await _visit(backend, f"room-{i}")
        await backend.history("looked-at", None)  # nobody in it, nothing in it
        await backend.subscribe("lobby")
        await backend.publish("lobby", _message("still here"))
        assert backend.statistics() == {"rooms": 102, "idle_rooms": 101}
        clock.now += 61
        backend.sweep()
        # Nothing of the idle rooms is left; the subscribed room stays, history expired.
        assert backend.statistics() == {"rooms": 1, "idle_rooms": 0}
        assert (await backend.history("lobby", None)).position.seq == 1


async def test_rooms_with_no_history_are_forgotten_before_older_ones_with_history() -> None:
    backend = MemoryBackend(max_idle_rooms=10)
    async with started(backend):
        for i in range(5):
            await _visit(backend, f"said-{i}")
        for i in range(10):
            await backend.history(f"looked-at-{i}", None)  # newer, but hold nothing
        assert backend.statistics() == {"rooms": 10, "idle_rooms": 10}
        for i in range(5):
            assert (await backend.history(f"said-{i}", None)).position.seq == 1


async def test_an_idle_room_keeps_its_epoch_while_it_is_kept() -> None:
    backend = MemoryBackend(max_idle_rooms=10)
    async with started(backend):
        position = await _visit(backend, "a")
        await _visit(backend, "b")
        await backend.subscribe("a")
        history = await backend.history("a", position)
        assert history.complete and history.position == position


async def test_zero_idle_rooms_forgets_a_room_when_its_last_member_leaves() -> None:
    backend = MemoryBackend(max_idle_rooms=0)
    async with started(backend):
        await _visit(backend, "a")
        assert backend.statistics() == {"rooms": 0, "idle_rooms": 0}


def test_default_cap_is_bounded_and_the_url_opener_passes_it() -> None:
    assert MemoryBackend().max_idle_rooms == DEFAULT_MAX_IDLE_ROOMS > 0
    backend = open_backend("memory://", max_idle_rooms=5)
    assert isinstance(backend, MemoryBackend) and backend.max_idle_rooms == 5
