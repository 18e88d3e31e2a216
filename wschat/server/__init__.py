"""The anyio transport: listener, connection pump, writers, timers, graceful shutdown."""

from .config import ServerConfig
from .peer import Peer
from .ratelimit import TokenBucket
from .server import Server
from .writer import TaskWriter, TransportWriter, Writer

__all__ = [
    "Peer",
    "Server",
    "ServerConfig",
    "TaskWriter",
    "TokenBucket",
    "TransportWriter",
    "Writer",
]
