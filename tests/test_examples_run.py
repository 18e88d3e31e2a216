"""The examples, each started as examples/README.md says and used as a person would.

Each test takes its commands from the README's table (the "run" column) and
runs them from the repository's root in a shell with the venv on ``PATH``;
only the ports move (``WSCHAT_PORT`` for the chat, ``EXAMPLE_LOGIN_PORT`` and
``EXAMPLE_CHAT_URL`` for the login server, the bot's ``--chat``), and ``KEY``
becomes a real API key. People are real headless Chromium pages (the login
example's own page, or the bundled chat page) or ``websockets`` clients.
(The echo bot is run by tests/test_client_redis.py, across a restart.)
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests import browser_helpers
from tests.browser_helpers import (
    ChatClient,
    OpenPage,
    Shot,
    expect,
    expect_members,
    expect_texts,
    join,
    send,
)
from tests.doc_helpers import Processes, open_direct_room, say, shell_env, sign_in, with_ports
from tests.helpers import ROOT, free_port

pytestmark = pytest.mark.browser
browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page
shot = browser_helpers.shot

README = ROOT / "examples" / "README.md"
SECRET = "an-example-secret-for-the-tests-0123456789"


def readme_commands(example: str) -> list[str]:
    """The commands in the "run" cell of ``example``'s row of examples/README.md."""
    (row,) = [line for line in README.read_text().splitlines() if line.startswith(f"| [`{example}")]
    run = row.rstrip(" |").rsplit("|", 1)[1]
    return [c for c in re.findall(r"`([^`]+)`", run) if c.startswith(("wschat ", "python "))]


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    with Processes(tmp_path) as running:
        yield running


def test_jwt_login_example(processes: Processes, new_page: OpenPage, shot: Shot) -> None:
    chat_port, login_port = free_port(), free_port()
    serve, login = (
        with_ports(c, {8080: chat_port, 8081: login_port}) for c in readme_commands("jwt_login")
    )
    env = shell_env(
        WSCHAT_PORT=str(chat_port),
        EXAMPLE_LOGIN_PORT=str(login_port),
        EXAMPLE_CHAT_URL=f"ws://127.0.0.1:{chat_port}",
        EXAMPLE_JWT_SECRET=SECRET,
    )
    processes.start("chat", serve, ROOT, env, chat_port)
    processes.start("login", login, ROOT, env, login_port)
    login_url = f"http://127.0.0.1:{login_port}/"

    mallory = new_page("mallory")
    new_page.refusals_expected.append("/token")  # the wrong password's 401
    mallory.goto(login_url)
    mallory.fill("#username", "alice")
    mallory.fill("#password", "not her password")
    mallory.click("#login button")
    expect(mallory.locator("#status")).to_have_text("wrong username or password")
    expect(mallory.locator("#chat")).to_be_hidden()

    alice, bob = new_page("alice"), new_page("bob")
    sign_in(alice, login_url, "alice", "wonderland")
    expect(alice.locator("#me")).to_have_text("Alice")
    expect(alice.locator("#room")).to_have_text("lobby")
    sign_in(bob, login_url, "bob", "builder")
    expect(alice.locator("#log")).to_contain_text("bob joined")
    say(alice, "hi bob")
    expect(bob.locator("#log div").last).to_have_text("Alice: hi bob")
    bob.locator("#text").press_sequentially("hel", delay=30)
    expect(alice.locator("#typing")).to_have_text("Bob is typing…")
    shot(alice, "lobby")

    # A direct room: each opens it from "private chat with…"; both land in dm:alice:bob.
    for page, peer in ((alice, "bob"), (bob, "alice")):
        open_direct_room(page, peer, "dm:alice:bob")
        expect(page.locator("#log")).to_contain_text("here: ")
    expect(alice.locator("#log")).to_contain_text("bob joined")
    say(bob, "just us")
    expect(alice.locator("#log div").last).to_have_text("Bob: just us")
    shot(alice, "direct-room")

    # A third user is refused: on her open connection, and at a new one's URL.
    carol = new_page("carol")
    sign_in(carol, login_url, "carol", "christmas")
    carol.evaluate("socket.send(JSON.stringify({type: 'join', room: 'dm:alice:bob'}))")
    expect(carol.locator("#status")).to_have_text(
        re.compile(r"^forbidden: .*dm:alice:bob"), timeout=5_000
    )
    carol.evaluate("open('dm:alice:bob')")
    expect(carol.locator("#status")).to_have_text("this room is not yours")
    shot(carol, "refused")
    expect(alice.locator("#log div").last).to_have_text("Bob: just us")  # nothing from carol


