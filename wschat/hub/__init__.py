"""The Hub (node-local rooms and fan-out) and its pluggable backends."""

from __future__ import annotations

from urllib.parse import urlsplit

from .backend import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_PRESENCE_TTL,
    Backend,
    BackendError,
    BackendUnavailable,
    ChatMessage,
    Deliver,
    Delivery,
    History,
)
from .hub import Hub
from .members import Member, PreparedMessage
from .memory import DEFAULT_MAX_IDLE_ROOMS, MemoryBackend
from .urls import shown_url


def open_backend(
    url: str,
    history_size: int = DEFAULT_HISTORY_SIZE,
    history_ttl: float | None = None,
    presence_ttl: float = DEFAULT_PRESENCE_TTL,
    max_idle_rooms: int = DEFAULT_MAX_IDLE_ROOMS,
) -> Backend:
    """Make the backend a URL names.

    ``memory://``, ``redis://host:port/db`` (or ``rediss://``), or
    ``redis-cluster://host:port[,host:port...]``.

    ``max_idle_rooms`` bounds the memory backend's rooms nobody is in.

    Raises:
        ValueError: The URL names no known backend, or is malformed.
    """
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        return MemoryBackend(
            history_size=history_size, history_ttl=history_ttl, max_idle_rooms=max_idle_rooms
        )
    if scheme in ("redis", "rediss", "redis-cluster"):
        from .redis import RedisBackend

        backend: Backend = RedisBackend(
            url, history_size=history_size, history_ttl=history_ttl, presence_ttl=presence_ttl
        )
        return backend
    raise ValueError(
        f"unknown hub backend {shown_url(url)!r}: expected memory://, redis://host:port/db"
        " or redis-cluster://host:port[,host:port...]"
    )


__all__ = [
    "DEFAULT_HISTORY_SIZE",
    "DEFAULT_PRESENCE_TTL",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "ChatMessage",
    "Deliver",
    "Delivery",
    "History",
    "Hub",
    "Member",
    "MemoryBackend",
    "PreparedMessage",
    "open_backend",
    "shown_url",
]
