"""The chat page in a real headless Chromium, driven by Playwright's sync API.

Each test starts its own ``python -m wschat serve`` subprocess (memory hub) and opens
one browser context per user, so users share nothing but the server. This module
uses only Playwright's sync API: it runs its own event loop, so no anyio tests here.
"""

from __future__ import annotations

import importlib.util
import os
import re
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from tests.helpers import free_port, require, server_process

HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
if HAVE_PLAYWRIGHT:
    from playwright.sync_api import expect, sync_playwright
if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, WebSocketRoute

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
]
# How long a page may take to reconnect: the page's backoff is random(0, min(10 s,
# 0.5 s * 2^attempt)), so a few failed attempts can push one retry to several seconds.
RECONNECT_TIMEOUT_MS = 15_000
STEP_TIMEOUT_MS = 5_000
SETTLED = re.compile(r"^(connecting|disconnected)$")


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(HAVE_PLAYWRIGHT, "the playwright Python package")
    require(os.access(CHROMIUM, os.X_OK), CHROMIUM)

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


OpenPage = Callable[[str], "Page"]


@pytest.fixture
def new_page(browser: Browser) -> Iterator[OpenPage]:
    """Factory: a fresh page in its own browser context (closed after the test)."""
    contexts = []

    def make(name: str) -> Page:
        context = browser.new_context()
        contexts.append(context)
        context.set_default_timeout(STEP_TIMEOUT_MS)
        page = context.new_page()
        # Page errors would mean a broken app.js: fail loudly.
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(f"{name}: {exc}"))
        page_errors.append(errors)
        return page

    page_errors: list[list[str]] = []
    yield make
    for context in contexts:
        context.close()
    uncaught = [error for errors in page_errors for error in errors]
    assert not uncaught, f"uncaught errors in the page: {uncaught}"


# -- page helpers ---------------------------------------------------------------


def expect_status(
    page: Page, status: str | re.Pattern[str], timeout: int = STEP_TIMEOUT_MS
) -> None:
    expect(page.locator("#status")).to_have_text(status, timeout=timeout)


def join(page: Page, port: int, username: str, room: str = "lobby") -> None:
    """Open the page, join ``room`` as ``username`` and wait for ``connected``."""
    page.goto(f"http://127.0.0.1:{port}/")
    expect_status(page, "disconnected")
    page.fill("#username", username)
    page.fill("#room", room)
    page.click("#connect")
    expect_status(page, "connected")
    # The join's history and presence have arrived once we are in the member list.
    me = re.compile(f"^{re.escape(username)}$")
    expect(page.locator("#members li").filter(has_text=me)).to_have_count(1)


def send(page: Page, text: str) -> None:
    """Type and send ``text``; the page clears the input only when it really sent it."""
    page.fill("#message", text)
    page.click("#send")
    expect(page.locator("#message")).to_have_value("")


def expect_members(page: Page, names: list[str], timeout: int = STEP_TIMEOUT_MS) -> None:
    expect(page.locator("#members li")).to_have_text(sorted(names), timeout=timeout)


def expect_texts(page: Page, texts: list[str], timeout: int = STEP_TIMEOUT_MS) -> None:
    """The page shows exactly these chat messages, in this order."""
    expect(page.locator("#messages .message .text")).to_have_text(texts, timeout=timeout)


def expect_message_once(page: Page, username: str, text: str) -> None:
    """Exactly one ``.message`` has ``.text`` == ``text``, and it is from ``username``."""
    exact = re.compile(f"^{re.escape(text)}$")
    line = page.locator("#messages .message").filter(
        has=page.locator(".text").filter(has_text=exact)
    )
    expect(line).to_have_count(1)
    expect(line.locator(".username")).to_have_text(username)
    expect(line.locator(".time")).not_to_have_text("")


class SocketCutter:
    """Proxies a page's WebSockets through Playwright so the test can cut them.

    ``context.set_offline(True)`` does not close an already open WebSocket in
    Chromium, so an outage is made here: ``cut()`` closes both halves of the
    current socket (the server sees the client go; the page sees a close) and
    refuses new sockets (closed before they open) until ``restore()``.
    """

    def __init__(self, page: Page) -> None:
        self.blocked = False
        self.current: tuple[WebSocketRoute, WebSocketRoute] | None = None
        self.refused = 0
        page.route_web_socket(re.compile(r"/ws(\?|$)"), self._route)

    def _route(self, route: WebSocketRoute) -> None:
        if self.blocked:
            self.refused += 1
            route.close(code=4000, reason="test: network down")
            return
        self.current = (route, route.connect_to_server())

    def cut(self) -> None:
        assert self.current is not None, "the page has no proxied socket to cut"
        self.blocked = True
        page_side, server_side = self.current
        self.current = None
        server_side.close()
        page_side.close(code=4000, reason="test: network down")

    def restore(self) -> None:
        self.blocked = False


# -- tests ----------------------------------------------------------------------


def test_two_users_chat_both_ways(new_page: OpenPage) -> None:
    with server_process() as (_, port):
        alice, bob = new_page("alice"), new_page("bob")
        join(alice, port, "alice")
        join(bob, port, "bob")
        expect_members(alice, ["alice", "bob"])
        expect_members(bob, ["alice", "bob"])

        send(alice, "hi bob")
        expect_message_once(bob, "alice", "hi bob")
        send(bob, "hello alice")
        expect_message_once(alice, "bob", "hello alice")

        # Both see the whole conversation, in order, with the right names.
        for page in (alice, bob):
            expect_texts(page, ["hi bob", "hello alice"])
            expect(page.locator("#messages .message .username")).to_have_text(["alice", "bob"])
            expect(page.locator("#messages .error")).to_have_count(0)
        # Own messages are marked as such.
        expect(alice.locator("#messages .message.own .text")).to_have_text(["hi bob"])
        expect(bob.locator("#messages .message.own .text")).to_have_text(["hello alice"])


