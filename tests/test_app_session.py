"""The app's rules for one connection, frame by frame: App.admit, then AppSession.handle.

Real tokens (PyJWT, HS256), the real ChatSession, the real App and its default
hooks; time is passed in, so expiry and deadlines are exact. What the server
does with each outcome is the server's (its loopback tests come with the
integration); here each outcome is checked as the contract says.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import anyio
import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wschat.app import (
    CLOSE_FORBIDDEN,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    Admission,
    App,
    AppConfig,
    AppSession,
    Authenticated,
    Close,
    Identity,
    JoinRoom,
    LeaveRoom,
    Publish,
    Rejection,
    Relay,
    Reply,
    UpgradeRequest,
    close_deadline,
    upgrade_refusal,
)
from wschat.chat import ChatSession, Position
from wschat.server import ServerConfig
from wschat.server.http import SECURITY_HEADERS, Response

pytestmark = pytest.mark.anyio


def own_headers(response: Response) -> tuple[tuple[str, str], ...]:
    """A response's headers without the security headers every answer carries."""
    return tuple(h for h in response.headers if h not in SECURITY_HEADERS)


SECRET = "test-secret-test-secret-test-secret!"
NOW = time.time()


def token(sub: str = "alice", lifetime: float = 300, **extra: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + int(lifetime), **extra}
    return jwt.encode(payload, SECRET, algorithm="HS256")


def make_app(auth: str | None = None, **hooks: Any) -> App:
    return App(ServerConfig(handshake_timeout=10), AppConfig(auth=auth, jwt_secret=SECRET), **hooks)  # type: ignore[arg-type]


# The query of a client that will authenticate with its first message.
FIRST_MESSAGE = "auth=message"


def upgrade(query: str = "", *headers: tuple[str, str]) -> UpgradeRequest:
    return UpgradeRequest("/ws", query, tuple(headers), "127.0.0.1:5000")


async def connect(app: App, query: str = "", room: str = "lobby") -> AppSession:
    admission = await app.admit(upgrade(query), room)
    return app.open_session(ChatSession(room), admission, NOW)


def error_of(outcome: object) -> dict[str, Any]:
    assert isinstance(outcome, Reply), outcome
    event: dict[str, Any] = json.loads(outcome.payload)
    assert event["type"] == "error" and event["reason"]
    return event


def frame(**obj: Any) -> str:
    return json.dumps(obj)


