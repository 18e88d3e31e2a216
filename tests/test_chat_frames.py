"""The chat schema's additions for apps: auth and ephemeral frames, and the events they make.

Pure, like tests/test_chat.py: text in, objects or ChatError out; events decoded with json.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wschat.chat import (
    MAX_TOKEN_LENGTH,
    Auth,
    ChatError,
    ChatSession,
    Ephemeral,
    Join,
    Position,
    Say,
    authenticated_event,
    ephemeral_event,
    message_event,
    parse_command,
    parse_frame,
)

TYPES = frozenset({"typing", "reaction"})


def code_of(text: str, types: frozenset[str] = TYPES) -> str:
    with pytest.raises(ChatError) as info:
        parse_frame(text, types)
    assert info.value.reason
    return info.value.code


class TestParseFrame:
    def test_commands_parse_as_before(self) -> None:
        for text in (
            '{"type":"join","room":"dev","username":"a"}',
            '{"username":"A","message":"hi"}',
            '{"type":"message","message":"x","id":"m1"}',
            '{"type":"leave","room":"dev"}',
        ):
            assert parse_frame(text, TYPES) == parse_command(text)

    def test_auth(self) -> None:
        assert parse_frame('{"type":"auth","token":"abc"}') == Auth("abc")

    @pytest.mark.parametrize("token", [None, "", 42, "x" * (MAX_TOKEN_LENGTH + 1)], ids=repr)
    def test_bad_token(self, token: object) -> None:
        assert code_of(json.dumps({"type": "auth", "token": token})) == "bad_token"

    def test_ephemeral(self) -> None:
        assert parse_frame('{"type":"typing","room":"dev"}', TYPES) == Ephemeral(
            "typing", "dev", None
        )
        assert parse_frame('{"type":"typing"}', TYPES) == Ephemeral("typing", None, None)

    def test_ephemeral_data_is_re_encoded(self) -> None:
        frame = parse_frame('{"type":"reaction","data": {"emoji" : "👍"}}', TYPES)
        assert isinstance(frame, Ephemeral)
        assert frame.data is not None and json.loads(frame.data) == {"emoji": "👍"}

    def test_ephemeral_room_is_validated(self) -> None:
        assert code_of('{"type":"typing","room":"bad room"}') == "bad_room"

    def test_unregistered_type_lists_the_known_ones(self) -> None:
        with pytest.raises(ChatError) as info:
            parse_frame('{"type":"typing"}')
        assert info.value.code == "bad_type"
        assert "join, message, leave, auth" in info.value.reason
        assert "reaction, typing" in code_reason('{"type":"poke"}')

    def test_parse_command_does_not_know_app_frames(self) -> None:
        with pytest.raises(ChatError) as info:
            parse_command('{"type":"auth","token":"abc"}')
        assert info.value.code == "bad_type"


def code_reason(text: str) -> str:
    with pytest.raises(ChatError) as info:
        parse_frame(text, TYPES)
    return info.value.reason


class TestSessionApply:
    def test_apply_is_handle_without_parsing(self) -> None:
        session = ChatSession("lobby")
        session.username = "alice"  # bound by authentication
        assert session.apply(Join("dev", None, None)) == Join("dev", "alice", None)
        assert session.apply(Say(None, "hi", None)) == Say("lobby", "hi", "alice")

    def test_a_bound_identity_cannot_be_impersonated(self) -> None:
        session = ChatSession("lobby")
        session.username = "alice"
        for text in (
            '{"type":"join","room":"dev","username":"bob"}',
            '{"username":"bob","message":"hi"}',
        ):
            with pytest.raises(ChatError) as info:
                session.handle(text)
            assert info.value.code == "username_mismatch"


class TestEvents:
    def test_message_event_with_name_and_server(self) -> None:
        event = json.loads(
            message_event(
                "lobby", Position("e", 3), "bot", "hi", "t", "m1", name="Bot", server=True
            )
        )
        assert event == {
            "type": "message",
            "room": "lobby",
            "seq": 3,
            "epoch": "e",
            "username": "bot",
            "message": "hi",
            "time": "t",
            "name": "Bot",
            "id": "m1",
            "server": True,
        }

    def test_message_event_unchanged_without_them(self) -> None:
        event = json.loads(message_event("lobby", Position("e", 3), "a", "hi", "t"))
        assert "name" not in event and "server" not in event

    def test_ephemeral_event(self) -> None:
        assert json.loads(ephemeral_event("typing", "lobby", "alice")) == {
            "type": "typing",
            "room": "lobby",
            "username": "alice",
        }
        event = json.loads(ephemeral_event("reaction", "r", "alice", "Alice", b'{"e":1}'))
        assert event == {
            "type": "reaction",
            "room": "r",
            "username": "alice",
            "name": "Alice",
            "data": {"e": 1},
        }

    def test_authenticated_event(self) -> None:
        assert json.loads(authenticated_event("alice", "Alice", 1767225600)) == {
            "type": "authenticated",
            "username": "alice",
            "name": "Alice",
            "expires": 1767225600,
        }


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    obj=st.dictionaries(
        st.sampled_from(["type", "room", "token", "data", "message", "username"]),
        st.one_of(json_values, st.sampled_from(["auth", "typing", "reaction", "join", "lobby"])),
    )
)
def test_any_object_is_a_frame_or_a_chat_error(obj: dict[str, Any]) -> None:
    try:
        frame = parse_frame(json.dumps(obj), TYPES)
    except ChatError as exc:
        assert exc.code and exc.reason
        return
    if isinstance(frame, Ephemeral):
        assert frame.kind in TYPES
        if frame.data is not None:
            assert json.loads(frame.data) == obj["data"]
            # The relayed event is valid JSON with the data in it.
            assert (
                json.loads(ephemeral_event(frame.kind, "r", "u", None, frame.data))["data"]
                == (obj["data"])
            )
    elif isinstance(frame, Auth):
        assert frame.token == obj["token"]
