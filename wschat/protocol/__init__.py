"""Sans-IO WebSocket protocol: h11 for HTTP and the handshake, wsproto for frames.

Nothing here does I/O or reads a clock; see :class:`ServerConnection` and
:class:`ClientConnection` (both on :class:`WebSocketConnection`).
"""

from .client import DEFAULT_MAX_REJECTION_BODY, ClientConnection
from .connection import ServerConnection
from .deflate import DEFAULT_COMPRESSION_MIN_SIZE, DeflatePolicy, MessageDeflater
from .errors import LocalProtocolError, ProtocolError
from .events import (
    BinaryReceived,
    ConnectionClosed,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    Headers,
    HttpRequest,
    PongReceived,
    RequestRejected,
    TextReceived,
    WebSocketRequest,
)
from .frames import encode_text_frame
from .handshake import HostPolicy, OriginPolicy, Rejection
from .http import DEFAULT_MAX_PENDING_OUTPUT, DEFAULT_MAX_REQUEST_HEAD
from .state import State
from .websocket import DEFAULT_MAX_MESSAGE_SIZE, WebSocketConnection

__all__ = [
    "DEFAULT_COMPRESSION_MIN_SIZE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PENDING_OUTPUT",
    "DEFAULT_MAX_REJECTION_BODY",
    "DEFAULT_MAX_REQUEST_HEAD",
    "BinaryReceived",
    "ClientConnection",
    "ConnectionClosed",
    "DeflatePolicy",
    "Event",
    "HandshakeAccepted",
    "HandshakeRejected",
    "Headers",
    "HostPolicy",
    "HttpRequest",
    "LocalProtocolError",
    "MessageDeflater",
    "OriginPolicy",
    "PongReceived",
    "ProtocolError",
    "Rejection",
    "RequestRejected",
    "ServerConnection",
    "State",
    "TextReceived",
    "WebSocketConnection",
    "WebSocketRequest",
    "encode_text_frame",
]
