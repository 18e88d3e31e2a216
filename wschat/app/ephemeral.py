"""Ephemeral event types: relayed to a room's other members, never stored, rate-limited.

An app registers a type by name (``app.ephemeral("typing", rate=1, burst=3)``).
A client then sends ``{"type": "typing", "room": "lobby"}`` (``room`` optional:
the URL room; ``data`` optional, any JSON value up to the type's ``max_data``
bytes) and the room's other members receive ``{"type": "typing", "room":
"lobby", "username": "alice"}`` (plus ``"name"`` for an authenticated sender and
``"data"`` when sent). No ``seq``, no history, no recovery after a reconnect:
what is missed is gone, as it should be for "alice is typing".

Each connection has its own token bucket per type (:class:`EphemeralLimiter`);
an event over it is dropped and the sender gets ``error`` ``rate_limited``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Types the wire protocol already uses, either way.
RESERVED = frozenset(
    {
        "join",
        "leave",
        "message",
        "auth",
        "ack",
        "error",
        "history",
        "presence",
        "joined",
        "left",
        "authenticated",
    }
)
# A typing indicator goes out at most every few seconds per typist (clients
# throttle to one per 2-3 s); 1/s with a burst of 3 leaves room for several rooms.
TYPING_RATE = 1.0
TYPING_BURST = 3


@dataclass(frozen=True, slots=True)
class EphemeralType:
    """A registered ephemeral event type.

    Attributes:
        name: The ``type`` on the wire, e.g. ``"typing"``.
        rate: Events per second one connection may send on average (0: no limit).
        burst: Events one connection may send at once.
        max_data: Bytes of JSON ``data`` an event may carry (0: none allowed).
    """

    name: str
    rate: float
    burst: int
    max_data: int = 0

    def __post_init__(self) -> None:
        if not NAME.fullmatch(self.name):
            raise ValueError(
                f"ephemeral type {self.name!r}: use 1-32 characters of a-z, 0-9 and _, "
                "starting with a letter"
            )
        if self.name in RESERVED:
            raise ValueError(f"ephemeral type {self.name!r} is a type of the wire protocol")
        if self.rate < 0 or self.burst < 1 or self.max_data < 0:
            raise ValueError(
                f"ephemeral type {self.name!r}: rate >= 0, burst >= 1 and max_data >= 0"
            )


TYPING = EphemeralType("typing", TYPING_RATE, TYPING_BURST)
"""The default app's ``typing`` indicator."""


class EphemeralLimiter:
    """One connection's token buckets, one per ephemeral type.

    Args:
        types: The app's registered types, by name.
        now: The current time (monotonic seconds).
    """

    def __init__(self, types: dict[str, EphemeralType], now: float) -> None:
        from ..server.ratelimit import TokenBucket  # (no server import at load: wschat.app)

        self._buckets = {
            name: TokenBucket(kind.rate, kind.burst, now) for name, kind in types.items()
        }

    def allow(self, name: str, now: float) -> bool:
        """Spend one event of type ``name``; False when over its rate."""
        bucket = self._buckets.get(name)
        return bucket is not None and bucket.take(now)
