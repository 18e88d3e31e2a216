"""The chat page as a person uses it (issue 12), in a real headless Chromium.

At 1280x800 (desktop) and 390x844 (phone): layout, several rooms on one socket with
unread counts, join/leave lines, typing, reloads that resume where the page left off,
refused handshakes explained, names and message lengths counted as the server counts
them, keyboard use and colour contrast. Other people in a room are real ``websockets``
clients where a second browser would add nothing. Screenshots of each state go to
``test-artifacts/browser/test_page/<test>/`` (the path is printed, shown on failure).

The tests whose frames change under permessage-deflate (several rooms on one socket,
join/leave lines beside presence, reloads and their history, the longest message) run
against the server with and without ``--compression`` (``[plain]``/``[deflate]``) and
check what Chromium negotiated. The others (layout, names, refusals, keyboard, contrast,
typing) would add no other kind of frame: a ``typing`` event is small, sent plain under
``--compression-min-size`` as ``joined``/``left`` are, and the page's own frames are
deflated alike whatever they carry.
"""

from __future__ import annotations

import base64
import json
import re
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests import browser_helpers
from tests.browser_helpers import (
    PHONE,
    RECONNECT_TIMEOUT_MS,
    VIEWPORTS,
    ChatClient,
    Handshakes,
    OpenPage,
    Proxy,
    Shot,
    compression_flags,
    expect,
    expect_member,
    expect_members,
    expect_status,
    expect_texts,
    join,
    join_another,
    page_url,
    send,
    with_and_without_compression,
)
from tests.helpers import RedisProcess, server_process
from wschat.chat.names import UsernameRefused, enforce_username

if TYPE_CHECKING:
    from playwright.sync_api import Locator, Page, WebSocket

pytestmark = pytest.mark.browser
# One Chromium for the module (the fixtures live in browser_helpers).
browser = browser_helpers.browser
artifacts = browser_helpers.artifacts
new_page = browser_helpers.new_page
shot = browser_helpers.shot

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"


def inside_viewport(page: Page, locator: Locator) -> bool:
    box = locator.bounding_box()
    size = page.viewport_size
    assert box is not None and size is not None
    return (
        box["x"] >= 0
        and box["y"] >= 0
        and box["x"] + box["width"] <= size["width"] + 0.5
        and box["y"] + box["height"] <= size["height"] + 0.5
    )