def test_pages_reconnect_after_server_restart(new_page: OpenPage) -> None:
    port = free_port()
    alice, bob = new_page("alice"), new_page("bob")
    with server_process(port=port):
        join(alice, port, "alice")
        join(bob, port, "bob")
        expect_members(alice, ["alice", "bob"])
        send(alice, "before restart")
        expect_message_once(bob, "alice", "before restart")
    # The server got SIGTERM and has exited: both pages must notice.
    for page in (alice, bob):
        expect_status(page, SETTLED)

    with server_process(port=port):
        for page in (alice, bob):
            expect_status(page, "connected", timeout=RECONNECT_TIMEOUT_MS)
        expect_members(alice, ["alice", "bob"])
        expect_members(bob, ["alice", "bob"])
        send(alice, "after restart from alice")
        expect_message_once(bob, "alice", "after restart from alice")
        send(bob, "after restart from bob")
        expect_message_once(alice, "bob", "after restart from bob")
        # Nothing was shown twice across the restart.
        for page in (alice, bob):
            expect_texts(
                page, ["before restart", "after restart from alice", "after restart from bob"]
            )


def test_message_html_is_shown_as_text(new_page: OpenPage) -> None:
    payload = '<img src=x onerror="window.__xss=1">'
    with server_process() as (_, port):
        alice, bob = new_page("alice"), new_page("bob")
        join(alice, port, "alice")
        join(bob, port, "bob")
        send(alice, payload)
        for page in (alice, bob):
            expect_message_once(page, "alice", payload)
            expect(page.locator("#messages img")).to_have_count(0)
        # Give an injected <img> time to fail loading and run its onerror.
        alice.wait_for_timeout(500)
        for page in (alice, bob):
            assert page.evaluate("typeof window.__xss") == "undefined"

        # Control: the same payload parsed as HTML does run, so the check above can fail.
        # (On a blank page: wschat's Content-Security-Policy blocks inline handlers on its
        # own page, which tests/test_http_hardening.py checks.)
        canary = new_page("canary")
        canary.goto("about:blank")
        canary.evaluate("(html) => document.body.insertAdjacentHTML('beforeend', html)", payload)
        canary.wait_for_function("window.__xss === 1")


def test_reconnect_shows_every_missed_message_once(new_page: OpenPage) -> None:
    with server_process() as (_, port):
        alice, bob = new_page("alice"), new_page("bob")
        cutter = SocketCutter(alice)
        join(alice, port, "alice")
        join(bob, port, "bob")
        expect_members(bob, ["alice", "bob"])
        send(bob, "before outage")
        expect_texts(alice, ["before outage"])

        # ~10 s outage for alice while bob keeps chatting.
        alice.context.set_offline(True)
        cutter.cut()
        expect_status(alice, SETTLED)
        expect_members(bob, ["bob"])  # the server saw alice's connection go
        missed = [f"missed {i}" for i in range(5)]
        for text in missed:
            send(bob, text)
            time.sleep(2)
        assert cutter.refused > 0, "alice's page never tried to reconnect during the outage"
        expect_status(alice, SETTLED)
        expect_texts(alice, ["before outage"])  # nothing arrived during the outage

        cutter.restore()
        alice.context.set_offline(False)
        expect_status(alice, "connected", timeout=RECONNECT_TIMEOUT_MS)
        expected = ["before outage", *missed]
        expect_texts(alice, expected)
        expect_members(bob, ["alice", "bob"])

        # Live chat works again both ways, still without duplicates.
        send(bob, "after outage from bob")
        expect_texts(alice, [*expected, "after outage from bob"])
        send(alice, "after outage from alice")
        full = [*expected, "after outage from bob", "after outage from alice"]
        expect_texts(alice, full)
        expect_texts(bob, full)
        expect(alice.locator("#messages .notice")).to_have_count(0)
        expect(alice.locator("#messages .error")).to_have_count(0)
        usernames = alice.locator("#messages .message .username")
        expect(usernames).to_have_text(["bob"] * (len(full) - 1) + ["alice"])


def test_new_epoch_after_restart_shows_notice(new_page: OpenPage) -> None:
    port = free_port()
    alice = new_page("alice")
    with server_process(port=port):
        join(alice, port, "alice")
        send(alice, "kept only in the old server's memory")
        expect_texts(alice, ["kept only in the old server's memory"])
        expect(alice.locator("#messages .notice")).to_have_count(0)
        old = alice.evaluate("window.wschat.positions.lobby")
        assert old["seq"] == 1
    expect_status(alice, SETTLED)

    with server_process(port=port):
        expect_status(alice, "connected", timeout=RECONNECT_TIMEOUT_MS)
        notice = alice.locator("#messages .notice")
        expect(notice).to_have_count(1)
        expect(notice).not_to_have_text("")
        # The page adopted the new server's epoch and still works.
        new = alice.evaluate("window.wschat.positions.lobby")
        assert new["epoch"] != old["epoch"]
        send(alice, "first in the new epoch")
        expect_texts(alice, ["kept only in the old server's memory", "first in the new epoch"])
        expect(notice).to_have_count(1)
