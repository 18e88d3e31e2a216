"""The examples under examples/, in the parts that run without the server's app integration.

The login server runs for real on a loopback port and is driven by httpx; the
tokens it issues are checked by the example chat app's own verifier. The
moderation hook and the bot's answers are called as the server calls them.
Each example run end to end, as its README says, is in test_examples_run.py;
the tutorial that walks through them, in test_tutorial.py.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest

from examples.bot.bot import BOT, HELP, answer, bot_claims, should_answer
from examples.jwt_login import login
from examples.jwt_login.settings import AUDIENCE, ISSUER, SECRET
from examples.moderation.chat import moderate
from wschat.app import App, Identity, Rejection, load_app


@pytest.fixture
def login_server() -> Iterator[str]:
    server = login.make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def chat_app() -> App:
    return load_app("examples.jwt_login.chat:app")


class TestJwtLogin:
    def test_the_app_requires_tokens(self, chat_app: App) -> None:
        assert chat_app.auth_mode == "required"
        assert chat_app.verifier is not None and chat_app.verifier.audience == AUDIENCE

    def test_login_gives_a_token_the_chat_accepts(self, login_server: str, chat_app: App) -> None:
        response = httpx.post(
            f"{login_server}/token", json={"username": "alice", "password": "wonderland"}
        )
        assert response.status_code == 200
        answer_ = response.json()
        assert chat_app.verifier is not None
        identity = chat_app.verifier.verify(answer_["token"])
        assert (identity.user_id, identity.name) == ("alice", "Alice")
        assert identity.expires_at == answer_["expires"] > time.time() + 3000

    @pytest.mark.parametrize(
        "form",
        [
            {"username": "alice", "password": "wrong"},
            {"username": "mallory", "password": "wonderland"},
        ],
    )
    def test_bad_password_is_401(self, login_server: str, form: dict[str, str]) -> None:
        response = httpx.post(f"{login_server}/token", json=form)
        assert response.status_code == 401
        assert response.json() == {"error": "wrong username or password"}

    def test_malformed_login_is_400(self, login_server: str) -> None:
        assert httpx.post(f"{login_server}/token", content=b"[]").status_code == 400

    def test_refresh(self, login_server: str, chat_app: App) -> None:
        old = httpx.post(
            f"{login_server}/token", json={"username": "bob", "password": "builder"}
        ).json()["token"]
        response = httpx.post(f"{login_server}/refresh", headers={"authorization": f"Bearer {old}"})
        assert response.status_code == 200
        assert chat_app.verifier is not None
        assert chat_app.verifier.verify(response.json()["token"]).user_id == "bob"

    def test_refresh_needs_a_valid_token(self, login_server: str) -> None:
        expired = jwt.encode(
            {"sub": "bob", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) - 5},
            SECRET,
        )
        for headers in ({}, {"authorization": f"Bearer {expired}"}):
            response = httpx.post(f"{login_server}/refresh", headers=headers)
            assert response.status_code == 401 and response.json()["error"]

    def test_the_page_is_served_with_the_chat_url(self, login_server: str) -> None:
        page = httpx.get(f"{login_server}/").text
        assert "{{CHAT_URL}}" not in page and '"ws://' in page
        assert "type: 'auth'" in page  # the token goes in the first message


class TestModeration:
    alice = Identity("alice", "Alice")
    anonymous = Identity.anonymous("guest")

    def test_masks_banned_words(self) -> None:
        assert moderate(self.alice, "lobby", "oh heck, Darn it") == "oh ****, **** it"

    def test_slash_commands(self) -> None:
        assert moderate(self.alice, "lobby", "/me waves") == "* Alice waves"
        assert moderate(self.alice, "lobby", "/shrug") == "¯\\_(ツ)_/¯"

    @pytest.mark.parametrize(
        ("identity", "text", "code"),
        [
            (alice, "WHY IS NOBODY ANSWERING", "shouting"),
            (anonymous, "buy now at https://spam.example", "no_links"),
        ],
    )
    def test_rejections(self, identity: Identity, text: str, code: str) -> None:
        with pytest.raises(Rejection) as info:
            moderate(identity, "lobby", text)
        assert info.value.code == code and info.value.reason

    def test_lets_the_rest_through(self) -> None:
        assert moderate(self.alice, "lobby", "OK LOL") == "OK LOL"
        assert moderate(self.alice, "lobby", "see https://example.com") == "see https://example.com"

    def test_the_app_uses_the_hook(self) -> None:
        assert load_app("examples.moderation.chat:app").on_message is moderate


class TestBot:
    def test_answers(self) -> None:
        rng = random.Random(7)
        assert answer("!help", 0, rng) == HELP
        assert answer("!time", 3723, rng) == "it is 01:02:03 UTC"
        rolled = answer("!roll 3d6", 0, rng)
        assert rolled is not None and rolled.startswith("rolled 3d6: ")
        total = int(rolled.rsplit("= ", 1)[1])
        assert 3 <= total <= 18
        assert answer("!roll 99d6", 0, rng) == "I roll 1-20 dice of 2-100 sides"
        assert answer("hello", 0, rng) is None

    def test_listens_to_people_only(self) -> None:
        assert should_answer({"type": "message", "username": "alice", "message": "!help"}) == (
            "!help"
        )
        for event in (
            {"type": "message", "username": BOT, "message": "!help"},
            {"type": "message", "username": "x", "message": "!help", "server": True},
            {"type": "typing", "username": "alice"},
        ):
            assert should_answer(event) is None

    def test_its_own_token_passes_the_chats_checks(self, chat_app: App) -> None:
        claims = bot_claims(time.time(), AUDIENCE, ISSUER)
        assert chat_app.verifier is not None
        identity = chat_app.verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
        assert identity.user_id == BOT
