"""The HTTP API under ``/api/``: routing and validation (pure), then the calls to the hub.

Enabled by ``--api-key KEY``; every request needs ``Authorization: Bearer KEY``
(compared in constant time), else 401. Without a key the whole ``/api/`` tree
is 404, as if it did not exist. JSON in and out; errors are ``{"error": code,
"reason": ...}`` with the codes of the WebSocket path where one applies.

==========================================  =========================================
``POST /api/rooms/{room}/messages``         ``{"username", "message", "id"?, "name"?}``
                                            → 201 ``{"room", "epoch", "seq"}``
``GET /api/rooms/{room}/presence``          → ``{"room", "members": [...]}``
``GET /api/rooms/{room}/history``           ``?limit=N&since_epoch=E&since_seq=S``
                                            → the ``history`` event of the WebSocket path
``GET /api/rooms``                          → ``{"rooms": [{"room", "members"}]}``
==========================================  =========================================

:func:`route_api` is a pure function of the request: it answers a
:class:`~wschat.server.http.Response` itself (401, 404, 405, 400, ...) or
returns the :data:`ApiCall` to carry out, which :func:`execute` does against
the hub. A published message carries ``"server": true``; it is not passed
through the app's ``on_message`` hook (the API key is the operator's).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import msgspec

from ..chat import (
    ChatError,
    Position,
    encode,
    history_event,
    validate_message,
    validate_message_id,
    validate_room,
    validate_username,
)
from ..hub import BackendUnavailable, Hub
from ..protocol import Headers
from .identity import MAX_DISPLAY_NAME_LENGTH, is_display_name

if TYPE_CHECKING:
    from ..server.http import Response

API_PREFIX = "/api"
CONTENT_TYPE_JSON = "application/json"
# DESIGN.md's 64 KiB WebSocket message cap; a 4096-character message, JSON-escaped
# (\\uXXXX), is at most 24 KiB.
MAX_API_BODY = 64 * 1024
# Centrifugo's history_max_publication_limit is 300; history holds 100 by default.
DEFAULT_HISTORY_LIMIT = 100
MAX_HISTORY_LIMIT = 1000

_decoder = msgspec.json.Decoder()


@dataclass(frozen=True, slots=True)
class PostMessage:
    """Publish ``message`` to ``room`` as ``username`` (marked as sent by the server)."""

    room: str
    username: str
    message: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class GetPresence:
    """The users present in ``room``, on every node."""

    room: str


@dataclass(frozen=True, slots=True)
class GetHistory:
    """Up to ``limit`` messages of ``room``: after ``since`` (the first ones), else the latest."""

    room: str
    since: Position | None
    limit: int


@dataclass(frozen=True, slots=True)
class ListRooms:
    """The rooms with members on any node, with their member counts."""


ApiCall = PostMessage | GetPresence | GetHistory | ListRooms
API_CALLS = (PostMessage, GetPresence, GetHistory, ListRooms)


def is_api_path(path: str) -> bool:
    """True for ``/api`` and everything under ``/api/``."""
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


def api_error(status: int, code: str, reason: str, headers: Headers = ()) -> Response:
    """An API error: ``{"error": code, "reason": reason}`` with ``status``."""
    from ..server.http import Response  # see wschat.app's docstring: no server import at load

    return Response(status, encode({"error": code, "reason": reason}), CONTENT_TYPE_JSON, headers)


def json_response(status: int, body: dict[str, Any] | bytes) -> Response:
    """A JSON answer (``body`` is encoded unless it already is)."""
    from ..server.http import Response

    payload = body if isinstance(body, bytes) else encode(body)
    return Response(status, payload, CONTENT_TYPE_JSON)


def route_api(
    method: str,
    path: str,
    query: str,
    headers: Headers,
    body: bytes,
    api_key: str | None,
) -> ApiCall | Response:
    """Route and validate one ``/api/`` request; pure.

    Args:
        method: The HTTP method.
        path: The path (percent-encoded as received), under ``/api``.
        query: The raw query string.
        headers: Request headers, names lower-cased.
        body: The request body (empty for none).
        api_key: The configured key; None when the API is off.

    Returns:
        The call to carry out, or the response to send as it is.
    """
    if api_key is None:
        return api_error(404, "not_found", f"not found: {path}")
    if not _authorized(headers, api_key):
        return api_error(
            401,
            "unauthorized",
            "send Authorization: Bearer <api key>",
            (("www-authenticate", 'Bearer realm="wschat"'),),
        )
    parts = path.split("/")[1:]  # "/api/rooms/x/history" -> ["api", "rooms", "x", "history"]
    try:
        if parts == ["api", "rooms"]:
            return _only(method, "GET") or ListRooms()
        if len(parts) == 4 and parts[:2] == ["api", "rooms"]:
            room = validate_room(unquote(parts[2], errors="strict"))
            resource = parts[3]
            if resource == "messages":
                return _only(method, "POST") or _post_message(room, headers, body)
            if resource == "presence":
                return _only(method, "GET") or GetPresence(room)
            if resource == "history":
                return _only(method, "GET") or _get_history(room, query)
    except ChatError as exc:
        return api_error(400, exc.code, exc.reason)
    except UnicodeDecodeError:
        return api_error(400, "bad_room", "room is not percent-encoded UTF-8")
    return api_error(404, "not_found", f"not found: {path}")


async def execute(call: ApiCall, hub: Hub) -> Response:
    """Carry out a routed call against ``hub``; 503 ``unavailable`` if the backend is down."""
    try:
        if isinstance(call, PostMessage):
            position = await hub.say(
                call.room, call.username, call.message, call.id, name=call.name, server=True
            )
            return json_response(
                201, {"room": call.room, "epoch": position.epoch, "seq": position.seq}
            )
        if isinstance(call, GetPresence):
            members = await hub.backend.presence(call.room)
            return json_response(200, {"room": call.room, "members": sorted(members)})
        if isinstance(call, GetHistory):
            history = await hub.backend.history(call.room, call.since)
            messages = history.messages
            messages = messages[: call.limit] if call.since is not None else messages[-call.limit :]
            return json_response(
                200, history_event(call.room, messages, history.position, history.complete)
            )
        counts = await hub.backend.rooms()
        rooms = [{"room": room, "members": count} for room, count in sorted(counts.items())]
        return json_response(200, {"rooms": rooms})
    except BackendUnavailable as exc:
        return api_error(503, "unavailable", f"not done, try again: {exc}")


def _authorized(headers: Headers, api_key: str) -> bool:
    values = [value for name, value in headers if name == "authorization"]
    if len(values) != 1:
        return False
    scheme, _, credentials = values[0].strip().partition(" ")
    # RFC 7235 2.1: the scheme is case-insensitive. compare_digest takes as long
    # whatever the first differing byte (the length of the key may show).
    return scheme.lower() == "bearer" and hmac.compare_digest(
        credentials.strip().encode(), api_key.encode()
    )


def _only(method: str, allowed: str) -> Response | None:
    if method == allowed:
        return None
    return api_error(405, "method_not_allowed", f"use {allowed}", (("allow", allowed),))


def _post_message(room: str, headers: Headers, body: bytes) -> PostMessage | Response:
    content_type = next((value for name, value in headers if name == "content-type"), "")
    if content_type.partition(";")[0].strip().lower() != CONTENT_TYPE_JSON:
        return api_error(415, "unsupported_media_type", "send Content-Type: application/json")
    if len(body) > MAX_API_BODY:
        return api_error(413, "too_large", f"body over {MAX_API_BODY} bytes")
    try:
        obj = _decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        return api_error(400, "bad_json", f"not valid JSON: {exc}")
    if not isinstance(obj, dict):
        return api_error(400, "bad_json", "expected a JSON object")
    name = obj.get("name")
    if name is not None and not is_display_name(name):
        return api_error(
            400, "bad_name", f"name must be 1-{MAX_DISPLAY_NAME_LENGTH} printable characters"
        )
    return PostMessage(
        room=room,
        username=validate_username(obj.get("username")),
        message=validate_message(obj.get("message")),
        id=validate_message_id(obj["id"]) if obj.get("id") is not None else None,
        name=name,
    )


def _get_history(room: str, query: str) -> GetHistory | Response:
    params = parse_qs(query, keep_blank_values=True)
    for name, values in params.items():
        if len(values) > 1:
            return api_error(400, "bad_query", f"give {name} once")
    limit = _natural(params.get("limit", [str(DEFAULT_HISTORY_LIMIT)])[0])
    if limit is None or not 1 <= limit <= MAX_HISTORY_LIMIT:
        return api_error(400, "bad_limit", f"limit must be an integer 1-{MAX_HISTORY_LIMIT}")
    epoch = params.get("since_epoch", [None])[0]
    seq_text = params.get("since_seq", [None])[0]
    seq = _natural(seq_text) if seq_text is not None else None
    if (epoch is None) != (seq_text is None) or (seq_text is not None and seq is None):
        return api_error(
            400, "bad_since", "give since_epoch and since_seq (an integer >= 0) together"
        )
    since = Position(epoch, seq) if epoch is not None and seq is not None else None
    return GetHistory(room, since, limit)


def _natural(text: str) -> int | None:
    """``text`` as an integer >= 0 when it is ASCII digits only (at most 18), else None."""
    if text.isascii() and text.isdigit() and len(text) <= 18:
        return int(text)
    return None
