"""ClientConnection, bytes only, grouped by RFC 6455 / RFC 7692 section.

The server side is played by independent implementations: h11's server side
parses the handshake request the client writes, responses are written by hand
(so a wrong one is easy to make), and wsproto's server ``Connection`` /
``FrameProtocol(client=False)`` writes and parses frames. The last group
(:class:`TestConnectionPair`) joins a ClientConnection to wschat's own
ServerConnection, each feeding the other.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence

import h11
import pytest
from wsproto import ConnectionType
from wsproto import events as wse
from wsproto.connection import Connection
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.frame_protocol import Frame, FrameProtocol
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import generate_accept_token

from tests.protocol_helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    SAMPLE_ACCEPT,
    close_frames,
    raw_frame,
)
from wschat.protocol import (
    DEFAULT_MAX_REJECTION_BODY,
    BinaryReceived,
    ClientConnection,
    ConnectionClosed,
    Event,
    HandshakeAccepted,
    HandshakeRejected,
    LocalProtocolError,
    PongReceived,
    ServerConnection,
    State,
    TextReceived,
    WebSocketRequest,
)

# RFC 6455 1.3: the sample nonce whose base64 is "dGhlIHNhbXBsZSBub25jZQ==".
SAMPLE_NONCE = b"the sample nonce"


def new_client(**kwargs: object) -> ClientConnection:
    """A ClientConnection for ``ws://127.0.0.1:8080/ws?room=lobby`` with the RFC's key."""
    options: dict[str, object] = {"host": "127.0.0.1:8080", "target": "/ws?room=lobby"}
    options.update(kwargs)
    options.setdefault("key", SAMPLE_NONCE)
    return ClientConnection(**options)  # type: ignore[arg-type]


def connecting_client(**kwargs: object) -> ClientConnection:
    """A client whose handshake request was taken (sent)."""
    conn = new_client(**kwargs)
    assert conn.data_to_send()
    return conn


def parse_request(data: Sequence[bytes]) -> h11.Request:
    """The handshake request, as h11's server side reads it."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"".join(data))
    request = server.next_event()
    assert isinstance(request, h11.Request), request
    assert server.next_event() == h11.EndOfMessage()
    return request


def request_headers(request: h11.Request) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers.setdefault(name.decode().lower(), []).append(value.decode())
    return headers


def response_bytes(
    status: int = 101,
    reason: str = "Switching Protocols",
    headers: Iterable[tuple[str, str]] | None = None,
    body: bytes = b"",
) -> bytes:
    """A hand-written HTTP response; the default is a valid 101 for SAMPLE_NONCE."""
    if headers is None:
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
        ]
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def receive(conn: ClientConnection, data: bytes) -> list[Event]:
    conn.receive_data(data)
    return conn.events_received()


def open_client(**kwargs: object) -> ClientConnection:
    """A client past a valid 101, the request and the acceptance drained."""
    conn = connecting_client(**kwargs)
    events = receive(conn, response_bytes())
    assert [type(e) for e in events] == [HandshakeAccepted], events
    assert conn.state is State.OPEN
    return conn


def server_frames(*events: wse.Event, extensions: Sequence[Extension] = ()) -> bytes:
    """Unmasked frames as wsproto's server side writes them."""
    server = Connection(ConnectionType.SERVER, list(extensions))
    return b"".join(server.send(event) for event in events)


def parse_client_frames(
    data: bytes | Sequence[bytes], extensions: Sequence[Extension] = ()
) -> list[Frame]:
    """The client's frames as wsproto's server-side FrameProtocol reads them (unmasking)."""
    if not isinstance(data, bytes):
        data = b"".join(data)
    proto = FrameProtocol(client=False, extensions=list(extensions))
    proto.receive_bytes(data)
    return list(proto.received_frames())


def assert_rejected(conn: ClientConnection, events: Sequence[Event], status: int) -> str:
    """The handshake failed: one HandshakeRejected, nothing sent, TCP to close."""
    assert len(events) == 1, events
    rejected = events[0]
    assert isinstance(rejected, HandshakeRejected)
    assert rejected.status == status
    assert conn.state is State.CLOSED
    assert conn.close_expected()
    assert conn.data_to_send() == []
    return rejected.reason


