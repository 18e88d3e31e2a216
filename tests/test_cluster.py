"""Several wschat nodes (real processes) on one real redis-server: order, failures, workers.

Nodes are ``python -m wschat serve --hub redis://…`` subprocesses; clients are the
``websockets`` library. Each test starts its own redis-server on a free port.
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

from .helpers import RedisProcess, server_process

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

PRESENCE_TTL = 2.0


@contextmanager
def nodes(redis_url: str, count: int, *extra: str) -> Iterator[list[tuple[Any, int]]]:
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                server_process(
                    "--hub", redis_url, "--rate", "0", "--presence-ttl", str(PRESENCE_TTL), *extra
                )
            )
            for _ in range(count)
        ]


@asynccontextmanager
async def client(port: int) -> AsyncIterator[ClientConnection]:
    async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
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
    history = await next_event(ws, "history")
    await next_event(ws, "presence")
    return history


async def test_every_client_gets_every_message_in_the_same_order_on_every_node() -> None:
    per_sender = 15
    with RedisProcess() as server, nodes(server.url, 3) as running:
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(client(port))
                for _, port in running
                for _ in range(2)
            ]
            for index, ws in enumerate(clients):
                await join(ws, f"c{index}")
            senders = clients[::2]  # one per node
            received: list[list[tuple[int, str]]] = [[] for _ in clients]

            async def collect(index: int) -> None:
                while len(received[index]) < per_sender * len(senders):
                    event = await next_event(clients[index], "message")
                    received[index].append((event["seq"], event["message"]))

            async def send(index: int) -> None:
                for n in range(per_sender):
                    await senders[index].send(
                        json.dumps({"type": "message", "message": f"s{index}-{n}"})
                    )

            async with anyio.create_task_group() as group:
                for index in range(len(clients)):
                    group.start_soon(collect, index)
                for index in range(len(senders)):
                    group.start_soon(send, index)
    total = per_sender * 3
    first = received[0]
    assert [seq for seq, _ in first] == list(range(1, total + 1))
    assert sorted(text for _, text in first) == sorted(
        f"s{i}-{n}" for i in range(3) for n in range(per_sender)
    )
    assert all(other == first for other in received)  # same order everywhere


async def test_killed_node_leaves_presence_and_its_clients_recover_elsewhere() -> None:
    with RedisProcess() as server, nodes(server.url, 3) as running:
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


async def test_redis_restart_refuses_then_recovers_and_reports_lost_history() -> None:
    with RedisProcess() as server, nodes(server.url, 2) as running:
        (_, port_a), (_, port_b) = running
        async with client(port_a) as alice, client(port_b) as bob:
            await join(alice, "alice")
            await join(bob, "bob")
            await alice.send(json.dumps({"type": "message", "message": "one"}))
            event = await next_event(bob, "message")
            old_position = {"epoch": event["epoch"], "seq": event["seq"]}

            server.stop()
            await alice.send(json.dumps({"type": "message", "message": "while down"}))
            error = await next_event(alice, "error", timeout=15)
            assert error["code"] == "unavailable"  # refused, never accepted and lost

            server.start()  # same port, empty: history is gone
            for ws in (alice, bob):  # the nodes notice and make their members resync
                with pytest.raises(ConnectionClosed) as info:
                    await next_event(ws, "never", timeout=30)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012

        async with client(port_a) as alice, client(port_b) as bob:
            recovered = await join(bob, "bob", since=old_position)
            assert recovered["complete"] is False  # what was lost is reported, not hidden
            await join(alice, "alice")
            await alice.send(json.dumps({"type": "message", "message": "after"}))
            got = await next_event(bob, "message")
            assert got["message"] == "after" and got["epoch"] != old_position["epoch"]


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
