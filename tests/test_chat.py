"""The chat layer, pure: the JSON wire schema (schema.py) and per-connection rules (session.py).

Inputs are the exact text frames a client sends; outputs are commands or a
ChatError whose ``code`` is the stable, machine-readable part clients rely on.
Server events are checked by decoding them with the standard library's json.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest

from wschat.chat import (
    DEFAULT_ROOM,
    MAX_MESSAGE_LENGTH,
    MAX_USERNAME_LENGTH,
    ChatError,
    ChatSession,
    Join,
    Leave,
    Position,
    Say,
    ack_event,
    decode_event,
    encode,
    error_event,
    format_time,
    history_event,
    membership_event,
    message_event,
    parse_command,
    peek_message_id,
    presence_event,
    validate_room,
    validate_username,
)


def frame(obj: object) -> str:
    return json.dumps(obj)


def error_code(text: str) -> str:
    with pytest.raises(ChatError) as info:
        parse_command(text)
    assert info.value.reason
    return info.value.code


# -- schema: client to server -----------------------------------------------------


class TestParseCommand:
    def test_seed_format_is_an_untyped_say(self) -> None:
        # DESIGN.md: the seed's client only sends {"username", "message"}.
        assert parse_command('{"username":"A","message":"hi"}') == Say(
            room=None, message="hi", username="A", typed=False
        )

    def test_seed_format_without_username(self) -> None:
        assert parse_command('{"message":"hi"}') == Say(None, "hi", None, typed=False)

    def test_typed_message(self) -> None:
        command = parse_command(frame({"type": "message", "room": "dev", "message": "hello"}))
        assert command == Say(room="dev", message="hello", username=None, typed=True)

    def test_message_with_null_room_and_username(self) -> None:
        command = parse_command(
            frame({"type": "message", "room": None, "username": None, "message": "x"})
        )
        assert command == Say(None, "x", None, typed=True)

    def test_join(self) -> None:
        command = parse_command(frame({"type": "join", "room": "lobby", "username": "alice"}))
        assert command == Join(room="lobby", username="alice", since=None)

    def test_join_defaults_to_the_default_room(self) -> None:
        assert DEFAULT_ROOM == "lobby"
        assert parse_command('{"type":"join"}') == Join("lobby", None, None)

    def test_join_with_since(self) -> None:
        command = parse_command(
            frame({"type": "join", "room": "r", "since": {"epoch": "e1", "seq": 41}})
        )
        assert command == Join("r", None, Position("e1", 41))

    def test_join_since_zero_and_null(self) -> None:
        assert parse_command(frame({"type": "join", "since": {"epoch": "", "seq": 0}})) == Join(
            "lobby", None, Position("", 0)
        )
        assert parse_command(frame({"type": "join", "since": None})) == Join("lobby", None, None)

    def test_message_id_is_kept(self) -> None:
        command = parse_command(frame({"type": "message", "message": "hi", "id": "c1-7f.a:b"}))
        assert isinstance(command, Say) and command.id == "c1-7f.a:b"
        assert parse_command(frame({"username": "A", "message": "hi"})) == Say(
            room=None, message="hi", username="A", typed=False, id=None
        )

    @pytest.mark.parametrize("bad", ["", "a b", "x" * 65, 7, ["a"], "é"])
    def test_bad_message_id(self, bad: object) -> None:
        assert error_code(frame({"type": "message", "message": "hi", "id": bad})) == "bad_id"

    def test_an_error_names_the_id_of_the_message_it_refuses(self) -> None:
        with pytest.raises(ChatError) as info:
            parse_command(frame({"type": "message", "message": "", "id": "m1"}))
        assert (info.value.code, info.value.id) == ("bad_message", "m1")

    def test_peek_message_id(self) -> None:
        assert peek_message_id(frame({"message": "x", "id": "m9"})) == "m9"
        for text in ("nope", "[1]", frame({"id": "a b"}), frame({"message": "x"})):
            assert peek_message_id(text) is None

    def test_leave(self) -> None:
        assert parse_command('{"type":"leave","room":"lobby"}') == Leave("lobby")

    def test_unknown_fields_are_ignored(self) -> None:
        command = parse_command(frame({"type": "leave", "room": "r", "extra": [1, 2]}))
        assert command == Leave("r")

    def test_message_text_is_kept_verbatim(self) -> None:
        text = "  line one\nline two\t☃ <b>not html</b>  "
        command = parse_command(frame({"message": text}))
        assert isinstance(command, Say) and command.message == text

    @pytest.mark.parametrize(
        "text",
        ["", "{", "not json", '{"message": "hi"', "{'single': 'quotes'}", '{"a":1}x', "\x00"],
    )
    def test_malformed_json_is_bad_json(self, text: str) -> None:
        assert error_code(text) == "bad_json"

    @pytest.mark.parametrize("text", ["[]", '["message"]', '"hi"', "42", "null", "true"])
    def test_non_object_is_bad_json(self, text: str) -> None:
        assert error_code(text) == "bad_json"

    def test_deep_nesting_is_bad_json_not_a_crash(self) -> None:
        assert error_code("[" * 100_000 + "]" * 100_000) == "bad_json"
        assert error_code('{"a":' * 50_000 + "1" + "}" * 50_000) in ("bad_json", "bad_type")

    @pytest.mark.parametrize(
        "obj",
        [
            {},
            {"username": "alice"},
            {"type": "chat", "message": "hi"},
            {"type": "MESSAGE", "message": "hi"},
            {"type": None, "message": "hi"},
            {"type": 1},
            {"type": ["join"]},
        ],
    )
    def test_unknown_type_is_bad_type(self, obj: object) -> None:
        assert error_code(frame(obj)) == "bad_type"

    @pytest.mark.parametrize(
        "username",
        [
            "",
            "x" * (MAX_USERNAME_LENGTH + 1),
            "bad\nname",
            "tab\tname",
            "nul\x00",
            "bell\x07",
            "del\x7f",
            "   ",
            "\u200b",  # zero-width space: not printable
            42,
            ["alice"],
            {"name": "alice"},
            True,
        ],
        ids=lambda v: repr(v)[:20],
    )
    def test_bad_username(self, username: object) -> None:
        assert error_code(frame({"username": username, "message": "hi"})) == "bad_username"
        assert error_code(frame({"type": "join", "username": username})) == "bad_username"
        with pytest.raises(ChatError) as info:
            validate_username(username)
        assert info.value.code == "bad_username"

    @pytest.mark.parametrize(
        "username", ["A", "x" * MAX_USERNAME_LENGTH, "Zoë", "李雷", "alice bob", "a-b_c.d"]
    )
    def test_good_username(self, username: str) -> None:
        assert MAX_USERNAME_LENGTH == 32
        assert validate_username(username) == username
        command = parse_command(frame({"username": username, "message": "hi"}))
        assert isinstance(command, Say) and command.username == username

    @pytest.mark.parametrize(
        "message",
        ["", " ", "\n\t  ", "x" * (MAX_MESSAGE_LENGTH + 1), None, 42, ["hi"], {"t": "hi"}, False],
        ids=lambda v: repr(v)[:20],
    )
    def test_bad_message(self, message: object) -> None:
        assert error_code(frame({"type": "message", "message": message})) == "bad_message"

    def test_bad_message_in_the_seed_format(self) -> None:
        assert error_code(frame({"username": "A", "message": ""})) == "bad_message"
        assert error_code(frame({"username": "A", "message": None})) == "bad_message"

    def test_message_of_exactly_the_limit_is_fine(self) -> None:
        assert MAX_MESSAGE_LENGTH == 4096
        command = parse_command(frame({"message": "x" * 4096}))
        assert isinstance(command, Say) and len(command.message) == 4096

    def test_message_limit_counts_characters(self) -> None:
        command = parse_command(frame({"message": "€" * 4096}))  # 12 KiB of UTF-8
        assert isinstance(command, Say)

    def test_typed_message_without_message_is_bad_message(self) -> None:
        assert error_code('{"type":"message","room":"r"}') == "bad_message"

    @pytest.mark.parametrize(
        "room",
        [
            *("", "x" * 129, ":lobby", "has space", "slash/room", "dot.room", "ümlaut"),
            *("new\nline", "a{b}", "a*", 1, [], {}),
        ],
        ids=lambda v: repr(v)[:20],
    )
    def test_bad_room(self, room: object) -> None:
        assert error_code(frame({"type": "join", "room": room})) == "bad_room"
        assert error_code(frame({"type": "leave", "room": room})) == "bad_room"
        assert error_code(frame({"type": "message", "room": room, "message": "m"})) == "bad_room"
        with pytest.raises(ChatError) as info:
            validate_room(room)
        assert info.value.code == "bad_room"

    def test_leave_without_room_is_bad_room(self) -> None:
        assert error_code('{"type":"leave"}') == "bad_room"
        assert error_code('{"type":"join","room":null}') == "bad_room"

    @pytest.mark.parametrize(
        "room", ["a", "x" * 128, "Lobby_2", "dev-ops", "0", "-_-", "team:dev", "dm:alice:bob"]
    )
    def test_good_room(self, room: str) -> None:
        assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_:-]{0,127}", room)
        assert validate_room(room) == room
        assert parse_command(frame({"type": "join", "room": room})) == Join(room, None, None)

    def test_room_regex_is_anchored(self) -> None:
        # A valid prefix or suffix must not make an invalid name pass.
        for room in ("lobby\n", "lobby ", " lobby", "lob by"):
            with pytest.raises(ChatError):
                validate_room(room)

    @pytest.mark.parametrize(
        "since",
        [
            {"epoch": "e", "seq": -1},
            {"epoch": "e", "seq": 1.5},
            {"epoch": "e", "seq": "41"},
            {"epoch": "e", "seq": True},
            {"epoch": "e"},
            {"seq": 1},
            {"epoch": 1, "seq": 1},
            [],
            "e:41",
            41,
        ],
        ids=lambda v: repr(v)[:25],
    )
    def test_bad_since(self, since: object) -> None:
        assert error_code(frame({"type": "join", "room": "r", "since": since})) == "bad_since"

    def test_errors_carry_a_reason(self) -> None:
        with pytest.raises(ChatError) as info:
            parse_command('{"type":"join","room":"bad room"}')
        assert info.value.code == "bad_room"
        assert "room" in info.value.reason
        assert str(info.value).startswith("bad_room: ")


# -- schema: server to client --------------------------------------------------------


class TestServerEvents:
    def test_format_time_is_rfc3339_utc_with_milliseconds(self) -> None:
        stamp = datetime(2026, 11, 26, 16, 0, 0, 123000, tzinfo=UTC).timestamp()
        assert format_time(stamp) == "2026-11-26T16:00:00.123Z"
        assert format_time(0) == "1970-01-01T00:00:00.000Z"
        assert format_time(1.5) == "1970-01-01T00:00:01.500Z"

    def test_format_time_shape_and_round_trip(self) -> None:
        for stamp in (1_700_000_000.0, 1_700_000_000.999, 1_800_000_000.0015, 4_102_444_800.0):
            text = format_time(stamp)
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text), text
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            assert parsed.tzinfo is not None
            assert abs(parsed.timestamp() - stamp) < 0.001

    def test_message_event(self) -> None:
        payload = message_event("lobby", Position("e1", 7), "alice", 'hi "there"', "T")
        assert isinstance(payload, bytes)
        assert json.loads(payload) == {
            "type": "message",
            "room": "lobby",
            "seq": 7,
            "epoch": "e1",
            "username": "alice",
            "message": 'hi "there"',
            "time": "T",
        }
        # The seed's client reads exactly these three fields.
        assert {"username", "message", "time"} <= json.loads(payload).keys()

    def test_history_event_splices_encoded_messages(self) -> None:
        messages = [
            message_event("r", Position("e", i), "bob", f"m{i} ☃ \u2028", format_time(i))
            for i in (1, 2, 3)
        ]
        payload = history_event("r", messages, Position("e", 3), complete=True)
        decoded = json.loads(payload)
        assert decoded["type"] == "history"
        assert decoded["room"] == "r"
        assert decoded["complete"] is True
        assert (decoded["epoch"], decoded["seq"]) == ("e", 3)
        assert [m["message"] for m in decoded["messages"]] == [
            "m1 ☃ \u2028",
            "m2 ☃ \u2028",
            "m3 ☃ \u2028",
        ]
        assert decoded["messages"] == [json.loads(m) for m in messages]
        assert decode_event(payload) == decoded

    def test_history_event_empty_and_incomplete(self) -> None:
        decoded = json.loads(history_event("r", [], Position("e", 0), complete=False))
        assert decoded["messages"] == []
        assert decoded["complete"] is False

    def test_presence_event_sorts_members(self) -> None:
        decoded = json.loads(presence_event("r", ["carol", "alice", "bob"]))
        assert decoded == {"type": "presence", "room": "r", "members": ["alice", "bob", "carol"]}

    @pytest.mark.parametrize("kind", ["joined", "left"])
    def test_membership_event(self, kind: str) -> None:
        assert json.loads(membership_event(kind, "r", "alice")) == {
            "type": kind,
            "room": "r",
            "username": "alice",
        }

    def test_error_event(self) -> None:
        assert json.loads(error_event("bad_room", "nope")) == {
            "type": "error",
            "code": "bad_room",
            "reason": "nope",
        }

    def test_message_event_with_id_and_ack(self) -> None:
        payload = message_event("r", Position("e", 3), "al", "hi", "T", "m1")
        assert json.loads(payload)["id"] == "m1"
        assert "id" not in json.loads(message_event("r", Position("e", 3), "al", "hi", "T"))
        assert json.loads(ack_event("r", Position("e", 3), "m1")) == {
            "type": "ack",
            "id": "m1",
            "room": "r",
            "epoch": "e",
            "seq": 3,
        }
        assert json.loads(error_event("unavailable", "try again", "m1"))["id"] == "m1"

    def test_encode_is_compact_utf8(self) -> None:
        payload = encode({"a": "é", "b": [1, 2]})
        assert payload == '{"a":"é","b":[1,2]}'.encode()
        assert decode_event(payload) == {"a": "é", "b": [1, 2]}


# -- session: one connection's chat state ---------------------------------------------


class TestChatSession:
    def test_url_room_is_joined_from_the_start(self) -> None:
        session = ChatSession("dev")
        assert session.rooms == {"dev"}
        assert session.username is None
        assert session.legacy

    def test_seed_client_speaks_in_the_url_room(self) -> None:
        session = ChatSession("lobby")
        command = session.handle('{"username":"A","message":"hi"}')
        assert command == Say(room="lobby", message="hi", username="A", typed=False)
        assert session.username == "A"
        assert session.legacy
        # The username stays bound; later seed messages may repeat it or leave it out.
        assert session.handle('{"username":"A","message":"again"}') == Say(
            "lobby", "again", "A", False
        )
        assert session.handle('{"message":"no name"}') == Say("lobby", "no name", "A", False)

    def test_join_binds_the_username(self) -> None:
        session = ChatSession("lobby")
        command = session.handle('{"type":"join","room":"dev","username":"alice"}')
        assert command == Join("dev", "alice", None)
        assert session.username == "alice"
        assert session.rooms == {"lobby", "dev"}
        assert session.handle('{"type":"message","room":"dev","message":"hi"}') == Say(
            "dev", "hi", "alice", True
        )

    def test_join_without_username_after_binding_returns_the_bound_one(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"username":"alice","message":"hi"}')
        assert session.handle('{"type":"join","room":"dev"}') == Join("dev", "alice", None)

    def test_join_without_any_username_is_allowed(self) -> None:
        # Lurking is fine: a username is needed only to speak.
        session = ChatSession("lobby")
        assert session.handle('{"type":"join","room":"dev"}') == Join("dev", None, None)
        assert session.username is None

    def test_rejoin_is_harmless(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"type":"join","room":"lobby","username":"a"}')
        assert session.rooms == {"lobby"}

    def test_other_username_later_is_username_mismatch(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"username":"alice","message":"hi"}')
        for text in (
            '{"username":"mallory","message":"i am alice"}',
            '{"type":"message","username":"mallory","message":"x"}',
            '{"type":"join","room":"dev","username":"mallory"}',
        ):
            with pytest.raises(ChatError) as info:
                session.handle(text)
            assert info.value.code == "username_mismatch"
        assert session.username == "alice"
        assert session.rooms == {"lobby"}  # the refused join did not join

    def test_username_match_is_exact(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"username":"alice","message":"hi"}')
        with pytest.raises(ChatError) as info:
            session.handle('{"username":"Alice","message":"hi"}')
        assert info.value.code == "username_mismatch"

    def test_say_before_any_username_is_no_username(self) -> None:
        session = ChatSession("lobby")
        for text in ('{"message":"hi"}', '{"type":"message","message":"hi"}'):
            with pytest.raises(ChatError) as info:
                session.handle(text)
            assert info.value.code == "no_username"
        assert session.username is None

    def test_session_errors_name_the_message_id(self) -> None:
        session = ChatSession("lobby")
        with pytest.raises(ChatError) as info:
            session.handle(frame({"type": "message", "message": "x", "id": "m2"}))
        assert (info.value.code, info.value.id) == ("no_username", "m2")
        with pytest.raises(ChatError) as info:
            session.handle(frame({"type": "message", "room": "r", "message": "x", "id": "m3"}))
        assert (info.value.code, info.value.id) == ("not_joined", "m3")

    def test_say_to_a_room_not_joined_is_not_joined(self) -> None:
        session = ChatSession("lobby")
        with pytest.raises(ChatError) as info:
            session.handle('{"type":"message","room":"dev","username":"a","message":"hi"}')
        assert info.value.code == "not_joined"
        # A refused message does not bind its username.
        assert session.username is None

    def test_leave(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"type":"join","room":"dev","username":"a"}')
        assert session.handle('{"type":"leave","room":"dev"}') == Leave("dev")
        assert session.rooms == {"lobby"}
        with pytest.raises(ChatError) as info:
            session.handle('{"type":"message","room":"dev","message":"hi"}')
        assert info.value.code == "not_joined"

    def test_leave_the_url_room_then_untyped_messages_are_not_joined(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"username":"a","message":"hi"}')
        session.handle('{"type":"leave","room":"lobby"}')
        assert session.rooms == set()
        with pytest.raises(ChatError) as info:
            session.handle('{"message":"still here?"}')
        assert info.value.code == "not_joined"

    def test_leave_a_room_not_joined_is_not_joined(self) -> None:
        session = ChatSession("lobby")
        with pytest.raises(ChatError) as info:
            session.handle('{"type":"leave","room":"dev"}')
        assert info.value.code == "not_joined"

    def test_too_many_rooms(self) -> None:
        session = ChatSession("lobby", max_rooms=3)
        session.handle('{"type":"join","room":"r1"}')
        session.handle('{"type":"join","room":"r2"}')
        with pytest.raises(ChatError) as info:
            session.handle('{"type":"join","room":"r3","username":"a"}')
        assert info.value.code == "too_many_rooms"
        assert session.rooms == {"lobby", "r1", "r2"}
        assert session.username is None  # the refused join bound nothing
        # Rejoining a room already joined is not a new room.
        assert session.handle('{"type":"join","room":"r1"}') == Join("r1", None, None)
        # Leaving frees a slot.
        session.handle('{"type":"leave","room":"r2"}')
        assert session.handle('{"type":"join","room":"r3"}') == Join("r3", None, None)

    def test_default_max_rooms(self) -> None:
        session = ChatSession("lobby")
        for i in range(session.max_rooms - 1):
            session.handle(frame({"type": "join", "room": f"r{i}"}))
        with pytest.raises(ChatError) as info:
            session.handle('{"type":"join","room":"one-too-many"}')
        assert info.value.code == "too_many_rooms"

    def test_legacy_flag(self) -> None:
        session = ChatSession("lobby")
        flags = []
        for text in (
            '{"username":"a","message":"seed"}',
            '{"type":"message","message":"typed"}',
            '{"message":"seed again"}',
        ):
            session.handle(text)
            flags.append(session.legacy)
        assert flags == [True, False, False]  # once typed, always typed

    @pytest.mark.parametrize(
        "text", ['{"type":"join","room":"dev"}', '{"type":"leave","room":"lobby"}']
    )
    def test_any_typed_command_clears_legacy(self, text: str) -> None:
        session = ChatSession("lobby")
        session.handle(text)
        assert not session.legacy

    def test_invalid_frame_leaves_state_alone(self) -> None:
        session = ChatSession("lobby")
        session.handle('{"username":"a","message":"hi"}')
        for text in ("nope", "[]", '{"type":"join","room":"bad room"}', '{"type":"x"}'):
            with pytest.raises(ChatError):
                session.handle(text)
        assert session.legacy
        assert session.rooms == {"lobby"}
        assert session.username == "a"
