"""The application layer in a real server: identities from real tokens, permissions,
hooks, ephemeral events, server-side publishing — over loopback, on every loop.

Tokens are signed with PyJWT; clients are the `websockets` library.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import jwt
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from wschat.app import App, AppConfig, Rejection
from wschat.server import Server, ServerConfig

from .helpers import RedisProcess, ServerHandle, running_server, ws_url
from .test_server import recv_json, recv_type

pytestmark = [pytest.mark.anyio, pytest.mark.every_loop]

SECRET = "wschat-test-secret-of-32-bytes-or-more!"
AUDIENCE = "chat.example"


def token(sub: str, lifetime: float = 300, key: str = SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": sub, "iat": now, "exp": now + lifetime, "aud": AUDIENCE, **claims}
    return jwt.encode(payload, key, algorithm="HS256")


def app_server(
    jwt_leeway: float = 30.0, jwt_cookie: str | None = None, **hooks: Any
) -> Callable[[ServerConfig], Server]:
    """A server factory for ``running_server``: an App with a JWT key and ``hooks``."""

    def make(config: ServerConfig) -> Server:
        settings = AppConfig(
            jwt_secret=SECRET,
            jwt_audience=AUDIENCE,
            jwt_leeway=jwt_leeway,
            jwt_cookie=jwt_cookie,
        )
        return Server(app=App(config, settings, **hooks))

    return make


def url(server: ServerHandle, query: str = "") -> str:
    return ws_url(server) + (f"?{query}" if query else "")


async def refused(server: ServerHandle, query: str) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as info:
        await connect(url(server, query))
    return info.value.response.status_code, info.value.response.body or b""


async def open_as(server: ServerHandle, user: str, query: str = "", **claims: Any) -> Any:
    ws = await connect(
        url(server, "&".join(q for q in (query, f"token={token(user, **claims)}") if q))
    )
    hello = await recv_type(ws, "authenticated")
    assert hello["username"] == user
    return ws


class TestIdentity:
    async def test_the_token_decides_who_a_connection_is(self) -> None:
        async with running_server(app_server()) as server:
            alice = await open_as(server, "alice", name="Alice Liddell")
            bob = await open_as(server, "bob")
            await bob.send(json.dumps({"type": "join", "room": "lobby"}))
            await recv_type(bob, "presence")
            await alice.send(json.dumps({"type": "message", "message": "hi"}))
            event = await recv_type(bob, "message")
            assert (event["username"], event["name"], event["message"]) == (
                "alice",
                "Alice Liddell",
                "hi",
            )
            # Naming someone else is refused, in a join and in the seed format.
            await alice.send(json.dumps({"type": "join", "room": "lobby", "username": "bob"}))
            assert (await recv_type(alice, "error"))["code"] == "username_mismatch"
            await alice.send(json.dumps({"username": "bob", "message": "it is me, bob"}))
            assert (await recv_type(alice, "error"))["code"] == "username_mismatch"
            await bob.send(json.dumps({"type": "join", "room": "lobby"}))
            presence = await recv_type(bob, "presence")
            assert presence["members"] == ["alice", "bob"]
            for ws in (alice, bob):
                await ws.close()

    @pytest.mark.parametrize(
        ("make_query", "status", "said"),
        [
            (lambda: "", 401, b"a token is required"),
            (lambda: f"token={token('alice', lifetime=-120)}", 401, b"expired"),
            (lambda: f"token={token('alice', key='another-key-another-key-another!!')}", 401, b""),
            (lambda: f"token={token('alice', aud='elsewhere')}", 401, b"aud"),
            (
                lambda: (
                    "token="
                    + jwt.encode({"sub": "alice", "exp": time.time() + 60}, None, algorithm="none")
                ),
                401,
                b"",
            ),
        ],
        ids=["missing", "expired", "wrong-key", "wrong-audience", "alg-none"],
    )
    async def test_a_bad_token_is_401_at_the_handshake(
        self, make_query: Callable[[], str], status: int, said: bytes
    ) -> None:
        async with running_server(app_server()) as server:
            got, body = await refused(server, make_query())
            assert got == status and said in body and body.strip()

    async def test_first_message_auth_and_its_timeout(self) -> None:
        async with running_server(app_server(), handshake_timeout=1) as server:
            async with connect(url(server, "auth=message")) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token("carol")}))
                assert (await recv_type(ws, "authenticated"))["username"] == "carol"
                await ws.send(json.dumps({"type": "message", "message": "signed in"}))
                assert (await recv_type(ws, "message"))["username"] == "carol"
            async with connect(url(server, "auth=message")) as silent:
                with pytest.raises(ConnectionClosed) as info:
                    await recv_json(silent, timeout=5)
                assert info.value.rcvd is not None and info.value.rcvd.code == 4401

    async def test_a_token_in_the_named_cookie_names_the_connection(self) -> None:
        async with running_server(app_server(jwt_cookie="chat_session")) as server:
            cookie = {"Cookie": f"theme=dark; chat_session={token('frank')}"}
            async with connect(url(server), additional_headers=cookie) as ws:
                assert (await recv_type(ws, "authenticated"))["username"] == "frank"
            expired = token("frank", lifetime=-120)
            for header in (f"other={token('frank')}", f"chat_session={expired}"):
                with pytest.raises(InvalidStatus) as info:
                    await connect(url(server), additional_headers={"Cookie": header})
                assert info.value.response.status_code == 401

    async def test_the_token_is_never_written_to_the_log(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        good = token("alice")
        bad = token("alice", key="another-key-another-key-another!!")
        with caplog.at_level(logging.DEBUG):
            async with running_server(app_server(), handshake_timeout=1) as server:
                ws = await connect(url(server, f"room=lobby&token={good}"))
                await recv_type(ws, "authenticated")
                await ws.send(json.dumps({"type": "auth", "token": good}))
                await recv_type(ws, "authenticated")
                await ws.send(json.dumps({"type": "auth", "token": bad}))
                assert (await recv_type(ws, "error"))["code"] == "unauthorized"
                await ws.close()
                assert (await refused(server, f"room=lobby&token={bad}"))[0] == 401
                async with connect(url(server, "auth=message")) as late:
                    await late.send(json.dumps({"type": "auth", "token": bad}))
                    with pytest.raises(ConnectionClosed):
                        await recv_json(late, timeout=5)
                async with httpx.AsyncClient() as http:
                    base = f"http://127.0.0.1:{server.port}"
                    for path in ("/ws", "/nowhere", "/"):
                        await http.get(f"{base}{path}?token={good}")
        # (the clients, websockets and httpx, log the URLs they open: only the server's lines count)
        logged = "\n".join(
            record.getMessage() for record in caplog.records if record.name.startswith("wschat")
        )
        assert "refused: 401" in logged  # the refusals were logged, with their reasons
        for secret in (good, bad):
            signature = secret.rsplit(".", 1)[1]
            assert secret not in logged and signature not in logged

    async def test_an_expired_token_closes_4408_unless_refreshed(self) -> None:
        async with running_server(app_server(jwt_leeway=0)) as server:
            # (exp is whole seconds: 4 s from now is at least 3 s away, time
            # enough for the refresh on a loaded machine)
            fresh = await open_as(server, "dave", lifetime=4)
            stale = await open_as(server, "erin", lifetime=4)
            await fresh.send(json.dumps({"type": "auth", "token": token("dave", lifetime=60)}))
            assert (await recv_type(fresh, "authenticated"))["expires"] > time.time() + 30
            with pytest.raises(ConnectionClosed) as info:
                await recv_json(stale, timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 4408
            await anyio.sleep(0.5)
            await fresh.send(json.dumps({"type": "message", "message": "still here"}))
            assert (await recv_type(fresh, "message"))["message"] == "still here"
            await fresh.close()


class TestPermissions:
    async def test_a_direct_room_admits_only_its_two_users(self) -> None:
        async with running_server(app_server()) as server:
            alice = await open_as(server, "alice")
            bob = await open_as(server, "bob")
            carol = await open_as(server, "carol")
            for ws in (alice, bob):
                await ws.send(json.dumps({"type": "join", "room": "dm:alice:bob"}))
                await recv_type(ws, "presence")
            await carol.send(json.dumps({"type": "join", "room": "dm:alice:bob"}))
            assert (await recv_type(carol, "error"))["code"] == "forbidden"
            await alice.send(
                json.dumps({"type": "message", "room": "dm:alice:bob", "message": "psst"})
            )
            assert (await recv_type(bob, "message"))["message"] == "psst"
            status, _ = await refused(server, f"room=dm:alice:bob&token={token('carol')}")
            assert status == 403
            for ws in (alice, bob, carol):
                await ws.close()

    async def test_the_rooms_claim_limits_where_a_token_goes(self) -> None:
        async with running_server(app_server()) as server:
            ws = await open_as(server, "frank", query="room=team:dev", rooms=["team:*"])
            await ws.send(json.dumps({"type": "join", "room": "secret"}))
            assert (await recv_type(ws, "error"))["code"] == "forbidden"
            await ws.send(json.dumps({"type": "join", "room": "team:ops"}))
            assert (await recv_type(ws, "history"))["room"] == "team:ops"
            await ws.close()


class TestHooks:
    async def test_on_message_rewrites_or_refuses_for_the_sender_only(self) -> None:
        async def moderate(identity: Any, room: str, text: str) -> str:
            if "spam" in text:
                raise Rejection("moderated", "no spam in this room")
            return text.replace("darn", "d**n")

        async with running_server(app_server(on_message=moderate)) as server:
            alice = await open_as(server, "alice")
            bob = await open_as(server, "bob")
            await alice.send(json.dumps({"type": "message", "message": "buy spam", "id": "m1"}))
            error = await recv_type(alice, "error")
            assert (error["code"], error["reason"], error["id"]) == (
                "moderated",
                "no spam in this room",
                "m1",
            )
            await alice.send(json.dumps({"type": "message", "message": "darn it"}))
            assert (await recv_type(bob, "message"))["message"] == "d**n it"  # not the spam
            for ws in (alice, bob):
                await ws.close()

    async def test_typing_reaches_the_others_not_the_sender(self) -> None:
        async with running_server(app_server()) as server:
            alice = await open_as(server, "alice", name="Alice")
            bob = await open_as(server, "bob")
            for ws in (alice, bob):
                await ws.send(json.dumps({"type": "join", "room": "lobby"}))
                await recv_type(ws, "presence")
            await alice.send(json.dumps({"type": "typing", "room": "lobby"}))
            typing = await recv_type(bob, "typing")
            assert typing == {
                "type": "typing",
                "room": "lobby",
                "username": "alice",
                "name": "Alice",
            }
            await alice.send(json.dumps({"type": "message", "message": "after typing"}))
            assert (await recv_json(alice))["type"] == "message"  # no typing event of its own
            for ws in (alice, bob):
                await ws.close()

    async def test_app_publish_is_marked_as_the_server_s(self) -> None:
        async with running_server(app_server()) as server:
            alice = await open_as(server, "alice")
            publish = functools.partial(server.app.publish, username="ops")
            position = await server.call(publish, "lobby", "maintenance at 5")
            event = await recv_type(alice, "message")
            assert (event["username"], event["server"], event["seq"]) == ("ops", True, position.seq)
            await alice.close()


async def ack_or_error(ws: ClientConnection, message_id: str) -> dict[str, Any]:
    while True:
        event = await recv_json(ws)
        if event.get("id") == message_id and event["type"] in ("ack", "error"):
            return event


class TestPerUserLimit:
    async def test_a_user_s_connections_share_one_limit(self) -> None:
        async with running_server(app_server(), user_rate=0.01, user_burst=3) as server:
            tabs = [await open_as(server, "gina") for _ in range(2)]
            answers = []
            for n in range(6):
                ws = tabs[n % 2]
                await ws.send(json.dumps({"type": "message", "message": f"m{n}", "id": f"m{n}"}))
                answers.append((await ack_or_error(ws, f"m{n}"))["type"])
            assert answers == ["ack", "ack", "ack", "error", "error", "error"]
            for ws in tabs:
                await ws.close()


API_KEY = "api-key-for-the-tests-0123456789"


def api_server(config: ServerConfig) -> Server:
    return Server(app=App(config, AppConfig(api_key=API_KEY)))


class TestHttpApi:
    async def test_publish_presence_history_and_rooms(self) -> None:
        async with running_server(api_server) as server:
            base = f"http://127.0.0.1:{server.port}/api"
            headers = {"authorization": f"Bearer {API_KEY}"}
            async with connect(ws_url(server)) as ws, httpx.AsyncClient(headers=headers) as http:
                await ws.send(json.dumps({"type": "join", "room": "lobby", "username": "amy"}))
                await recv_type(ws, "presence")
                sent = await http.post(
                    f"{base}/rooms/lobby/messages", json={"username": "bot", "message": "hello"}
                )
                assert sent.status_code == 201
                position = sent.json()
                event = await recv_type(ws, "message")
                assert (event["username"], event["message"], event["server"]) == (
                    "bot",
                    "hello",
                    True,
                )
                assert (position["room"], position["seq"], position["epoch"]) == (
                    "lobby",
                    event["seq"],
                    event["epoch"],
                )
                presence = await http.get(f"{base}/rooms/lobby/presence")
                assert presence.json() == {"room": "lobby", "members": ["amy"]}
                history = (await http.get(f"{base}/rooms/lobby/history?limit=5")).json()
                assert [m["message"] for m in history["messages"]] == ["hello"]
                rooms = (await http.get(f"{base}/rooms")).json()
                assert rooms == {"rooms": [{"room": "lobby", "members": 1}]}

    async def test_bad_calls_get_clear_answers(self) -> None:
        async with running_server(api_server) as server, httpx.AsyncClient() as http:
            base = f"http://127.0.0.1:{server.port}/api"
            assert (await http.get(f"{base}/rooms")).status_code == 401
            http.headers["authorization"] = f"Bearer {API_KEY}"
            long = await http.post(
                f"{base}/rooms/lobby/messages", json={"username": "bot", "message": "x" * 5000}
            )
            assert (long.status_code, long.json()["error"]) == (400, "bad_message")
            room = await http.post(
                f"{base}/rooms/no%20spaces/messages", json={"username": "b", "message": "m"}
            )
            assert (room.status_code, room.json()["error"]) == (400, "bad_room")
            huge = await http.post(f"{base}/rooms/lobby/messages", content=b"{" * 70_000)
            assert huge.status_code == 413
        async with running_server() as plain, httpx.AsyncClient() as http:
            # No --api-key: the whole /api/ tree is not there.
            assert (await http.get(f"http://127.0.0.1:{plain.port}/api/rooms")).status_code == 404


class TestWebSocketPathProbe:
    async def test_a_plain_request_gets_the_upgrade_s_answer(self) -> None:
        async with (
            running_server(app_server(), max_connections=1) as server,
            httpx.AsyncClient() as http,
        ):
            base = f"http://127.0.0.1:{server.port}/ws"
            missing = await http.get(base)
            assert (missing.status_code, "token is required" in missing.text) == (401, True)
            assert (await http.get(f"{base}?room=bad%20room")).status_code == 400
            with_token = await http.get(f"{base}?token={token('amy')}")
            assert with_token.status_code == 426 and with_token.headers["upgrade"] == "websocket"
            async with connect(f"{base.replace('http', 'ws')}?token={token('amy')}"):
                full = await http.get(f"{base}?token={token('ben')}")
                assert (full.status_code, full.headers["retry-after"]) == (503, "5")


@pytest.mark.redis
@pytest.mark.every_loop(loops=("asyncio", "uvloop"))
async def test_the_api_works_across_nodes_on_redis() -> None:
    with RedisProcess() as redis:
        async with (
            running_server(api_server, hub_url=redis.url) as node_a,
            running_server(api_server, hub_url=redis.url) as node_b,
            connect(ws_url(node_b)) as reader,
            httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}) as http,
        ):
            await reader.send(json.dumps({"type": "join", "room": "lobby", "username": "kim"}))
            await recv_type(reader, "presence")
            base = f"http://127.0.0.1:{node_a.port}/api"
            sent = await http.post(
                f"{base}/rooms/lobby/messages", json={"username": "ops", "message": "across"}
            )
            assert sent.status_code == 201
            event = await recv_type(reader, "message")
            assert (event["message"], event["server"], event["seq"]) == (
                "across",
                True,
                sent.json()["seq"],
            )
            assert (await http.get(f"{base}/rooms")).json() == {
                "rooms": [{"room": "lobby", "members": 1}]
            }
            presence = await http.get(f"{base}/rooms/lobby/presence")
            assert presence.json()["members"] == ["kim"]
