"""The JSON wire schema, server to client: the events wschat sends, encoded once.

Every event is a compact UTF-8 JSON object (``message``, ``ack``, ``history``,
``presence``, ``joined``/``left``, ``error``); a broadcast is encoded once for
all of its recipients. What clients send is parsed in :mod:`.schema`.

Everything here is pure: no I/O, no clock (the caller passes the time in).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import msgspec

from .schema import Position

_json_decoder = msgspec.json.Decoder()
_json_encoder = msgspec.json.Encoder()


def format_time(timestamp: float) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. ``2026-11-26T16:00:00.123Z``.

    The same string as ``datetime.fromtimestamp(timestamp, UTC).isoformat(...)``
    would give: the microseconds are rounded as datetime rounds them (half to
    even, carried into the second), the milliseconds truncated from them, and
    the date and time of day made once per second (every message is stamped).
    """
    fraction, whole = math.modf(timestamp)
    micros = round(fraction * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1.0, micros - 1_000_000
    elif micros < 0:
        whole, micros = whole - 1.0, micros + 1_000_000
    global _last_second
    second, text = _last_second  # one tuple: threads never mix two seconds' parts
    if whole != second:
        text = datetime.fromtimestamp(whole, UTC).isoformat()[:-6]
        _last_second = (whole, text)
    return f"{text}.{micros // 1000:03d}Z"


_last_second = (math.nan, "")  # the whole second format_time made last, and its text


def encode(obj: dict[str, Any]) -> bytes:
    """Encode a server event as compact UTF-8 JSON."""
    return _json_encoder.encode(obj)


def message_event(
    room: str,
    position: Position,
    username: str,
    message: str,
    time: str,
    message_id: str | None = None,
    *,
    name: str | None = None,
    server: bool = False,
) -> bytes:
    """The ``message`` event every member of ``room`` receives, encoded once.

    ``message_id`` (the sender's ``id``) is included when given; ``name`` (an
    authenticated sender's display name) when given; ``"server": true`` for a
    message published by the server itself (HTTP API, ``App.publish``).
    """
    event: dict[str, Any] = {
        "type": "message",
        "room": room,
        "seq": position.seq,
        "epoch": position.epoch,
        "username": username,
        "message": message,
        "time": time,
    }
    if name is not None:
        event["name"] = name
    if message_id is not None:
        event["id"] = message_id
    if server:
        event["server"] = True
    return encode(event)


def ack_event(room: str, position: Position, message_id: str) -> bytes:
    """The sender's ``ack`` of message ``message_id``: it was published at ``position``."""
    return encode(
        {
            "type": "ack",
            "id": message_id,
            "room": room,
            "epoch": position.epoch,
            "seq": position.seq,
        }
    )


def history_event(room: str, messages: list[bytes], position: Position, complete: bool) -> bytes:
    """The ``history`` event sent on join; ``messages`` are already-encoded message events."""
    head = encode(
        {
            "type": "history",
            "room": room,
            "epoch": position.epoch,
            "seq": position.seq,
            "complete": complete,
        }
    )
    # Splice the stored, already-encoded messages in rather than decode and re-encode them.
    return head[:-1] + b',"messages":[' + b",".join(messages) + b"]}"


def presence_event(room: str, members: list[str]) -> bytes:
    """The room's member list, sent on join."""
    return encode({"type": "presence", "room": room, "members": sorted(members)})


def membership_event(kind: str, room: str, username: str) -> bytes:
    """A ``joined`` or ``left`` event."""
    return encode({"type": kind, "room": room, "username": username})


def error_event(
    code: str,
    reason: str,
    message_id: str | None = None,
    command: str | None = None,
    room: str | None = None,
) -> bytes:
    """An ``error`` reply to one client, naming what it refuses when known.

    Args:
        code: The error code.
        reason: Why, in words.
        message_id: The ``id`` of the message refused.
        command: The ``type`` of the frame refused (``join``, ``leave``, ``message``,
            an ephemeral type...), so a client can match the error to its request.
        room: The room of the frame refused.
    """
    event: dict[str, Any] = {"type": "error", "code": code, "reason": reason}
    if message_id is not None:
        event["id"] = message_id
    if command is not None:
        event["command"] = command
    if room is not None:
        event["room"] = room
    return encode(event)


def decode_event(payload: bytes) -> dict[str, Any]:
    """Decode an encoded server event (used by backends and tests)."""
    result: dict[str, Any] = _json_decoder.decode(payload)
    return result
