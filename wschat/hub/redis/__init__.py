"""The Redis backend (``redis://host:port/db``, ``redis-cluster://host:port,...``).

Rooms shared by many nodes, on one Redis or on a Redis Cluster. The parts:

- :mod:`.keys`: key and channel names; all of a room in one hash slot.
- :mod:`.scripts`: the Lua scripts (the ``.lua`` files beside this module).
- :mod:`.topology`: one Redis (one shard) or a Cluster (one shard per master).
- :mod:`.pipeline`: every command in one pipeline per round trip per shard,
  in the order made (publishes queued without waiting: ``publish_soon``).
- :mod:`.messages`: publish (atomic, idempotent with message ids), history,
  relay, subscriptions and gap filling: delivery in order that never hides a gap.
- :mod:`.reader`: one pub/sub connection per shard and the task that reads it.
- :mod:`.presence`: per-room leases, heartbeats, sweeps and heals.
- :mod:`.backend`: :class:`RedisBackend`, which composes them.

Failures: commands are never retried by redis-py; a publish that fails raises
(or answers ``publish_soon`` with) :class:`~wschat.hub.BackendUnavailable` (a
message with an id may be retried safely). Readers reconnect with exponential
backoff (50 ms to 1 s), resubscribe and fill the gaps; presence changes that
fail are made once Redis answers again.
redis-py's asyncio client runs on asyncio (and uvloop), not on trio.
"""

from .backend import DEFAULT_ROOM_IDLE_TTL, RedisBackend
from .keys import channel, room_key

__all__ = ["DEFAULT_ROOM_IDLE_TTL", "RedisBackend", "channel", "room_key"]