def assert_failed(conn: ClientConnection, events: Sequence[Event], code: int) -> None:
    """RFC 6455 7.1.7: the client failed the connection with ``code`` (one close frame)."""
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1 and closed[0].code == code and not closed[0].by_peer, events
    frames = parse_client_frames(conn.data_to_send())
    assert [c for c, _ in close_frames(frames)] == [code]
    assert conn.close_expected()


# -- RFC 6455 4.1: the client's opening handshake -----------------------------------


class TestSection4_1ClientHandshake:
    def test_first_data_to_send_is_the_handshake_request(self) -> None:
        conn = new_client()
        assert conn.state is State.CONNECTING
        request = parse_request(conn.data_to_send())
        assert request.method == b"GET"
        assert request.target == b"/ws?room=lobby"
        assert request.http_version == b"1.1"
        headers = request_headers(request)
        assert headers["host"] == ["127.0.0.1:8080"]
        assert headers["upgrade"] == ["websocket"]
        assert headers["connection"] == ["Upgrade"]
        # RFC 6455 1.3: the sample nonce and its key.
        assert headers["sec-websocket-key"] == ["dGhlIHNhbXBsZSBub25jZQ=="]
        assert headers["sec-websocket-version"] == ["13"]
        assert "origin" not in headers
        assert "sec-websocket-extensions" not in headers
        assert conn.data_to_send() == []

    def test_origin_and_extra_headers_are_sent(self) -> None:
        conn = new_client(
            origin="http://127.0.0.1:8080",
            extra_headers=(("Cookie", "token=abc"), ("Authorization", "Bearer x")),
        )
        headers = request_headers(parse_request(conn.data_to_send()))
        assert headers["origin"] == ["http://127.0.0.1:8080"]
        assert headers["cookie"] == ["token=abc"]
        assert headers["authorization"] == ["Bearer x"]

    def test_compression_offers_permessage_deflate(self) -> None:
        headers = request_headers(parse_request(new_client(compression=True).data_to_send()))
        (offer,) = headers["sec-websocket-extensions"]
        assert offer.startswith("permessage-deflate")

    def test_random_key_is_16_bytes_and_fresh_per_connection(self) -> None:
        keys = [
            request_headers(parse_request(new_client(key=None).data_to_send()))[
                "sec-websocket-key"
            ][0]
            for _ in range(2)
        ]
        assert [len(base64.b64decode(key, validate=True)) for key in keys] == [16, 16]
        assert keys[0] != keys[1]

    @pytest.mark.parametrize("key", [b"", b"short", b"x" * 17])
    def test_key_that_is_not_16_bytes_is_a_local_error(self, key: bytes) -> None:
        with pytest.raises(LocalProtocolError, match="16 bytes"):
            new_client(key=key)

    def test_header_with_a_line_break_is_a_local_error(self) -> None:
        with pytest.raises(LocalProtocolError, match="cannot send"):
            new_client(extra_headers=(("x-evil", "a\r\nInjected: yes"),))

    def test_valid_101_opens_the_connection(self) -> None:
        conn = connecting_client()
        (accepted,) = receive(conn, response_bytes())
        assert isinstance(accepted, HandshakeAccepted)
        assert dict(accepted.headers)["sec-websocket-accept"] == SAMPLE_ACCEPT
        assert accepted.extensions == ()
        assert conn.state is State.OPEN
        assert not conn.close_expected()
        assert not conn.compressed

    def test_101_split_at_every_byte(self) -> None:
        conn = connecting_client()
        events: list[Event] = []
        for byte in response_bytes():
            events += receive(conn, bytes([byte]))
        assert [type(e) for e in events] == [HandshakeAccepted]

    def test_frames_in_the_same_read_as_the_101_are_kept(self) -> None:
        # The bytes h11 reads past the 101 belong to wsproto.
        conn = connecting_client()
        events = receive(conn, response_bytes() + server_frames(wse.TextMessage("welcome")))
        assert [type(e) for e in events] == [HandshakeAccepted, TextReceived]
        assert events[1] == TextReceived("welcome")

    def test_header_names_and_tokens_in_any_case(self) -> None:
        conn = connecting_client()
        headers = [
            ("UPGRADE", "WebSocket"),
            ("connection", "keep-alive, UPGRADE"),
            ("sec-websocket-accept", SAMPLE_ACCEPT),
        ]
        assert [type(e) for e in receive(conn, response_bytes(headers=headers))] == [
            HandshakeAccepted
        ]

    def test_wrong_accept_is_rejected(self) -> None:
        # RFC 6455 4.1: "If the |Sec-WebSocket-Accept| contains a value other than
        # the base64-encoded SHA-1 of the concatenation of the |Sec-WebSocket-Key| ...
        # the client MUST _Fail the WebSocket Connection_."
        conn = connecting_client()
        wrong = generate_accept_token(b"another key another==").decode()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", wrong)]  # fmt: skip
        reason = assert_rejected(conn, receive(conn, response_bytes(headers=headers)), 101)
        assert "wrong Sec-WebSocket-Accept" in reason

    def test_frames_after_a_bad_101_are_not_parsed(self) -> None:
        conn = connecting_client()
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade")]
        data = response_bytes(headers=headers) + server_frames(wse.TextMessage("x"))
        assert_rejected(conn, receive(conn, data), 101)
        assert receive(conn, server_frames(wse.TextMessage("y"))) == []

    @pytest.mark.parametrize(
        ("headers", "problem"),
        [
            ([("Connection", "Upgrade"), ("Sec-WebSocket-Accept", SAMPLE_ACCEPT)], "Upgrade"),
            (
                [("Upgrade", "h2c"), ("Connection", "Upgrade"),
                 ("Sec-WebSocket-Accept", SAMPLE_ACCEPT)],
                "Upgrade",
            ),
            ([("Upgrade", "websocket"), ("Sec-WebSocket-Accept", SAMPLE_ACCEPT)], "Connection"),
            ([("Upgrade", "websocket"), ("Connection", "Upgrade")], "without Sec-WebSocket-Accept"),
            (
                [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                 ("Sec-WebSocket-Accept", SAMPLE_ACCEPT), ("Sec-WebSocket-Accept", SAMPLE_ACCEPT)],
                "more than one",
            ),
            (
                [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                 ("Sec-WebSocket-Accept", SAMPLE_ACCEPT), ("Sec-WebSocket-Protocol", "chat")],
                "subprotocol",
            ),
        ],
    )  # fmt: skip
    def test_101_failing_the_rfc_checks_is_rejected(
        self, headers: list[tuple[str, str]], problem: str
    ) -> None:
        conn = connecting_client()
        assert problem in assert_rejected(conn, receive(conn, response_bytes(headers=headers)), 101)

    @pytest.mark.parametrize("extension", ["permessage-deflate", "x-unknown"])
    def test_extension_that_was_not_offered_is_rejected(self, extension: str) -> None:
        # RFC 6455 4.1: an extension "not present in the client's handshake" fails it.
        conn = connecting_client(compression=False)
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
                   ("Sec-WebSocket-Extensions", extension)]  # fmt: skip
        reason = assert_rejected(conn, receive(conn, response_bytes(headers=headers)), 101)
        assert "not offered" in reason

    def test_refusal_with_a_body_surfaces_status_headers_and_body(self) -> None:
        conn = connecting_client()
        body = b"origin not allowed: http://evil.example\n"
        data = response_bytes(
            403,
            "Forbidden",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))],
            body,
        )
        (rejected,) = receive(conn, data)
        assert rejected == HandshakeRejected(
            403,
            (("content-type", "text/plain"), ("content-length", str(len(body)))),
            body,
            "HTTP 403 Forbidden",
        )
        assert conn.state is State.CLOSED and conn.close_expected()

    def test_426_carries_the_supported_version(self) -> None:
        conn = connecting_client()
        data = response_bytes(
            426, "Upgrade Required", [("Sec-WebSocket-Version", "13"), ("Content-Length", "0")]
        )
        (rejected,) = receive(conn, data)
        assert isinstance(rejected, HandshakeRejected)
        assert rejected.status == 426 and dict(rejected.headers)["sec-websocket-version"] == "13"
        assert rejected.body == b""

    def test_refusal_body_split_across_reads_waits_for_its_end(self) -> None:
        conn = connecting_client()
        data = response_bytes(503, "Service Unavailable", [("Content-Length", "9")], b"draining\n")
        assert receive(conn, data[:-4]) == []
        assert conn.state is State.CONNECTING
        (rejected,) = receive(conn, data[-4:])
        assert isinstance(rejected, HandshakeRejected) and rejected.body == b"draining\n"

    def test_refusal_body_ending_at_eof(self) -> None:
        conn = connecting_client()
        assert receive(conn, response_bytes(400, "Bad Request", [], b"bad room")) == []
        conn.receive_eof()
        (rejected,) = conn.events_received()
        assert isinstance(rejected, HandshakeRejected)
        assert (rejected.status, rejected.body) == (400, b"bad room")

    def test_chunked_refusal_body(self) -> None:
        conn = connecting_client()
        data = response_bytes(
            401,
            "Unauthorized",
            [("Transfer-Encoding", "chunked")],
            b"4\r\nno t\r\n4\r\noken\r\n0\r\n\r\n",
        )
        (rejected,) = receive(conn, data)
        assert isinstance(rejected, HandshakeRejected) and rejected.body == b"no token"

    def test_refusal_body_is_capped(self) -> None:
        conn = connecting_client()
        size = DEFAULT_MAX_REJECTION_BODY + 10
        data = response_bytes(500, "Oops", [("Content-Length", str(size))], b"x" * size)
        (rejected,) = receive(conn, data)
        assert isinstance(rejected, HandshakeRejected)
        assert rejected.body == b"x" * DEFAULT_MAX_REJECTION_BODY
        assert rejected.reason == "HTTP 500 Oops (body truncated)"
        assert conn.close_expected()

    def test_interim_1xx_before_the_answer_is_skipped(self) -> None:
        conn = connecting_client()
        data = b"HTTP/1.1 100 Continue\r\n\r\n" + response_bytes()
        assert [type(e) for e in receive(conn, data)] == [HandshakeAccepted]

    def test_eof_before_any_response(self) -> None:
        conn = connecting_client()
        conn.receive_eof()
        reason = assert_rejected(conn, conn.events_received(), 0)
        assert "closed before" in reason

    def test_eof_in_the_middle_of_the_head(self) -> None:
        conn = connecting_client()
        receive(conn, response_bytes()[:20])
        conn.receive_data(b"")  # empty bytes mean EOF, as on the server side
        assert_rejected(conn, conn.events_received(), 0)

    def test_bytes_that_are_not_http(self) -> None:
        conn = connecting_client()
        reason = assert_rejected(conn, receive(conn, b"SSH-2.0-OpenSSH_9.2\r\n\r\n"), 0)
        assert "malformed HTTP response" in reason

    def test_response_head_over_the_limit(self) -> None:
        conn = connecting_client()
        huge = response_bytes(headers=[("X-Big", "x" * 20_000)])
        assert_rejected(conn, receive(conn, huge[: 17 * 1024]), 0)

    def test_sending_before_the_101_is_ignored_and_close_ends_it(self) -> None:
        conn = connecting_client()
        conn.send_text("too early")
        conn.send_ping(b"x")
        assert conn.data_to_send() == []
        conn.send_close()
        assert conn.state is State.CLOSED and conn.close_expected()


