"""The chat layer, pure: the wire schema (schema.py, events.py), usernames, sessions.

Inputs are the exact text frames a client sends; outputs are commands or a
ChatError whose ``code`` is the stable, machine-readable part clients rely on.
Server events are checked by decoding them with the standard library's json.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
    UsernameMemo,
    ack_event,
    decode_event,
    encode,
    error_event,
    format_time,
    history_event,
    membership_event,
    message_event,
    parse_command,
    parse_frame,
    peek_message_id,
    presence_event,
    validate_room,
    validate_username,
)
from wschat.chat.confusables import check_distinct, confusable, find_confusable, skeleton
from wschat.chat.names import RULES, UsernameRefused, enforce_username

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"  # 7 code points
ENGLAND = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"


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
        "username", ["A", "x" * MAX_USERNAME_LENGTH, "Zoë", "李雷", "alice bob", "a-b_c.d", FAMILY]
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

    @pytest.mark.parametrize(
        "stamp",
        [
            1_795_000_000.9999995,  # rounds up into the next second
            1_795_000_000.9999994,
            1_795_000_000.0000005,
            1_795_000_000.0005,
            1_795_000_001.0,
            1_795_000_000.9995,
            -0.5,
            -1.0000001,
            -1e-7,
            1.5e-7,
            253_402_300_798.999,  # 9999-12-31T23:59:58.999Z
        ],
    )
    def test_format_time_rounds_as_datetime_does(self, stamp: float) -> None:
        # Cached per second: ask the second before, the stamp, and the second after.
        for t in (stamp - 1, stamp, stamp + 0.25, stamp):
            expected = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
            assert format_time(t) == expected[:-6] + "Z", t

    @settings(max_examples=500, derandomize=True, database=None)
    @given(st.floats(min_value=-2e9, max_value=2e11), st.floats(min_value=-2.0, max_value=2.0))
    def test_format_time_is_datetimes_answer(self, first: float, second: float) -> None:
        for t in (first, first + second):
            expected = datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")
            assert format_time(t) == expected[:-6] + "Z", t

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


class TestUsernames:
    """names.py: RFC 8266 nicknames with emoji sequences, UTS #39 restrictions and skeletons.

    Written with escapes: the point of several cases is that they look like others.
    """

    @pytest.mark.parametrize(
        ("typed", "normal"),
        [
            ("\uff41\uff44\uff4d\uff49\uff4e", "admin"),  # fullwidth: NFKC
            ("  Bob  \u00a0Smith ", "Bob Smith"),  # spaces mapped, trimmed, collapsed
            ("Zoe\u0308", "Zo\u00eb"),  # composed
            ("\u2167", "VIII"),  # ROMAN NUMERAL EIGHT: a compatibility form
            ("a\u0301\u0302\u0303\u0304", "\u00e1\u0302\u0303\u0304"),  # four marks: the limit
        ],
        ids=lambda v: v.encode("unicode_escape").decode()[:24],
    )
    def test_normalised(self, typed: str, normal: str) -> None:
        assert enforce_username(typed) == normal
        assert enforce_username(normal) == normal  # the normal form is stable
        assert validate_username(typed) == normal

    @pytest.mark.parametrize(
        "name",
        [
            "alice",
            FAMILY,
            FAMILY + " Fam",
            "\u2764\ufe0f",  # red heart with its emoji variation selector
            "\U0001f3f3\ufe0f\u200d\U0001f308",  # rainbow flag
            "\U0001f469\U0001f3fd\u200d\U0001f4bb",  # a skin tone inside a ZWJ sequence
            "1\ufe0f\u20e3",  # keycap
            "\U0001f1eb\U0001f1f7",  # a flag: regional indicators
            ENGLAND,  # a subdivision flag: tag characters
            "\u0421\u0430\u0448\u0430 Smith",  # one script per word
            "Tokyo\u6771\u4eac",  # Latin + Han: Highly Restrictive allows it
            "\u6771\u4eac\u30bf\u30ef\u30fc",  # Han + Katakana
            "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",  # Persian, with a ZWNJ
            "\u0915\u094d\u200d\u0937",  # ZWJ after a virama
            "l\u00b7l",  # Catalan middle dot between two l
            FAMILY * 4 + "abcd",  # exactly 32 code points
        ],
        ids=lambda v: v.encode("unicode_escape").decode()[:24],
    )
    def test_accepted_as_typed(self, name: str) -> None:
        assert enforce_username(name) == name
        command = parse_command(frame({"type": "join", "room": "lobby", "username": name}))
        assert isinstance(command, Join) and command.username == name

    @pytest.mark.parametrize(
        ("typed", "rule", "says"),
        [
            (None, "type", "string"),
            ("", "empty", "visible"),
            ("   ", "empty", "visible"),
            ("\u3000", "empty", "visible"),  # an ideographic space is a space
            ("x" * 33, "too_long", "33 characters"),
            (FAMILY * 4 + "abcde", "too_long", "33 characters"),
            ("y" * 300, "too_long", "300"),
            ("tab\tname", "control", "U+0009"),
            ("bad\nname", "control", "U+000A"),
            ("\u3164", "blank", "U+3164 HANGUL FILLER"),
            ("\u2800", "blank", "U+2800 BRAILLE PATTERN BLANK"),
            ("bob\u2800", "blank", "U+2800"),
            ("\uffa0", "blank", "U+FFA0"),
            ("\u200b", "invisible", "U+200B ZERO WIDTH SPACE"),
            ("al\u00adice", "invisible", "U+00AD SOFT HYPHEN"),
            ("alice\ufe0f", "invisible", "U+FE0F"),  # a variation selector after a letter
            ("\ufdd0", "invisible", "U+FDD0"),  # a noncharacter
            ("a\u200db", "joiner", "between two emoji"),
            ("\u314b\u314b", "jamo", "whole syllables"),
            ("\u0378", "unassigned", "U+0378"),
            ("\ue000", "disallowed", "U+E000"),  # private use
            ("a\u2028b", "disallowed", "U+2028 LINE SEPARATOR"),
            ("\u00b7", "context", "U+00B7 MIDDLE DOT"),
            ("\u0301a", "leading_mark", "U+0301"),
            ("a \u0301", "leading_mark", "U+0301"),
            ("a" + "\u0301" * 31, "marks", "stacks 31 combining marks"),
            ("a\u0301\u0302\u0303\u0304\u0305", "marks", "stacks 5"),
            ("e\u0301\u0301", "marks", "twice"),
            ("\u0430dmin", "mixed_script", "mixes Cyrillic (\u0430) and Latin (d)"),
            ("abc\u0414\u0436", "mixed_script", "mixes Latin (a) and Cyrillic (\u0414)"),
            ("\u03a9mega", "mixed_script", "Greek"),
            ("\u13aalice", "mixed_script", "Cherokee"),
            ("bob \u0430dmin", "mixed_script", "\u201c\u0430dmin\u201d"),
        ],
        ids=lambda v: repr(v)[:24],
    )
    def test_refused_with_a_reason_that_says_why(self, typed: object, rule: str, says: str) -> None:
        with pytest.raises(UsernameRefused) as info:
            enforce_username(typed)
        assert (info.value.code, info.value.rule) == ("bad_username", rule)
        assert says in info.value.reason
        assert "printable" not in info.value.reason
        # On the wire too: a join with that name is refused with the same reason.
        if typed is None:
            return  # a null username on the wire means "none given"
        with pytest.raises(ChatError) as wire:
            parse_command(frame({"type": "join", "room": "lobby", "username": typed}))
        assert (wire.value.code, wire.value.reason) == ("bad_username", info.value.reason)

    def test_every_documented_rule_is_reachable(self) -> None:
        """The rules names.js mirrors are exactly the ones the cases above exercise."""
        cases = self.test_refused_with_a_reason_that_says_why.pytestmark[0].args[1]
        assert {rule for _, rule, _ in cases} == set(RULES)

    @given(st.text(max_size=40))
    @settings(max_examples=300, derandomize=True, database=None)
    def test_any_text_is_a_normal_form_or_a_refusal(self, text: str) -> None:
        try:
            name = enforce_username(text)
        except UsernameRefused as exc:
            assert exc.rule in RULES and exc.reason
            return
        assert 1 <= len(name) <= 32
        assert enforce_username(name) == name

    def test_a_session_is_bound_to_the_normal_form(self) -> None:
        session = ChatSession("lobby")
        fullwidth = "\uff41\uff44\uff4d\uff49\uff4e"
        command = session.handle(frame({"type": "join", "room": "lobby", "username": fullwidth}))
        assert isinstance(command, Join) and command.username == "admin"
        assert session.username == "admin"
        # The same name, typed either way, is the same user.
        said = session.handle(frame({"type": "message", "username": "admin", "message": "hi"}))
        assert isinstance(said, Say) and said.username == "admin"
        with pytest.raises(ChatError) as info:
            session.handle(frame({"type": "message", "username": "Admin", "message": "hi"}))
        assert info.value.code == "username_mismatch"


class TestConfusableNames:
    """UTS #39 section 4: skeletons, for "does this name look like one already here"."""

    def test_skeleton_maps_lookalikes_to_one_prototype(self) -> None:
        assert skeleton("\u0430dmin") == skeleton("admin")  # Cyrillic a
        assert skeleton("\u0440\u0430\u0443\u0440\u0430l") == skeleton("paypal")  # whole-script
        assert skeleton("rn") == skeleton("m")
        assert skeleton("a\u200bb") == skeleton("ab")  # default-ignorables are dropped
        assert skeleton("alice") != skeleton("alicia")

    @pytest.mark.parametrize(
        ("name", "present", "found"),
        [
            ("\u0430\u0435", ["bob", "ae"], "ae"),  # Cyrillic "ae", a valid one-script name
            ("Ian", ["lan"], "lan"),  # capital I and small l
            ("Alice", ["bob", "alice"], "alice"),  # case only
            ("rnary", ["mary"], "mary"),
            ("b0b", ["bob"], "bob"),  # digit zero and letter o
            ("bob", ["bob"], None),  # the same user again
            ("bob", ["alice", "carol"], None),
            ("bob", [], None),
        ],
    )
    def test_find_confusable(self, name: str, present: list[str], found: str | None) -> None:
        assert find_confusable(name, present) == found
        assert confusable(name, found) if found else True

    def test_check_distinct_names_the_lookalike(self) -> None:
        check_distinct("bob", ["alice"], "lobby")
        with pytest.raises(ChatError) as info:
            check_distinct("\u0430\u0435", ["ae"], "lobby")
        assert info.value.code == "name_confusable"
        assert "\u201cae\u201d" in info.value.reason and "lobby" in info.value.reason


