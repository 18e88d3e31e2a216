"""wschat.client across a node restart on the Redis hub: nothing missed, nothing repeated.

Two real ``wschat serve --hub redis://`` nodes share one real redis-server. A
client on node A keeps receiving while node A is stopped and started again
and a sender on node B goes on talking: every message must reach it exactly
once and in order. The echo bot of the README (``examples/echo_bot.py``, run
as it is) must survive the same restart.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import anyio
import pytest

import wschat.client
from wschat.chat import Position
from wschat.client import Disconnected, Gap, History, Message, Reconnected, SayError
from wschat.server import Server

from .helpers import ROOT, RedisProcess, free_port, running_server, server_process, ws_url
from .test_client import FAST, anyio_backend  # noqa: F401 (the fixture: three event loops)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

ECHO_BOT = ROOT / "examples" / "echo_bot.py"


class Node:
    """A ``wschat serve`` process on the Redis hub, on a fixed port, restartable."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self._stack: ExitStack | None = None

    def start(self) -> None:
        stack = ExitStack()
        stack.enter_context(server_process("--hub", self.redis_url, "--rate", "0", port=self.port))
        self._stack = stack

    def stop(self) -> None:
        """SIGTERM and wait: the node drains (1001 to its clients) and exits."""
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    # The event loop must keep running meanwhile: the clients answer the drain.
    async def restart_in_thread(self, stopped: anyio.Event) -> None:
        await anyio.to_thread.run_sync(self.stop)
        stopped.set()
        await anyio.to_thread.run_sync(self.start)


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Node, Node]]:
    """Nodes A and B on one redis-server, shared by the module (each test has its rooms)."""
    with RedisProcess() as redis:
        a, b = Node(redis.url), Node(redis.url)
        try:
            a.start()
            b.start()
            yield a, b
        finally:
            a.stop()
            b.stop()


async def test_a_restart_mid_stream_delivers_every_message_once_and_in_order(
    cluster: tuple[Node, Node],
) -> None:
    a, b = cluster
    room = f"restart-{free_port()}"  # a fresh room for each run
    count = 30
    async with (
        wschat.client.connect(a.url, room=room, username="reader", reconnect=FAST) as reader,
        wschat.client.connect(b.url, room=room, username="sender", reconnect=FAST) as sender,
        anyio.create_task_group() as group,
    ):
        sent_while_away = 0
        restart_begun, stopped = anyio.Event(), anyio.Event()

        async def talk() -> None:
            nonlocal sent_while_away
            for n in range(1, count + 1):
                if n == count // 3:
                    restart_begun.set()
                if n == count // 3 + 1:
                    await stopped.wait()  # say some while node A is down for sure
                await sender.say(f"m{n}", room=room)
                sent_while_away += not reader.connected
                await anyio.sleep(0.02)

        async def restart() -> None:
            await restart_begun.wait()
            await a.restart_in_thread(stopped)

        group.start_soon(talk)
        group.start_soon(restart)
        seen: list[Any] = []
        with anyio.fail_after(30):
            async for event in reader:
                seen.append(event)
                if isinstance(event, Message) and event.text == f"m{count}":
                    break
    received = [e.text for e in seen if isinstance(e, Message)]
    assert received == [f"m{n}" for n in range(1, count + 1)]
    assert any(isinstance(e, Disconnected) and e.code == 1001 for e in seen)
    assert any(isinstance(e, Reconnected) for e in seen)
    assert not any(isinstance(e, Gap) for e in seen)  # Redis kept the history
    assert sent_while_away > 0  # the restart really fell in the middle of the stream


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_readme_echo_bot_survives_a_restart(
    cluster: tuple[Node, Node],
) -> None:
    a, b = cluster
    with tempfile.TemporaryFile() as log:
        bot = subprocess.Popen(
            [sys.executable, str(ECHO_BOT), a.url], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            await _chat_with_the_bot(a, b)
        finally:
            bot.terminate()
            bot.wait(timeout=10)
            log.seek(0)
            output = log.read().decode(errors="replace")
        assert bot.returncode in (-15, 0), output


async def _chat_with_the_bot(a: Node, b: Node) -> None:
    async with wschat.client.connect(b.url, room="lobby", username="alice", reconnect=FAST) as me:
        echoes: list[str] = []

        async def echo(timeout: float = 20) -> str | None:
            with anyio.move_on_after(timeout):
                async for event in me:
                    if isinstance(event, Message) and event.username == "echo-bot":
                        echoes.append(event.text)
                        return event.text
            return None

        # The bot echoes what comes after its join (what came before is its History):
        # probe until it answers, then until it has answered the last probe.
        with anyio.fail_after(20):
            for n in itertools.count():
                await me.say(f"probe {n}")
                if await echo(timeout=0.3) is not None:
                    break
            while echoes[-1] != f"echo: probe {n}":
                await echo()
        echoes.clear()
        await me.say("one")
        assert await echo() == "echo: one"
        stopped = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(a.restart_in_thread, stopped)
            await stopped.wait()  # the bot's node is down: these wait for it in history
            await me.say("two")
            await me.say("three")
        await me.say("four")
        await me.say("last")
        while echoes[-1] != "echo: last":
            assert await echo() is not None, f"no more echoes after {echoes}"
    assert echoes == ["echo: one", "echo: two", "echo: three", "echo: four", "echo: last"]


def _messages_in(server: Server) -> float:
    value: float = server.metrics.messages_in._value.get()
    return value


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # redis-py's asyncio client
async def test_unavailable_is_retried_once_with_the_same_id() -> None:
    with RedisProcess() as redis:
        async with (
            running_server(hub_url=redis.url) as server,
            wschat.client.connect(ws_url(server), username="bot", reconnect=FAST) as bot,
        ):
            redis.stop()
            with pytest.raises(SayError) as refused, anyio.fail_after(10):
                await bot.say("while redis is down")
            assert refused.value.code == "unavailable"
            before = _messages_in(server)
            async with anyio.create_task_group() as group:
                positions: list[Position] = []

                async def say() -> None:
                    positions.append(await bot.say("retried"))

                group.start_soon(say)
                with anyio.fail_after(5):  # the first attempt was refused...
                    while _messages_in(server) < before + 1:
                        await anyio.sleep(0.01)
                await anyio.to_thread.run_sync(redis.start)  # ...the retry is not
            async with wschat.client.connect(ws_url(server), username="reader") as reader:
                history = await anext(reader)
    assert isinstance(history, History)
    assert [m.text for m in history.messages] == ["retried"]
    assert positions == [history.messages[0].position]