def test_moderation_example(processes: Processes, new_page: OpenPage, shot: Shot) -> None:
    port = free_port()
    (serve,) = readme_commands("moderation")
    processes.start("chat", serve, ROOT, shell_env(WSCHAT_PORT=str(port)), port)

    alice = new_page("alice")
    join(alice, port, "alice")
    bob = ChatClient(port, "bob")
    send(alice, "oh heck, it rains")
    assert bob.wait_for(lambda e: e.get("type") == "message")["message"] == "oh ****, it rains"
    send(alice, "WHY IS NOBODY ANSWERING ME")
    failed = alice.locator("#outgoing .outgoing-item.failed .state")
    expect(failed).to_have_text("Not sent: please do not shout: turn caps lock off")
    send(alice, "/me waves")
    # bob never saw the shouted line: the next message he gets is the one after it.
    assert bob.wait_for(lambda e: e.get("type") == "message")["message"] == "* alice waves"
    # A link from someone with no token is refused to that sender, and bob chats on.
    bob.send_json({"type": "message", "message": "see https://spam.example", "id": "m1"})
    refusal = bob.wait_for(lambda e: e.get("type") == "error")
    assert (refusal["code"], refusal["id"]) == ("no_links", "m1")
    bob.say("lobby", "sorry")
    expect_texts(alice, ["oh ****, it rains", "* alice waves", "sorry"])
    shot(alice, "moderated")
    bob.close()


def test_bot_example(processes: Processes, new_page: OpenPage, shot: Shot) -> None:
    # token_urlsafe, which the README suggests, starts with "-" one time in 64: the README's
    # commands must take such a key.
    port, key = free_port(), "-" + secrets.token_urlsafe(24)
    serve, bot = (c.replace("KEY", key) for c in readme_commands("bot"))
    env = shell_env(WSCHAT_PORT=str(port))
    processes.start("chat", serve, ROOT, env, port)
    processes.start("bot", f"{bot} --chat http://127.0.0.1:{port}", ROOT, env)

    alice = new_page("alice")
    join(alice, port, "alice")
    expect_members(alice, ["alice", "helpbot"], timeout=10_000)
    send(alice, "!roll 2d6")
    answer = alice.locator("#messages .message.server")
    expect(answer.locator(".username")).to_have_text("helpbot")
    expect(answer.locator(".text")).to_have_text(re.compile(r"^rolled 2d6: (\d) \+ (\d) = \d+$"))
    expect(answer.locator(".server-badge")).to_have_text("server")
    first, second, total = map(int, re.findall(r"\d+", answer.locator(".text").inner_text())[2:])
    assert 1 <= first <= 6 and 1 <= second <= 6 and total == first + second
    # Its answers went through the API: history has them marked as the server's.
    with connect(f"ws://127.0.0.1:{port}/ws") as ws:
        ws.send(json.dumps({"type": "join", "room": "lobby", "username": "reader"}))
        history = next(e for e in map(json.loads, ws) if e.get("type") == "history")
    assert [(m["username"], m.get("server", False)) for m in history["messages"]] == [
        ("alice", False),
        ("helpbot", True),
    ]
    shot(alice, "bot-answered")
