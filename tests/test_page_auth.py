"""The bundled page against a server that requires tokens (issue 10 and issue 12 item 4).

In a real headless Chromium, against one in-process server for the module (an
App with a JWT key, leeway 0, and the HTTP API): without a token the page says
in plain words that the server needs a sign-in (its probe of the refused
handshake read the 401; the server's own reason is there on request) and asks
for one in place of the name; with a token it shows who the server says the user
is (the ``authenticated`` event), chats, shows typing and server-published
messages by display name, opens direct rooms; a token that expires while open
(4408) makes it ask again; a chosen name on a token connection is refused. Other
people are ``websockets`` clients with their own tokens. Each test uses rooms of
its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import jwt
import pytest
from anyio.from_thread import start_blocking_portal

from tests import browser_helpers
from tests.browser_helpers import (
    ChatClient,
    OpenPage,
    Shot,
    expect,
    expect_member,
    expect_members,
    expect_status,
    expect_texts,
    join_another,
    page_url,
    send,
)
from wschat.app import App, AppConfig, Identity
from wschat.server import ServerConfig

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.browser
browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page
shot = browser_helpers.shot

SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"
API_KEY = "an-api-key-for-the-page-tests"
# Tokens an app's own backend might issue instead of JWTs: only the server knows who
# they stand for (through the app's verify_token hook), the page cannot read them.
OPAQUE = {
    "session-7f3a9c": Identity("carol", "Carol from the directory", expires_at=time.time() + 3600),
}
# The page's WebSockets and every frame they send and receive, for the tests to read.
SPY = """
(() => {
  const Native = window.WebSocket;
  Object.assign(window, {__sockets: [], __sent: [], __received: []});
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      window.__sockets.push(this);
      this.addEventListener('message', (e) => window.__received.push(JSON.parse(e.data)));
    }
    send(data) {
      window.__sent.push(JSON.parse(data));
      super.send(data);
    }
  };
})();
"""


def token(sub: str, name: str, lifetime: float = 3600) -> str:
    """A JWT for ``sub`` that is valid for at least ``lifetime`` seconds from now."""
    claims = {"sub": sub, "name": name, "exp": math.ceil(time.time() + lifetime)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class Chat:
    port: int

    def client(self, sub: str, name: str, room: str) -> ChatClient:
        return ChatClient(self.port, sub, room, token=token(sub, name))


@pytest.fixture(scope="module")
def chat() -> Iterator[Chat]:
    """One server for the module: tokens required, checked with no leeway."""
    config = ServerConfig(
        host="127.0.0.1", port=0, rate=0, address_rate=0, connect_rate=0, user_rate=0
    )
    app = App(config, AppConfig(jwt_secret=SECRET, jwt_leeway=0, api_key=API_KEY))

    def verify(token: str) -> Identity:
        return OPAQUE.get(token) or app.default_verify_token(token)

    app.verify_token = verify
    with serving(app) as port:
        yield Chat(port)


@contextlib.contextmanager
def guests_welcome() -> Iterator[int]:
    """A server where a token is optional: a valid one names the user, none makes a guest."""
    config = ServerConfig(
        host="127.0.0.1", port=0, rate=0, address_rate=0, connect_rate=0, user_rate=0
    )
    with serving(App(config, AppConfig(jwt_secret=SECRET, jwt_leeway=0, auth="optional"))) as port:
        yield port


@contextlib.contextmanager
def serving(app: App) -> Iterator[int]:
    """Run ``app`` in a thread of its own; its port."""
    with start_blocking_portal() as portal:
        future, port = portal.start_task(app.serve)
        try:
            yield port
        finally:
            portal.call(app.stop)
            future.result(timeout=15)


def received(page: Page, kind: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = page.evaluate(
        "(kind) => window.__received.filter((e) => e.type === kind)", kind
    )
    return events


def sent(page: Page, kind: str) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = page.evaluate(
        "(kind) => window.__sent.filter((e) => e.type === kind)", kind
    )
    return frames


def expect_signed_in(page: Page, name: str) -> None:
    expect(page.locator("#identity-name")).to_have_text(name)
    expect(page.locator("#name-field")).to_be_hidden()


def test_without_a_token_the_page_says_why_and_asks_then_chats(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    alice = new_page("alice")
    alice.goto(page_url(chat.port))
    alice.fill("#username", "alice")
    alice.fill("#room", "auth-lobby")
    alice.click("#connect")
    # The browser hides the 401; the page's probe reads it, says it in plain words and
    # keeps the server's own (developer) text one click away. The name is the token's now.
    expect(alice.locator("#token-form")).to_be_visible()
    expect(alice.locator("#token-reason")).to_have_text("this server needs you to sign in.")
    expect(alice.locator("#name-field")).to_be_hidden()
    said = alice.locator("#token-said")
    expect(said).to_be_hidden()
    alice.locator("#token-detail summary").click()
    expect(said).to_contain_text("a token is required: send it as Authorization: Bearer JWT")
    expect_status(alice, "disconnected")
    shot(alice, "asks-for-a-token")
    alice.click("#connect")  # Join again, without a token: the page asks for one
    expect(alice.locator("#token")).to_be_focused()

    alice.fill("#token", token("alice", "Alice Liddell"))
    alice.click("#token-form button")
    expect_status(alice, "connected")
    expect_signed_in(alice, "Alice Liddell")
    expect(alice.locator("#token-form")).to_be_hidden()
    expect_member(alice, "alice")
    shot(alice, "signed-in")

    bob = chat.client("bob", "Bob Builder", "auth-lobby")
    send(alice, "hello bob")
    said = bob.wait_for_message("auth-lobby", "hello bob")
    assert (said["username"], said["name"]) == ("alice", "Alice Liddell")
    expect(alice.locator("#messages .message.own .text")).to_have_text(["hello bob"])
    # Other people by their display names: typing, then their message.
    bob.send_json({"type": "typing", "room": "auth-lobby"})
    expect(alice.locator("#typing")).to_have_text("Bob Builder is typing…")
    bob.say("auth-lobby", "hi alice")
    expect(alice.locator("#typing")).to_have_text("")
    line = alice.locator("#messages .message").filter(has_text="hi alice")
    expect(line.locator(".username")).to_have_text("Bob Builder")
    expect(line.locator(".username")).to_have_attribute("title", "bob")
    expect_members(alice, ["alice", "bob"])
    bob.close()


def test_the_page_shows_who_the_server_says_the_token_is(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    page = new_page("carol")
    page.add_init_script(SPY)
    # This browser was used before without a token, as "bob", in room auth-ops.
    saved = {"username": "bob", "active": "auth-ops", "rooms": [{"name": "auth-ops"}]}
    page.add_init_script(
        f"localStorage.setItem('wschat.state.v1', {json.dumps(json.dumps(saved))})"
    )
    dave = chat.client("dave", "Dave", "auth-ops")
    # A login flow sends the user here with a token the page cannot read.
    page.goto(f"{page_url(chat.port)}?token=session-7f3a9c")
    expect_status(page, "connected")  # name and room known: no click needed
    expect_signed_in(page, "Carol from the directory")
    expect(page.locator("#members li.self")).to_have_text("carol")
    # Its joins named no one: the server names the user.
    assert sent(page, "join") == [{"type": "join", "room": "auth-ops"}]
    authenticated = received(page, "authenticated")
    assert [(e["username"], e["name"]) for e in authenticated] == [
        ("carol", "Carol from the directory")
    ]
    assert dave.wait_for(lambda e: e.get("type") == "joined")["username"] == "carol"
    send(page, "it is carol")
    assert dave.wait_for_message("auth-ops", "it is carol")["username"] == "carol"
    expect(page.locator("#messages .message.own .text")).to_have_text(["it is carol"])
    assert "token" not in page.url and "username=" not in page.url
    shot(page, "opaque-token")
    page.reload()  # the token lasts for the tab
    expect_status(page, "connected")
    expect_signed_in(page, "Carol from the directory")
    expect_texts(page, ["it is carol"])
    dave.close()


def test_a_chosen_name_on_a_token_connection_is_refused(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    bob = chat.client("bob", "Bob", "auth-imp")
    mallory = new_page("mallory")
    mallory.add_init_script(SPY)
    mallory.goto(f"{page_url(chat.port)}?token={token('mallory', 'Mallory')}")
    mallory.fill("#room", "auth-imp")
    mallory.click("#connect")
    expect_status(mallory, "connected")
    expect_member(mallory, "mallory")
    # From the browser's console, on the page's own socket: speak and join as bob.
    mallory.evaluate(
        """() => {
             const socket = window.__sockets.at(-1);
             socket.send(JSON.stringify({username: 'bob', message: "it's me, bob"}));
             socket.send(JSON.stringify({type: 'join', room: 'auth-imp', username: 'bob'}));
           }"""
    )
    refusals = mallory.locator("#messages .error")
    expect(refusals).to_have_count(2)
    expect(refusals.first).to_contain_text("this connection already speaks under another name")
    assert [e["code"] for e in received(mallory, "error")] == ["username_mismatch"] * 2
    shot(mallory, "impersonation-refused")
    # Nothing reached bob as bob; the page still works as mallory.
    send(mallory, "just mallory")
    said = bob.wait_for(lambda e: e.get("type") == "message")
    assert (said["username"], said["message"]) == ("mallory", "just mallory")
    expect_status(mallory, "connected")
    bob.close()


def test_a_token_that_expires_while_open_makes_the_page_ask_again(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    erin = new_page("erin")
    frank = chat.client("frank", "Frank", "auth-exp")
    # The short token is made once the page is loaded and asks for it: its seconds are
    # for connecting, not for loading the page on a busy machine (where they ran out,
    # the handshake got a 401 and the page never said "connected").
    erin.goto(page_url(chat.port))
    erin.fill("#username", "erin")
    erin.fill("#room", "auth-exp")
    erin.click("#connect")
    expect(erin.locator("#token-form")).to_be_visible()
    erin.fill("#token", token("erin", "Erin", lifetime=3))
    erin.click("#token-form button")
    expect_status(erin, "connected")
    expect_signed_in(erin, "Erin")
    # At exp the server closes with 4408 and its reason; the page stops and asks.
    expect(erin.locator("#token-form")).to_be_visible(timeout=8_000)
    expect(erin.locator("#token-reason")).to_contain_text(
        "token expired: send a fresh auth message before exp. Enter a new token."
    )
    expect_status(erin, "disconnected")
    shot(erin, "expired")
    frank.wait_for(lambda e: e.get("type") == "left" and e["username"] == "erin")
    frank.say("auth-exp", "said while erin was away")

    erin.fill("#token", token("erin", "Erin"))
    erin.click("#token-form button")
    expect_status(erin, "connected")
    expect_texts(erin, ["said while erin was away"])  # rejoined with `since`
    send(erin, "back")
    assert frank.wait_for_message("auth-exp", "back")["username"] == "erin"
    frank.close()


def test_direct_rooms_admit_their_two_users_only(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    pages = {}
    for sub in ("gina", "hank", "ivan"):
        page = new_page(sub)
        page.goto(f"{page_url(chat.port)}?token={token(sub, sub.title())}")
        page.fill("#room", "auth-dm")
        page.click("#connect")
        expect_status(page, "connected")
        pages[sub] = page
    for sub in ("gina", "hank"):
        join_another(pages[sub], "dm:gina:hank")
        expect_member(pages[sub], sub)
    expect_members(pages["gina"], ["gina", "hank"])
    send(pages["gina"], "just between us")
    expect_texts(pages["hank"], ["just between us"])
    shot(pages["hank"], "direct-room")

    ivan = pages["ivan"]
    ivan.fill("#room", "dm:gina:hank")
    ivan.click("#connect")
    expect(ivan.locator("#room-note")).to_contain_text(
        "Could not join dm:gina:hank: you are not allowed to do that"
    )
    expect(ivan.locator("#rooms .room-button")).to_have_text(["auth-dm"])
    expect(ivan.locator("#messages .message")).to_have_count(0)
    shot(ivan, "direct-room-refused")


def test_messages_published_by_the_server_are_marked(
    chat: Chat, new_page: OpenPage, shot: Shot
) -> None:
    jane = new_page("jane")
    jane.goto(f"{page_url(chat.port)}?token={token('jane', 'Jane')}")
    jane.fill("#room", "auth-news")
    jane.click("#connect")
    expect_status(jane, "connected")
    answer = httpx.post(
        f"http://127.0.0.1:{chat.port}/api/rooms/auth-news/messages",
        headers={"authorization": f"Bearer {API_KEY}"},
        json={"username": "ops", "name": "Ops", "message": "maintenance at 16:00"},
    )
    assert answer.status_code == 201, answer.text
    line = jane.locator("#messages .message.server")
    expect(line.locator(".text")).to_have_text("maintenance at 16:00")
    expect(line.locator(".username")).to_have_text("Ops")
    expect(line.locator(".server-badge")).to_have_text("server")
    send(jane, "thanks")
    expect(jane.locator("#messages .message.server")).to_have_count(1)  # hers is not
    expect(jane.locator("#messages .message.own .text")).to_have_text(["thanks"])
    shot(jane, "server-message")


def test_signing_out_after_a_refused_token_lets_a_guest_join(
    new_page: OpenPage, shot: Shot
) -> None:
    expired = token("dana", "Dana", lifetime=-60)
    with guests_welcome() as port:
        dana = new_page("dana")
        dana.goto(f"{page_url(port)}?token={expired}")
        dana.fill("#room", "guests")
        dana.click("#connect")
        expect(dana.locator("#token-form")).to_be_visible()  # the token was refused: 401
        expect(dana.locator("#name-field")).to_be_hidden()
        dana.click("#sign-out")
        # No token and no pending sign-in: a guest again, with a name of their own.
        expect(dana.locator("#token-form")).to_be_hidden()
        expect(dana.locator("#name-field")).to_be_visible()
        dana.fill("#username", "dana-guest")
        dana.click("#connect")
        expect_status(dana, "connected")
        shot(dana, "guest-after-sign-out")
