"""Bounded Redis state: rooms used once leave nothing behind (one Redis and the Cluster).

A loop that joins many rooms once, says one thing and leaves must not grow
Redis without bound: every key of a room expires once the room is idle.
"""

from __future__ import annotations

import anyio
import pytest

from wschat.hub import ChatMessage
from wschat.hub.redis import RedisBackend

from .redis_cluster import (  # noqa: F401 (fixtures)
    Deployment,
    deployment_fixture,
    redis_cluster_fixture,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ROOMS = 300


async def use_rooms_once(backend: RedisBackend, count: int) -> None:
    for n in range(count):
        room = f"once{n}"
        await backend.subscribe(room)
        await backend.presence_join(room, f"c{n}", "visitor")
        await backend.publish(room, ChatMessage("visitor", "hello", "t", f"id{n}"))
        await backend.presence_leave(room, f"c{n}")
        await backend.unsubscribe(room)


async def test_every_key_expires_once_its_room_is_idle(deployment: Deployment) -> None:
    # A TTL the use of every room fits in on a loaded machine (0.3 s did not on a Cluster,
    # 1.5 s did not with six test processes on two cores).
    backend = RedisBackend(deployment.url, history_ttl=3.0, presence_ttl=3.0)
    async with anyio.create_task_group() as group:
        await backend.start(lambda room, delivery: None, group)
        try:
            await use_rooms_once(backend, ROOMS)
            assert await deployment.key_count() >= ROOMS  # meta, history, ids per room
            with anyio.fail_after(15):
                while await deployment.key_count():
                    await anyio.sleep(0.1)
        finally:
            await backend.aclose()
            group.cancel_scope.cancel()


async def test_without_a_history_ttl_every_key_still_has_one(deployment: Deployment) -> None:
    backend = RedisBackend(deployment.url)
    async with anyio.create_task_group() as group:
        await backend.start(lambda room, delivery: None, group)
        try:
            await use_rooms_once(backend, 50)
            await backend.subscribe("busy")  # and a room still in use
            await backend.presence_join("busy", "c-busy", "regular")
            await backend.publish("busy", ChatMessage("regular", "hi", "t", "busy-1"))
            assert await deployment.key_count() > 50
            assert await deployment.keys_without_ttl() == []
        finally:
            await backend.aclose()
            group.cancel_scope.cancel()
