"""What both peers share: the room of a request path, and one chat message in, one event out.

Same semantics as wschat for a seed-format client: ``{"username", "message"}`` in (a
``type`` is ignored), ``{"type":"message","room","seq","epoch","username","message","time"}``
out to every member, seq counted per room from 1.
"""

import json
import secrets
import urllib.parse
from datetime import UTC, datetime

SEQS: dict[str, int] = {}
EPOCH = secrets.token_hex(6)


def room_of(path: str) -> str:
    """The ``?room=`` of a request path (``lobby`` without one)."""
    return urllib.parse.parse_qs(urllib.parse.urlsplit(path).query).get("room", ["lobby"])[0]


def event(room: str, text: str | bytes) -> str | None:
    """The event to broadcast for one client message, or None when it is not a chat message."""
    obj = json.loads(text)
    user, message = obj.get("username"), obj.get("message")
    if not isinstance(user, str) or not isinstance(message, str) or len(message) > 4096:
        return None
    SEQS[room] = seq = SEQS.get(room, 0) + 1
    now = datetime.now(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    event = {
        "type": "message",
        "room": room,
        "seq": seq,
        "epoch": EPOCH,
        "username": user,
        "message": message,
        "time": now,
    }
    return json.dumps(event, separators=(",", ":"))