# -- RFC 7692: permessage-deflate ---------------------------------------------------


def deflate_server(conn: ClientConnection) -> tuple[bytes, list[Extension]]:
    """Answer ``conn``'s offer as wsproto's server would; return the 101 and its extensions."""
    request = parse_request(conn.data_to_send())
    offers = request_headers(request).get("sec-websocket-extensions", [])
    deflate = PerMessageDeflate()
    accepted = server_extensions_handshake(offers, [deflate])
    headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
               ("Sec-WebSocket-Accept", SAMPLE_ACCEPT)]  # fmt: skip
    if accepted is not None:
        headers.append(("Sec-WebSocket-Extensions", accepted.decode()))
    return response_bytes(headers=headers), [deflate] if accepted is not None else []


class TestRfc7692PermessageDeflate:
    def test_accepted_offer_compresses_both_ways(self) -> None:
        conn = new_client(compression=True)
        response, extensions = deflate_server(conn)
        (accepted,) = receive(conn, response)
        assert isinstance(accepted, HandshakeAccepted)
        assert accepted.extensions == ("permessage-deflate",)
        assert conn.compressed
        server = Connection(ConnectionType.SERVER, extensions)
        text = "hello " * 200
        conn.send_text(text)
        (data,) = conn.data_to_send()
        assert len(data) < len(text) // 4  # compressed on the wire
        server.receive_data(data)
        (message,) = list(server.events())
        assert isinstance(message, wse.TextMessage) and message.data == text
        assert receive(conn, server.send(wse.TextMessage(text))) == [TextReceived(text)]

    @pytest.mark.parametrize(
        ("accepted", "problem"),
        [
            ("permessage-deflate, permessage-deflate", "more than once"),
            ("permessage-deflate; server_max_window_bits=abc", "invalid extension parameters"),
        ],
    )
    def test_invalid_acceptance_is_rejected(self, accepted: str, problem: str) -> None:
        conn = connecting_client(compression=True)
        headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
                   ("Sec-WebSocket-Accept", SAMPLE_ACCEPT),
                   ("Sec-WebSocket-Extensions", accepted)]  # fmt: skip
        assert problem in assert_rejected(conn, receive(conn, response_bytes(headers=headers)), 101)

    def test_declined_offer_leaves_messages_uncompressed(self) -> None:
        conn = open_client(compression=True)
        assert not conn.compressed
        conn.send_text("plain")
        (frame,) = parse_client_frames(conn.data_to_send())
        assert frame.payload == "plain"

    def test_compression_bomb_from_the_server_fails_with_1009(self) -> None:
        conn = new_client(compression=True, max_message_size=1024)
        response, extensions = deflate_server(conn)
        receive(conn, response)
        bomb = server_frames(wse.TextMessage("0" * 1_000_000), extensions=extensions)
        assert len(bomb) < 5_000
        assert_failed(conn, receive(conn, bomb), 1009)


