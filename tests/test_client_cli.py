"""``wschat chat`` and ``wschat say`` against a real ``wschat serve``, and how events are shown.

``wschat chat`` runs as a real process driven through its stdin and stdout;
``wschat say`` through ``wschat.cli.main`` (the console script's entry point)
and once as a process, for its exit status and its one stderr line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta, timezone

import anyio
import pytest
from anyio.abc import ByteReceiveStream, Process

import wschat.client
from wschat.chat import Position
from wschat.cli import main
from wschat.client import (
    Disconnected,
    Error,
    Gap,
    History,
    Message,
    Presence,
    Reconnected,
)
from wschat.client.render import render

from .helpers import ROOT, free_port, server_process
from .test_app_server import AUDIENCE, SECRET, token
from .test_client import FAST, next_event

TZ_PLUS_2 = timezone(timedelta(hours=2))


def message(text: str, **fields: object) -> Message:
    values: dict[str, object] = {
        "room": "lobby",
        "username": "alice",
        "text": text,
        "time": datetime(2026, 11, 26, 16, 0, 5, tzinfo=UTC),
        "position": Position("e", 1),
    }
    values.update(fields)
    return Message(**values)  # type: ignore[arg-type]


# -- rendering -------------------------------------------------------------------


def test_messages_show_local_time_room_and_sender() -> None:
    assert render(message("hello"), TZ_PLUS_2) == ["18:00:05 #lobby <alice> hello"]
    assert render(message("hi", name="Alice A."), UTC) == ["16:00:05 #lobby <Alice A.> hi"]
    assert render(message("news", server=True), UTC) == ["16:00:05 #lobby <server> news"]
    assert render(message("two\nlines"), UTC) == ["16:00:05 #lobby <alice> two ⏎ lines"]


def test_terminal_escapes_from_other_users_are_neutralised() -> None:
    (line,) = render(message("\x1b]0;pwned\x07\x1b[2Jhi", name="\x1b[31mred"), UTC)
    assert "\x1b" not in line and "\x07" not in line
    assert line == "16:00:05 #lobby <\ufffd[31mred> \ufffd]0;pwned\ufffd\ufffd[2Jhi"
    assert "\x1b" not in render(Presence("lobby", ("\x1b[1mx",)))[0]


def test_other_events() -> None:
    history = History("lobby", (message("a"), message("b")), Position("e", 2), complete=False)
    assert render(history, UTC) == [
        "* #lobby: older messages are no longer in history",
        "16:00:05 #lobby <alice> a",
        "16:00:05 #lobby <alice> b",
    ]
    assert render(Presence("dev", ())) == ["* #dev: here now: nobody"]
    assert render(Gap("lobby", Position("e", 2), Position("f", 0))) == [
        "* #lobby: some messages were missed (no longer in history)"
    ]
    assert render(Disconnected(1001, "going away", 0.25)) == [
        "! disconnected (1001 going away); reconnecting in 0.2s"
    ]
    assert render(Error("rate_limited", "slow down")) == ["! rate_limited: slow down"]


def test_the_docs_include_the_echo_bot_verbatim() -> None:
    bot = (ROOT / "examples" / "echo_bot.py").read_text()
    for page in (ROOT / "README.md", ROOT / "docs" / "howto-bot.md"):
        assert bot.strip() in page.read_text(), f"{page.name} does not show echo_bot.py"
    assert len([line for line in bot.splitlines() if line.strip()]) <= 10


# -- wschat say ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """One ``wschat serve`` (memory hub) for the say tests."""
    with server_process() as (_, port):
        yield f"ws://127.0.0.1:{port}/ws"


def run_main(*argv: str) -> int:
    return main(list(argv))


def last_history(url: str, room: str, token: str | None = None) -> list[Message]:
    async def read() -> list[Message]:
        username = None if token else "reader"
        async with wschat.client.connect(url, room=room, username=username, token=token) as chat:
            with anyio.fail_after(5):
                async for event in chat:
                    if isinstance(event, History):
                        return list(event.messages)
        raise AssertionError("no history")

    return anyio.run(read)


def test_say_exits_0_once_the_message_is_published(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main("say", server, "--room", "cron", "--name", "backup", "nightly", "done") == 0
    assert capsys.readouterr() == ("", "")
    assert [m.text for m in last_history(server, "cron")] == ["nightly done"]


@pytest.mark.parametrize(
    ("argv", "status", "stderr"),
    [
        (["--name", "bot", "x" * 4097], 1, "message not sent: bad_message: "),
        (["--name", "bot", "--room", "no spaces", "hi"], 2, "room must be "),
        (["--name", "", "hi"], 2, "username "),
    ],
)
def test_say_refused_exits_non_zero_with_one_line_on_stderr(
    server: str, capsys: pytest.CaptureFixture[str], argv: list[str], status: int, stderr: str
) -> None:
    assert run_main("say", server, *argv) == status
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("wschat: ") and stderr in err


def test_say_to_a_refusing_silent_or_absent_server(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main("say", server.replace("/ws", "/nowhere"), "--name", "bot", "hi") == 1
    assert "refused the WebSocket handshake: HTTP 404" in capsys.readouterr().err
    assert run_main("say", "ftp://127.0.0.1/ws", "--name", "bot", "hi") == 2
    assert "use ws://HOST:PORT/ws" in capsys.readouterr().err
    with socket.socket() as silent:  # accepts (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        argv = ["say", f"ws://127.0.0.1:{port}/ws", "--timeout", "0.3", "--name", "b", "hi"]
        assert run_main(*argv) == 1
    assert capsys.readouterr().err == "wschat: no acknowledgement within 0.3 s\n"
    command = [sys.executable, "-m", "wschat", "say", f"ws://127.0.0.1:{free_port()}/ws"]
    done = subprocess.run(
        [*command, "--name", "bot", "hi"], capture_output=True, text=True, timeout=30, cwd=ROOT
    )
    assert done.returncode == 1 and done.stdout == ""
    assert re.fullmatch(r"wschat: cannot connect to ws://\S+: connection refused\n", done.stderr)


@pytest.fixture(scope="module")
def jwt_server() -> Iterator[str]:
    """One ``wschat serve`` that requires tokens (HS256, signed by the tests with PyJWT)."""
    with server_process("--jwt-secret", SECRET, "--jwt-audience", AUDIENCE) as (_, port):
        yield f"ws://127.0.0.1:{port}/ws"


def test_say_takes_a_token_from_the_flag_or_the_environment(
    jwt_server: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ("say", jwt_server, "--room", "ops")
    assert run_main(*argv, "--token", token("cron"), "by flag") == 0
    monkeypatch.setenv("WSCHAT_TOKEN", token("cron", name="Cron job"))
    assert run_main(*argv, "by env") == 0
    assert capsys.readouterr() == ("", "")
    monkeypatch.delenv("WSCHAT_TOKEN")
    assert run_main(*argv, "--name", "cron", "no token") == 1
    err = capsys.readouterr().err
    assert err.startswith("wschat: ") and len(err.splitlines()) == 1
    assert "HTTP 401" in err and "a token is required" in err
    sent = last_history(jwt_server, "ops", token=token("reader"))
    assert [(m.username, m.name, m.text) for m in sent] == [
        ("cron", "cron", "by flag"),
        ("cron", "Cron job", "by env"),
    ]


# -- wschat chat -----------------------------------------------------------------


def test_chat_exits_1_with_one_line_when_it_cannot_chat(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_main("chat", server, "--name", "bob", "--room", "a b") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("wschat: room must be ")
    assert run_main("chat", server.replace("/ws", "/nowhere"), "--name", "bob") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "HTTP 404" in err


class Lines:
    """The lines a process writes to stdout, read as they come."""

    def __init__(self, stream: ByteReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.seen: list[str] = []

    async def until(self, pattern: str, timeout: float = 10.0) -> str:
        """The first new line that matches ``pattern`` (a regex, fully)."""
        with anyio.fail_after(timeout):
            while True:
                while b"\n" in self.buffer:
                    raw, self.buffer = self.buffer.split(b"\n", 1)
                    line = raw.decode()
                    self.seen.append(line)
                    if re.fullmatch(pattern, line):
                        return line
                self.buffer += await self.stream.receive()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chat_in_a_terminal(anyio_backend: str) -> None:
    port = free_port()
    url = f"ws://127.0.0.1:{port}/ws"
    with ExitStack() as servers:
        servers.enter_context(server_process(port=port))
        async with wschat.client.connect(url, username="alice", reconnect=FAST) as alice:
            await alice.say("earlier")
            earlier = await next_event(alice, Message)
            async with await anyio.open_process(
                [sys.executable, "-m", "wschat", "chat", url, "--room", "lobby", "--name", "bob"],
                env={**os.environ, "TZ": "UTC"},
                cwd=ROOT,
            ) as bob:
                await _talk(bob, alice, earlier, servers, port)
                assert bob.stdin is not None
                await bob.stdin.aclose()  # end of input: bob quits
                with anyio.fail_after(10):
                    assert await bob.wait() == 0


async def _talk(
    bob: Process, alice: wschat.client.ChatClient, earlier: Message, servers: ExitStack, port: int
) -> None:
    assert bob.stdout is not None and bob.stdin is not None
    out = Lines(bob.stdout)
    # History, with the time the server stamped (shown in bob's time zone: UTC).
    assert await out.until(r".*earlier") == f"{earlier.time:%H:%M:%S} #lobby <alice> earlier"
    await out.until(r"\* #lobby: here now: alice, bob")
    await alice.say("hi bob")
    await out.until(r"\d\d:\d\d:\d\d #lobby <alice> hi bob")
    await bob.stdin.send(b"hello alice\n")
    said = await next_event(alice, Message, where=lambda m: m.text == "hello alice")
    assert said.username == "bob" and not said.mine
    await out.until(r"\d\d:\d\d:\d\d #lobby <bob> hello alice")  # its own, as published
    async with wschat.client.connect(f"ws://127.0.0.1:{port}/ws", username="carol"):
        await out.until(r"\* #lobby: carol joined")
    await out.until(r"\* #lobby: carol left")
    await bob.stdin.send(b"/join dev\nin dev\n")
    await out.until(r"\d\d:\d\d:\d\d #dev <bob> in dev")
    # The server restarts (memory hub: history is lost); bob reconnects by itself.
    await anyio.to_thread.run_sync(servers.close)
    await out.until(r"! disconnected \(1001 going away.*\); reconnecting in .*")
    await anyio.to_thread.run_sync(servers.enter_context, server_process(port=port))
    await out.until(r"\* reconnected")
    await out.until(r"\* #lobby: some messages were missed.*")
    await next_event(alice, Reconnected)
    await alice.say("after the restart")
    await out.until(r"\d\d:\d\d:\d\d #lobby <alice> after the restart")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_chat_with_a_token_chats_as_the_tokens_user(
    anyio_backend: str, jwt_server: str
) -> None:
    dave = token("dave", name="Dave D.")
    command = [sys.executable, "-m", "wschat", "chat", jwt_server, "--token", dave]
    async with await anyio.open_process(command, cwd=ROOT) as chat:
        assert chat.stdout is not None and chat.stdin is not None
        out = Lines(chat.stdout)
        await out.until(r"\* #lobby: here now: dave")
        await chat.stdin.send(b"signed in\n")
        await out.until(r"\d\d:\d\d:\d\d #lobby <Dave D\.> signed in")
        await chat.stdin.aclose()
        with anyio.fail_after(10):
            assert await chat.wait() == 0
