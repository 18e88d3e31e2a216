"""The backend's Lua scripts, read from the ``.lua`` files beside this module.

Each script is ``common.lua`` followed by its own file, read once at import.
A script runs with EVALSHA; a Redis that does not know it yet (just started,
or restarted, or a Cluster shard that never ran it) answers NOSCRIPT, and the
script is sent in full once with EVAL, which also caches it there. EVAL and
EVALSHA are routed by their first key, so on a Cluster each runs on the shard
that owns the room.

What the scripts take is here too: a room's bounds in their units
(:class:`Limits`) and the message JSON the publish script splices a position
into (:func:`split_message`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from redis.exceptions import NoScriptError

from ...chat import Position
from ..backend import ChatMessage, message_payload

_HERE = files(__package__)
_COMMON = (_HERE / "common.lua").read_text(encoding="utf-8")
_EPOCH_MARK = "E"


class Script:
    """One Lua script, run on the Redis (or Cluster shard) that owns its keys.

    Args:
        name: The file name without ``.lua``.
    """

    __slots__ = ("name", "sha", "text")

    def __init__(self, name: str) -> None:
        self.name = name
        self.text = _COMMON + "\n" + (_HERE / f"{name}.lua").read_text(encoding="utf-8")
        self.sha = hashlib.sha1(self.text.encode()).hexdigest()

    async def __call__(self, client: Any, keys: list[str], args: list[Any]) -> Any:
        """Run with ``keys`` (every key the script touches) and ``args`` on ``client``.

        ``client`` is a ``redis.asyncio`` Redis, the Cluster's commands, or
        the backend's :class:`~.pipeline.Pipelines` (which answers NOSCRIPT
        itself inside a pipeline).
        """
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.text, len(keys), *keys, *args)


PUBLISH = Script("publish")
READ = Script("read")
PRESENCE_JOIN = Script("presence_join")
PRESENCE_LEAVE = Script("presence_leave")
PRESENCE_LIST = Script("presence_list")
PRESENCE_HEAL = Script("presence_heal")
ROOM_BEAT = Script("room_beat")

BY_SHA = {
    script.sha: script
    for script in (
        PUBLISH,
        READ,
        PRESENCE_JOIN,
        PRESENCE_LEAVE,
        PRESENCE_LIST,
        PRESENCE_HEAL,
        ROOM_BEAT,
    )
}
"""Every script by its SHA1 (a pipeline sends one that got NOSCRIPT again with EVAL)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What a room keeps in Redis, in the units the scripts take (ms)."""

    history_size: int
    history_ttl_ms: int
    idle_ms: int
    dedup_ms: int
    dedup_size: int


def split_message(room: str, message: ChatMessage) -> tuple[bytes, bytes]:
    """The message event JSON up to ``"seq":`` and after the epoch, for Lua to splice."""
    sample = message_payload(room, Position(_EPOCH_MARK, 0), message)
    marker = b'"seq":0,"epoch":"' + _EPOCH_MARK.encode() + b'"'
    head, found, tail = sample.partition(marker)
    if not found:  # pragma: no cover - message_event's key order changed
        raise AssertionError("message_event no longer puts seq before epoch")
    return head + b'"seq":', tail
