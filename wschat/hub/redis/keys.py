"""Redis key and channel names.

Every key and the channel of room ``r`` start with ``wschat:{r}:``: Redis Cluster
hashes only the part between the first ``{`` and the next ``}`` (the hash tag),
so all of a room lives in one hash slot, on one shard, and one Lua script can
touch all of it. Room names never contain braces (``wschat.chat`` allows
``A-Za-z0-9_-:`` only). Nothing is shared between rooms: no key names a node,
so no script ever spans two slots.

Layout (room ``r``)::

    wschat:{r}:meta      hash    epoch, seq
    wschat:{r}:history   stream  id "{seq}-0", fields p (event JSON), t (ms, Redis TIME)
    wschat:{r}:ids       hash    "{message id} {username}" -> seq (idempotent publish)
    wschat:{r}:idtimes   zset    the same members, scored by the ms they were published
    wschat:{r}:conns     hash    conn_id -> "{node}\\n{left event JSON}\\n{username}"
    wschat:{r}:users     hash    username -> connections in the room
    wschat:{r}:leases    zset    node -> ms until which its connections in r count
    wschat:{r}:events    channel (sharded channel on a Cluster)
"""

from __future__ import annotations


def room_key(room: str, part: str) -> str:
    """The key ``part`` (meta, history, ...) of ``room``."""
    return f"wschat:{{{room}}}:{part}"


def message_keys(room: str) -> list[str]:
    """The keys the message scripts take: meta, history, ids, idtimes."""
    return [room_key(room, "meta"), room_key(room, "history"), *dedup_keys(room)]


def dedup_keys(room: str) -> list[str]:
    """The keys that remember recent message ids: ids, idtimes."""
    return [room_key(room, "ids"), room_key(room, "idtimes")]


def presence_keys(room: str) -> list[str]:
    """The keys the presence scripts take: conns, users, leases."""
    return [room_key(room, "conns"), room_key(room, "users"), room_key(room, "leases")]


def channel(room: str) -> str:
    """The (sharded) pub/sub channel carrying ``room``'s events."""
    return room_key(room, "events")


def room_of_channel(name: bytes) -> str:
    """The room whose channel is ``name`` (inverse of :func:`channel`)."""
    return name[len(b"wschat:{") : -len(b"}:events")].decode()


def identity(username: str, message_id: str) -> str:
    """How a message id is remembered: per sender, so no one can suppress another's message.

    Message ids never contain spaces, so the first space separates the two.
    """
    return f"{message_id} {username}"
