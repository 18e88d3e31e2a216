"""wschat.client against a real server that checks tokens (the App with a JWT key).

Tokens are real JWTs (PyJWT); the server is in-process, on the same loop as the
client: asyncio, uvloop and trio.
"""

from __future__ import annotations

import functools
import time

import anyio
import jwt
import pytest

import wschat.client
from wschat.client import (
    ConnectionClosedError,
    Disconnected,
    HandshakeRejectedError,
    Joined,
    JoinError,
    Message,
    Typing,
)

from .helpers import running_server, ws_url
from .test_app_server import app_server, token
from .test_client import anyio_backend, events_until, next_event  # noqa: F401 (three loops)

pytestmark = pytest.mark.anyio


async def test_the_token_names_the_user() -> None:
    async with (
        running_server(app_server()) as server,
        wschat.client.connect(ws_url(server), token=token("alice", name="Alice L.")) as alice,
        wschat.client.connect(ws_url(server), token=token("bob")) as bob,
    ):
        assert (alice.username, alice.name) == ("alice", "Alice L.")
        assert bob.username == "bob"
        await alice.say("hi, I am who my token says")
        message = await next_event(bob, Message)
        assert (message.username, message.name, message.mine) == ("alice", "Alice L.", False)
        assert (await next_event(alice, Message)).mine
        publish = functools.partial(server.app.publish, username="ops")
        await server.call(publish, "lobby", "maintenance at 5")
        notice = await next_event(bob, Message, where=lambda m: m.username == "ops")
        assert notice.server and not notice.mine


async def test_typing_reaches_the_others() -> None:
    async with (
        running_server(app_server()) as server,
        wschat.client.connect(ws_url(server), token=token("alice", name="Alice")) as alice,
        wschat.client.connect(ws_url(server), token=token("bob")) as bob,
    ):
        await next_event(alice, Joined, where=lambda j: j.username == "bob")
        alice.typing()
        alice.typing()  # throttled: one notification
        assert await next_event(bob, Typing) == Typing("lobby", "alice", "Alice")
        await alice.say("done typing")
        seen = []
        with anyio.fail_after(5):
            async for event in alice:
                seen.append(event)
                if isinstance(event, Message):
                    break
        assert not any(isinstance(e, Typing) for e in seen)  # not its own


async def test_no_token_or_another_users_name_is_refused() -> None:
    async with running_server(app_server()) as server:
        with pytest.raises(HandshakeRejectedError) as missing:
            async with wschat.client.connect(ws_url(server), username="mallory"):
                pass
        assert missing.value.status == 401 and "a token is required" in missing.value.body
        with pytest.raises(JoinError) as mismatch:
            async with wschat.client.connect(ws_url(server), username="bob", token=token("alice")):
                pass
        assert mismatch.value.code == "username_mismatch"
    with pytest.raises(ValueError, match="a token"):
        wschat.client.connect(ws_url(server))  # neither a username nor a token


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # two seconds of token life
async def test_a_token_source_keeps_the_connection_past_expiry() -> None:
    issued: list[str] = []

    async def fresh() -> str:
        issued.append(token("dave", lifetime=2))
        return issued[-1]

    def expiry(jwt_token: str) -> float:
        return float(jwt.decode(jwt_token, options={"verify_signature": False})["exp"])

    erins = token("erin", lifetime=2)
    async with (
        running_server(app_server(jwt_leeway=0)) as server,
        wschat.client.connect(ws_url(server), token=fresh) as dave,
        wschat.client.connect(ws_url(server), token=erins) as erin,
    ):
        # A fixed token cannot be renewed: the server closes at its expiry (4408).
        with pytest.raises(ConnectionClosedError) as expired, anyio.fail_after(10):
            async for _ in erin:
                pass
        assert expired.value.code == 4408
        # The token source was asked again, and the fresh token sent on the connection,
        # so dave's connection outlives its first token.
        await anyio.sleep(max(0.0, expiry(issued[0]) + 0.5 - time.time()))
        assert len(issued) >= 2
        await dave.say("still here")
        seen = await events_until(dave, lambda e: isinstance(e, Message) and e.text == "still here")
        assert not any(isinstance(e, Disconnected) for e in seen)  # renewed in place