# -- RFC 6455 5: framing, from the client's side -------------------------------------


class TestSection5_1Masking:
    def test_client_frames_are_masked(self) -> None:
        # RFC 6455 5.3: "All frames sent from the client to the server are masked".
        conn = open_client()
        conn.send_text("hi")
        (data,) = conn.data_to_send()
        assert data[1] & 0x80  # MASK bit
        mask, masked = data[2:6], data[6:]
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(masked)) == b"hi"
        (frame,) = parse_client_frames([data])
        assert (frame.opcode.value, frame.payload) == (OP_TEXT, "hi")

    def test_masked_frame_from_the_server_fails_with_1002(self) -> None:
        # RFC 6455 5.1: "A client MUST close a connection if it detects a masked frame."
        conn = open_client()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"hi")), 1002)


class TestSection5_2And5_4FramesAndFragments:
    def test_text_and_binary_messages(self) -> None:
        conn = open_client()
        data = server_frames(wse.TextMessage("é"), wse.BytesMessage(b"\x00\xff"))
        assert receive(conn, data) == [TextReceived("é"), BinaryReceived(b"\x00\xff")]

    def test_send_binary(self) -> None:
        conn = open_client()
        conn.send_binary(b"\x01\x02")
        (frame,) = parse_client_frames(conn.data_to_send())
        assert (frame.opcode.value, frame.payload) == (OP_BINARY, b"\x01\x02")

    def test_fragments_make_one_message(self) -> None:
        conn = open_client()
        data = (
            raw_frame(OP_TEXT, b"he", fin=False, mask=None)
            + raw_frame(OP_CONTINUATION, b"ll", fin=False, mask=None)
            + raw_frame(OP_CONTINUATION, b"o", mask=None)
        )
        assert receive(conn, data) == [TextReceived("hello")]

    def test_reserved_bits_fail_with_1002(self) -> None:
        conn = open_client()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"x", rsv=2, mask=None)), 1002)

    def test_invalid_utf8_fails_with_1007(self) -> None:
        conn = open_client()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"\xff", mask=None)), 1007)