class TestAdmit:
    async def test_auth_off_is_todays_chat(self) -> None:
        app = App()
        assert app.auth_mode == "off"
        admission = await app.admit(upgrade("token=whatever"), "lobby")
        assert admission == Admission(None)

    async def test_a_jwt_key_makes_auth_required(self) -> None:
        app = make_app()
        assert app.auth_mode == "required"

    async def test_token_in_the_query(self) -> None:
        session = await connect(make_app(), f"room=lobby&token={token(name='Alice')}")
        assert session.identity is not None and session.identity.user_id == "alice"
        assert session.chat.username == "alice"
        greeting = session.greeting()
        assert greeting is not None
        event = json.loads(greeting)
        assert event["type"] == "authenticated"
        assert (event["username"], event["name"]) == ("alice", "Alice")
        assert isinstance(event["expires"], int)

    async def test_token_in_a_cookie(self) -> None:
        app = App(settings=AppConfig(jwt_secret=SECRET, jwt_cookie="chat"))
        admission = await app.admit(upgrade("", ("cookie", f"chat={token()}")), "lobby")
        assert admission.identity is not None and admission.identity.user_id == "alice"

    @pytest.mark.parametrize("mode", ["required", "optional"])
    async def test_invalid_token_is_401(self, mode: str) -> None:
        with pytest.raises(Rejection) as info:
            await make_app(mode).admit(upgrade("token=forged"), "lobby")
        assert info.value.status == 401 and info.value.reason.startswith("not a JWT")

    async def test_refusals_as_http_answers(self) -> None:
        with pytest.raises(Rejection) as info:
            await make_app().admit(upgrade("token=forged"), "lobby")
        response = upgrade_refusal(info.value)
        assert response.status == 401 and response.body.startswith(b"not a JWT")
        # RFC 7235 3.1: a 401 carries the challenge (besides the security headers
        # every wschat answer carries).
        assert own_headers(response) == (("www-authenticate", 'Bearer realm="wschat"'),)
        forbidden = upgrade_refusal(Rejection.forbidden("not your room"))
        assert (forbidden.status, forbidden.body, own_headers(forbidden)) == (
            403,
            b"not your room\n",
            (),
        )

    async def test_expired_token_is_401(self) -> None:
        with pytest.raises(Rejection) as info:
            await make_app().admit(upgrade(f"token={token(lifetime=-120)}"), "lobby")
        assert (info.value.status, info.value.code) == (401, "token_expired")

    async def test_no_token_under_required_is_401(self) -> None:
        with pytest.raises(Rejection) as info:
            await make_app().admit(upgrade(), "lobby")
        assert (info.value.status, info.value.code) == (401, "unauthorized")
        assert "?auth=message" in info.value.reason

    async def test_no_token_but_auth_message_waits_for_the_first_message(self) -> None:
        admission = await make_app().admit(upgrade(FIRST_MESSAGE), "lobby")
        assert admission == Admission(None, pending=True)

    async def test_no_token_under_optional_is_anonymous(self) -> None:
        assert await make_app("optional").admit(upgrade(), "lobby") == Admission(None)

    async def test_denied_url_room_is_403(self) -> None:
        app = make_app()
        with pytest.raises(Rejection) as info:
            await app.admit(upgrade(f"token={token(rooms=['lobby'])}"), "secret")
        assert info.value.status == 403 and "does not allow" in info.value.reason
        with pytest.raises(Rejection) as info:
            await App().admit(upgrade(), "dm:alice:bob")  # anonymous: no direct rooms
        assert info.value.status == 403

    async def test_custom_authenticate_hook(self) -> None:
        def from_header(request: UpgradeRequest) -> Identity | None:
            user = request.header("x-user")
            return Identity(user, user.title()) if user else None

        app = App(authenticate=from_header)
        assert app.auth_mode == "required"  # an app that authenticates means it
        admission = await app.admit(upgrade("", ("x-user", "carol")), "lobby")
        assert admission.identity == Identity("carol", "Carol")

    async def test_a_failing_hook_is_500_and_logged(self, caplog: pytest.LogCaptureFixture) -> None:
        async def broken(request: UpgradeRequest) -> Identity | None:
            raise KeyError("db")

        with caplog.at_level(logging.ERROR, "wschat.app"), pytest.raises(Rejection) as info:
            await App(authenticate=broken).admit(upgrade(), "lobby")
        assert info.value.status == 500
        assert "authenticate hook failed" in caplog.text


