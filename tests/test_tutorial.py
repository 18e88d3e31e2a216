"""docs/tutorial.md, followed literally, step by step, in a temporary directory.

The directory stands for the reader's clone (the tutorial's commands run from
its root): it gets a copy of ``examples/``, and the reader's own ``mychat/``
is made there by the tutorial's commands and files. Every code block is taken
in order (the test fails if one is left over, or is not what it expects next);
shell lines run in ``bash`` with the venv on ``PATH``, files are written as
shown, the JavaScript the tutorial has the reader type in a browser's console
is evaluated in that page. Only ports move: 8080 and 8081 become free ones,
through ``WSCHAT_PORT``, ``EXAMPLE_LOGIN_PORT`` and ``EXAMPLE_CHAT_URL``. The
people are three headless Chromium windows on the login example's page.

Not followed: the set-up block (``make test``: this test runs under it), and
the last sentence of step 7 (a 4408 at expiry plus 30 s leeway; the bundled
page's answer to 4408 is in tests/test_page_auth.py, the server's in
tests/test_app_server.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import browser_helpers
from tests.browser_helpers import OpenPage, Shot, expect
from tests.doc_helpers import (
    Processes,
    exported,
    open_direct_room,
    say,
    shell,
    shell_env,
    sign_in,
    with_ports,
)
from tests.helpers import ROOT, free_port

if TYPE_CHECKING:
    from playwright.sync_api import Page, WebSocket

pytestmark = pytest.mark.browser
browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page
shot = browser_helpers.shot

TUTORIAL = ROOT / "docs" / "tutorial.md"
# What the tutorial has the reader type in a browser's console, in order.
CONSOLE = re.findall(r"`((?:socket\.send|open)\(.*?\))`", TUTORIAL.read_text(), flags=re.DOTALL)


class Tutorial:
    """The tutorial's code blocks, handed out in order, with the test's ports."""

    def __init__(self, ports: dict[int, int]) -> None:
        self.blocks = re.findall(r"```(\w+)\n(.*?)```", TUTORIAL.read_text(), flags=re.DOTALL)
        self.ports = ports
        self.taken = 0

    def next(self, language: str, starts: str) -> str:
        assert self.taken < len(self.blocks), f"the tutorial has no more blocks; wanted {starts!r}"
        found_language, text = self.blocks[self.taken]
        self.taken += 1
        assert (found_language, text.startswith(starts)) == (language, True), (starts, text)
        return with_ports(text, self.ports)

    def lines(self, starts: str) -> list[str]:
        """The next ``sh`` block's commands (continuation lines joined, comments dropped)."""
        text = self.next("sh", starts).replace("\\\n", " ")
        return [re.sub(r"\s+#.*$", "", line).strip() for line in text.strip().splitlines()]


