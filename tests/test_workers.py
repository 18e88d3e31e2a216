"""``wschat serve --workers 2`` on a real Redis: worker-tagged logs, one failure line,
metrics combined across the workers."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect

from .helpers import ROOT, RedisProcess, process_output, server_process
from .test_cli import error_line

pytestmark = pytest.mark.redis

MAX_CLIENTS = 40


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisProcess]:
    with RedisProcess() as server:
        yield server


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _scrape(port: int) -> dict[str, float]:
    """One GET /metrics (a new connection: any worker may answer); samples by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(wschat_\w+)(\{[^}]*\})? (\S+)$", line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


def _workers_with_connections(log: str) -> set[str]:
    return set(re.findall(r" worker=(\d+) wschat\.server = conn \S+ \S+ open", log))


async def _join(ws: ClientConnection, username: str) -> None:
    await ws.send(json.dumps({"type": "join", "room": "lobby", "username": username}))
    with anyio.fail_after(20):
        while json.loads(await ws.recv())["type"] != "presence":
            pass  # history, then presence: the join is done


async def _receive_messages(ws: ClientConnection, count: int) -> None:
    with anyio.fail_after(20):
        while count:
            count -= json.loads(await ws.recv())["type"] == "message"


def _settled(port: int, name: str) -> float:
    """A sample's value once it stopped moving for longer than the metrics sync period."""
    value, since = _scrape(port).get(name), time.monotonic()
    deadline = since + 20
    while time.monotonic() - since < 1.5:
        assert time.monotonic() < deadline, f"{name} never settled"
        time.sleep(0.25)
        latest = _scrape(port).get(name)
        if latest != value:
            value, since = latest, time.monotonic()
    assert value is not None
    return value


@pytest.mark.anyio
async def test_two_workers_tag_their_logs_and_share_their_metrics(redis: RedisProcess) -> None:
    with server_process("--workers", "2", "--hub", redis.url, "--rate", "0") as (proc, port):
        _wait_for(lambda: process_output(proc).count("= serving") == 2, "both workers")
        clients: list[ClientConnection] = []
        try:
            # The kernel spreads connections over the workers (SO_REUSEPORT):
            # connect until both have some.
            while len(_workers_with_connections(process_output(proc))) < 2:
                assert len(clients) < MAX_CLIENTS, "every connection went to one worker"
                clients.append(await connect(f"ws://127.0.0.1:{port}/ws"))
                await anyio.sleep(0.02)  # let the open line reach the log
            count = len(clients)
            for number, ws in enumerate(clients):
                await _join(ws, f"user{number}")
            deliveries = await anyio.to_thread.run_sync(_settled, port, "wschat_messages_out_total")
            for ws in clients:
                await ws.send(json.dumps({"type": "message", "room": "lobby", "message": "hi"}))
            async with anyio.create_task_group() as group:
                for ws in clients:
                    group.start_soon(_receive_messages, ws, count)
            # Whichever worker answers, it counts everyone's connections and messages.
            for _ in range(6):
                samples = _scrape(port)
                assert samples["wschat_connections_open"] == count
                assert samples["wschat_messages_in_total"] == 2 * count  # join + message
            # The Hub's counters are copied in every second: each message reached
            # every member, on whichever worker it is.
            expected = deliveries + count * count
            await anyio.to_thread.run_sync(
                lambda: _wait_for(
                    lambda: _scrape(port).get("wschat_messages_out_total") == expected,
                    f"{expected} deliveries, combined",
                )
            )
            assert _scrape(port)["wschat_rooms"] == 2  # the lobby, on each worker
        finally:
            for ws in clients:
                await ws.close()
        log = process_output(proc)
    assert _workers_with_connections(log) == {"1", "2"}
    server_lines = [line for line in log.splitlines() if " wschat.server " in line]
    assert server_lines and all(re.search(r" worker=[12] ", line) for line in server_lines)


def _serve_two_workers(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wschat", "serve", "--workers", "2", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_unreachable_redis_is_told_once() -> None:
    result = _serve_two_workers("--hub", "redis://127.0.0.1:1/0", "--port", "0")
    assert result.returncode == 1
    assert error_line(result).startswith(
        "wschat: cannot reach the hub backend redis://127.0.0.1:1/0: "
    )


def test_port_in_use_is_told_once(redis: RedisProcess) -> None:
    with socket.socket() as holder:  # no SO_REUSEPORT: the workers cannot share it
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = _serve_two_workers("--hub", redis.url, "--port", str(port))
    assert result.returncode == 1
    assert error_line(result) == (
        f"wschat: cannot listen on 127.0.0.1:{port}: address already in use"
    )