class TestFirstMessageAuth:
    async def test_auth_then_chat(self) -> None:
        session = await connect(make_app(), FIRST_MESSAGE)
        assert session.pending_until == NOW + 10
        outcome = await session.handle(frame(type="auth", token=token(name="Alice")), NOW + 1)
        assert isinstance(outcome, Authenticated)
        assert outcome.enter == "lobby" and outcome.identity.user_id == "alice"
        assert json.loads(outcome.payload)["type"] == "authenticated"
        assert session.pending_until is None and session.chat.username == "alice"
        said = await session.handle(frame(type="message", message="hi"), NOW + 2)
        assert said == Publish("lobby", "alice", "hi", None, "Alice")

    @pytest.mark.parametrize(
        "text",
        [
            '{"type":"message","message":"hi"}',
            '{"type":"join","room":"dev"}',
            '{"type":"typing"}',
            "not json",
            '{"type":"auth"}',
        ],
    )
    async def test_anything_else_first_closes_4401(self, text: str) -> None:
        outcome = await (await connect(make_app(), FIRST_MESSAGE)).handle(text, NOW)
        assert isinstance(outcome, Close) and outcome.code == CLOSE_UNAUTHORIZED
        assert "authenticate first" in outcome.reason

    async def test_a_bad_token_closes_4401_with_the_reason(self) -> None:
        session = await connect(make_app(), FIRST_MESSAGE)
        outcome = await session.handle(frame(type="auth", token=token(lifetime=-120)), NOW)
        assert outcome == Close(CLOSE_UNAUTHORIZED, "token expired (its exp is past)")

    async def test_url_room_not_allowed_closes_4403(self) -> None:
        session = await connect(make_app(), FIRST_MESSAGE, room="secret")
        outcome = await session.handle(frame(type="auth", token=token(rooms=["lobby"])), NOW)
        assert isinstance(outcome, Close) and outcome.code == CLOSE_FORBIDDEN

    async def test_no_auth_within_the_handshake_timeout(self) -> None:
        session = await connect(make_app(), FIRST_MESSAGE)
        assert session.deadline() == NOW + 10
        assert session.overdue(NOW + 9.9) is None
        closing = session.overdue(NOW + 10)
        assert closing is not None and closing.code == CLOSE_UNAUTHORIZED

    async def test_auth_is_refused_when_auth_is_off(self) -> None:
        outcome = await (await connect(App())).handle(frame(type="auth", token="x"), NOW)
        assert error_of(outcome)["code"] == "bad_type"

    async def test_optional_anonymous_may_authenticate_before_choosing_a_name(self) -> None:
        session = await connect(make_app("optional"))
        outcome = await session.handle(frame(type="auth", token=token()), NOW)
        assert isinstance(outcome, Authenticated) and outcome.enter is None  # already in lobby

    async def test_optional_guests_read_but_do_not_speak_or_take_a_name(self) -> None:
        # A chosen name could be a signed-in user's: only a token proves one.
        session = await connect(make_app("optional"))
        for text in (
            frame(type="join", room="lobby", username="alice"),
            frame(type="message", message="hi", id="m1"),
            frame(username="alice", message="hi"),
            frame(type="typing", room="lobby"),
        ):
            error = error_of(await session.handle(text, NOW))
            assert error["code"] == "unauthorized" and "sign in" in error["reason"]
        assert isinstance(await session.handle(frame(type="join", room="dev"), NOW), JoinRoom)
        assert session.chat.username is None
        outcome = await session.handle(frame(type="auth", token=token("alice")), NOW)
        assert isinstance(outcome, Authenticated)
        said = await session.handle(frame(type="message", message="now me"), NOW)
        assert isinstance(said, Publish) and said.username == "alice"


class TestExpiry:
    async def test_close_4408_after_exp_plus_leeway(self) -> None:
        app = make_app()
        session = await connect(app, f"token={token(lifetime=60)}")
        assert session.identity is not None and session.identity.expires_at is not None
        exp = session.identity.expires_at
        leeway = app.settings.jwt_leeway
        assert session.deadline() == close_deadline(session.identity, leeway) == exp + leeway
        assert session.overdue(exp + leeway - 0.1) is None
        assert session.overdue(exp + leeway) == Close(
            CLOSE_TOKEN_EXPIRED, "token expired: send a fresh auth message before exp"
        )

    async def test_a_fresh_token_moves_the_deadline(self) -> None:
        session = await connect(make_app(), f"token={token(lifetime=60)}")
        before = session.deadline()
        assert before is not None
        outcome = await session.handle(frame(type="auth", token=token(lifetime=3600)), NOW)
        assert isinstance(outcome, Authenticated) and outcome.enter is None
        after = session.deadline()
        assert after is not None and after > before + 3000
        assert session.overdue(before) is None

    async def test_a_bad_refresh_keeps_the_old_token(self) -> None:
        session = await connect(make_app(), f"token={token(lifetime=60)}")
        before = session.deadline()
        outcome = await session.handle(frame(type="auth", token="garbage"), NOW)
        assert error_of(outcome)["code"] == "unauthorized"
        assert session.deadline() == before

    async def test_refresh_as_another_user_is_refused(self) -> None:
        session = await connect(make_app(), f"token={token('alice')}")
        outcome = await session.handle(frame(type="auth", token=token("mallory")), NOW)
        assert error_of(outcome)["code"] == "username_mismatch"
        assert session.chat.username == "alice"

    def test_no_deadline_without_exp_or_identity(self) -> None:
        assert close_deadline(None, 30) is None
        assert close_deadline(Identity("a", "a"), 30) is None
        assert close_deadline(Identity.anonymous("a"), 30) is None


