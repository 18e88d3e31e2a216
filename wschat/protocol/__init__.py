"""Sans-IO WebSocket server protocol: h11 for HTTP and the handshake, wsproto for frames.

Nothing here does I/O or reads a clock; see :class:`ServerConnection`.
"""

from .connection import (
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_REQUEST_HEAD,
    ServerConnection,
    State,
)
from .errors import LocalProtocolError, ProtocolError
from .events import (
    BinaryReceived,
    ConnectionClosed,
    Event,
    Headers,
    HttpRequest,
    PongReceived,
    RequestRejected,
    TextReceived,
    WebSocketRequest,
)
from .frames import encode_text_frame
from .handshake import OriginPolicy, Rejection

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_REQUEST_HEAD",
    "BinaryReceived",
    "ConnectionClosed",
    "Event",
    "Headers",
    "HttpRequest",
    "LocalProtocolError",
    "OriginPolicy",
    "PongReceived",
    "ProtocolError",
    "Rejection",
    "RequestRejected",
    "ServerConnection",
    "State",
    "TextReceived",
    "WebSocketRequest",
    "encode_text_frame",
]