def recorded_frames(page: Page, event: str) -> list[dict[str, Any]]:
    """Record every JSON frame of ``event`` ("framesent" or "framereceived") on any of the
    page's WebSockets, from now on."""
    frames: list[dict[str, Any]] = []

    def on_socket(socket: WebSocket) -> None:
        socket.on(event, lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", on_socket)
    return frames


def sent_frames(page: Page) -> list[dict[str, Any]]:
    """Record every JSON frame the page sends, from now on."""
    return recorded_frames(page, "framesent")


def received_frames(page: Page) -> list[dict[str, Any]]:
    """Record every JSON frame the page receives, from now on."""
    return recorded_frames(page, "framereceived")


def unread_badge(page: Page, room: str) -> Locator:
    return page.locator(f'#rooms .room-button[data-room="{room}"] .unread')


# -- layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("viewport", ["desktop", "phone"])
def test_only_the_message_list_scrolls_and_the_input_stays_visible(
    new_page: OpenPage, shot: Shot, viewport: str
) -> None:
    with server_process("--rate", "0", "--address-rate", "0") as (_, port):
        alice = new_page("alice", VIEWPORTS[viewport])
        join(alice, port, "alice")
        bob = ChatClient(port, "bob")
        for i in range(100):
            bob.say("lobby", f"message {i} " + "words " * (i % 7))
        expect(alice.locator("#messages .message")).to_have_count(100)
        last = alice.locator("#messages .message").last
        expect(last.locator(".text")).to_have_text(re.compile("^message 99 "))
        shot(alice, "100-messages")

        # The document never scrolls; the message list does, and is at its end.
        sizes = alice.evaluate(
            """() => ({page: document.scrollingElement.scrollHeight, view: innerHeight,
                      list: scroller.scrollHeight, box: scroller.clientHeight,
                      top: scroller.scrollTop})"""
        )
        assert sizes["page"] <= sizes["view"], sizes
        assert sizes["list"] > sizes["box"], sizes
        assert sizes["top"] + sizes["box"] >= sizes["list"] - 2, sizes
        for locator in (alice.locator("#message"), alice.locator("#send"), last):
            assert inside_viewport(alice, locator), locator

        # One person's run of messages shares one header, under a date separator.
        expect(alice.locator("#messages .date-separator")).to_have_text(["Today"])
        expect(alice.locator("#messages .message.continued")).to_have_count(99)
        assert alice.locator("#messages .message .meta").first.is_visible()

        if viewport == "phone":
            # The sidebar is a drawer behind the Rooms button, keyboard included.
            expect(alice.locator("#sidebar")).to_be_hidden()
            alice.locator("#rooms-toggle").focus()
            alice.keyboard.press("Enter")
            expect(alice.locator("#sidebar")).to_be_visible()
            expect(alice.locator("#rooms-toggle")).to_have_attribute("aria-expanded", "true")
            shot(alice, "drawer-open")
            alice.keyboard.press("Escape")
            expect(alice.locator("#sidebar")).to_be_hidden()
            expect(alice.locator("#rooms-toggle")).to_be_focused()
            # Down to 360 px wide, the input and the newest message stay on screen.
            alice.set_viewport_size({"width": 360, "height": 640})
            alice.evaluate("scroller.scrollTop = scroller.scrollHeight")
            assert inside_viewport(alice, alice.locator("#message"))
            assert inside_viewport(alice, alice.locator("#send"))
            assert inside_viewport(alice, last)
            shot(alice, "360-wide")
        else:
            expect(alice.locator("#rooms-toggle")).to_be_hidden()
            expect(alice.locator("#sidebar")).to_be_visible()
        bob.close()


# -- rooms ------------------------------------------------------------------------------


@with_and_without_compression
def test_two_rooms_on_one_socket_with_unread_counts(
    new_page: OpenPage, shot: Shot, compression: bool
) -> None:
    # Several rooms' events interleaved on one socket, compressed ones among plain ones.
    with server_process(*compression_flags(compression)) as (_, port):
        alice = new_page("alice", PHONE)
        handshakes = Handshakes(alice)
        sockets: list[WebSocket] = []
        alice.on("websocket", lambda socket: sockets.append(socket))
        join(alice, port, "alice", "lobby")
        join_another(alice, "dev")
        expect_member(alice, "alice")
        expect(alice.locator("#rooms .room-button")).to_have_text(["lobby", "dev"])
        expect(alice.locator("#room-title")).to_have_text("# dev")

        bob = ChatClient(port, "bob", "dev")
        bob.join("lobby")
        # alice looks at lobby; bob writes in dev.
        alice.locator("#rooms-toggle").click()
        alice.locator('#rooms .room-button[data-room="lobby"]').click()
        expect(alice.locator("#room-title")).to_have_text("# lobby")
        for text in ("dev one", "dev two", "dev three"):
            bob.say("dev", text)
        expect(alice.locator("#total-unread")).to_have_text("3")
        bob.say("lobby", "hello lobby")
        expect_texts(alice, ["hello lobby"])
        alice.locator("#rooms-toggle").click()
        expect(unread_badge(alice, "dev")).to_have_text("3")
        expect(unread_badge(alice, "lobby")).to_have_count(0)
        shot(alice, "dev-has-3-unread")

        alice.locator('#rooms .room-button[data-room="dev"]').click()
        expect_texts(alice, ["dev one", "dev two", "dev three"])
        expect(alice.locator("#messages .new-divider")).to_have_count(1)
        expect(alice.locator("#total-unread")).to_be_hidden()
        shot(alice, "dev-read")
        send(alice, "from alice in dev")
        assert bob.wait_for_message("dev", "from alice in dev")["username"] == "alice"

        # Leaving a room: gone from the list, and the server has taken alice out of it.
        alice.locator("#rooms-toggle").click()
        alice.locator('#rooms .leave-button[aria-label="Leave dev"]').click()
        expect(alice.locator("#rooms .room-button")).to_have_text(["lobby"])
        left = bob.wait_for(lambda e: e.get("type") == "left")
        assert (left["room"], left["username"]) == ("dev", "alice")
        assert len(sockets) == 1, "every room went over one WebSocket"
        expect(alice.locator("#messages .error")).to_have_count(0)
        bob.close()
        handshakes.assert_negotiated(compression)


@with_and_without_compression
def test_join_and_leave_lines_collapse_when_many(
    new_page: OpenPage, shot: Shot, compression: bool
) -> None:
    # joined/left stay under --compression-min-size (plain); presence grows past it.
    with server_process(*compression_flags(compression)) as (_, port):
        alice = new_page("alice")
        handshakes = Handshakes(alice)
        join(alice, port, "alice")
        bob = ChatClient(port, "bob")
        lines = alice.locator("#messages .membership")
        expect(lines).to_have_text([re.compile("^bob joined")])
        bob.say("lobby", "hi, leaving")
        bob.close()
        expect(lines).to_have_text([re.compile("^bob joined"), re.compile("^bob left")])
        shot(alice, "joined-left")

        # A crowd arriving at once is one line that opens to show each of them.
        crowd = [ChatClient(port, name) for name in ("carol", "dave", "erin", "frank")]
        run = alice.locator("#messages details.membership-run")
        # (bob's message ended the first run; his leaving opened this one)
        expect(run.locator("summary")).to_have_text("carol, dave and 2 others joined; bob left")
        expect(run.locator("li")).to_have_count(5)
        expect(run.locator("li").first).to_be_hidden()
        run.locator("summary").click()
        expect(run.locator("li")).to_have_text(
            [re.compile("^bob left")]
            + [re.compile(f"^{name} joined") for name in ("carol", "dave", "erin", "frank")]
        )
        shot(alice, "crowd-expanded")
        crowd[0].close()
        expect(run.locator("summary")).to_have_text(
            "dave, erin and frank joined; bob and carol left"
        )
        expect_members(alice, ["alice", "dave", "erin", "frank"])
        for client in crowd[1:]:
            client.close()
        handshakes.assert_negotiated(compression)


# -- typing -----------------------------------------------------------------------------


def test_typing_against_a_server_that_does_not_relay_it_shows_nothing(
    new_page: OpenPage,
) -> None:
    with server_process("tests.app_without_typing:app") as (_, port):
        alice = new_page("alice")
        frames = sent_frames(alice)
        join(alice, port, "alice")
        alice.locator("#message").press_sequentially("hello there, bob", delay=40)
        alice.keyboard.press("Enter")
        expect_texts(alice, ["hello there, bob"])
        alice.locator("#message").press_sequentially("again", delay=20)
        # The page announced typing once; this app has no typing events and answered
        # `bad_type`, so the page stopped announcing it, and said nothing about it.
        assert [f for f in frames if f.get("type") == "typing"] == [
            {"type": "typing", "room": "lobby"}
        ]
        expect(alice.locator("#messages .error")).to_have_count(0)


def test_typing_shown_to_the_other_user_and_cleared(new_page: OpenPage, shot: Shot) -> None:
    with server_process() as (_, port):
        alice, bob = new_page("alice"), new_page("bob", PHONE)
        frames = sent_frames(alice)
        join(alice, port, "alice")
        join(bob, port, "bob")
        alice.locator("#message").press_sequentially("typing to bob", delay=40)
        expect(bob.locator("#typing")).to_have_text("alice is typing…", timeout=1_500)
        shot(bob, "alice-typing")
        alice.keyboard.press("Enter")
        expect(bob.locator("#typing")).to_have_text("")  # cleared by her message
        alice.locator("#message").press_sequentially("more", delay=30)
        expect(bob.locator("#typing")).to_have_text("alice is typing…")
        # At most one `typing` per few seconds of typing; sending makes the next one news.
        assert [f["type"] for f in frames if f.get("type") in ("typing", "message")] == [
            "typing",
            "message",
            "typing",
        ]
        expect(bob.locator("#typing")).to_have_text("", timeout=9_000)  # and the timeout


# -- reloads ------------------------------------------------------------------------------


@with_and_without_compression
def test_reload_restores_rooms_and_shows_what_was_missed_exactly_once(
    new_page: OpenPage, shot: Shot, compression: bool
) -> None:
    # History (the big payload, compressed under --compression) after a reload.
    with server_process(*compression_flags(compression)) as (_, port):
        alice = new_page("alice")
        handshakes = Handshakes(alice)
        join(alice, port, "alice", "lobby")
        join_another(alice, "dev")
        bob = ChatClient(port, "bob", "lobby")
        bob.join("dev")
        bob.say("dev", "before, dev")
        expect_texts(alice, ["before, dev"])
        alice.locator('#rooms .room-button[data-room="lobby"]').click()
        bob.say("lobby", "before, lobby")
        expect_texts(alice, ["before, lobby"])

        alice.goto("about:blank")  # alice closes the page
        bob.wait_for(lambda e: e.get("type") == "left" and e["room"] == "lobby")
        missed = [f"missed {i}" for i in range(3)]
        for text in missed:
            bob.say("lobby", text)
        bob.say("dev", "missed, dev")

        frames = sent_frames(alice)
        alice.goto(page_url(port))  # and opens it again: no click needed
        expect_status(alice, "connected")
        expect(alice.locator("#rooms .room-button")).to_have_text(["lobby", re.compile("^dev")])
        expect_texts(alice, ["before, lobby", *missed])
        expect(alice.locator("#messages .new-divider + .message .text")).to_have_text("missed 0")
        expect(unread_badge(alice, "dev")).to_have_text("1")
        joins = {f["room"]: f for f in frames if f.get("type") == "join"}
        assert set(joins) == {"lobby", "dev"} and all("since" in f for f in joins.values())
        assert all(f["username"] == "alice" for f in joins.values())
        shot(alice, "reopened")

        alice.reload()  # nothing new: nothing shown twice
        expect_status(alice, "connected")
        expect_member(alice, "alice")
        expect_texts(alice, ["before, lobby", *missed])
        alice.locator('#rooms .room-button[data-room="dev"]').click()
        expect_texts(alice, ["before, dev", "missed, dev"])
        send(alice, "back")
        assert bob.wait_for_message("dev", "back")["username"] == "alice"
        shot(alice, "dev-after-reload")
        bob.close()
        handshakes.assert_negotiated(compression)


# -- reasons ------------------------------------------------------------------------------


def test_a_refused_handshake_is_explained(new_page: OpenPage, shot: Shot) -> None:
    with server_process() as (_, port):
        # A proxy that refuses WebSockets: its answer, read back by the page, in words.
        with Proxy(port, "refuse-websockets") as proxy:
            alice = new_page("alice")
            join_through(alice, proxy.port, "alice")
            notice = alice.locator("#connection")
            expect(notice).to_contain_text(
                "server refused the connection (HTTP 403): WebSocket upgrades are disabled "
                "on this proxy"
            )
            expect_status(alice, re.compile("^(disconnected|connecting)$"))
            shot(alice, "proxy-refused")

        # A proxy that rewrites Host: the server itself refuses (origin). The browser hides
        # its answer; the page's probe names its origin and gets the same 403 (more in
        # test_page_more.py).
        with Proxy(port, "rewrite-host") as proxy:
            bob = new_page("bob")
            join_through(bob, proxy.port, "bob")
            expect(bob.locator("#connection")).to_contain_text(
                "server refused the connection: origin not allowed"
            )
            shot(bob, "origin-refused")
        # Nothing answers at all any more.
        expect(bob.locator("#connection")).to_contain_text(
            "cannot reach the server", timeout=RECONNECT_TIMEOUT_MS
        )
        shot(bob, "unreachable")


def join_through(page: Page, proxy_port: int, username: str) -> None:
    page.goto(page_url(proxy_port))
    page.fill("#username", username)
    page.click("#connect")


def test_a_dropped_connection_says_why(new_page: OpenPage, shot: Shot) -> None:
    # 1 message/s, 3 at once, and 3 strikes over that before the server closes with 1008.
    # 30 messages: even if a loaded machine spreads their sending over seconds, the
    # refills cannot keep up and the strikes run out.
    with server_process("--rate", "1", "--burst", "3") as (_, port):
        alice = new_page("alice")
        join(alice, port, "alice")
        alice.evaluate(
            """() => {
                 const form = document.getElementById('send-form');
                 for (let i = 0; i < 30; i++) {
                   document.getElementById('message').value = `flood ${i}`;
                   form.requestSubmit();
                 }
               }"""
        )
        expect(alice.locator("#connection")).to_contain_text(
            "you were disconnected: rate limit exceeded repeatedly"
        )
        # What was refused is listed as not sent, with the reason, and can be retried.
        failed = alice.locator("#outgoing .outgoing-item.failed")
        expect(failed.first.locator(".state")).to_have_text(
            re.compile("^Not sent: you are sending too fast")
        )
        expect(failed.last.locator(".state")).to_have_text(
            "Not sent: you were disconnected: rate limit exceeded repeatedly"
        )
        shot(alice, "rate-limited")
        # The page reconnects and rejoins by itself (a join dropped by the limit is retried).
        expect_status(alice, "connected", timeout=RECONNECT_TIMEOUT_MS)
        browser_helpers.wait_joined(alice, timeout_ms=RECONNECT_TIMEOUT_MS)
        expect(alice.locator("#messages .notice")).to_have_count(0)
        delivered = alice.locator("#messages .message .text")
        count = delivered.count()
        alice.wait_for_timeout(1_100)  # a token back in the bucket
        failed.first.locator("button.retry").click()
        expect(delivered).to_have_count(count + 1)


@pytest.mark.redis
def test_a_send_the_hub_could_not_take_is_retried_once_then_shown_failed(
    new_page: OpenPage, shot: Shot
) -> None:
    with RedisProcess() as redis, server_process("--hub", redis.url) as (_, port):
        alice = new_page("alice")
        frames = sent_frames(alice)
        join(alice, port, "alice")
        redis.stop()
        send(alice, "while redis is down")
        failed = alice.locator("#outgoing .outgoing-item.failed")
        expect(failed.locator(".state")).to_contain_text(
            "Not sent: the server could not deliver it right now", timeout=RECONNECT_TIMEOUT_MS
        )
        sends = [f for f in frames if f.get("type") == "message"]
        assert len(sends) == 2 and sends[0] == sends[1], "one retry, with the same id"
        assert sends[0]["id"]
        shot(alice, "send-failed")
        redis.start()
        failed.locator("button.retry").click()
        expect_texts(alice, ["while redis is down"], timeout=RECONNECT_TIMEOUT_MS)
        expect(alice.locator("#outgoing li")).to_have_count(0)


# -- names and lengths ----------------------------------------------------------------------


NAME_CASES = [
    "alice",
    FAMILY,
    FAMILY + " Fam",
    "\u2764\ufe0f",
    "\U0001f3f3\ufe0f\u200d\U0001f308",
    "1\ufe0f\u20e3",
    "\uff41\uff44\uff4d\uff49\uff4e",
    "  Bob  \u00a0Smith ",
    "Zoe\u0308",
    "\u0421\u0430\u0448\u0430 Smith",
    "Tokyo\u6771\u4eac",
    "\u0915\u094d\u200d\u0937",
    "",
    "   ",
    "x" * 33,
    FAMILY * 4 + "abcde",
    "tab\tname",
    "\u3164",
    "\u2800",
    "bob\u2800",
    "\u200b",
    "alice\ufe0f",
    "a\u200db",
    "\u314b\u314b",
    "\ue000",
    "a\u2028b",
    "\u0301a",
    "a" + "\u0301" * 31,
    "e\u0301\u0301",
    "\u0430dmin",
    "\u03a9mega",
    "\u13aalice",
]


def server_verdict(name: str) -> dict[str, Any]:
    try:
        return {"ok": True, "name": enforce_username(name)}
    except UsernameRefused as exc:
        return {"ok": False, "rule": exc.rule}


def check_like_the_page(page: Page, names: list[str]) -> list[dict[str, Any]]:
    verdicts: list[dict[str, Any]] = page.evaluate(
        """async (cases) => {
             const names = await import('/names.js');
             return cases.map((c) => {
               const r = names.checkName(c);
               return r.ok ? {ok: true, name: r.name} : {ok: false, rule: r.rule};
             });
           }""",
        names,
    )
    return verdicts


def test_zwj_emoji_name_accepted_by_page_and_server(new_page: OpenPage, shot: Shot) -> None:
    name = f"{FAMILY} Fam"
    with server_process() as (_, port):
        fam, bob = new_page("fam", PHONE), new_page("bob")
        join(fam, port, name)
        expect(fam.locator("#username-note")).to_be_hidden()
        join(bob, port, "bob")
        send(fam, "hello from the family")
        line = bob.locator("#messages .message").filter(has_text="hello from the family")
        expect(line.locator(".username")).to_have_text(name)
        expect_member(bob, name)
        shot(fam, "family-joined")


def test_name_and_length_rules_agree_with_the_server_and_are_explained(
    new_page: OpenPage, shot: Shot
) -> None:
    with server_process() as (_, port):
        page = new_page("names")
        page.goto(page_url(port))
        # The page's checks (names.js) and the server's (names.py) agree, case by case,
        # and count lengths alike (code points).
        for name, verdict in zip(NAME_CASES, check_like_the_page(page, NAME_CASES), strict=True):
            assert verdict == server_verdict(name), name.encode("unicode_escape")
        samples = [FAMILY, "a\u0301", "\U0001f600" * 3, "plain", "\u00e9t\u00e9"]
        counts = page.evaluate(
            "async (s) => { const n = await import('/names.js'); return s.map(n.codePoints); }",
            samples,
        )
        assert counts == [len(sample) for sample in samples]

        # Explained while typing, before anything is sent.
        note = page.locator("#username-note")
        expect(page.locator("#username-help")).to_contain_text("Up to 32 characters")
        page.fill("#username", "\u0430dmin")
        expect(note).to_contain_text("mixes Cyrillic (\u0430) and Latin (d) letters")
        expect(page.locator("#username")).to_have_attribute("aria-invalid", "true")
        page.click("#connect")
        expect_status(page, "disconnected")  # refused on the page: nothing was sent
        shot(page, "cyrillic-lookalike")
        page.fill("#username", "\uff41\uff44\uff4d\uff49\uff4e")
        expect(note).to_have_text(re.compile("You will appear as “admin”"))
        page.fill("#username", "a" + "\u0301" * 31)
        expect(note).to_contain_text("stacks 31 combining marks")

        # A character newer than the server's Unicode data: the page cannot know, the
        # server refuses, and its reason is shown where the name is typed.
        newer = next(
            (c for c in map(chr, range(0x1FAE8, 0x1FAF0)) if unicodedata.category(c) == "Cn"),
            None,
        )
        if newer is not None and page.evaluate("(c) => !/\\p{Cn}/u.test(c)", newer):
            page.fill("#username", f"bob {newer}")
            page.click("#connect")
            expect(note).to_contain_text("is not assigned in this server's Unicode")
            expect_status(page, "disconnected")
            shot(page, "server-refused-name")


@with_and_without_compression
def test_message_lengths_counted_like_the_server_warned_near_the_limit_never_cut(
    new_page: OpenPage, compression: bool
) -> None:
    # The largest message there is (16 KiB of UTF-8); under --compression Chromium deflates
    # it with the 10-bit window it was asked for, the server inflates it under its cap and
    # sends it back compressed.
    with server_process(*compression_flags(compression)) as (_, port):
        page = new_page("alice")
        handshakes = Handshakes(page)
        join(page, port, "alice")
        # Counted alike (code points), warned about near the limit, never cut.
        longest = "\U0001f600" * 4096  # 4,096 code points, 8,192 UTF-16 units
        page.fill("#message", longest)
        expect(page.locator("#counter")).to_have_text("4,096 of 4,096 characters.")
        page.click("#send")
        expect(page.locator("#messages .message .text")).to_have_text([longest])
        too_long = "y" * 5000
        page.fill("#message", too_long)
        expect(page.locator("#counter")).to_contain_text("remove 904 to send")
        page.click("#send")
        expect(page.locator("#send-hint")).to_contain_text("904 characters over the limit")
        assert page.input_value("#message") == too_long  # nothing cut
        expect(page.locator("#messages .message")).to_have_count(1)
        handshakes.assert_negotiated(compression)


# -- identity -----------------------------------------------------------------------------


def unsigned_jwt(claims: dict[str, str]) -> str:
    """A JWT-shaped token (the page only reads its claims for display)."""

    def part(obj: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none'})}.{part(claims)}."


def test_a_token_in_the_url_is_used_and_the_identity_shown(new_page: OpenPage) -> None:
    token = unsigned_jwt({"sub": "alice", "name": "Alice Liddell"})
    with server_process() as (_, port):
        alice = new_page("alice")
        urls: list[str] = []
        alice.on("websocket", lambda socket: urls.append(socket.url))
        alice.goto(f"{page_url(port)}?token={token}")
        expect(alice.locator("#identity-name")).to_have_text("Alice Liddell")
        expect(alice.locator("#username")).to_be_hidden()
        assert "token" not in alice.url  # out of the address bar and the history
        alice.fill("#room", "lobby")
        alice.click("#connect")
        expect_status(alice, "connected")
        expect_member(alice, "alice")
        assert urls and all(f"token={token}" in url for url in urls)
        alice.reload()  # the token lasts for the tab (sessionStorage)
        expect_status(alice, "connected")
        expect(alice.locator("#identity-name")).to_have_text("Alice Liddell")


# -- accessibility ------------------------------------------------------------------------


def test_keyboard_only_join_and_chat(new_page: OpenPage) -> None:
    with server_process() as (_, port):
        alice = new_page("alice")
        alice.goto(page_url(port))
        expect(alice.locator("#username")).to_be_focused()
        alice.keyboard.type("alice")
        alice.keyboard.press("Tab")  # to the room field (past the help text)
        expect(alice.locator("#room")).to_be_focused()
        alice.keyboard.press("Enter")
        expect_status(alice, "connected")
        expect(alice.locator("#message")).to_be_focused()
        # Connected comes before the join's history; until it is in, the page keeps a send.
        browser_helpers.wait_joined(alice)
        alice.keyboard.type("typed, never clicked")
        alice.keyboard.press("Enter")
        expect_texts(alice, ["typed, never clicked"])
        # The rooms are buttons in the tab order, after the join form.
        alice.locator("#room").focus()
        lobby = alice.locator('#rooms .room-button[data-room="lobby"]')
        for _ in range(4):
            alice.keyboard.press("Tab")
            if lobby.evaluate("(e) => e === document.activeElement"):
                break
        expect(lobby).to_be_focused()
        alice.keyboard.press("Tab")
        expect(alice.locator('#rooms .leave-button[aria-label="Leave lobby"]')).to_be_focused()
        labels = alice.evaluate(
            """() => [...document.querySelectorAll('input, textarea')]
                   .filter((e) => e.offsetParent !== null)
                   .map((e) => e.labels.length > 0)"""
        )
        assert labels and all(labels), "every visible field has a label"
        assert alice.get_attribute("#messages", "role") == "log"
        assert alice.get_attribute("#messages", "aria-live") == "polite"


CONTRAST = (Path(__file__).parent / "contrast.js").read_text()


def test_contrast_meets_wcag_aa(new_page: OpenPage, shot: Shot) -> None:
    """Every text on screen, in every kind of line the page shows, against its background."""
    with server_process() as (_, port):
        alice = new_page("alice")
        join(alice, port, "alice")
        join_another(alice, "dev")
        alice.locator('#rooms .room-button[data-room="lobby"]').click()
        bob = ChatClient(port, "bob", "dev")
        bob.join("lobby")
        bob.say("dev", "an unread one")
        expect(unread_badge(alice, "dev")).to_have_text("1")
        send(alice, "mine")
        bob.say("lobby", "theirs")
        expect_texts(alice, ["mine", "theirs"])
        alice.fill("#message", "z" * 4100)  # the counter, over the limit
        # Kinds of line this server cannot produce yet: rendered by the page's own module.
        alice.evaluate(
            """async () => {
                 const {Conversation} = await import('/conversation.js');
                 const c = new Conversation(document.getElementById('messages'),
                   {isOwn: () => false, nameOf: (e) => e.name || e.username});
                 const time = new Date().toISOString();
                 c.divider();
                 c.append({type: 'message', username: 'bot', server: true,
                           message: 'by the server', time});
                 c.append({type: 'notice', text: 'a notice', time});
                 c.append({type: 'error', text: 'an error', time});
                 for (const u of ['u1', 'u2', 'u3']) c.append({type: 'joined', username: u, time});
                 document.getElementById('connection').hidden = false;
                 document.getElementById('connection').textContent = 'you were disconnected';
                 document.getElementById('send-hint').hidden = false;
                 document.getElementById('send-hint').textContent = 'a hint';
                 document.getElementById('username-note').textContent = 'a problem';
                 document.getElementById('username-note').classList.add('error-text');
               }"""
        )
        server_line = alice.locator("#messages .message.server")
        expect(server_line.locator(".server-badge")).to_have_text("server")
        expect(alice.locator("#messages .membership-run summary")).to_have_text(
            "u1, u2 and u3 joined"
        )
        shot(alice, "all-kinds-of-lines")
        results = alice.evaluate(CONTRAST)
        for status in ("connecting", "disconnected"):
            alice.evaluate(f"document.getElementById('status').dataset.state = '{status}'")
            results += alice.evaluate(CONTRAST)
        failing = [r for r in results if r["ratio"] < r["need"]]
        assert len(results) > 20
        assert not failing, failing
        bob.close()