class TestIdentityOnTheWire:
    async def test_impersonation_is_refused(self) -> None:
        session = await connect(make_app(), f"token={token('alice')}")
        for text in (
            frame(type="join", room="dev", username="bob"),
            frame(username="bob", message="hi"),
            frame(type="message", message="hi", username="bob", id="m1"),
        ):
            assert error_of(await session.handle(text, NOW))["code"] == "username_mismatch"

    async def test_messages_carry_the_identity(self) -> None:
        session = await connect(make_app(), f"token={token('alice', name='Alice')}")
        outcome = await session.handle(frame(username="alice", message="hi"), NOW)
        assert outcome == Publish("lobby", "alice", "hi", None, "Alice")

    async def test_anonymous_chat_is_unchanged(self) -> None:
        session = await connect(App())
        joined = await session.handle(frame(type="join", room="dev", username="bob"), NOW)
        assert joined == JoinRoom("dev", None, True)
        said = await session.handle(frame(type="message", room="dev", message="hi"), NOW)
        assert said == Publish("dev", "bob", "hi", None, None)
        assert await session.handle(frame(type="leave", room="dev"), NOW) == LeaveRoom("dev")
        assert error_of(await session.handle("[]", NOW))["code"] == "bad_json"


class TestPermissions:
    async def test_direct_room_refuses_a_third_user(self) -> None:
        app = make_app()
        for user, allowed in (("alice", True), ("bob", True), ("carol", False)):
            session = await connect(app, f"token={token(user)}")
            outcome = await session.handle(frame(type="join", room="dm:alice:bob"), NOW)
            if allowed:
                assert outcome == JoinRoom("dm:alice:bob", None, True)
            else:
                assert error_of(outcome)["code"] == "forbidden"
                assert "dm:alice:bob" not in session.chat.rooms

    async def test_custom_hook_per_action(self) -> None:
        def authorize(identity: Identity | None, action: str, room: str) -> bool:
            if room == "announcements" and action == "say":
                return identity is not None and identity.claims.get("role") == "admin"
            return not (room == "vault" and action == "history")

        app = make_app(authorize=authorize)
        session = await connect(app, f"token={token()}")
        assert await session.handle(frame(type="join", room="announcements"), NOW) == JoinRoom(
            "announcements", None, True
        )
        denied = error_of(
            await session.handle(
                frame(type="message", room="announcements", message="hi", id="m7"), NOW
            )
        )
        assert denied["code"] == "forbidden" and denied["id"] == "m7"
        since = {"epoch": "e", "seq": 4}
        assert await session.handle(frame(type="join", room="vault", since=since), NOW) == (
            JoinRoom("vault", Position("e", 4), False)
        )
        admin = await connect(app, f"token={token('root', role='admin')}")
        await admin.handle(frame(type="join", room="announcements"), NOW)
        outcome = await admin.handle(frame(type="message", room="announcements", message="x"), NOW)
        assert isinstance(outcome, Publish)

    async def test_hook_may_raise_its_own_rejection(self) -> None:
        async def authorize(identity: Identity | None, action: str, room: str) -> bool:
            if room == "dev":
                raise Rejection("closed", "this room is closed for the night")
            return True

        session = await connect(make_app("optional", authorize=authorize), "")
        error = error_of(await session.handle(frame(type="join", room="dev"), NOW))
        assert (error["code"], error["reason"]) == ("closed", "this room is closed for the night")

    async def test_a_failing_hook_denies(self, caplog: pytest.LogCaptureFixture) -> None:
        def authorize(identity: Identity | None, action: str, room: str) -> bool:
            return 1 / 0 > 0

        app = App(authorize=authorize)
        with caplog.at_level(logging.ERROR, "wschat.app"), pytest.raises(Rejection):
            await app.admit(upgrade(), "lobby")
        assert "authorize hook failed" in caplog.text


