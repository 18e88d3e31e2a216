"""HTTP hardening over loopback (issue 8 item 6): security headers and the Host check.

A real server (``running_server``) answers httpx and the ``websockets`` client;
the Host header is set by hand, because a DNS-rebinding attack is exactly a
request for our socket carrying someone else's name. The last test loads the
page in headless Chromium to see the Content-Security-Policy at work.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.helpers import require, running_server, server_process
from wschat.app.api import api_error
from wschat.cli import build_parser, config_from_args

HAVE_PLAYWRIGHT = importlib.util.find_spec("playwright") is not None
if HAVE_PLAYWRIGHT:
    from playwright.sync_api import expect, sync_playwright
if TYPE_CHECKING:
    from playwright.sync_api import ConsoleMessage

from tests.browser_helpers import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    STEP_TIMEOUT_MS,
    expect_member,
)


async def get(
    port: int, path: str, *, host: str | None = None, method: str = "GET", **headers: str
) -> httpx.Response:
    """One request to the loopback server, with ``Host`` set by hand when given."""
    if host is not None:
        headers["Host"] = host
    async with httpx.AsyncClient(timeout=5) as client:
        return await client.request(method, f"http://127.0.0.1:{port}{path}", headers=headers)


async def open_websocket(port: int, host: str, origin: str | None = None) -> None:
    """Connect to our loopback socket while the handshake names ``host``; close politely."""
    # The URI gives the Host header; host/port say where TCP really goes.
    async with connect(
        f"ws://{host}/ws", host="127.0.0.1", port=port, origin=origin, open_timeout=5
    ) as ws:
        await ws.send('{"type": "join", "room": "lobby", "username": "probe"}')
        assert await ws.recv(decode=True)


def directives(policy: str) -> dict[str, list[str]]:
    parsed = {}
    for directive in policy.split(";"):
        name, *values = directive.split()
        parsed[name] = values
    return parsed


# -- security headers ------------------------------------------------------------


@pytest.mark.anyio
class TestSecurityHeaders:
    @pytest.mark.parametrize(
        ("path", "status"),
        [
            ("/", 200),
            ("/app.js", 200),
            ("/style.css", 200),
            ("/nope", 404),
            ("/healthz", 200),
            ("/metrics", 200),
        ],
    )
    async def test_every_page_asset_and_api_answer_carries_them(
        self, path: str, status: int
    ) -> None:
        async with running_server() as server:
            response = await get(server.port, path)
        assert response.status_code == status
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        policy = directives(response.headers["content-security-policy"])
        assert policy["script-src"] == ["'self'"]  # no inline script, no eval
        assert policy["frame-ancestors"] == ["'none'"]
        assert policy["connect-src"] == ["'self'"]  # the page's own WebSocket, nothing else
        assert policy["default-src"] == ["'none'"]
        assert not any("unsafe" in v for values in policy.values() for v in values)

    def test_http_api_answers_carry_them_too(self) -> None:
        # wschat.app's HTTP API answers with the same Response type.
        response = api_error(404, "not_found", "not found: /api/x")
        assert dict(response.headers)["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in dict(response.headers)["content-security-policy"]

    async def test_head_gets_the_get_headers_and_no_body(self) -> None:
        async with running_server() as server:
            head = await get(server.port, "/app.js", method="HEAD")
            full = await get(server.port, "/app.js")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-length"] == full.headers["content-length"]
        assert int(full.headers["content-length"]) == len(full.content) > 0
        assert head.headers["content-security-policy"] == full.headers["content-security-policy"]

    async def test_post_to_an_asset_names_get_and_head(self) -> None:
        async with running_server() as server:
            response = await get(server.port, "/app.js", method="POST")
        assert response.status_code == 405
        assert response.headers["allow"] == "GET, HEAD"
        assert response.headers["x-content-type-options"] == "nosniff"


# -- Host and Origin (DNS rebinding) ----------------------------------------------


@pytest.mark.anyio
class TestHostCheck:
    @pytest.mark.parametrize("path", ["/", "/app.js", "/healthz", "/metrics", "/ws"])
    async def test_rebinding_is_refused_with_421(self, path: str) -> None:
        async with running_server() as server:
            name = f"attacker.example:{server.port}"
            response = await get(server.port, path, host=name, Origin=f"http://{name}")
        assert response.status_code == 421
        assert response.text == f"host not allowed: {name} (see --allow-host)\n"

    async def test_rebinding_websocket_is_refused_for_the_websockets_client(self) -> None:
        async with running_server() as server:
            name = f"attacker.example:{server.port}"
            with pytest.raises(InvalidStatus) as info:
                await open_websocket(server.port, name, origin=f"http://{name}")
        assert info.value.response.status_code == 421
        assert b"host not allowed: attacker.example" in info.value.response.body

    @pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "[::1]"])
    async def test_loopback_names_and_the_bound_address_are_accepted(self, name: str) -> None:
        # 127.0.0.1 is also the address the test server is bound to.
        async with running_server() as server:
            host = f"{name}:{server.port}"
            await open_websocket(server.port, host, origin=f"http://{host}")
            assert (await get(server.port, "/", host=host)).status_code == 200

    async def test_allowed_name_and_subdomain_pattern(self) -> None:
        async with running_server(allowed_hosts=("chat.example.com", "*.corp.example")) as server:
            port = server.port
            await open_websocket(
                port, f"chat.example.com:{port}", f"https://chat.example.com:{port}"
            )
            await open_websocket(port, f"eu.corp.example:{port}", f"http://eu.corp.example:{port}")
            assert (await get(port, "/", host=f"corp.example:{port}")).status_code == 421
            assert (await get(port, "/", host=f"attacker.example:{port}")).status_code == 421

    async def test_star_allows_any_host(self) -> None:
        # Behind a proxy that rewrites Host: the deployment opts out of the check.
        async with running_server(allowed_hosts=("*",)) as server:
            name = f"anything.example:{server.port}"
            await open_websocket(server.port, name, origin=f"http://{name}")

    async def test_the_origin_check_still_applies_to_an_allowed_host(self) -> None:
        async with running_server(allowed_hosts=("chat.example.com",)) as server:
            with pytest.raises(InvalidStatus) as info:
                await open_websocket(
                    server.port, f"chat.example.com:{server.port}", origin="http://evil.example"
                )
        assert info.value.response.status_code == 403


class TestAllowHostFlag:
    def test_flag_is_repeatable(self) -> None:
        args = build_parser().parse_args(
            ["serve", "--allow-host", "chat.example.com", "--allow-host", "*.corp.example"]
        )
        assert config_from_args(args).allowed_hosts == ("chat.example.com", "*.corp.example")

    def test_environment_variable(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WSCHAT_ALLOWED_HOSTS", "a.example, b.example")
        config = config_from_args(build_parser().parse_args(["serve"]))
        assert config.allowed_hosts == ("a.example", "b.example")

    def test_default_is_empty(self) -> None:
        assert config_from_args(build_parser().parse_args(["serve"])).allowed_hosts == ()


# -- the Content-Security-Policy in a real browser ----------------------------------


@pytest.mark.browser
def test_page_works_under_its_csp_which_blocks_injected_inline_code() -> None:
    require(HAVE_PLAYWRIGHT, "the playwright Python package")
    require(os.access(CHROMIUM, os.X_OK), CHROMIUM)
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    expect.set_options(timeout=STEP_TIMEOUT_MS)  # expect_member() uses the default
    with server_process() as (_, port), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.on("console", on_console)
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#username", "alice")
            page.click("#connect")
            # The WebSocket to the page's own host passes connect-src 'self'.
            expect(page.locator("#status")).to_have_text("connected", timeout=STEP_TIMEOUT_MS)
            expect_member(page, "alice")  # joined: a send before the join is kept, not sent
            page.fill("#message", "under CSP")
            page.click("#send")
            expect(page.locator("#messages .message .text")).to_have_text(
                ["under CSP"], timeout=STEP_TIMEOUT_MS
            )
            assert violations == []  # the page itself needs nothing the policy forbids

            # Markup injected despite the page's escaping still cannot run code.
            directive = page.evaluate(
                """() => new Promise((resolve) => {
                    document.addEventListener(
                        'securitypolicyviolation', (e) => resolve(e.effectiveDirective));
                    document.body.insertAdjacentHTML(
                        'beforeend', '<img src=x onerror="window.__xss = 1">');
                })"""
            )
            assert directive == "script-src-attr"  # inline handlers fall under script-src
            assert page.evaluate("() => typeof window.__xss") == "undefined"

            # frame-ancestors 'none': another page cannot frame the chat (clickjacking).
            framer = browser.new_page()
            with framer.expect_console_message(lambda m: "frame-ancestors" in m.text):
                framer.set_content(f'<iframe src="http://127.0.0.1:{port}/"></iframe>')
            (framed,) = [f for f in framer.frames if f is not framer.main_frame]
            assert framed.locator("#join-form").count() == 0
        finally:
            browser.close()
