"""More of the chat page as a person uses it (issue 12), in a real headless Chromium.

The phone drawer keeps the keyboard off the chat it covers; a handshake the server
refuses for the page's origin is named (through a proxy that rewrites Host); date
separators for yesterday and older days; a name that looks like one in the room, and
a room name the page refuses, explained where they were typed; switching rooms
re-renders the live region while it is marked busy. Without a browser: the server's
info lines for refused handshakes. Setup and helpers are tests/test_page.py's and
tests/browser_helpers.py's; screenshots go to ``test-artifacts/browser/test_page_more/``.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests import browser_helpers
from tests.browser_helpers import (
    DESKTOP,
    PHONE,
    ChatClient,
    OpenPage,
    Proxy,
    Shot,
    expect,
    expect_member,
    expect_status,
    expect_texts,
    join,
    join_another,
    page_url,
)
from tests.helpers import server_process
from tests.test_page import join_through, received_frames, sent_frames
from wschat.protocol.handshake import PROBE_ORIGIN_HEADER
from wschat.server import Server, ServerConfig
from wschat.server.metrics import Metrics

if TYPE_CHECKING:
    from playwright.sync_api import Page

browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page
shot = browser_helpers.shot

ROOM_RULE = "Room names use 1-128 letters (A-Z, a-z), digits, _, - or :, not : first."


# -- the phone drawer ---------------------------------------------------------------------

# The focused element, and whether it is what a person sees at its centre (not
# something drawn over it).
FOCUS_SEEN = """() => {
  const focused = document.activeElement;
  if (!focused || focused === document.body) return null;
  const box = focused.getBoundingClientRect();
  const top = document.elementFromPoint(box.x + box.width / 2, box.y + box.height / 2);
  return {id: focused.id || focused.className, seen: top === focused || focused.contains(top)};
}"""


def tab_through(page: Page, presses: int) -> list[dict[str, Any]]:
    """Press Tab ``presses`` times; what each press focused (the page itself skipped)."""
    reached = []
    for _ in range(presses):
        page.keyboard.press("Tab")
        focus = page.evaluate(FOCUS_SEEN)
        if focus is not None:
            reached.append(focus)
    return reached


@pytest.mark.browser
def test_the_open_drawer_keeps_the_keyboard_off_the_chat_under_it(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port):
        alice = new_page("alice", PHONE)
        join(alice, port, "alice")
        join_another(alice, "dev")
        chat = alice.locator("#chat")
        expect(chat).to_have_js_property("inert", False)

        alice.locator("#rooms-toggle").click()
        expect(alice.locator("#sidebar")).to_be_visible()
        expect(chat).to_have_js_property("inert", True)
        # Twice round the page: every stop is on screen, none under the drawer.
        reached = tab_through(alice, 30)
        shot(alice, "drawer-open-tabbed")
        hidden = [focus for focus in reached if not focus["seen"]]
        assert not hidden, reached
        ids = {focus["id"] for focus in reached}
        assert {"rooms-toggle", "room", "connect"} <= ids, reached
        assert not ids & {"scroller", "message", "send"}, reached

        # Closed: nothing is inert, and the keyboard reaches the composer again.
        alice.keyboard.press("Escape")
        expect(alice.locator("#sidebar")).to_be_hidden()
        expect(chat).to_have_js_property("inert", False)
        ids = {focus["id"] for focus in tab_through(alice, 4)}
        assert {"scroller", "message", "send"} <= ids, ids

        # Only the narrow screen's drawer covers anything: wider, the sidebar is a column.
        alice.locator("#rooms-toggle").click()
        expect(chat).to_have_js_property("inert", True)
        alice.set_viewport_size(DESKTOP)
        expect(chat).to_have_js_property("inert", False)
        alice.locator("#message").focus()
        expect(alice.locator("#message")).to_be_focused()
        alice.set_viewport_size(PHONE)
        expect(chat).to_have_js_property("inert", True)


# -- reasons --------------------------------------------------------------------------------


@pytest.mark.browser
def test_an_origin_refusal_behind_a_host_rewriting_proxy_is_named(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port), Proxy(port, "rewrite-host") as proxy:
        bob = new_page("bob")
        probes: list[dict[str, str]] = []
        probe_url = page_url(proxy.port) + "ws?"
        bob.on(
            "request", lambda r: probes.append(r.headers) if r.url.startswith(probe_url) else None
        )
        join_through(bob, proxy.port, "bob")
        # The server refused the upgrade for this page's origin; the browser hid why,
        # the page's probe (naming its origin) got the same answer and says it.
        expect(bob.locator("#connection")).to_contain_text(
            f"server refused the connection: origin not allowed: http://127.0.0.1:{proxy.port} "
        )
        expect(bob.locator("#connection")).to_contain_text("--allow-origin")
        expect(bob.locator("#connection")).not_to_contain_text("does not say why")
        shot(bob, "origin-refused")
        assert any(
            headers.get(PROBE_ORIGIN_HEADER) == f"http://127.0.0.1:{proxy.port}"
            for headers in probes
        ), probes


def probe_answer(port: int, origin: str) -> httpx.Response:
    """A plain GET of /ws as the page's probe sends it (its origin in our header)."""
    return httpx.get(
        f"http://127.0.0.1:{port}/ws?room=lobby", headers={PROBE_ORIGIN_HEADER: origin}
    )