class TestOnMessage:
    async def test_rewrite(self) -> None:
        async def shout(identity: Identity, room: str, text: str) -> str:
            return f"{identity.name}: {text.upper()}"

        session = await connect(make_app(on_message=shout), f"token={token(name='Alice')}")
        outcome = await session.handle(frame(type="message", message="hi", id="m1"), NOW)
        assert outcome == Publish("lobby", "alice", "Alice: HI", "m1", "Alice")

    async def test_hook_sees_anonymous_users_by_their_name(self) -> None:
        seen: list[Identity] = []

        def record(identity: Identity, room: str, text: str) -> str:
            seen.append(identity)
            return text

        session = await connect(App(on_message=record))
        await session.handle(frame(username="bob", message="hi"), NOW)
        assert seen == [Identity.anonymous("bob")] and not seen[0].authenticated

    async def test_reject_reaches_the_sender_with_the_id(self) -> None:
        def moderate(identity: Identity, room: str, text: str) -> str:
            if "spam" in text:
                raise Rejection("moderated", "no spam here")
            return text

        session = await connect(make_app(on_message=moderate), f"token={token()}")
        error = error_of(await session.handle(frame(type="message", message="spam!", id="s1"), NOW))
        assert error == {
            "type": "error",
            "code": "moderated",
            "reason": "no spam here",
            "id": "s1",
            "command": "message",
            "room": "lobby",
        }

    async def test_rewrite_must_be_a_valid_message(self) -> None:
        session = await connect(make_app(on_message=lambda i, r, t: t * 5000), f"token={token()}")
        error = error_of(await session.handle(frame(type="message", message="x", id="b"), NOW))
        assert (error["code"], error["id"]) == ("bad_message", "b")

    @pytest.mark.parametrize("hook", [lambda i, r, t: None, lambda i, r, t: 1 / 0])
    async def test_broken_hook(self, hook: Any, caplog: pytest.LogCaptureFixture) -> None:
        session = await connect(make_app(on_message=hook), f"token={token()}")
        with caplog.at_level(logging.ERROR, "wschat.app"):
            error = error_of(await session.handle(frame(type="message", message="x"), NOW))
        assert error["code"] == "internal_error"
        assert "on_message" in caplog.text


class TestEphemeral:
    async def test_typing_is_relayed_with_the_identity(self) -> None:
        session = await connect(make_app(), f"token={token(name='Alice')}")
        outcome = await session.handle('{"type":"typing","room":"lobby"}', NOW)
        assert isinstance(outcome, Relay) and outcome.room == "lobby"
        assert json.loads(outcome.payload) == {
            "type": "typing",
            "room": "lobby",
            "username": "alice",
            "name": "Alice",
        }
        assert not session.chat.legacy

    async def test_anonymous_typing(self) -> None:
        session = await connect(App())
        assert error_of(await session.handle('{"type":"typing"}', NOW))["code"] == "no_username"
        await session.handle(frame(type="join", room="lobby", username="bob"), NOW)
        outcome = await session.handle('{"type":"typing"}', NOW)
        assert isinstance(outcome, Relay)
        assert json.loads(outcome.payload) == {"type": "typing", "room": "lobby", "username": "bob"}

    async def test_not_joined(self) -> None:
        session = await connect(make_app(), f"token={token()}")
        outcome = await session.handle('{"type":"typing","room":"dev"}', NOW)
        assert error_of(outcome)["code"] == "not_joined"

    async def test_rate_limited_per_connection(self) -> None:
        session = await connect(make_app(), f"token={token()}")
        results = [await session.handle('{"type":"typing"}', NOW) for _ in range(4)]
        assert [type(r) for r in results[:3]] == [Relay] * 3  # the burst
        assert error_of(results[3])["code"] == "rate_limited"
        assert isinstance(await session.handle('{"type":"typing"}', NOW + 1.0), Relay)
        other = await connect(make_app(), f"token={token('bob')}")
        assert isinstance(await other.handle('{"type":"typing"}', NOW), Relay)

    async def test_data_limits(self) -> None:
        app = make_app()
        app.ephemeral("reaction", rate=5, burst=5, max_data=32)
        session = await connect(app, f"token={token()}")
        typing = await session.handle('{"type":"typing","data":1}', NOW)
        assert error_of(typing) == {
            "type": "error",
            "code": "bad_data",
            "reason": "typing events carry no data",
            "command": "typing",  # the refused frame's type and room, for the client to match
            "room": "lobby",
        }
        outcome = await session.handle('{"type":"reaction","data":{"emoji":"+1"}}', NOW)
        assert isinstance(outcome, Relay)
        assert json.loads(outcome.payload)["data"] == {"emoji": "+1"}
        too_big = await session.handle(frame(type="reaction", data="x" * 40), NOW)
        assert "at most 32 bytes" in error_of(too_big)["reason"]

    async def test_forbidden_room(self) -> None:
        def no_typing_in_lobby(identity: Identity | None, action: str, room: str) -> bool:
            return action != "say"

        session = await connect(make_app(authorize=no_typing_in_lobby), f"token={token()}")
        assert error_of(await session.handle('{"type":"typing"}', NOW))["code"] == "forbidden"

    async def test_registration_rules(self) -> None:
        app = App(typing=False)
        assert app.ephemeral_types == {}
        app.ephemeral("cursor", rate=10, burst=10, max_data=64)
        for name, kwargs in (
            ("cursor", {}),
            ("message", {}),
            ("Bad-Name", {}),
            ("ok", {"burst": 0}),
        ):
            with pytest.raises(ValueError):
                app.ephemeral(name, rate=kwargs.get("rate", 1), burst=kwargs.get("burst", 1))