class Frames:
    """What one page's WebSockets carry (all of them, in order)."""

    def __init__(self, page: Page) -> None:
        self.urls: list[str] = []
        self.sockets: list[WebSocket] = []
        self.sent: list[dict[str, Any]] = []
        self.received: list[dict[str, Any]] = []
        page.on("websocket", self._socket)

    def _socket(self, socket: WebSocket) -> None:
        self.urls.append(socket.url)
        self.sockets.append(socket)
        socket.on("framesent", lambda payload: self.sent.append(json.loads(payload)))
        socket.on("framereceived", lambda payload: self.received.append(json.loads(payload)))

    def of(self, kind: str, frames: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        return [f for f in (self.received if frames is None else frames) if f.get("type") == kind]


@pytest.fixture
def reader_dir(tmp_path: Path) -> Path:
    """The reader's clone: the tutorial's commands run from here."""
    root = tmp_path / "clone"
    shutil.copytree(
        ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path) as running:
        yield running


def is_authenticated(payload: str | bytes) -> bool:
    return bool(json.loads(payload).get("type") == "authenticated")


def messages(page: Page) -> list[str]:
    """The chat lines of the login page's log (not presence and join/leave lines)."""
    lines = page.locator("#log div").all_inner_texts()
    return [line for line in lines if ": " in line and not line.startswith("here: ")]


def restart_chat(
    processes: Processes, serve: str, cwd: Path, env: dict[str, str], port: int, pages: list[Page]
) -> None:
    """Ctrl-C and start again; the pages come back by themselves, on a new socket each."""
    for page in pages:
        page.evaluate("() => { window.beforeRestart = socket; }")
    processes.stop("chat")
    processes.start("chat", serve, cwd, env, port)
    for page in pages:
        page.wait_for_function(
            "() => socket !== window.beforeRestart && socket.joined", timeout=15_000
        )
        expect(page.locator("#log")).to_contain_text("here: ")  # (the log restarted with it)
        expect(page.locator("#status")).to_have_text("")


class Terminal:
    """One of the reader's terminals: the venv activated, and what was exported in it."""

    def __init__(self, cwd: Path, **values: str) -> None:
        self.cwd = cwd
        self.env = shell_env(**values)

    def run(self, line: str) -> str:
        """Run a command to its end; an ``export`` line sets the variable in this terminal."""
        if line.startswith("export "):
            name = line.removeprefix("export ").split("=", 1)[0]
            self.env[name] = exported(line, self.cwd, self.env)
            return ""
        return shell(line, self.cwd, self.env)


def test_the_tutorial_works_as_written(
    reader_dir: Path, processes: Processes, new_page: OpenPage, shot: Shot
) -> None:
    chat, login = free_port(), free_port()
    tutorial = Tutorial({8080: chat, 8081: login})
    # Each terminal has only what the tutorial has the reader set in it (and the test's ports).
    chat_terminal = Terminal(reader_dir, WSCHAT_PORT=str(chat))
    probe_terminal = Terminal(reader_dir)
    login_terminal = Terminal(
        reader_dir, EXAMPLE_LOGIN_PORT=str(login), EXAMPLE_CHAT_URL=f"ws://127.0.0.1:{chat}"
    )
    bot_terminal = Terminal(reader_dir)
    setup = tutorial.lines("make test")
    assert setup[1] == ". .venv/bin/activate"  # (this test runs in that venv)

    # 1. The app object
    (mkdir,) = tutorial.lines("mkdir mychat")
    chat_terminal.run(mkdir)
    (reader_dir / "mychat" / "chat.py").write_text(tutorial.next("python", "import os"))
    *make_secret, serve = tutorial.lines("python -c ")
    for line in make_secret:
        assert chat_terminal.run(line) == "", line
    assert chat_terminal.env["EXAMPLE_JWT_SECRET"]
    processes.start("chat", serve, reader_dir, chat_terminal.env, chat)
    (probe,) = tutorial.lines("python -m websockets")
    assert "server rejected WebSocket connection: HTTP 401" in probe_terminal.run(probe)
    assert "refused: 401 a token is required: " in processes.output("chat")
    command, typed = tutorial.lines("python -m websockets")
    with subprocess.Popen(
        ["bash", "-c", command], cwd=reader_dir, env=probe_terminal.env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    ) as client:  # fmt: skip
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(typed + "\n")
        client.stdin.flush()
        client.wait(timeout=10)  # the chat closed the connection: the client ends
        said = client.stdout.read()
    assert "Connected to " in said and "Connection closed: 4401" in said, said
    assert "authenticate first" in said

    # 2. Sign in
    same_secret, login_server = tutorial.lines("export EXAMPLE_JWT_SECRET=$(cat ")
    login_terminal.run(same_secret)
    assert login_terminal.env["EXAMPLE_JWT_SECRET"] == chat_terminal.env["EXAMPLE_JWT_SECRET"]
    processes.start("login", login_server, reader_dir, login_terminal.env, login)
    login_url = f"http://127.0.0.1:{login}"
    alice, bob = new_page("alice"), new_page("bob")
    alice_frames, bob_frames = Frames(alice), Frames(bob)
    sign_in(alice, login_url, "alice", "wonderland")
    expect(alice.locator("#me")).to_have_text("Alice")
    assert alice_frames.urls == [f"ws://127.0.0.1:{chat}/ws?room=lobby&auth=message"]
    first = alice_frames.sent[0]
    assert first["type"] == "auth" and first["token"].startswith("eyJ"), first
    (hello,) = alice_frames.of("authenticated")
    assert (hello["username"], hello["name"], type(hello["expires"])) == ("alice", "Alice", int)
    sign_in(bob, login_url, "bob", "builder")
    say(alice, "hello bob")
    expect(bob.locator("#log div").last).to_have_text("Alice: hello bob")
    (message,) = bob_frames.of("message")
    assert (message["username"], message["name"]) == ("alice", "Alice")
    impersonate, carol_joins, carol_opens = CONSOLE
    bob.evaluate(impersonate)
    expect(bob.locator("#status")).to_contain_text("username_mismatch: ")
    assert [e["code"] for e in bob_frames.of("error")] == ["username_mismatch"]
    shot(bob, "2-impersonation-refused")

    # 3. A private room
    for page, peer in ((alice, "bob"), (bob, "alice")):
        open_direct_room(page, peer, "dm:alice:bob")
    expect(alice.locator("#log")).to_contain_text("bob joined")
    say(bob, "only for you")
    expect(alice.locator("#log div").last).to_have_text("Bob: only for you")
    carol = new_page("carol")
    carol_frames = Frames(carol)
    sign_in(carol, login_url, "carol", "christmas")
    carol.evaluate(carol_joins)
    expect(carol.locator("#status")).to_contain_text("forbidden: ")
    assert [e["code"] for e in carol_frames.of("error")] == ["forbidden"]
    carol.evaluate(carol_opens)
    expect(carol.locator("#status")).to_have_text("this room is not yours")
    assert carol_frames.urls[-1] == f"ws://127.0.0.1:{chat}/ws?room=dm%3Aalice%3Abob&auth=message"
    shot(carol, "3-carol-refused")
    assert messages(alice) == ["Bob: only for you"]  # nothing from carol
    for page in (alice, bob):
        page.click("#lobby")
        expect(page.locator("#room")).to_have_text("lobby")

    # 4. Keep it clean
    (reader_dir / "mychat" / "chat.py").write_text(tutorial.next("python", "import os"))
    (serve,) = tutorial.lines("wschat serve")
    restart_chat(processes, serve, reader_dir, chat_terminal.env, chat, [alice, bob])
    say(alice, "oh heck")
    expect(bob.locator("#log div").last).to_have_text("Alice: oh ****")
    say(alice, "WHY IS NOBODY ANSWERING")
    expect(alice.locator("#status")).to_have_text("shouting: please do not shout")
    say(alice, "sorry")
    expect(bob.locator("#log div").last).to_have_text("Alice: sorry")
    assert messages(bob) == ["Alice: oh ****", "Alice: sorry"]
    expect(bob.locator("#status")).to_have_text("")
    shot(alice, "4-moderated")

    # 5. A bot
    *make_key, serve = tutorial.lines("python -c ")
    for line in make_key:
        assert chat_terminal.run(line) == "", line
    restart_chat(processes, serve, reader_dir, chat_terminal.env, chat, [alice, bob])
    same_key, curl = tutorial.lines("export WSCHAT_API_KEY=$(cat ")
    bot_terminal.run(same_key)
    assert bot_terminal.env["WSCHAT_API_KEY"] == chat_terminal.env["WSCHAT_API_KEY"]
    posted = json.loads(bot_terminal.run(curl))
    assert posted["room"] == "lobby" and set(posted) == {"room", "epoch", "seq"}, posted
    notice = alice.locator("#log div.server").filter(has_text="maintenance at 16:00")
    expect(notice).to_have_text("Ops: maintenance at 16:00")
    assert notice.evaluate("(e) => getComputedStyle(e).fontStyle") == "italic"
    assert [e.get("server") for e in alice_frames.of("message")][-1] is True
    same_secret, bot = tutorial.lines("export EXAMPLE_JWT_SECRET=$(cat ")
    bot_terminal.run(same_secret)
    processes.start("bot", bot, reader_dir, bot_terminal.env)
    expect(alice.locator("#log")).to_contain_text("helpbot joined", timeout=10_000)
    say(alice, "!roll 2d6")
    answer = alice.locator("#log div.server").filter(has_text="rolled")
    expect(answer).to_have_text(re.compile(r"^helpbot: rolled 2d6: \d \+ \d = \d{1,2}$"))
    shot(alice, "5-bot")

    # 6. Typing
    bob.locator("#text").press_sequentially("I am typ", delay=30)
    expect(alice.locator("#typing")).to_have_text("Bob is typing…")
    assert {"type": "typing", "room": "lobby"} in bob_frames.sent
    shot(alice, "6-typing")

    # 7. Sessions end
    (short_tokens,) = tutorial.lines("EXAMPLE_TOKEN_LIFETIME=65 ")
    processes.stop("login")
    processes.start("login", short_tokens, reader_dir, login_terminal.env, login)
    alice.reload()
    sign_in(alice, login_url, "alice", "wonderland")
    expect(alice.locator("#log")).to_contain_text("here: ")
    socket = alice_frames.sockets[-1]
    sent_before = len(alice_frames.sent)
    log = alice.locator("#log div").all_inner_texts()
    # Five seconds later: a fresh token on the open connection, answered by the chat.
    socket.wait_for_event("framereceived", predicate=is_authenticated, timeout=12_000)
    fresh = alice_frames.of("auth", alice_frames.sent[sent_before:])
    assert len(fresh) == 1 and alice_frames.urls[-1] == socket.url
    old, new = alice_frames.of("authenticated")[-2:]
    assert new["username"] == "alice" and new["expires"] > old["expires"]
    assert alice.locator("#log div").all_inner_texts() == log  # the conversation goes on
    processes.stop("login")
    expect(alice.locator("#status")).to_have_text("refresh failed: Failed to fetch", timeout=12_000)
    shot(alice, "7-refresh-failed")

    assert tutorial.taken == len(tutorial.blocks), "a block of the tutorial was not followed"
