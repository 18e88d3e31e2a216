"""Helpers for the sans-IO protocol tests: build requests, play the client, read the server.

The client side is played by independent implementations, so the tests are not
self-referential: h11's client parses our HTTP responses, and wsproto's client
``Connection`` / ``FrameProtocol(client=True)`` masks the frames we send and parses
the frames the server writes. Only deliberately malformed frames are built by
hand (:func:`raw_frame`), because no correct implementation would produce them.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h11
from wsproto import ConnectionType
from wsproto import events as wse
from wsproto.connection import Connection
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import Frame, FrameProtocol

from wschat.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    Event,
    OriginPolicy,
    ServerConnection,
    State,
    WebSocketRequest,
)

# RFC 6455 1.3 and 4.2.2: the sample key and the accept value derived from it.
SAMPLE_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
SAMPLE_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# A fixed masking key: hand-built frames are byte-for-byte reproducible.
MASK = b"\x37\xfa\x21\x3d"

OP_CONTINUATION, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
OP_CLOSE, OP_PING, OP_PONG = 0x8, 0x9, 0xA


# -- HTTP --------------------------------------------------------------------


def handshake_request(
    path: str = "/ws",
    *,
    method: str = "GET",
    http_version: str = "1.1",
    host: str | None = "localhost:8080",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    key: str | None = SAMPLE_KEY,
    version: str | None = "13",
    origin: str | None = None,
    extensions: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """The bytes of a WebSocket opening handshake; pass None to leave a header out."""
    fields = [
        ("Host", host),
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", version),
        ("Origin", origin),
        ("Sec-WebSocket-Extensions", extensions),
        *headers,
    ]
    lines = [f"{method} {path} HTTP/{http_version}"]
    lines += [f"{name}: {value}" for name, value in fields if value is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_request(
    path: str = "/",
    *,
    method: str = "GET",
    host: str = "localhost:8080",
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> bytes:
    """The bytes of a plain HTTP/1.1 request (keep-alive unless a header says otherwise)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class HttpResponse:
    """One response as h11's client parsed it."""

    status: int
    reason: bytes
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class ParsedResponses:
    """Every response found in the server's bytes, and what followed a 101."""

    responses: list[HttpResponse] = field(default_factory=list)
    trailing: bytes = b""
    must_close: bool = False


def parse_http_responses(
    data: bytes | Sequence[bytes], methods: Sequence[str] = ()
) -> ParsedResponses:
    """Parse the server's HTTP output with h11's client side.

    Each response is matched to a dummy request that offers an upgrade, so h11
    accepts either a 101 (after which the remaining bytes are WebSocket frames,
    returned as ``trailing``) or an ordinary response. ``methods`` names the
    requests' methods in order (default GET): a response to HEAD has no body.
    """
    if not isinstance(data, bytes):
        data = b"".join(data)
    result = ParsedResponses()
    if not data:
        return result  # (h11 would take b"" for EOF)
    client = h11.Connection(h11.CLIENT)
    client.receive_data(data)
    for index in itertools.count():
        client.send(
            h11.Request(
                method=methods[index] if index < len(methods) else "GET",
                target="/",
                headers=[
                    ("host", "example.com"),
                    ("upgrade", "websocket"),
                    ("connection", "upgrade"),
                ],
            )
        )
        client.send(h11.EndOfMessage())
        current: HttpResponse | None = None
        while True:
            event = client.next_event()
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                result.responses.append(_response(event))
                result.trailing = client.trailing_data[0]
                return result
            if isinstance(event, h11.Response):
                current = _response(event)
                result.responses.append(current)
            elif isinstance(event, h11.Data):
                assert current is not None
                current.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # NEED_DATA: no (complete) response left
                return result
        if client.their_state is not h11.DONE:
            result.must_close = True
            return result
        client.start_next_cycle()
    raise AssertionError("unreachable")  # pragma: no cover


def _response(event: h11.Response | h11.InformationalResponse) -> HttpResponse:
    headers = {name.decode().lower(): value.decode("latin-1") for name, value in event.headers}
    return HttpResponse(event.status_code, event.reason, headers)


def single_response(conn: ServerConnection) -> HttpResponse:
    """The one HTTP response the connection has queued."""
    parsed = parse_http_responses(conn.data_to_send())
    assert len(parsed.responses) == 1, parsed
    return parsed.responses[0]


def receive(conn: ServerConnection, data: bytes) -> list[Event]:
    """Feed ``data`` and return the events it caused (h11's ``receive_and_get``)."""
    conn.receive_data(data)
    return conn.events_received()