# -- whatever a client sends --------------------------------------------------------

_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 5),
    st.text(max_size=12),
    st.sampled_from(["lobby", "dev", "dm:alice:bob", "alice", "bob", "typing", "auth"]),
)
_frames = st.one_of(
    st.dictionaries(
        st.sampled_from(["type", "room", "username", "message", "token", "data", "id"]),
        st.one_of(_values, st.sampled_from(["join", "leave", "message", "typing", "auth"])),
        max_size=5,
    ).map(json.dumps),
    st.sampled_from([token("alice"), token("bob"), token("alice", lifetime=-120)]).map(
        lambda t: json.dumps({"type": "auth", "token": t})
    ),
    st.text(max_size=20),
)
OUTCOMES = (Reply, Close, Publish, JoinRoom, LeaveRoom, Relay, Authenticated)


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from(["off", "optional", "required"]),
    with_token=st.booleans(),
    frames=st.lists(_frames, min_size=1, max_size=8),
)
def test_any_frames_give_one_outcome_each_and_never_raise(
    mode: str, with_token: bool, frames: list[str]
) -> None:
    async def run() -> None:
        app = make_app(mode)
        query = f"token={token('alice')}" if with_token and mode != "off" else FIRST_MESSAGE
        session = await connect(app, query)
        for i, text in enumerate(frames):
            username = session.chat.username
            outcome = await session.handle(text, NOW + i)
            assert isinstance(outcome, OUTCOMES)
            if isinstance(outcome, Close):
                assert outcome.code in (CLOSE_UNAUTHORIZED, CLOSE_FORBIDDEN)
                return  # the server closes: no more frames
            if isinstance(outcome, Reply):
                assert json.loads(outcome.payload)["type"] == "error"
            if username is not None:
                assert session.chat.username == username  # a bound name never changes
            if isinstance(outcome, Publish | Relay):
                assert outcome.room in session.chat.rooms
            if session.identity is not None:
                assert session.chat.username == session.identity.user_id

    anyio.run(run)


async def test_an_authenticate_hook_that_answers_nonsense_is_a_500() -> None:
    app = App(authenticate=lambda request: "alice")  # type: ignore[arg-type,return-value]
    with pytest.raises(Rejection) as info:
        await app.admit(upgrade(), "lobby")
    assert (info.value.status, info.value.code) == (500, "internal_error")


async def test_a_name_sent_with_every_message_is_normalized_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wschat.chat.schema as schema

    calls: list[object] = []

    def counted(value: object) -> str:
        calls.append(value)
        return schema.enforce_username(value)

    monkeypatch.setattr(schema, "validate_username", counted)
    session = await connect(make_app("off"))
    wide = "\uff41\uff4c\uff49\uff43\uff45"  # fullwidth alice
    for i in range(3):
        outcome = await session.handle(frame(username=wide, message=f"m{i}"), NOW)
        assert isinstance(outcome, Publish) and outcome.username == "alice"
    assert calls == [wide]
    refused = await session.handle(frame(username="bob", message="hi"), NOW)
    assert error_of(refused)["code"] == "username_mismatch"
    assert calls == [wide, "bob"]
