"""Several wschat nodes (real processes) on one Redis and on a Redis Cluster.

Order across nodes, a killed node, a restarted Redis (on the Cluster: the
room's master), a Cluster master down while the others serve, workers. Nodes
are ``python -m wschat serve --hub redis://…`` (or ``redis-cluster://…``)
subprocesses; clients are the ``websockets`` library. One Redis is a private
redis-server per test; the Cluster is the shared three-master one
(``tests/redis_cluster.py``).
"""

from __future__ import annotations

import json
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from . import helpers
from .helpers import RedisProcess, server_process
from .redis_cluster import (  # noqa: F401 (fixtures)
    Deployment,
    RedisClusterProcess,
    deployment_fixture,
    redis_cluster_fixture,
)

# The nodes run `wschat serve --loop L` on asyncio and on uvloop (redis-py is
# asyncio's: no trio here); the clients run on the same loop in the test.
pytestmark = [
    pytest.mark.anyio,
    pytest.mark.redis,
    pytest.mark.every_loop(loops=("asyncio", "uvloop")),
]

PRESENCE_TTL = 1.0


@contextmanager
def nodes(redis_url: str, count: int, *extra: str) -> Iterator[list[tuple[Any, int]]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                server_process(
                    "--hub",
                    redis_url,
                    "--rate",
                    "0",
                    "--presence-ttl",
                    str(PRESENCE_TTL),
                    "--loop",
                    helpers.server_loop,
                    *extra,
                )
            )
            for _ in range(count)
        ]


@asynccontextmanager
async def client(port: int) -> AsyncIterator[ClientConnection]:
    # No bound on websockets' receive queue: a client closed while others'
    # `left` events are unread would wait out its close timeout (10 s) behind them.
    async with connect(f"ws://127.0.0.1:{port}/ws", max_queue=None) as ws:
        yield ws


async def next_event(
    ws: ClientConnection, kind: str, timeout: float = 10.0, **fields: Any
) -> dict[str, Any]:
    """The next event of type ``kind`` (whose ``fields`` match), skipping others."""
    with anyio.fail_after(timeout):
        while True:
            event: dict[str, Any] = json.loads(await ws.recv())
            if event.get("type") == kind and all(event.get(k) == v for k, v in fields.items()):
                return event


async def join(
    ws: ClientConnection, username: str, since: dict[str, Any] | None = None, room: str = "lobby"
) -> dict[str, Any]:
    command: dict[str, Any] = {"type": "join", "room": room, "username": username}
    if since is not None:
        command["since"] = since
    await ws.send(json.dumps(command))
    history = await next_event(ws, "history", room=room)
    await next_event(ws, "presence", room=room)
    return history


def spread_rooms(deployment: Deployment, request: pytest.FixtureRequest) -> list[str]:
    """Three rooms: on the Cluster, one on each master."""
    if deployment.kind == "cluster":
        cluster: RedisClusterProcess = request.getfixturevalue("redis_cluster")
        return cluster.rooms_on_every_shard()
    return ["room0", "room1", "room2"]


async def test_every_client_gets_every_room_in_one_order_on_every_node(
    deployment: Deployment, request: pytest.FixtureRequest
) -> None:
    rooms = spread_rooms(deployment, request)
    per_sender = 10
    with nodes(deployment.url, 3) as running:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(client(port))
                for _, port in running
                for _ in range(2)
            ]
            for index, ws in enumerate(clients):
                for room in rooms:
                    await join(ws, f"c{index}", room=room)
            senders = clients[::2]  # one per node
            total = per_sender * len(senders) * len(rooms)
            received: list[dict[str, list[tuple[int, str]]]] = [
                {room: [] for room in rooms} for _ in clients
            ]

            async def collect(index: int) -> None:
                for _ in range(total):
                    event = await next_event(clients[index], "message")
                    received[index][event["room"]].append((event["seq"], event["message"]))

            async def send(index: int) -> None:
                for n in range(per_sender):
                    for room in rooms:
                        await senders[index].send(
                            json.dumps(
                                {"type": "message", "room": room, "message": f"s{index}-{n}"}
                            )
                        )

            async with anyio.create_task_group() as group:
                for index in range(len(clients)):
                    group.start_soon(collect, index)
                for index in range(len(senders)):
                    group.start_soon(send, index)
    per_room = per_sender * len(senders)
    for room in rooms:
        first = received[0][room]
        # Consecutive seqs (the rooms are shared with the other loop's run of this test).
        start = first[0][0]
        assert [seq for seq, _ in first] == list(range(start, start + per_room))
        assert sorted(text for _, text in first) == sorted(
            f"s{i}-{n}" for i in range(len(senders)) for n in range(per_sender)
        )
        assert all(other[room] == first for other in received)  # same order everywhere


