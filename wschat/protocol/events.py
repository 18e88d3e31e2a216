"""Events that :class:`~wschat.protocol.connection.ServerConnection` and
:class:`~wschat.protocol.client.ClientConnection` emit.

Each is a frozen, slotted dataclass. The I/O layer reads them with
``conn.events_received()`` after every ``receive_data`` call. The message,
pong and close events are the same on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass

Headers = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A plain HTTP request (not a WebSocket upgrade), body read in full.

    The caller must answer it with ``conn.send_response(...)`` before the next
    request on the same keep-alive connection is parsed. A request to a
    WebSocket path that does not try to upgrade (no ``Upgrade: websocket``, no
    ``Sec-WebSocket-Key``: a browser's ``fetch``, a curl) comes out as one too:
    the caller says why it would refuse the upgrade, or 426.

    Attributes:
        method: The request method, e.g. ``"GET"``.
        path: The path part of the target, e.g. ``"/"``.
        query: The raw query string (without ``?``), or ``""``.
        headers: Request headers, names lower-cased.
        body: The request body (``b""`` for none), at most ``max_request_body``.
    """

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes = b""


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
    """The connection answered a bad request itself (400, 403, 405, 421, 426, 431, 501).

    Informational (for logs and metrics): the response is already queued and
    the connection will close.

    Attributes:
        status: The HTTP status sent.
        reason: The short text body sent.
        probe: It answered a page's probe of a failed handshake
            (``X-Wschat-Probe-Origin``), not a handshake.
    """

    status: int
    reason: str
    probe: bool = False


@dataclass(frozen=True, slots=True)
class HandshakeAccepted:
    """Client side: the server answered 101 and the answer checked out (RFC 6455 4.1).

    The WebSocket is open; message events may follow in the same batch.

    Attributes:
        headers: The 101 response's headers, names lower-cased.
        extensions: Names of the extensions in use, e.g. ``("permessage-deflate",)``.
    """

    headers: Headers
    extensions: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """Client side: no WebSocket. The server refused, or its answer was not valid.

    Emitted once; the connection is then closed (``close_expected()`` is true).

    Attributes:
        status: The response's HTTP status (e.g. 403, 426; 101 when a 101 came
            but failed the RFC 6455 4.1 checks); 0 when no complete response
            arrived (TCP closed first, or the bytes were not HTTP).
        headers: The response's headers, names lower-cased (empty when status is 0).
        body: The response body (at most ``DEFAULT_MAX_REJECTION_BODY`` bytes).
        reason: What went wrong, for people: e.g. ``"HTTP 403 Forbidden"`` or
            ``"wrong Sec-WebSocket-Accept"``.
    """

    status: int
    headers: Headers
    body: bytes
    reason: str = ""


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
    | HandshakeAccepted
    | HandshakeRejected
    | TextReceived
    | BinaryReceived
    | PongReceived
    | ConnectionClosed
)