class TestSection5_5ControlFrames:
    def test_ping_is_answered_with_a_masked_pong(self) -> None:
        conn = open_client()
        assert receive(conn, server_frames(wse.Ping(b"beat"))) == []
        (pong,) = parse_client_frames(conn.data_to_send())
        assert pong.opcode.name == "PONG" and pong.payload == b"beat"

    def test_ping_between_fragments_is_answered(self) -> None:
        conn = open_client()
        data = (
            raw_frame(OP_TEXT, b"a", fin=False, mask=None)
            + raw_frame(OP_PING, b"p", mask=None)
            + raw_frame(OP_CONTINUATION, b"b", mask=None)
        )
        assert receive(conn, data) == [TextReceived("ab")]
        assert [f.opcode.name for f in parse_client_frames(conn.data_to_send())] == ["PONG"]

    def test_pong_surfaces_and_send_ping_is_masked(self) -> None:
        conn = open_client()
        conn.send_ping(b"k")
        (ping,) = parse_client_frames(conn.data_to_send())
        assert (ping.opcode.value, ping.payload) == (OP_PING, b"k")
        assert receive(conn, server_frames(wse.Pong(b"k"))) == [PongReceived(b"k")]


class TestSection10_4MessageSizeLimit:
    def test_message_over_the_cap_fails_with_1009(self) -> None:
        conn = open_client(max_message_size=100)
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"x" * 101, mask=None)), 1009)

    def test_fragments_are_counted_together(self) -> None:
        conn = open_client(max_message_size=100)
        data = raw_frame(OP_TEXT, b"x" * 60, fin=False, mask=None) + raw_frame(
            OP_CONTINUATION, b"x" * 41, mask=None
        )
        assert_failed(conn, receive(conn, data), 1009)

    def test_exactly_the_cap_is_allowed(self) -> None:
        conn = open_client(max_message_size=100)
        assert receive(conn, raw_frame(OP_TEXT, b"x" * 100, mask=None)) == [TextReceived("x" * 100)]


