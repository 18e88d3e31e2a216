"""The HTTP API: routing and validation as a table (pure), then carried out on a real Hub.

The Hub runs on the memory backend (and, for what crosses nodes, a real
redis-server started by the test); the members in rooms are small real Member
objects that record what the Hub hands them.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from wschat.app import App, AppConfig, GetHistory, GetPresence, ListRooms, PostMessage
from wschat.app.api import MAX_API_BODY, route_api
from wschat.chat import ChatError, Position, decode_event
from wschat.hub import Hub, MemoryBackend, PreparedMessage
from wschat.hub.redis import RedisBackend
from wschat.server.http import Response

from .helpers import redis_server

KEY = "k" * 24
AUTH = ("authorization", f"Bearer {KEY}")
JSON = ("content-type", "application/json")


def route(
    method: str,
    path: str,
    query: str = "",
    headers: tuple[tuple[str, str], ...] = (AUTH, JSON),
    body: bytes = b"",
    key: str | None = KEY,
) -> Any:
    return route_api(method, path, query, headers, body, key)


def answer(result: Any) -> tuple[int, dict[str, Any]]:
    assert isinstance(result, Response), result
    assert result.content_type == "application/json"
    return result.status, json.loads(result.body)


def body(**obj: Any) -> bytes:
    return json.dumps(obj).encode()


class TestRouting:
    def test_no_key_hides_the_whole_tree(self) -> None:
        for method, path in (("GET", "/api/rooms"), ("POST", "/api/x"), ("GET", "/api")):
            status, error = answer(route(method, path, key=None))
            assert (status, error["error"]) == (404, "not_found")

    @pytest.mark.parametrize(
        "headers",
        [
            (),
            (("authorization", f"Bearer {KEY}x"),),
            (("authorization", f"Basic {KEY}"),),
            (("authorization", KEY),),
            (AUTH, AUTH),
        ],
        ids=["missing", "wrong", "basic", "no-scheme", "twice"],
    )
    def test_bad_or_missing_key_is_401(self, headers: tuple[tuple[str, str], ...]) -> None:
        result = route("GET", "/api/rooms", headers=headers)
        status, error = answer(result)
        assert (status, error["error"]) == (401, "unauthorized") and error["reason"]
        assert ("www-authenticate", 'Bearer realm="wschat"') in result.headers

    def test_scheme_is_case_insensitive(self) -> None:
        assert route("GET", "/api/rooms", headers=(("authorization", f"bearer {KEY}"),)) == (
            ListRooms()
        )

    def test_unauthenticated_requests_learn_nothing_about_paths(self) -> None:
        assert answer(route("GET", "/api/nope", headers=()))[0] == 401

    @pytest.mark.parametrize(
        ("method", "path", "query", "payload", "expected"),
        [
            ("GET", "/api/rooms", "", b"", ListRooms()),
            ("GET", "/api/rooms/lobby/presence", "", b"", GetPresence("lobby")),
            ("GET", "/api/rooms/dm%3Aalice%3Abob/presence", "", b"", GetPresence("dm:alice:bob")),
            ("GET", "/api/rooms/team:dev/history", "", b"", GetHistory("team:dev", None, 100)),
            (
                "GET",
                "/api/rooms/lobby/history",
                "limit=5&since_epoch=e1&since_seq=40",
                b"",
                GetHistory("lobby", Position("e1", 40), 5),
            ),
            (
                "POST",
                "/api/rooms/lobby/messages",
                "",
                body(username="bot", message="hello"),
                PostMessage("lobby", "bot", "hello"),
            ),
            (
                "POST",
                "/api/rooms/lobby/messages",
                "",
                body(username="bot", message="hi", id="r-1", name="Weather Bot", extra=1),
                PostMessage("lobby", "bot", "hi", "r-1", "Weather Bot"),
            ),
        ],
    )
    def test_routes(
        self, method: str, path: str, query: str, payload: bytes, expected: object
    ) -> None:
        assert route(method, path, query, body=payload) == expected

    @pytest.mark.parametrize(
        ("method", "path", "allow"),
        [
            ("POST", "/api/rooms", "GET"),
            ("GET", "/api/rooms/lobby/messages", "POST"),
            ("DELETE", "/api/rooms/lobby/presence", "GET"),
            ("PUT", "/api/rooms/lobby/history", "GET"),
        ],
    )
    def test_wrong_method_is_405(self, method: str, path: str, allow: str) -> None:
        result = route(method, path)
        assert answer(result)[1]["error"] == "method_not_allowed"
        assert result.status == 405 and ("allow", allow) in result.headers

    @pytest.mark.parametrize(
        "path", ["/api", "/api/", "/api/rooms/", "/api/rooms/lobby", "/api/rooms/lobby/x/y"]
    )
    def test_unknown_path_is_404(self, path: str) -> None:
        assert answer(route("GET", path)) == (
            404,
            {"error": "not_found", "reason": f"not found: {path}"},
        )

    @pytest.mark.parametrize(
        ("method", "path", "query", "payload", "status", "code"),
        [
            ("GET", "/api/rooms/bad room/presence", "", b"", 400, "bad_room"),
            ("GET", "/api/rooms/a%2Fb/presence", "", b"", 400, "bad_room"),
            ("GET", "/api/rooms/%FF/presence", "", b"", 400, "bad_room"),
            ("GET", "/api/rooms/:x/presence", "", b"", 400, "bad_room"),
            ("GET", "/api/rooms/r/history", "limit=0", b"", 400, "bad_limit"),
            ("GET", "/api/rooms/r/history", "limit=1001", b"", 400, "bad_limit"),
            ("GET", "/api/rooms/r/history", "limit=²", b"", 400, "bad_limit"),
            ("GET", "/api/rooms/r/history", "limit=1&limit=2", b"", 400, "bad_query"),
            ("GET", "/api/rooms/r/history", "since_epoch=e", b"", 400, "bad_since"),
            ("GET", "/api/rooms/r/history", "since_epoch=e&since_seq=-1", b"", 400, "bad_since"),
            ("POST", "/api/rooms/r/messages", "", b"", 400, "bad_json"),
            ("POST", "/api/rooms/r/messages", "", b"[1]", 400, "bad_json"),
            ("POST", "/api/rooms/r/messages", "", body(message="hi"), 400, "bad_username"),
            ("POST", "/api/rooms/r/messages", "", body(username="b"), 400, "bad_message"),
            (
                "POST",
                "/api/rooms/r/messages",
                "",
                body(username="b", message="x" * 4097),
                400,
                "bad_message",
            ),
            (
                "POST",
                "/api/rooms/r/messages",
                "",
                body(username="b", message="x", id="bad id"),
                400,
                "bad_id",
            ),
            (
                "POST",
                "/api/rooms/r/messages",
                "",
                body(username="b", message="x", name=""),
                400,
                "bad_name",
            ),
            (
                "POST",
                "/api/rooms/r/messages",
                "",
                b" " * (MAX_API_BODY + 1),
                413,
                "too_large",
            ),
        ],
    )
    def test_bad_input(
        self, method: str, path: str, query: str, payload: bytes, status: int, code: str
    ) -> None:
        got_status, error = answer(route(method, path, query, body=payload))
        assert (got_status, error["error"]) == (status, code) and error["reason"]

    def test_json_content_type_is_required(self) -> None:
        for headers in ((AUTH,), (AUTH, ("content-type", "text/plain"))):
            result = route("POST", "/api/rooms/r/messages", headers=headers, body=body())
            assert answer(result) == (
                415,
                {
                    "error": "unsupported_media_type",
                    "reason": "send Content-Type: application/json",
                },
            )
        charset = (AUTH, ("content-type", "Application/JSON; charset=utf-8"))
        payload = body(username="b", message="x")
        assert route("POST", "/api/rooms/r/messages", headers=charset, body=payload) == (
            PostMessage("r", "b", "x")
        )


class Recorder:
    """A Hub member that keeps every event it is handed (decoded)."""

    def __init__(self, conn_id: str, username: str | None) -> None:
        self.conn_id = conn_id
        self.username = username
        self.legacy = False
        self.events: list[dict[str, Any]] = []

    def send(self, message: PreparedMessage) -> None:
        self.events.append(decode_event(message.payload))

    def missed(self, room: str) -> None:
        raise AssertionError(f"missed {room}")


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App(settings=AppConfig(api_key=KEY), hub=Hub(MemoryBackend()))
    async with anyio.create_task_group() as group:
        await app.hub.start(group)
        yield app
        group.cancel_scope.cancel()


async def call(app: App, method: str, path: str, query: str = "", payload: bytes = b"") -> Any:
    response = await app.handle_api(method, path, query, (AUTH, JSON), payload)
    return response.status, json.loads(response.body)


@pytest.mark.anyio
class TestExecute:
    async def test_post_reaches_the_room_marked_as_from_the_server(self, app: App) -> None:
        alice = Recorder("n-1", "alice")
        await app.hub.enter(alice, "lobby")
        status, answer_ = await call(
            app, "POST", "/api/rooms/lobby/messages", payload=body(username="bot", message="hi")
        )
        assert status == 201
        assert answer_["room"] == "lobby" and answer_["seq"] == 1 and answer_["epoch"]
        [event] = [e for e in alice.events if e["type"] == "message"]
        assert event["server"] is True and event["username"] == "bot"
        assert (event["seq"], event["epoch"]) == (answer_["seq"], answer_["epoch"])

    async def test_presence(self, app: App) -> None:
        await app.hub.enter(Recorder("n-1", "bob"), "lobby")
        await app.hub.enter(Recorder("n-2", "alice"), "lobby")
        await app.hub.enter(Recorder("n-3", "alice"), "lobby")
        assert await call(app, "GET", "/api/rooms/lobby/presence") == (
            200,
            {"room": "lobby", "members": ["alice", "bob"]},
        )

    async def test_history_latest_and_since(self, app: App) -> None:
        for n in range(1, 6):
            await app.publish("lobby", f"m{n}", username="bot")
        status, latest = await call(app, "GET", "/api/rooms/lobby/history", "limit=2")
        assert status == 200 and latest["type"] == "history" and latest["complete"] is True
        assert [m["message"] for m in latest["messages"]] == ["m4", "m5"]
        assert latest["seq"] == 5
        epoch = latest["epoch"]
        _, page = await call(
            app, "GET", "/api/rooms/lobby/history", f"limit=2&since_epoch={epoch}&since_seq=1"
        )
        assert [m["seq"] for m in page["messages"]] == [2, 3]
        assert all(m["server"] is True for m in page["messages"])

    async def test_list_rooms_counts_each_user_once(self, app: App) -> None:
        backend = app.hub.backend
        await backend.presence_join("lobby", "c1", "amy")
        await backend.presence_join("lobby", "c2", "amy")
        await backend.presence_join("dev", "c3", "bo")
        status, listing = await call(app, "GET", "/api/rooms")
        assert status == 200
        assert listing == {
            "rooms": [{"room": "dev", "members": 1}, {"room": "lobby", "members": 1}]
        }

    async def test_backend_down_is_503(self) -> None:
        app = App(settings=AppConfig(api_key=KEY), hub=Hub(RedisBackend("redis://127.0.0.1:1/0")))
        status, error = await call(
            app, "POST", "/api/rooms/r/messages", payload=body(username="b", message="x")
        )
        assert (status, error["error"]) == (503, "unavailable")

    async def test_publish_validates(self, app: App) -> None:
        for kwargs, code in (
            ({"room": "bad room"}, "bad_room"),
            ({"text": ""}, "bad_message"),
            ({"username": ""}, "bad_username"),
            ({"message_id": "no spaces"}, "bad_id"),
            ({"name": "\n"}, "bad_name"),
        ):
            args: dict[str, Any] = {"room": "r", "text": "x", "username": "bot", **kwargs}
            room, text = args.pop("room"), args.pop("text")
            with pytest.raises(ChatError) as info:
                await app.publish(room, text, **args)
            assert info.value.code == code

    async def test_publish_with_name_and_id(self, app: App) -> None:
        member = Recorder("n-1", "alice")
        await app.hub.enter(member, "r")
        position = await app.publish("r", "hi", username="bot", name="Bot", message_id="x1")
        [event] = [e for e in member.events if e["type"] == "message"]
        assert (event["name"], event["id"], event["seq"]) == ("Bot", "x1", position.seq)


@pytest.mark.anyio
@pytest.mark.redis
async def test_server_flag_and_name_cross_redis_nodes() -> None:
    """Published on one node, received on another and kept in history with both fields."""
    with redis_server() as url:
        one, two = Hub(RedisBackend(url)), Hub(RedisBackend(url))
        async with anyio.create_task_group() as group:
            await one.start(group)
            await two.start(group)
            member = Recorder("n2-1", "alice")
            await two.enter(member, "team:dev")
            app = App(hub=one)
            position = await app.publish("team:dev", "deploy done", username="ci", name="CI")
            with anyio.fail_after(5):
                while not any(e["type"] == "message" for e in member.events):
                    await anyio.sleep(0.01)
            [event] = [e for e in member.events if e["type"] == "message"]
            assert (event["server"], event["name"], event["seq"]) == (True, "CI", position.seq)
            assert await one.backend.presence("team:dev") == ["alice"]  # a ':' room
            history = await two.backend.history("team:dev", None)
            stored = decode_event(history.messages[-1])
            assert stored["server"] is True and stored["room"] == "team:dev"
            await one.aclose()
            await two.aclose()
            group.cancel_scope.cancel()
