"""The built-in room permissions, as tables: who may join, say in and read which room."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wschat.app import Identity, default_authorize, direct_room
from wschat.app.permissions import ACTIONS, direct_members, explain_denial, rooms_allow
from wschat.chat import ChatError, validate_room

ALICE = Identity("alice", "Alice")
BOB = Identity("bob", "Bob")
CAROL = Identity("carol", "Carol")
LIMITED = Identity("dave", "Dave", rooms=("lobby", "team:*", "dm:*"))
ANONYMOUS_ALICE = Identity.anonymous("alice")


@pytest.mark.parametrize(
    ("identity", "room", "allowed"),
    [
        # No rooms claim, no direct room: everyone everywhere, anonymous included.
        (ALICE, "lobby", True),
        (None, "lobby", True),
        (ANONYMOUS_ALICE, "team:dev", True),
        # Direct rooms: exactly the two authenticated users named, sorted.
        (ALICE, "dm:alice:bob", True),
        (BOB, "dm:alice:bob", True),
        (CAROL, "dm:alice:bob", False),
        (ANONYMOUS_ALICE, "dm:alice:bob", False),  # a chosen name proves nothing
        (None, "dm:alice:bob", False),
        (ALICE, "dm:bob:alice", False),  # unsorted: no one
        (ALICE, "dm:alice:alice", False),
        (ALICE, "dm:alice", False),
        (ALICE, "dm:alice:bob:carol", False),
        (ALICE, "dm::alice", False),
        # The rooms claim limits the token, direct rooms included.
        (LIMITED, "lobby", True),
        (LIMITED, "team:dev", True),
        (LIMITED, "team:dev:ops", True),
        (LIMITED, "team", False),
        (LIMITED, "team:", False),
        (LIMITED, "teams:dev", False),
        (LIMITED, "random", False),
        (LIMITED, "dm:dave:erin", True),
        (Identity("dave", "Dave", rooms=("lobby",)), "dm:dave:erin", False),
        (Identity("dave", "Dave", rooms=()), "lobby", False),
        (Identity("dave", "Dave", rooms=("*",)), "anything:at:all", True),
        (Identity("erin", "Erin", rooms=("*",)), "dm:dave:frank", False),  # * is no key to DMs
    ],
)
def test_default_rules(identity: Identity | None, room: str, allowed: bool) -> None:
    for action in ACTIONS:  # the built-in rules are the same for every action
        assert default_authorize(identity, action, room) is allowed
    reason = explain_denial(identity, "join", room)
    assert (reason is None) is allowed


def test_denials_say_why() -> None:
    assert explain_denial(CAROL, "join", "dm:alice:bob") == (
        "'dm:alice:bob' is a direct room of two other users"
    )
    assert "sorted" in (explain_denial(ALICE, "join", "dm:bob:alice") or "")
    assert "authenticated" in (explain_denial(None, "join", "dm:alice:bob") or "")
    assert "token does not allow" in (explain_denial(LIMITED, "say", "random") or "")


def test_direct_room_spells_the_sorted_name() -> None:
    assert direct_room("bob", "alice") == direct_room("alice", "bob") == "dm:alice:bob"
    assert direct_members("dm:alice:bob") == ("alice", "bob")


@pytest.mark.parametrize(
    ("a", "b"), [("alice", "alice"), ("a:b", "c"), ("x" * 63, "y" * 63), ("a b", "c")]
)
def test_direct_room_refuses_what_cannot_be_one(a: str, b: str) -> None:
    with pytest.raises(ValueError):
        direct_room(a, b)


def test_62_character_ids_fit() -> None:
    room = direct_room("a" * 62, "b" * 62)
    assert len(room) == 128 and validate_room(room) == room


ids = st.from_regex(r"[A-Za-z0-9_-]{1,62}", fullmatch=True)


@given(a=ids, b=ids, stranger=ids)
def test_direct_rooms_admit_their_two_users_and_no_one_else(a: str, b: str, stranger: str) -> None:
    if a == b:
        return
    room = direct_room(a, b)
    assert default_authorize(Identity(a, a), "join", room)
    assert default_authorize(Identity(b, b), "say", room)
    assert default_authorize(Identity(stranger, stranger), "history", room) is (stranger in (a, b))
    assert not default_authorize(Identity.anonymous(a), "join", room)


@given(room=st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_:-]{0,20}", fullmatch=True))
def test_patterns_match_only_their_namespace(room: str) -> None:
    assert rooms_allow(("*",), room)
    assert rooms_allow((room,), room)
    prefix = room.partition(":")[0]
    assert rooms_allow((f"{prefix}:*",), room) is (":" in room and room != f"{prefix}:")
    with pytest.raises(ChatError):
        validate_room(":" + room)  # ":" never comes first