# -- RFC 6455 7: closing -----------------------------------------------------------


class TestSection7Closing:
    def test_server_close_is_echoed(self) -> None:
        conn = open_client()
        events = receive(conn, server_frames(wse.CloseConnection(1001, "going away")))
        assert events == [ConnectionClosed(1001, "going away", by_peer=True)]
        assert close_frames(parse_client_frames(conn.data_to_send())) == [(1001, "going away")]
        assert conn.close_expected()

    def test_client_close_then_the_servers_answer(self) -> None:
        conn = open_client()
        conn.send_close(1000, "bye")
        assert conn.state is State.CLOSING
        assert close_frames(parse_client_frames(conn.data_to_send())) == [(1000, "bye")]
        conn.send_text("dropped")  # RFC 6455 5.5.1: no data frames after a Close
        assert conn.data_to_send() == []
        events = receive(conn, server_frames(wse.CloseConnection(1000, "bye")))
        assert events == [ConnectionClosed(1000, "bye", by_peer=False)]
        assert conn.close_expected() and conn.data_to_send() == []

    def test_eof_without_a_close_frame_is_1006(self) -> None:
        conn = open_client()
        conn.receive_eof()
        assert conn.events_received() == [ConnectionClosed(1006, "", by_peer=True)]
        assert conn.close_expected()

    def test_bytes_after_the_close_are_ignored(self) -> None:
        conn = open_client()
        receive(conn, server_frames(wse.CloseConnection(1000)))
        conn.data_to_send()
        assert receive(conn, server_frames(wse.TextMessage("late"))) == []
        conn.receive_eof()
        assert conn.events_received() == []

    def test_reply_to_a_message_before_a_bad_frame_goes_out_before_the_close(self) -> None:
        conn = open_client()
        data = server_frames(wse.TextMessage("q")) + raw_frame(0x5, b"", mask=None)
        events = receive(conn, data)
        assert [type(e) for e in events] == [TextReceived, ConnectionClosed]
        assert not conn.close_expected()
        conn.send_text("a")
        frames = parse_client_frames(conn.data_to_send())
        assert [f.opcode.value for f in frames] == [OP_TEXT, OP_CLOSE]
        assert conn.close_expected()

    def test_invalid_close_code_fails_with_1002(self) -> None:
        conn = open_client()
        frame = raw_frame(OP_CLOSE, (999).to_bytes(2, "big"), mask=None)
        assert_failed(conn, receive(conn, frame), 1002)