# -- the username memo ---------------------------------------------------------------

WIDE = "\uff41\uff4c\uff49\uff43\uff45"  # fullwidth alice

_names = st.one_of(
    st.sampled_from(["alice", "Alice", "  alice ", WIDE, "", "a\u200bb", "bob", 7, None]),
    st.text(max_size=8),
)


@settings(max_examples=300, derandomize=True, database=None)
@given(st.lists(_names, max_size=12))
def test_the_username_memo_answers_as_validate_username(values: list[object]) -> None:
    memo = UsernameMemo()
    for value in values:
        try:
            expected: object = validate_username(value)
        except ChatError as exc:
            expected = (exc.code, exc.reason)
        try:
            got: object = memo(value)
        except ChatError as exc:
            got = (exc.code, exc.reason)
        assert got == expected, value


def test_the_username_memo_validates_a_repeated_name_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import wschat.chat.schema as schema

    calls: list[object] = []

    def counted(value: object) -> str:
        calls.append(value)
        return validate_username(value)

    monkeypatch.setattr(schema, "validate_username", counted)
    memo = UsernameMemo()
    frames = [json.dumps({"username": WIDE, "message": text}) for text in ("hi", "again")]
    commands = [parse_frame(text, (), memo) for text in frames]
    assert [c.username for c in commands] == ["alice", "alice"]  # type: ignore[union-attr]
    assert calls == [WIDE]
    assert parse_frame('{"username":"bob","message":"hi"}', (), memo).username == "bob"  # type: ignore[union-attr]
    with pytest.raises(ChatError):
        parse_frame('{"username":"","message":"hi"}', (), memo)
    assert parse_frame(frames[0], (), memo).username == "alice"  # type: ignore[union-attr]
    assert calls == [WIDE, "bob", "", WIDE]
