"""Shared by the browser test modules: Chromium through Playwright's sync API, page helpers,
screenshots, an independent ``websockets`` chat client, and a small HTTP proxy.

Each browser module imports the fixtures (``browser``, ``new_page``, ``shot``) from here,
so it launches one Chromium for all its tests. Only Playwright's sync API is used: it
runs its own event loop, so these modules have no anyio tests.

The page carries its own Content-Security-Policy (scripts and styles from its own
origin only, nothing inline): a page that breaks it logs a violation, and the test
fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest
from websockets.sync.client import ClientConnection, connect

from tests.helpers import ROOT, require

HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
if HAVE_PLAYWRIGHT:
    from playwright.sync_api import expect, sync_playwright
if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page

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
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
VIEWPORTS = {"desktop": DESKTOP, "phone": PHONE}
# How long a page may take to reconnect: the page's backoff is random(0, min(10 s,
# 0.5 s * 2^attempt)), so a few failed attempts can push one retry to several seconds.
RECONNECT_TIMEOUT_MS = 15_000
# A step (an action, or an expect() turning true): generous, because CI shares
# two cores between chromium, the server and the other test processes. A page
# that is right gets there in well under a second; the wait ends as soon as it does.
STEP_TIMEOUT_MS = 10_000
SETTLED = re.compile(r"^(connecting|disconnected)$")
ARTIFACTS = ROOT / "test-artifacts" / "browser"


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require(HAVE_PLAYWRIGHT, "the playwright Python package")
    require(os.access(CHROMIUM, os.X_OK), CHROMIUM)
    expect.set_options(timeout=STEP_TIMEOUT_MS)  # expect()'s own default is 5 s

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


class OpenPage:
    """Factory for pages, each in its own browser context (users share nothing)."""

    def __init__(self, browser: Browser, artifacts: Path) -> None:
        self.browser = browser
        self.artifacts = artifacts
        self.contexts: list[tuple[str, BrowserContext]] = []
        self.problems: list[str] = []
        self.refusals_expected: list[str] = []
        """URL paths whose error answers a test provokes on purpose (e.g. a wrong password)."""

    def __call__(self, name: str, viewport: dict[str, int] | None = None) -> Page:
        context = self.browser.new_context(viewport=viewport or DESKTOP)  # type: ignore[arg-type]
        context.set_default_timeout(STEP_TIMEOUT_MS)
        self.contexts.append((name, context))
        page = context.new_page()
        self.watch(name, page)
        return page

    def watch(self, name: str, page: Page) -> None:
        """Fail the test on uncaught errors and CSP violations in ``page``."""
        page.on("pageerror", lambda exc: self.problems.append(f"{name}: {exc}"))

        def on_console(message: ConsoleMessage) -> None:
            if message.type != "error":
                return
            url = message.location.get("url", "")
            # A missing asset (a module not in STATIC_FILES, say) or a CSP violation; the
            # page's own probe of a refused /ws answers with an error status on purpose.
            failed_load = "the server responded with a status of" in message.text and not any(
                path in url for path in ["/ws", *self.refusals_expected]
            )
            if failed_load or "Content Security Policy" in message.text:
                self.problems.append(f"{name}: {message.text} {url}")

        page.on("console", on_console)

    def close(self) -> None:
        for name, context in self.contexts:
            for index, page in enumerate(context.pages):
                if not page.is_closed() and page.url.startswith("http"):
                    # The last state of every page, for a look after a failure.
                    page.screenshot(path=self.artifacts / f"zz-last-{name}-{index}.png")
            context.close()


@pytest.fixture
def artifacts(request: pytest.FixtureRequest) -> Path:
    """This test's screenshot folder (gitignored; printed, so a failure shows where)."""
    folder = ARTIFACTS / request.node.module.__name__.rsplit(".", 1)[-1] / _safe(request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    print(f"screenshots: {folder}")
    return folder


@pytest.fixture
def new_page(browser: Browser, artifacts: Path) -> Iterator[OpenPage]:
    pages = OpenPage(browser, artifacts)
    yield pages
    pages.close()
    assert not pages.problems, f"errors in the page: {pages.problems}"


Shot = Callable[["Page", str], None]


@pytest.fixture
def shot(artifacts: Path) -> Shot:
    """``shot(page, "two-rooms")`` saves a numbered screenshot of the page's state."""
    count = iter(range(1, 100))

    def take(page: Page, label: str) -> None:
        page.screenshot(path=artifacts / f"{next(count):02d}-{_safe(label)}.png")

    return take


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-")


# -- page helpers ---------------------------------------------------------------


def page_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/"


def expect_status(
    page: Page, status: str | re.Pattern[str], timeout: int = STEP_TIMEOUT_MS
) -> None:
    expect(page.locator("#status")).to_have_text(status, timeout=timeout)


def open_sidebar_if_narrow(page: Page) -> None:
    """On a phone the name and room fields are in a drawer behind the Rooms button."""
    toggle = page.locator("#rooms-toggle")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") != "true":
        toggle.click()


def join(page: Page, port: int, username: str, room: str = "lobby") -> None:
    """Open the page, join ``room`` as ``username`` and wait until the page can send there."""
    page.goto(page_url(port))
    expect_status(page, "disconnected")
    open_sidebar_if_narrow(page)
    page.fill("#username", username)
    page.fill("#room", room)
    page.click("#connect")
    expect_status(page, "connected")
    expect_member(page, username)
    # The member list can show the presence before the join's history arrives; until then
    # the page keeps what is typed instead of sending it.
    wait_joined(page, room)


def wait_joined(page: Page, room: str = "lobby", timeout_ms: int = STEP_TIMEOUT_MS) -> None:
    """Wait until the page has the join's history of ``room`` (it sends there from then on).

    Polled with ``evaluate`` from here: ``wait_for_function`` with a string may need
    ``eval``, which the page's Content-Security-Policy forbids.
    """
    deadline = time.monotonic() + timeout_ms / 1000
    check = f"window.wschat.joined({json.dumps(room)})"
    while not page.evaluate(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"the page did not join {room!r} within {timeout_ms} ms")
        page.wait_for_timeout(50)


def join_another(page: Page, room: str) -> None:
    """Join one more room from the join form (same connection)."""
    open_sidebar_if_narrow(page)
    page.fill("#room", room)
    page.click("#connect")
    expect(page.locator(f'#rooms .room-button[data-room="{room}"]')).to_have_count(1)


def expect_member(page: Page, username: str) -> None:
    """The join's history and presence have arrived once ``username`` is a member."""
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


# -- permessage-deflate as Chromium negotiates it ------------------------------------

# Chromium's offer (Edge's too), and wschat's answer to it under --compression.
CHROMIUM_DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
DEFLATE_ANSWER = (
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
    "client_max_window_bits=10"
)
# For tests that run against the server with and without --compression.
with_and_without_compression = pytest.mark.parametrize(
    "compression", [False, True], ids=["plain", "deflate"]
)


def compression_flags(compression: bool) -> list[str]:
    """``wschat serve`` flags for the ``compression`` parameter."""
    return ["--compression"] if compression else []


class Handshakes:
    """A page's WebSocket handshakes as Chromium's network stack saw them (DevTools)."""

    def __init__(self, page: Page) -> None:
        self.offers: list[str | None] = []
        self.answers: list[str | None] = []
        session = page.context.new_cdp_session(page)
        session.on("Network.webSocketWillSendHandshakeRequest", self._request)
        session.on("Network.webSocketHandshakeResponseReceived", self._response)
        session.send("Network.enable")

    def _request(self, event: dict[str, Any]) -> None:
        self.offers.append(_header(event["request"]["headers"], "sec-websocket-extensions"))

    def _response(self, event: dict[str, Any]) -> None:
        self.answers.append(_header(event["response"]["headers"], "sec-websocket-extensions"))

    def assert_negotiated(self, compression: bool) -> None:
        """Chromium offered deflate every time, and got the answer ``compression`` calls for."""
        assert self.answers, "no WebSocket handshake seen"
        assert set(self.offers) == {CHROMIUM_DEFLATE_OFFER}, self.offers
        assert set(self.answers) == {DEFLATE_ANSWER if compression else None}, self.answers


def _header(headers: dict[str, str], name: str) -> str | None:
    return next((v for k, v in headers.items() if k.lower() == name), None)


# -- an independent client --------------------------------------------------------


class ChatClient:
    """A chat user on the ``websockets`` library (not the page), for other people in a room."""

    def __init__(
        self, port: int, username: str, room: str = "lobby", token: str | None = None
    ) -> None:
        self.username = username  # with a token: the token's user (its sub)
        # Unbounded queue: a client that reads little still reads the server's close frame.
        self._stack = contextlib.ExitStack()
        url = f"ws://127.0.0.1:{port}/ws?room={room}" + (f"&token={token}" if token else "")
        self.socket: ClientConnection = self._stack.enter_context(
            connect(url, max_queue=None, close_timeout=2)
        )
        self.join(room)

    def send_json(self, payload: dict[str, Any]) -> None:
        self.socket.send(json.dumps(payload))

    def join(self, room: str) -> None:
        self.send_json({"type": "join", "room": room, "username": self.username})
        self.wait_for(lambda event: event.get("type") == "presence" and event["room"] == room)

    def say(self, room: str, text: str) -> None:
        self.send_json({"type": "message", "room": room, "message": text})

    def wait_for(self, matches: Callable[[dict[str, Any]], bool], timeout: float = 5) -> Any:
        """Read events until one ``matches``; return it."""
        while True:
            event = json.loads(self.socket.recv(timeout=timeout))
            if matches(event):
                return event

    def wait_for_message(self, room: str, text: str) -> dict[str, Any]:
        """The ``message`` event with this text in ``room``."""
        event: dict[str, Any] = self.wait_for(
            lambda e: e.get("type") == "message" and e["room"] == room and e["message"] == text
        )
        return event

    def close(self) -> None:
        self._stack.close()


# -- a proxy in front of the server --------------------------------------------------


ProxyMode = Literal["refuse-websockets", "rewrite-host"]


class Proxy:
    """An HTTP proxy on 127.0.0.1 in front of a wschat server, misconfigured on purpose.

    ``refuse-websockets``: answers every request for ``/ws`` with 403 and a reason, as a
    proxy that forbids WebSockets does. ``rewrite-host``: passes everything on but sets
    ``Host`` to the server's own address (nginx's ``proxy_pass`` without
    ``proxy_set_header Host``), so the server sees a cross-origin handshake and refuses
    it with its own 403. Everything else is passed through, one request per connection
    (WebSocket upgrades are piped both ways).
    """

    REFUSAL = b"WebSocket upgrades are disabled on this proxy"

    def __init__(self, upstream_port: int, mode: ProxyMode) -> None:
        self.upstream_port = upstream_port
        self.mode = mode
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, client: socket.socket) -> None:
        head, rest = _read_head(client)
        if not head:
            return
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        path = request_line.split(" ")[1] if request_line.count(" ") >= 2 else "/"
        if self.mode == "refuse-websockets" and path.split("?")[0] == "/ws":
            client.sendall(
                b"HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\n"
                + f"content-length: {len(self.REFUSAL)}\r\nconnection: close\r\n\r\n".encode()
                + self.REFUSAL
            )
            return
        upgrade = any(line.lower().startswith("upgrade:") for line in header_lines)
        headers = []
        for line in header_lines:
            name = line.split(":", 1)[0].lower()
            if name == "host" and self.mode == "rewrite-host":
                line = f"Host: 127.0.0.1:{self.upstream_port}"
            if name == "connection" and not upgrade:
                continue
            headers.append(line)
        if not upgrade:
            headers.append("Connection: close")
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with upstream:
            upstream.sendall(("\r\n".join([request_line, *headers]) + "\r\n\r\n").encode("latin-1"))
            upstream.sendall(rest)
            back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
            back.start()
            _pipe(client, upstream)
            back.join(timeout=10)


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b"", b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _pipe(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)
