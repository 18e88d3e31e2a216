"""The chat page in a real headless Chromium: chatting, restarts, outages, XSS, epochs.

Each test starts its own ``python -m wschat serve`` subprocess (memory hub) and opens
one browser context per user, so users share nothing but the server. The page's
issue-12 features (layout, rooms, conversation, reasons, names) are in test_page.py;
fixtures and helpers in tests/browser_helpers.py.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING

import pytest

from tests import browser_helpers
from tests.browser_helpers import (
    RECONNECT_TIMEOUT_MS,
    SETTLED,
    Handshakes,
    OpenPage,
    compression_flags,
    expect,
    expect_members,
    expect_message_once,
    expect_status,
    expect_texts,
    join,
    send,
    with_and_without_compression,
)
from tests.helpers import free_port, server_process

if TYPE_CHECKING:
    from playwright.sync_api import Page, WebSocketRoute

pytestmark = pytest.mark.browser
# One Chromium for the module (the fixtures live in browser_helpers).
browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page


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


@with_and_without_compression
def test_two_users_chat_both_ways(new_page: OpenPage, compression: bool) -> None:
    with server_process(*compression_flags(compression)) as (_, port):
        alice, bob = new_page("alice"), new_page("bob")
        handshakes = Handshakes(alice)
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
        # Off by default: Chromium's offer gets no extension; with --compression it gets
        # the shared setting, and every message above came compressed.
        handshakes.assert_negotiated(compression)


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

        # A ~5 s outage for alice (several refused reconnects, backoff growing) while bob
        # keeps chatting.
        alice.context.set_offline(True)
        cutter.cut()
        expect_status(alice, SETTLED)
        expect_members(bob, ["bob"])  # the server saw alice's connection go
        missed = [f"missed {i}" for i in range(5)]
        for text in missed:
            send(bob, text)
            time.sleep(1)
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