async def test_killed_node_leaves_presence_and_its_clients_recover_elsewhere(
    deployment: Deployment,
) -> None:
    with nodes(deployment.url, 3) as running:
        (_, port_a), (_, port_b), (proc_c, port_c) = running
        async with client(port_a) as alice, client(port_b) as bob:
            await join(alice, "alice")
            await join(bob, "bob")
            carol = await connect(f"ws://127.0.0.1:{port_c}/ws")
            history = await join(carol, "carol")
            await next_event(alice, "joined", username="carol")
            await bob.send(json.dumps({"type": "message", "message": "before"}))
            seen = await next_event(carol, "message")
            position = {"epoch": seen["epoch"], "seq": seen["seq"]}
            assert history["complete"] is True

            proc_c.send_signal(signal.SIGKILL)
            proc_c.wait(10)
            with anyio.fail_after(10), pytest.raises(ConnectionClosed):
                await carol.recv()
            killed_at = anyio.current_time()
            for n in range(3):
                await bob.send(json.dumps({"type": "message", "message": f"missed{n}"}))
            await next_event(alice, "left", timeout=PRESENCE_TTL * 3 + 5, username="carol")
            assert anyio.current_time() - killed_at <= PRESENCE_TTL * 3 + 2

            async with client(port_b) as carol_again:  # reconnect to another node
                recovered = await join(carol_again, "carol", since=position)
            assert recovered["complete"] is True
            assert [m["message"] for m in recovered["messages"]] == [
                "missed0",
                "missed1",
                "missed2",
            ]


async def expect_resync(ws: ClientConnection) -> None:
    """The node closes ``ws`` with 1012: reconnect and recover."""
    with pytest.raises(ConnectionClosed) as info:
        await next_event(ws, "never", timeout=30)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1012


async def test_redis_restart_refuses_then_recovers_and_reports_lost_history(
    deployment: Deployment,
) -> None:
    with nodes(deployment.url, 2) as running:
        (_, port_a), (_, port_b) = running
        async with client(port_a) as alice, client(port_b) as bob:
            await join(alice, "alice")
            await join(bob, "bob")
            await alice.send(json.dumps({"type": "message", "message": "one"}))
            event = await next_event(bob, "message")
            old_position = {"epoch": event["epoch"], "seq": event["seq"]}

            server = deployment.owner("lobby")
            server.stop()
            await alice.send(json.dumps({"type": "message", "message": "while down", "id": "m2"}))
            error = await next_event(alice, "error", timeout=15)
            assert error["code"] == "unavailable"  # refused, never accepted and lost
            assert error["id"] == "m2"

            await anyio.to_thread.run_sync(server.start)  # same port, empty: history is gone
            for ws in (alice, bob):  # the nodes notice and make their members resync
                await expect_resync(ws)

        async with client(port_a) as alice, client(port_b) as bob:
            recovered = await join(bob, "bob", since=old_position)
            assert recovered["complete"] is False  # what was lost is reported, not hidden
            await join(alice, "alice")
            await alice.send(json.dumps({"type": "message", "message": "after"}))
            got = await next_event(bob, "message")
            assert got["message"] == "after" and got["epoch"] != old_position["epoch"]


async def test_a_cluster_master_down_refuses_its_rooms_and_the_others_keep_chatting(
    redis_cluster: RedisClusterProcess,
) -> None:
    redis_cluster.healthy()
    doomed, *others = redis_cluster.rooms_on_every_shard()
    master = redis_cluster.owner(doomed)
    with nodes(redis_cluster.url, 2) as running:
        (_, port_a), (_, port_b) = running
        async with client(port_a) as alice, client(port_b) as bob:
            for room in (doomed, *others):
                await join(alice, "alice", room=room)
                await join(bob, "bob", room=room)
            positions = {}
            for room in others:
                await alice.send(json.dumps({"type": "message", "room": room, "message": "1"}))
                event = await next_event(bob, "message", room=room)
                positions[room] = {"epoch": event["epoch"], "seq": event["seq"]}

            master.stop(kill=True)
            await alice.send(
                json.dumps({"type": "message", "room": doomed, "message": "x", "id": "d1"})
            )
            error = await next_event(alice, "error", timeout=15)
            assert (error["code"], error["id"]) == ("unavailable", "d1")
            for room in others:  # the other masters' rooms are not disturbed
                await alice.send(json.dumps({"type": "message", "room": room, "message": "2"}))
                assert (await next_event(bob, "message", room=room))["message"] == "2"

            master.start()  # empty: the doomed room's history is gone
            for ws in (alice, bob):
                await expect_resync(ws)

        async with client(port_b) as bob:
            for room in others:  # recovered completely: nothing of theirs was lost
                recovered = await join(bob, "bob", since=positions[room], room=room)
                assert recovered["complete"] is True
                assert [m["message"] for m in recovered["messages"]] == ["2"]
            await join(bob, "bob", room=doomed)
            await bob.send(json.dumps({"type": "message", "room": doomed, "message": "back"}))
            assert (await next_event(bob, "message", room=doomed))["message"] == "back"


async def test_workers_share_one_port_on_redis() -> None:
    with (
        RedisProcess() as server,
        server_process("--hub", server.url, "--workers", "2", "--rate", "0") as (proc, port),
    ):
        with anyio.fail_after(20):
            while len(_children(proc.pid)) < 2:
                await anyio.sleep(0.1)
        async with AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(client(port)) for _ in range(8)]
            for index, ws in enumerate(clients):
                await join(ws, f"w{index}")
            await clients[0].send(json.dumps({"type": "message", "message": "to all workers"}))
            for ws in clients:
                assert (await next_event(ws, "message"))["message"] == "to all workers"
        assert len(_children(proc.pid)) == 2


def _children(pid: int) -> list[int]:
    """Worker processes of ``pid`` (multiprocessing "spawn" children)."""
    workers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if parent == pid and b"spawn_main" in cmdline:
            workers.append(int(entry.name))
    return workers
