"""The anyio transport: listener, per-connection tasks, timers, graceful shutdown."""

from .client import ClientConnection
from .config import ServerConfig
from .outbox import Outbox
from .ratelimit import TokenBucket
from .server import Server

__all__ = ["ClientConnection", "Outbox", "Server", "ServerConfig", "TokenBucket"]
