"""The client's sans-IO half: wire mapping, recovery bookkeeping, pending messages, backoff.

No sockets: server events are fed as JSON text, as they come from wschat's own
encoders (wschat.chat), so the client and the server agree on one schema.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from wschat.chat import (
    Position,
    ack_event,
    error_event,
    history_event,
    membership_event,
    message_event,
    presence_event,
)
from wschat.client.backoff import (
    Backoff,
    delay_before_retry,
    reconnect_after_close,
    reconnect_after_status,
    retry_after,
)
from wschat.client.errors import SayError
from wschat.client.events import (
    Ack,
    Error,
    Gap,
    History,
    Joined,
    Message,
    Presence,
    Reconnected,
    Typing,
)
from wschat.client.joins import JoinResult
from wschat.client.outgoing import SayResult
from wschat.client.rooms import Placement, RoomState
from wschat.client.session import ClientSession
from wschat.client.url import parse_server_url
from wschat.client.wire import Unknown, decode_server_event

ROOT = Path(__file__).resolve().parent.parent
PURE_CLIENT_MODULES = (
    "events.py",
    "wire.py",
    "session.py",
    "outgoing.py",
    "backoff.py",
    "errors.py",
    "url.py",
    "render.py",
)
TIME = "2026-11-26T16:00:00.123Z"
E1 = "epoch1"


def msg(
    seq: int,
    text: str | None = None,
    *,
    room: str = "lobby",
    epoch: str = E1,
    user: str = "alice",
    message_id: str | None = None,
) -> bytes:
    return message_event(room, Position(epoch, seq), user, text or f"m{seq}", TIME, message_id)


def history(
    messages: list[bytes], seq: int, *, room: str = "lobby", epoch: str = E1, complete: bool = True
) -> bytes:
    return history_event(room, messages, Position(epoch, seq), complete)


def feed(session: ClientSession, *payloads: bytes) -> list[Any]:
    for payload in payloads:
        session.receive_text(payload.decode())
    return session.events_received()


def sent(session: ClientSession) -> list[dict[str, Any]]:
    return [json.loads(text) for text in session.texts_to_send()]


def texts(events: list[Any]) -> list[str]:
    return [e.text for e in events if isinstance(e, Message)]


def joined_session(*rooms: str, user: str = "bot") -> ClientSession:
    """A session connected and past its first join (history up to seq 2) of every room."""
    session = ClientSession(user, rooms or ("lobby",), "c1")
    session.connection_made(session.url_room)
    sent(session)
    for room in rooms or ("lobby",):
        feed(session, history([msg(1, room=room), msg(2, room=room)], 2, room=room))
    session.results()
    return session


# -- purity ----------------------------------------------------------------------


@pytest.mark.parametrize("name", PURE_CLIENT_MODULES)
def test_sans_io_client_modules_import_no_io(name: str) -> None:
    tree = ast.parse((ROOT / "wschat" / "client" / name).read_text(encoding="utf-8"))
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
    }
    assert not imported & {"anyio", "asyncio", "trio", "socket", "ssl", "time", "random"}


def test_the_package_is_marked_typed() -> None:
    # PEP 561: without py.typed, a user's type checker ignores wschat.client's annotations.
    assert importlib.resources.files("wschat").joinpath("py.typed").is_file()


# -- wire ------------------------------------------------------------------------


def test_server_events_decode_to_typed_events() -> None:
    message = decode_server_event(msg(7, "hi", message_id="x.1").decode(), "bot")
    assert isinstance(message, Message)
    assert (message.room, message.username, message.text, message.id) == (
        "lobby",
        "alice",
        "hi",
        "x.1",
    )
    assert message.position == Position(E1, 7)
    assert message.time.isoformat() == "2026-11-26T16:00:00.123000+00:00"
    assert not message.mine and not message.server
    assert decode_server_event(msg(1, user="bot").decode(), "bot").mine  # type: ignore[union-attr]
    assert decode_server_event(presence_event("r", ["b", "a"]).decode(), "x") == Presence(
        "r", ("a", "b")
    )
    assert decode_server_event(membership_event("joined", "r", "a").decode(), "x") == Joined(
        "r", "a"
    )
    assert decode_server_event(ack_event("r", Position(E1, 3), "i").decode(), "x") == Ack(
        "r", "i", Position(E1, 3)
    )
    assert decode_server_event(error_event("bad_json", "no").decode(), "x") == Error(
        "bad_json", "no"
    )
    typing = '{"type":"typing","room":"r","username":"a","name":"Alice"}'
    assert decode_server_event(typing, "x") == Typing("r", "a", "Alice")


def test_display_name_and_server_flag_are_read() -> None:
    event = json.loads(msg(1, user="bot"))
    event.update(name="The Bot", server=True)
    message = decode_server_event(json.dumps(event), "bot")
    assert isinstance(message, Message)
    assert message.name == "The Bot" and message.server and not message.mine


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '{"type":"newfangled","room":"r"}',
        '{"type":"message","room":"r"}',
        '{"type":"message","room":"r","seq":true,"epoch":"e","username":"a","message":"m","time":"t"}',
        '{"type":"message","room":"r","seq":1,"epoch":"e","username":"a","message":"m","time":"noon"}',
    ],
)
def test_anything_else_is_unknown_and_skipped(text: str) -> None:
    assert isinstance(decode_server_event(text, "x"), Unknown)
    session = joined_session()
    session.receive_text(text)
    assert session.events_received() == [] and session.unknown_events == 1


# -- joining and recovery --------------------------------------------------------


def test_first_connection_joins_each_room_and_yields_history_then_live() -> None:
    session = ClientSession("bot", ["lobby", "dev"], "c1")
    assert session.url_room == "lobby"
    session.connection_made("lobby")
    assert sent(session) == [
        {"type": "join", "room": "lobby", "username": "bot"},
        {"type": "join", "room": "dev", "username": "bot"},
    ]
    # A live message of the URL room may come before the join is answered.
    assert feed(session, msg(3)) == []
    events = feed(session, history([msg(1), msg(2), msg(3)], 3), presence_event("lobby", ["bot"]))
    assert isinstance(events[0], History) and texts(list(events[0].messages)) == ["m1", "m2", "m3"]
    assert events[1] == Presence("lobby", ("bot",))
    assert len(events) == 2  # the early m3 was in history: not given twice
    assert session.results() == [JoinResult("lobby")]
    assert not session.recovered
    feed(session, history([], 0, room="dev", epoch="e2"))
    assert session.recovered
    assert texts(feed(session, msg(4))) == ["m4"]
    assert session.position("lobby") == Position(E1, 4)


def test_reconnect_rejoins_with_since_and_yields_each_missed_message_once_in_order() -> None:
    session = joined_session("lobby", "dev")
    session.connection_lost()
    session.connection_made("lobby", Reconnected(2, 1001, "going away"))
    assert sent(session) == [
        {"type": "join", "room": "lobby", "username": "bot", "since": {"epoch": E1, "seq": 2}},
        {"type": "join", "room": "dev", "username": "bot", "since": {"epoch": E1, "seq": 2}},
    ]
    early = feed(session, msg(4), msg(5))  # live, before the join is answered
    assert [type(e) for e in early] == [Reconnected]
    events = feed(session, history([msg(3), msg(4)], 4), msg(6))
    assert texts(events) == ["m3", "m4", "m5", "m6"]
    assert not any(isinstance(e, (History, Gap)) for e in events)


def test_incomplete_history_yields_a_gap_then_what_history_still_has() -> None:
    session = joined_session()
    session.connection_lost()
    session.connection_made("lobby")
    sent(session)
    # The memory hub restarted: a new epoch, its own messages from seq 1.
    events = feed(session, history([msg(1, "new1", epoch="E2")], 1, epoch="E2", complete=False))
    assert events[0] == Gap("lobby", Position(E1, 2), Position("E2", 1))
    assert texts(events[1:]) == ["new1"]
    assert texts(feed(session, msg(1, epoch="E2"), msg(2, "new2", epoch="E2"))) == ["new2"]


def test_a_live_seq_hole_is_recovered_without_reconnecting() -> None:
    session = joined_session()
    assert feed(session, msg(5)) == []
    assert sent(session) == [
        {"type": "join", "room": "lobby", "username": "bot", "since": {"epoch": E1, "seq": 2}}
    ]
    events = feed(session, msg(6), history([msg(3), msg(4), msg(5)], 5))
    assert texts(events) == ["m3", "m4", "m5", "m6"]


def test_a_live_message_of_a_new_epoch_starts_recovery() -> None:
    session = joined_session()
    assert feed(session, msg(1, epoch="E2")) == []
    assert sent(session)[0]["since"] == {"epoch": E1, "seq": 2}
    events = feed(session, history([msg(1, epoch="E2")], 1, epoch="E2", complete=False))
    assert isinstance(events[0], Gap) and texts(events) == ["m1"]


def test_events_of_a_room_left_are_dropped() -> None:
    session = joined_session("lobby", "dev")
    session.leave("dev")
    assert sent(session) == [{"type": "leave", "room": "dev"}]
    assert feed(session, msg(3, room="dev"), membership_event("left", "dev", "x")) == []
    assert session.rooms == ("lobby",)
    session.leave("dev")  # not in it any more: nothing to send
    assert sent(session) == []


def test_leaving_every_room_keeps_the_next_connection_out_of_its_url_room() -> None:
    session = joined_session("lobby")
    session.leave("lobby")
    session.connection_lost()
    session.connection_made(session.url_room)
    assert sent(session) == [{"type": "leave", "room": "lobby"}]


def test_presence_events_wait_for_history_too() -> None:
    session = ClientSession("bot", ["lobby"], "c1")
    session.connection_made("lobby")
    assert feed(session, membership_event("joined", "lobby", "bot")) == []
    events = feed(session, history([], 0))
    assert [type(e) for e in events] == [History, Joined]


def test_a_refused_join_is_reported_and_dropped() -> None:
    session = joined_session()
    assert session.join("vip")
    assert not session.join("vip")  # already joining: nothing more to wait for
    sent(session)
    events = feed(session, error_event("forbidden", "not for you"))
    assert events == [Error("forbidden", "not for you", None, "vip")]
    assert session.results() == [JoinResult("vip", events[0])]
    assert session.rooms == ("lobby",)
    assert sent(session) == []  # not joined: nothing to leave


def test_an_unavailable_rejoin_asks_for_a_new_connection() -> None:
    session = joined_session()
    session.connection_lost()
    session.connection_made("lobby")
    feed(session, error_event("unavailable", "redis down"))
    assert session.rejoin_failed and "lobby" in session.rejoin_failed
    assert session.rooms == ("lobby",)
    session.connection_lost()
    session.connection_made("lobby")
    assert session.rejoin_failed is None


def test_an_error_that_names_its_frame_is_matched_to_it() -> None:
    # Two joins waiting; a typing refusal and the second join's refusal arrive.
    session = joined_session()
    assert session.join("vip") and session.join("dev")
    sent(session)
    typing = error_event("rate_limited", "slow down", None, "typing", "lobby")
    assert feed(session, typing) == [Error("rate_limited", "slow down", None, "lobby", "typing")]
    assert set(session.rooms) == {"lobby", "vip", "dev"}  # not taken for a join's refusal
    refused = feed(session, error_event("forbidden", "not for you", None, "join", "dev"))
    assert refused == [Error("forbidden", "not for you", None, "dev")]
    assert session.results() == [JoinResult("dev", refused[0])]
    assert set(session.rooms) == {"lobby", "vip"}  # vip still waits for its answer


def test_errors_of_other_commands_pass_through() -> None:
    session = joined_session()
    assert session.typing("lobby", now=100.0)
    assert feed(session, error_event("bad_type", "unknown type 'typing'")) == [
        Error("bad_type", "unknown type 'typing'")
    ]


def test_with_a_token_the_server_names_the_user() -> None:
    session = ClientSession(None, ["lobby"], "c1")
    session.connection_made("lobby")
    assert sent(session) == [{"type": "join", "room": "lobby"}]  # the token's user
    hello = '{"type":"authenticated","username":"alice","name":"Alice","expires":1767225600}'
    assert feed(session, hello.encode()) == []
    assert (session.username, session.name, session.token_expires) == ("alice", "Alice", 1767225600)
    assert session.authentications == 1
    events = feed(session, history([msg(1, user="alice")], 1))
    assert events[0].messages[0].mine
    session.authenticate("fresh.jwt")
    assert sent(session) == [{"type": "auth", "token": "fresh.jwt"}]
    session.connection_lost()
    session.authenticate("while away")  # nothing to send it on
    session.connection_made("lobby")
    assert session.token_expires is None and session.authentications == 0
    assert [c["type"] for c in sent(session)] == ["join"]


def test_bad_names_are_refused_before_sending() -> None:
    with pytest.raises(ValueError):
        ClientSession("", ["lobby"], "c")
    with pytest.raises(ValueError):
        ClientSession("bot", ["no spaces"], "c")
    with pytest.raises(ValueError):
        ClientSession("bot", [], "c")
    with pytest.raises(ValueError):
        joined_session().join("x" * 129)


def test_commands_while_disconnected_wait_for_the_next_connection() -> None:
    session = joined_session()
    session.connection_lost()
    assert not session.connected
    assert session.join("dev")
    session.leave("lobby")
    assert sent(session) == []
    session.connection_made("lobby")
    assert sent(session) == [
        {"type": "leave", "room": "lobby"},  # the URL room, left meanwhile
        {"type": "join", "room": "dev", "username": "bot"},
    ]


def test_answers_for_a_room_left_meanwhile_are_ignored() -> None:
    session = joined_session()
    session.join("dev")
    session.join("vip")
    session.leave("dev")
    session.leave("vip")
    session.results()
    assert feed(session, history([msg(1, room="dev")], 1, room="dev")) == []
    assert feed(session, error_event("forbidden", "no")) == []
    assert session.results() == []


def test_an_unasked_history_is_treated_as_a_recovery() -> None:
    session = joined_session()
    events = feed(session, history([msg(2), msg(3)], 3))
    assert texts(events) == ["m3"]  # m2 was given already


def test_a_hole_found_while_flushing_the_buffer_keeps_the_order() -> None:
    session = joined_session()
    session.connection_lost()
    session.connection_made("lobby")
    sent(session)
    feed(session, msg(6), membership_event("joined", "lobby", "carol"))
    # History ends at 4: the buffered m6 skips m5, so the room is recovered again.
    assert texts(feed(session, history([msg(3), msg(4)], 4))) == ["m3", "m4"]
    assert sent(session)[0]["since"] == {"epoch": E1, "seq": 4}
    events = feed(session, history([msg(5), msg(6)], 6))
    assert texts(events) == ["m5", "m6"] and isinstance(events[-1], Joined)


# -- sending ---------------------------------------------------------------------


def test_say_sends_an_id_and_the_ack_settles_it() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    assert message_id == "c1.1"
    assert sent(session) == [{"type": "message", "room": "lobby", "message": "hello", "id": "c1.1"}]
    events = feed(
        session,
        msg(3, "hello", user="bot", message_id="c1.1"),
        ack_event("lobby", Position(E1, 3), "c1.1"),
    )
    assert [type(e) for e in events] == [Message, Ack]
    assert events[0].mine
    assert session.results() == [SayResult("c1.1", Position(E1, 3))]
    assert session.pending() == 0


def test_unavailable_is_retried_once_with_the_same_id_then_fails() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    sent(session)
    assert feed(session, error_event("unavailable", "redis down", message_id)) == []
    assert session.results() == [SayResult(message_id, retry=True)]
    session.resend(message_id)
    assert sent(session)[0]["id"] == message_id
    events = feed(session, error_event("unavailable", "still down", message_id))
    assert events == [Error("unavailable", "still down", message_id, "lobby")]
    assert session.results() == [SayResult(message_id, error=events[0])]


def test_answers_nobody_waits_for_pass_through() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    assert session.pending() == 1
    session.forget(message_id)  # its sender stopped waiting
    assert session.pending() == 0
    session.resend(message_id)  # not waiting for a retry: nothing to send again
    sent(session)
    ack = ack_event("lobby", Position(E1, 3), message_id)
    assert feed(session, ack) == [Ack("lobby", message_id, Position(E1, 3))]
    assert feed(session, error_event("bad_id", "?", "x.1")) == [Error("bad_id", "?", "x.1")]
    assert session.results() == []


def test_other_refusals_fail_at_once() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    sent(session)
    feed(session, error_event("rate_limited", "slow down", message_id))
    (result,) = session.results()
    assert isinstance(result, SayResult) and result.error is not None
    assert result.error.code == "rate_limited"


def test_invalid_messages_are_refused_before_sending() -> None:
    session = joined_session()
    for text in ("", "   ", "x" * 4097):
        with pytest.raises(SayError) as caught:
            session.say("lobby", text)
        assert caught.value.code == "bad_message"
    with pytest.raises(SayError) as not_joined:
        session.say("elsewhere", "hi")
    assert not_joined.value.code == "not_joined"
    assert sent(session) == []


def test_unacknowledged_message_found_in_recovered_history_is_not_sent_again() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    sent(session)
    session.connection_lost()  # the ack was lost with the connection
    session.connection_made("lobby")
    sent(session)
    events = feed(session, history([msg(3, "hello", user="bot", message_id=message_id)], 3))
    assert [type(e) for e in events] == [Message, Ack]
    assert session.results() == [SayResult(message_id, Position(E1, 3)), JoinResult("lobby")]
    assert sent(session) == []


def test_unacknowledged_message_not_in_recovered_history_is_sent_again_after_it() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    sent(session)
    session.connection_lost()
    assert session.say("lobby", "while away") == "c1.2"  # queued, not sent
    session.connection_made("lobby")
    assert [c["type"] for c in sent(session)] == ["join"]
    feed(session, history([msg(3)], 3))
    assert [(c["id"], c["message"]) for c in sent(session)] == [
        (message_id, "hello"),
        ("c1.2", "while away"),
    ]


def test_leaving_fails_the_rooms_pending_messages() -> None:
    session = joined_session()
    message_id = session.say("lobby", "hello")
    session.leave("lobby")
    (result,) = session.results()
    assert isinstance(result, SayResult) and result.id == message_id
    assert result.error is not None and result.error.code == "not_joined"


def test_typing_is_throttled_per_room() -> None:
    session = joined_session("lobby", "dev")
    assert session.typing("lobby", now=10.0)
    assert not session.typing("lobby", now=11.0)
    assert session.typing("dev", now=11.0)
    assert session.typing("lobby", now=13.0)
    assert not session.typing("nowhere", now=20.0)
    assert sent(session) == [
        {"type": "typing", "room": "lobby"},
        {"type": "typing", "room": "dev"},
        {"type": "typing", "room": "lobby"},
    ]


# -- URLs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "secure", "host_header", "target"),
    [
        ("ws://127.0.0.1:8080/ws", "127.0.0.1", 8080, False, "127.0.0.1:8080", "/ws?room=r"),
        ("wss://chat.example.com", "chat.example.com", 443, True, "chat.example.com", "/ws?room=r"),
        ("http://[::1]:80/", "::1", 80, False, "[::1]", "/ws?room=r"),
        ("https://h:8443/chat?x=1&room=a&token=b", "h", 8443, True, "h:8443", "/chat?x=1&room=r"),
    ],
)
def test_server_urls(
    url: str, host: str, port: int, secure: bool, host_header: str, target: str
) -> None:
    address = parse_server_url(url)
    assert (address.host, address.port, address.secure) == (host, port, secure)
    assert address.host_header == host_header
    assert address.target("r") == target


@pytest.mark.parametrize("url", ["ftp://h/ws", "ws://:80/ws", "ws://h:99999/ws", "ws://h/#x"])
def test_bad_server_urls(url: str) -> None:
    with pytest.raises(ValueError, match="invalid URL"):
        parse_server_url(url)


# -- backoff ---------------------------------------------------------------------


def test_full_jitter_stays_under_a_capped_exponential_ceiling() -> None:
    backoff = Backoff(initial=0.5, maximum=4.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (5, 4.0), (500, 4.0)]:
        delays = [backoff.delay(attempt, rng.random) for _ in range(200)]
        assert all(0 <= d < ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # spread over the whole window
    assert backoff.delay(3, lambda: 0.5) == 1.0


def test_backoff_gives_up_after_max_attempts() -> None:
    assert not Backoff().gives_up(10_000)
    limited = Backoff(max_attempts=3)
    assert not limited.gives_up(2) and limited.gives_up(3)
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)


def test_which_closes_and_refusals_are_worth_a_reconnect() -> None:
    assert all(reconnect_after_close(c, False) for c in (1001, 1006, 1011, 1012, 1013))
    assert not any(reconnect_after_close(c, False) for c in (1000, 1002, 1008, 1009, 4401))
    assert reconnect_after_close(4408, True) and not reconnect_after_close(4408, False)
    assert reconnect_after_status(503) and reconnect_after_status(429)
    assert not reconnect_after_status(403) and not reconnect_after_status(401)
    assert retry_after((("retry-after", "5"),)) == 5.0
    assert retry_after((("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),)) is None
    assert retry_after(()) is None


def test_delay_before_retrying_a_connection() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, max_attempts=5)
    half = lambda: 0.5  # noqa: E731
    assert delay_before_retry(backoff, 1, half) == 0.5  # no answer at all: retry
    assert delay_before_retry(backoff, 3, half, 503) == 2.0
    wait = (("retry-after", "5"),)
    assert delay_before_retry(backoff, 1, half, 503, wait) == 5.0  # the server's wish
    assert delay_before_retry(backoff, 1, half, 429, (("retry-after", "3600"),)) == 10.0
    assert delay_before_retry(backoff, 1, half, 403) is None  # refused: it would be again
    assert delay_before_retry(backoff, 5, half) is None  # attempts used up
    assert delay_before_retry(None, 1, half) is None  # reconnecting is off


@pytest.mark.parametrize(
    ("last", "seq_epoch", "detect_holes", "placement"),
    [
        (None, (5, "e1"), True, Placement.NEW),  # the first message of a room
        ((4, "e1"), (5, "e1"), True, Placement.NEW),  # the next one
        ((4, "e1"), (4, "e1"), True, Placement.SEEN),  # a duplicate (live after history)
        ((4, "e1"), (2, "e1"), True, Placement.SEEN),  # an older one
        ((4, "e1"), (6, "e1"), True, Placement.HOLE),  # 5 went missing
        ((4, "e1"), (6, "e1"), False, Placement.NEW),  # history may start past it
        ((4, "e1"), (1, "e2"), True, Placement.HOLE),  # a new epoch: the old one's end is lost
        ((4, "e1"), (1, "e2"), False, Placement.NEW),
    ],
)
def test_a_rooms_placement_of_a_message(
    last: tuple[int, str] | None,
    seq_epoch: tuple[int, str],
    detect_holes: bool,
    placement: Placement,
) -> None:
    state = RoomState(Position(last[1], last[0]) if last else None)
    seq, epoch = seq_epoch
    message = Message("lobby", "bob", "hi", datetime.now(UTC), Position(epoch, seq))
    assert state.place(message, detect_holes) is placement