# -- WebSocket: the client side ------------------------------------------------


class Client:
    """The client side of an open WebSocket, played by wsproto.

    Args:
        extensions: Finalized client extensions (e.g. a negotiated PerMessageDeflate).
    """

    def __init__(self, extensions: Sequence[Extension] = ()) -> None:
        self.extensions = list(extensions)
        self.ws = Connection(ConnectionType.CLIENT, self.extensions)

    def send(self, *events: wse.Event) -> bytes:
        """Masked frames for ``events`` (stateful: fragments continue across calls)."""
        return b"".join(self.ws.send(event) for event in events)

    def receive(self, data: bytes | Sequence[bytes]) -> list[wse.Event]:
        """Parse the server's output into wsproto events."""
        if not isinstance(data, bytes):
            data = b"".join(data)
        self.ws.receive_data(data)
        return list(self.ws.events())


def client_frames(*events: wse.Event, extensions: Sequence[Extension] = ()) -> bytes:
    """Masked client frames for ``events``, from a fresh wsproto client."""
    return Client(extensions).send(*events)


def parse_server_frames(
    data: bytes | Sequence[bytes], extensions: Sequence[Extension] = ()
) -> list[Frame]:
    """Parse server output with wsproto's client-side ``FrameProtocol``.

    A close frame's payload is ``(code, reason)``; text payloads are ``str``.
    """
    if not isinstance(data, bytes):
        data = b"".join(data)
    proto = FrameProtocol(client=True, extensions=list(extensions))
    proto.receive_bytes(data)
    return list(proto.received_frames())


def close_frames(frames: Iterable[Frame]) -> list[tuple[int, str]]:
    """The ``(code, reason)`` of every close frame in ``frames``."""
    closes = []
    for frame in frames:
        if frame.opcode.value == OP_CLOSE:
            assert isinstance(frame.payload, tuple)
            code, reason = frame.payload
            closes.append((int(code), str(reason)))
    return closes


def raw_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bytes | None = MASK,
    length: int | None = None,
) -> bytes:
    """A hand-built frame, for the malformed ones no real client would send.

    Args:
        opcode: The 4-bit opcode.
        payload: Unmasked payload bytes (masked here unless ``mask`` is None).
        fin: The FIN bit.
        rsv: The three RSV bits as an integer 0-7 (RSV1 = 4).
        mask: A 4-byte masking key, or None for an unmasked frame.
        length: The length to announce (defaults to ``len(payload)``).
    """
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload) if length is None else length
    mask_bit = 0x80 if mask is not None else 0
    if n < 126:
        header = struct.pack("!BB", first, mask_bit | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, n)
    if mask is None:
        return header + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


# -- WebSocket: an accepted connection ------------------------------------------


def open_connection(
    request: bytes | None = None,
    *,
    origin_policy: OriginPolicy | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    accept_binary: bool = False,
    compression: bool = True,
) -> ServerConnection:
    """A ServerConnection past an accepted handshake, its 101 and events drained."""
    conn = ServerConnection(origin_policy=origin_policy)
    events = receive(conn, request if request is not None else handshake_request())
    assert len(events) == 1 and isinstance(events[0], WebSocketRequest), events
    conn.accept_websocket(
        max_message_size=max_message_size, accept_binary=accept_binary, compression=compression
    )
    assert conn.state is State.OPEN
    parsed = parse_http_responses(conn.data_to_send())
    assert [r.status for r in parsed.responses] == [101]
    assert parsed.trailing == b""
    assert conn.events_received() == []
    return conn


def open_pair(
    *,
    offer: str | None = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    accept_binary: bool = False,
    compression: bool = True,
) -> tuple[ServerConnection, Client]:
    """An accepted server connection and a wsproto client that negotiated like a real one.

    ``offer`` is the client's Sec-WebSocket-Extensions; when the server accepts
    permessage-deflate, the client's PerMessageDeflate is finalized with the
    server's answer.
    """
    conn = ServerConnection()
    events = receive(conn, handshake_request(extensions=offer))
    assert len(events) == 1 and isinstance(events[0], WebSocketRequest), events
    conn.accept_websocket(
        max_message_size=max_message_size, accept_binary=accept_binary, compression=compression
    )
    (response,) = parse_http_responses(conn.data_to_send()).responses
    assert response.status == 101
    extensions: list[Extension] = []
    accepted = response.header("sec-websocket-extensions")
    if accepted is not None:
        deflate = PerMessageDeflate()
        deflate.finalize(accepted)
        extensions.append(deflate)
    return conn, Client(extensions)
