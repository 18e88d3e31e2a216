"""Events that :class:`~wschat.protocol.connection.ServerConnection` emits.

Each is a frozen, slotted dataclass. The I/O layer reads them with
``conn.events_received()`` after every ``receive_data`` call.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A plain HTTP request (not a WebSocket upgrade).

    The caller must answer it with ``conn.send_response(...)`` before the next
    request on the same keep-alive connection is parsed.

    Attributes:
        method: The request method, e.g. ``"GET"``.
        path: The path part of the target, e.g. ``"/"``.
        query: The raw query string (without ``?``), or ``""``.
        headers: Request headers, names lower-cased.
    """

    method: str
    path: str
    query: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class WebSocketRequest:
    """A valid WebSocket upgrade request for one of the WebSocket paths.

    The handshake itself was validated already (version, key, origin). The
    caller decides the rest (capacity, draining, authentication) and answers
    with ``conn.accept_websocket(...)`` or ``conn.send_response(...)``.

    Attributes:
        path: The path, e.g. ``"/ws"``.
        query: The raw query string (without ``?``), or ``""``.
        headers: Request headers, names lower-cased.
    """

    path: str
    query: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class RequestRejected:
    """The connection answered a bad request itself (400, 403, 405, 426, 431, 501).

    Informational (for logs and metrics): the response is already queued and
    the connection will close.

    Attributes:
        status: The HTTP status sent.
        reason: The short text body sent.
    """

    status: int
    reason: str


@dataclass(frozen=True, slots=True)
class TextReceived:
    """A complete text message (fragments already reassembled).

    Attributes:
        text: The message, decoded from UTF-8.
    """

    text: str


@dataclass(frozen=True, slots=True)
class BinaryReceived:
    """A complete binary message, on an endpoint that accepts binary.

    Attributes:
        data: The message bytes.
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A Pong frame arrived (the answer to our keepalive Ping).

    Attributes:
        payload: The Pong's application data.
    """

    payload: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The WebSocket is closed: by the peer, by us, or failed on bad input.

    Emitted once. After it the I/O layer flushes ``data_to_send()`` and closes
    TCP (``close_expected()`` is true).

    Attributes:
        code: The close code that ends the connection (1006 when TCP ended
            without a close frame).
        reason: The close reason, possibly empty.
        by_peer: True when the peer started the close (or TCP ended).
    """

    code: int
    reason: str
    by_peer: bool


Event = (
    HttpRequest
    | WebSocketRequest
    | RequestRejected
    | TextReceived
    | BinaryReceived
    | PongReceived
    | ConnectionClosed
)