# -- A ClientConnection and a ServerConnection feeding each other ------------------


class ConnectionPair:
    """wschat's two sides joined by memory: what one sends, the other receives."""

    def __init__(self, client: ClientConnection, server: ServerConnection) -> None:
        self.client, self.server = client, server

    def to_server(self) -> list[Event]:
        for data in self.client.data_to_send():
            self.server.receive_data(data)
        return self.server.events_received()

    def to_client(self) -> list[Event]:
        for data in self.server.data_to_send():
            self.client.receive_data(data)
        return self.client.events_received()


class TestConnectionPair:
    def test_handshake_messages_pings_and_close(self) -> None:
        pair = ConnectionPair(new_client(key=None, compression=True), ServerConnection())
        (request,) = pair.to_server()
        assert isinstance(request, WebSocketRequest)
        assert (request.path, request.query) == ("/ws", "room=lobby")
        pair.server.accept_websocket(compression=True)
        (accepted,) = pair.to_client()
        assert isinstance(accepted, HandshakeAccepted)
        assert accepted.extensions == ("permessage-deflate",)
        assert pair.client.compressed and pair.server.compressed

        pair.client.send_text("hello " * 100)
        assert pair.to_server() == [TextReceived("hello " * 100)]
        pair.server.send_text("héllo")
        pair.server.send_binary(b"\x00")
        assert pair.to_client() == [TextReceived("héllo"), BinaryReceived(b"\x00")]

        pair.server.send_ping(b"srv")
        assert pair.to_client() == []
        assert pair.to_server() == [PongReceived(b"srv")]
        pair.client.send_ping(b"cli")
        assert pair.to_server() == []
        assert pair.to_client() == [PongReceived(b"cli")]

        pair.client.send_close(1000, "done")
        assert pair.to_server() == [ConnectionClosed(1000, "done", by_peer=True)]
        assert pair.to_client() == [ConnectionClosed(1000, "done", by_peer=False)]
        assert pair.client.close_expected() and pair.server.close_expected()

    def test_server_size_limit_fails_an_oversized_client_message(self) -> None:
        pair = ConnectionPair(new_client(), ServerConnection())
        pair.to_server()
        pair.server.accept_websocket(max_message_size=10)
        pair.to_client()
        pair.client.send_text("x" * 11)
        (closed,) = pair.to_server()
        assert closed == ConnectionClosed(1009, closed.reason, by_peer=False)
        assert pair.to_client() == [ConnectionClosed(1009, closed.reason, by_peer=True)]

    def test_refused_handshake_surfaces_as_handshake_rejected(self) -> None:
        pair = ConnectionPair(new_client(), ServerConnection())
        pair.to_server()
        pair.server.send_response(403, b"origin not allowed: x\n")
        (rejected,) = pair.to_client()
        assert isinstance(rejected, HandshakeRejected)
        assert (rejected.status, rejected.body) == (403, b"origin not allowed: x\n")
        assert rejected.reason == "HTTP 403 Forbidden"
        assert dict(rejected.headers)["connection"] == "close"
        assert pair.client.close_expected() and pair.server.close_expected()

    def test_server_rejection_of_a_bad_origin(self) -> None:
        pair = ConnectionPair(new_client(origin="http://evil.example"), ServerConnection())
        assert [type(e).__name__ for e in pair.to_server()] == ["RequestRejected"]
        (rejected,) = pair.to_client()
        assert isinstance(rejected, HandshakeRejected) and rejected.status == 403
        assert rejected.body == b"origin not allowed: http://evil.example\n"