@pytest.mark.every_loop
def metric_samples(metrics: Metrics, name: str, label: str) -> dict[str, float]:
    """A counter's values by one label, from the server's registry."""
    return {
        sample.labels[label]: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    }


def test_refused_handshakes_are_logged_at_info_with_their_reason(
    server_loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="wschat")
    backend = "trio" if server_loop == "trio" else "asyncio"
    options = {} if server_loop == "trio" else {"use_uvloop": server_loop == "uvloop"}
    config = ServerConfig(
        host="127.0.0.1", port=0, max_connections=1, rate=0, address_rate=0, connect_rate=0
    )
    with start_blocking_portal(backend, options) as portal:
        server = portal.call(Server, config)
        future, port = portal.start_task(server.serve)
        url = f"ws://127.0.0.1:{port}/ws"
        try:
            with pytest.raises(InvalidStatus) as cross:
                connect(url, origin=Origin("http://evil.example"))
            assert cross.value.response.status_code == 403
            assert probe_answer(port, "http://evil.example").status_code == 403
            with connect(url):  # the one place
                with pytest.raises(InvalidStatus) as full:
                    connect(url)
                assert full.value.response.status_code == 503
        finally:
            portal.call(server.shutdown)
            future.result(timeout=15)
    lines = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("wschat.") and record.levelno == logging.INFO
    ]
    refused = [line for line in lines if re.match(r"x 127\.0\.0\.1:\d+ refused: ", line)]
    assert [line.split(" refused: ", 1)[1] for line in refused] == [
        "403 origin not allowed: http://evil.example",  # the upgrade (its probe: debug only)
        "503 too many connections",
    ], lines
    rejected = metric_samples(server.metrics, "wschat_handshakes_rejected_total", "reason")
    probes = metric_samples(server.metrics, "wschat_handshake_probes_total", "status")
    assert (rejected, probes) == ({"403": 1.0, "capacity": 1.0}, {"403": 1.0})


# -- the conversation -------------------------------------------------------------------------

# What this browser kept from before: alice in lobby, a message from a day in 2024
# and one from yesterday (local time, as the page counts days).
SEEDED = """
(() => {
  const now = new Date();
  const yesterday = new Date(now.getFullYear(), now.getMonth(), now.getDate() - 1, 12, 0);
  const item = (username, message, time) => ({type: 'message', username, message,
                                              time: time.toISOString()});
  const state = {username: 'alice', active: 'lobby', rooms: [{name: 'lobby', unread: 0, items: [
    item('bob', 'back in 2024', new Date(2024, 0, 15, 9, 30)),
    item('bob', 'said yesterday', yesterday),
  ]}]};
  if (!localStorage.getItem('wschat.state.v1')) {
    localStorage.setItem('wschat.state.v1', JSON.stringify(state));
  }
})();
"""


@pytest.mark.browser
def test_date_separators_say_yesterday_and_the_date_of_older_days(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port):
        alice = new_page("alice")
        alice.add_init_script(SEEDED)
        alice.goto(page_url(port))  # name and room known: it rejoins at once
        expect_status(alice, "connected")
        expect_member(alice, "alice")
        bob = ChatClient(port, "bob")
        bob.say("lobby", "said today")
        expect_texts(alice, ["back in 2024", "said yesterday", "said today"])
        separators = alice.locator("#messages .date-separator")
        expect(separators).to_have_text(
            [re.compile(r"^Monday, (January 15|15 January),? 2024$"), "Yesterday", "Today"]
        )
        assert separators.first.get_attribute("role") == "separator"
        shot(alice, "three-days")
        bob.close()


# -- names and rooms --------------------------------------------------------------------------


@pytest.mark.browser
def test_a_name_that_looks_like_one_in_the_room_is_explained(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port):
        admin = ChatClient(port, "admin")
        page = new_page("impostor", PHONE)
        frames = received_frames(page)
        page.goto(page_url(port))
        page.fill("#username", "Admin")
        expect(page.locator("#username-note")).to_be_hidden()  # the page alone cannot know
        page.click("#connect")
        note = page.locator("#username-note")
        expect(note).to_have_text(
            "that name looks like someone else\u2019s: “Admin” looks like “admin”, who is in "
            "lobby: choose a name that looks different"
        )
        expect(page.locator("#username")).to_have_attribute("aria-invalid", "true")
        expect(page.locator("#username")).to_be_focused()  # in the drawer, opened for it
        expect_status(page, "disconnected")  # and it does not keep trying
        assert [f["code"] for f in frames if f.get("type") == "error"] == ["name_confusable"]
        shot(page, "name-confusable")
        admin.close()


@pytest.mark.browser
def test_a_bad_room_name_is_refused_on_the_page_and_nothing_changes(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port):
        alice = new_page("alice")
        join(alice, port, "alice")
        frames = sent_frames(alice)
        room, note = alice.locator("#room"), alice.locator("#room-note")
        rooms = alice.locator("#rooms .room-button")

        def nothing_changed() -> None:
            expect(rooms).to_have_text(["lobby"])
            expect(alice.locator("#room-title")).to_have_text("# lobby")
            expect_member(alice, "alice")
            expect(alice.locator("#messages .error")).to_have_count(0)
            assert [f for f in frames if f.get("type") == "join"] == []

        # Typed: explained at once; Join sends nothing.
        alice.fill("#room", "bad room!")
        expect(note).to_have_text(ROOM_RULE)
        expect(room).to_have_attribute("aria-invalid", "true")
        alice.click("#connect")
        expect(room).to_be_focused()
        nothing_changed()
        shot(alice, "bad-room-typed")

        # Put there without typing (autofill, a script): Join marks it the same way.
        alice.fill("#room", "")
        expect(room).to_have_attribute("aria-invalid", "false")
        alice.evaluate("document.getElementById('room').value = ':dev'")
        alice.click("#connect")
        expect(note).to_have_text(ROOM_RULE)
        expect(room).to_have_attribute("aria-invalid", "true")
        expect(room).to_have_value(":dev")  # kept, to be corrected
        nothing_changed()


# -- the live region ----------------------------------------------------------------------------

# Every change to the message list and its aria-busy, in order; and, for each batch of
# changes, aria-busy as the page's task left it (the observer runs once that task is done,
# where assistive technology looks).
WATCH_LOG = """() => {
  const log = document.getElementById('messages');
  window.__log = [];
  window.__busyAfterTask = [];
  new MutationObserver((records) => {
    window.__busyAfterTask.push(log.getAttribute('aria-busy'));
    for (const r of records) {
      window.__log.push(r.type === 'attributes' ? `busy, was ${r.oldValue}` : 'lines');
    }
  }).observe(log, {childList: true, attributes: true, attributeFilter: ['aria-busy'],
                   attributeOldValue: true});
}"""


@pytest.mark.browser
def test_switching_rooms_rebuilds_the_live_region_while_it_is_busy(new_page: OpenPage) -> None:
    with server_process() as (_, port):
        alice = new_page("alice")
        join(alice, port, "alice")
        bob = ChatClient(port, "bob")
        bob.say("lobby", "something to show")
        expect_texts(alice, ["something to show"])
        join_another(alice, "dev")
        expect(alice.locator("#room-title")).to_have_text("# dev")
        alice.evaluate(WATCH_LOG)
        alice.locator('#rooms .room-button[data-room="lobby"]').click()
        expect(alice.locator("#room-title")).to_have_text("# lobby")
        expect(alice.locator("#messages")).to_have_attribute("aria-busy", "false")
        changes: list[str] = alice.evaluate("window.__log")
        # Marked busy, rebuilt, then not busy: no line changes outside the busy spell.
        assert changes[0] == "busy, was false" and changes[-1] == "busy, was true", changes
        assert set(changes[1:-1]) == {"lines"}, changes
        # Still busy when the re-rendering task ended: cleared only on a later frame.
        assert alice.evaluate("window.__busyAfterTask")[0] == "true"
        expect_texts(alice, ["something to show"])
        bob.close()
