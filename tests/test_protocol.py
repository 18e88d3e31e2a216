"""The WebSocket phase of ServerConnection, grouped by RFC 6455 / RFC 7692 section.

Client frames come from wsproto's client ``Connection`` (correctly masked) or,
for frames no correct client would send, from :func:`raw_frame`. Server output
is parsed by wsproto's client-side ``FrameProtocol``. Also here: a page's probe
of a refused handshake's Origin check (RFC 6455 10.2), bytes in and out.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import pytest
from wsproto import events as wse
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol, Opcode

from tests.protocol_helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Client,
    client_frames,
    close_frames,
    handshake_request,
    http_request,
    open_connection,
    open_pair,
    parse_http_responses,
    parse_server_frames,
    raw_frame,
    receive,
)
from wschat.protocol import (
    DEFAULT_MAX_MESSAGE_SIZE,
    BinaryReceived,
    ConnectionClosed,
    HostPolicy,
    HttpRequest,
    OriginPolicy,
    PongReceived,
    RequestRejected,
    ServerConnection,
    State,
    TextReceived,
    encode_text_frame,
)
from wschat.protocol.handshake import PROBE_ORIGIN_HEADER


def assert_failed(conn: ServerConnection, events: Sequence[object], code: int) -> None:
    """RFC 6455 7.1.7: the server failed the connection with ``code``.

    It sends one close frame carrying the code, reports ConnectionClosed(code,
    by_peer=False) and asks the I/O layer to close TCP.
    """
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert len(closed) == 1, events
    assert closed[0].code == code
    assert not closed[0].by_peer
    assert not [e for e in events if isinstance(e, (TextReceived, BinaryReceived))]
    frames = parse_server_frames(conn.data_to_send())
    assert [code_ for code_, _ in close_frames(frames)] == [code]
    assert conn.close_expected()
    assert conn.state is State.CLOSED


# -- RFC 6455 5.1 / 5.3: masking ---------------------------------------------------


class TestSection5_1Masking:
    def test_unmasked_client_frame_fails_with_1002(self) -> None:
        # RFC 6455 5.1: "a server MUST close the connection upon receiving a frame
        # that is not masked ... with a status code of 1002".
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"hi", mask=None)), 1002)

    def test_server_frames_are_unmasked(self) -> None:
        conn = open_connection()
        conn.send_text("hi")
        (data,) = conn.data_to_send()
        assert data == b"\x81\x02hi"

    def test_any_masking_key_works(self) -> None:
        for key in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"):
            conn = open_connection()
            assert receive(conn, raw_frame(OP_TEXT, b"masked", mask=key)) == [
                TextReceived("masked")
            ]


# -- RFC 6455 5.2: base framing -----------------------------------------------------


class TestSection5_2BaseFraming:
    @pytest.mark.parametrize("rsv", [1, 2, 4, 7])
    def test_reserved_bits_without_an_extension_fail_with_1002(self, rsv: int) -> None:
        # RSV1 is only meaningful with permessage-deflate, which this client did not offer.
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, b"hi", rsv=rsv)), 1002)

    @pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xF])
    def test_reserved_opcodes_fail_with_1002(self, opcode: int) -> None:
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(opcode, b"x")), 1002)

    def test_non_minimal_length_encoding_fails_with_1002(self) -> None:
        # RFC 6455 5.2: "the minimal number of bytes MUST be used to encode the length".
        conn = open_connection()
        frame = bytes([0x81, 0x80 | 126, 0x00, 0x02]) + b"\x00\x00\x00\x00" + b"hi"
        assert_failed(conn, receive(conn, frame), 1002)

    def test_frames_split_at_every_byte(self) -> None:
        conn = open_connection()
        data = client_frames(wse.TextMessage("byte by byte"))
        events = []
        for i in range(len(data)):
            events += receive(conn, data[i : i + 1])
        assert events == [TextReceived("byte by byte")]

    def test_many_frames_in_one_read(self) -> None:
        conn = open_connection()
        client = Client()
        data = client.send(*(wse.TextMessage(f"m{i}") for i in range(50)))
        assert receive(conn, data) == [TextReceived(f"m{i}") for i in range(50)]

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
    def test_payload_length_encodings(self, size: int) -> None:
        conn = open_connection(max_message_size=1 << 20)
        text = "x" * size
        assert receive(conn, client_frames(wse.TextMessage(text))) == [TextReceived(text)]


# -- RFC 6455 5.4: fragmentation ---------------------------------------------------


class TestSection5_4Fragmentation:
    def test_three_fragments_make_one_message(self) -> None:
        conn = open_connection()
        client = Client()
        data = client.send(
            wse.TextMessage("Hel", message_finished=False),
            wse.TextMessage("lo, ", message_finished=False),
            wse.TextMessage("world", message_finished=True),
        )
        ops = [raw[0] & 0x0F for raw in _frame_heads(data)]
        assert ops == [OP_TEXT, OP_CONTINUATION, OP_CONTINUATION]
        assert receive(conn, data) == [TextReceived("Hello, world")]

    def test_fragments_in_separate_reads(self) -> None:
        conn = open_connection()
        client = Client()
        assert receive(conn, client.send(wse.TextMessage("a", message_finished=False))) == []
        assert receive(conn, client.send(wse.TextMessage("b", message_finished=False))) == []
        assert receive(conn, client.send(wse.TextMessage("c"))) == [TextReceived("abc")]
        assert receive(conn, client.send(wse.TextMessage("next"))) == [TextReceived("next")]

    def test_utf8_character_split_across_fragments(self) -> None:
        conn = open_connection()
        encoded = "héllo €".encode()
        data = (
            raw_frame(OP_TEXT, encoded[:2], fin=False)
            + raw_frame(OP_CONTINUATION, encoded[2:9], fin=False)
            + raw_frame(OP_CONTINUATION, encoded[9:])
        )
        assert receive(conn, data) == [TextReceived("héllo €")]

    def test_empty_fragments(self) -> None:
        conn = open_connection()
        data = (
            raw_frame(OP_TEXT, b"", fin=False)
            + raw_frame(OP_CONTINUATION, b"ok", fin=False)
            + raw_frame(OP_CONTINUATION, b"")
        )
        assert receive(conn, data) == [TextReceived("ok")]

    def test_ping_in_the_middle_of_a_fragmented_message_is_answered(self) -> None:
        # RFC 6455 5.4: "control frames MAY be injected in the middle of a fragmented message".
        conn = open_connection()
        client = Client()
        data = client.send(
            wse.TextMessage("frag", message_finished=False),
            wse.Ping(b"in-between"),
            wse.TextMessage("men", message_finished=False),
            wse.TextMessage("ted"),
        )
        assert receive(conn, data) == [TextReceived("fragmented")]
        frames = parse_server_frames(conn.data_to_send())
        assert [(f.opcode, f.payload) for f in frames] == [(Opcode.PONG, b"in-between")]

    def test_continuation_without_a_start_fails_with_1002(self) -> None:
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_CONTINUATION, b"orphan")), 1002)

    def test_new_message_before_the_last_finished_fails_with_1002(self) -> None:
        conn = open_connection()
        data = raw_frame(OP_TEXT, b"one", fin=False) + raw_frame(OP_TEXT, b"two")
        assert_failed(conn, receive(conn, data), 1002)

    def test_fragmented_control_frame_fails_with_1002(self) -> None:
        # RFC 6455 5.5: "All control frames ... MUST NOT be fragmented."
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_PING, b"x", fin=False)), 1002)


def _frame_heads(data: bytes) -> list[bytes]:
    """The first two bytes of every (short, masked) frame in ``data``."""
    heads = []
    while data:
        length = data[1] & 0x7F
        assert length < 126
        heads.append(data[:2])
        data = data[2 + 4 + length :]
    return heads


# -- RFC 6455 5.5: control frames ---------------------------------------------------


class TestSection5_5ControlFrames:
    def test_ping_is_answered_with_a_pong_carrying_the_same_payload(self) -> None:
        # RFC 6455 5.5.3: the Pong "MUST have identical Application data" to the Ping.
        conn = open_connection()
        client = Client()
        assert receive(conn, client.send(wse.Ping(b"\x00\xffpayload"))) == []
        events = client.receive(conn.data_to_send())
        assert events == [wse.Pong(payload=b"\x00\xffpayload")]

    def test_empty_ping_and_125_byte_ping(self) -> None:
        conn = open_connection()
        client = Client()
        receive(conn, client.send(wse.Ping(b""), wse.Ping(b"p" * 125)))
        assert client.receive(conn.data_to_send()) == [
            wse.Pong(payload=b""),
            wse.Pong(payload=b"p" * 125),
        ]

    def test_control_frame_over_125_bytes_fails_with_1002(self) -> None:
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_PING, b"p" * 126)), 1002)

    def test_pong_surfaces_as_pong_received(self) -> None:
        conn = open_connection()
        conn.send_ping(b"keepalive-7")
        frames = parse_server_frames(conn.data_to_send())
        assert [(f.opcode, f.payload) for f in frames] == [(Opcode.PING, b"keepalive-7")]
        events = receive(conn, client_frames(wse.Pong(b"keepalive-7")))
        assert events == [PongReceived(b"keepalive-7")]
        assert conn.data_to_send() == []  # a pong is never answered

    def test_unsolicited_pong_is_reported_too(self) -> None:
        # RFC 6455 5.5.3: "A Pong frame MAY be sent unsolicited" (a unidirectional heartbeat).
        conn = open_connection()
        assert receive(conn, raw_frame(OP_PONG, b"hb")) == [PongReceived(b"hb")]

    def test_send_ping_is_ignored_unless_open(self) -> None:
        conn = ServerConnection()
        conn.send_ping(b"x")
        assert conn.data_to_send() == []
        conn = open_connection()
        conn.send_close(1000)
        conn.data_to_send()
        conn.send_ping(b"x")
        assert conn.data_to_send() == []


# -- RFC 6455 5.6: data frames ---------------------------------------------------------


class TestSection5_6DataFrames:
    def test_text_message_is_received(self) -> None:
        conn = open_connection()
        assert receive(conn, client_frames(wse.TextMessage("héllo, wörld ☃"))) == [
            TextReceived("héllo, wörld ☃")
        ]
        assert conn.data_to_send() == []
        assert not conn.close_expected()

    def test_empty_text_message(self) -> None:
        conn = open_connection()
        assert receive(conn, client_frames(wse.TextMessage(""))) == [TextReceived("")]

    def test_send_text_reaches_a_wsproto_client(self) -> None:
        conn = open_connection()
        client = Client()
        conn.send_text("to the client")
        assert client.receive(conn.data_to_send()) == [wse.TextMessage(data="to the client")]

    def test_binary_on_the_chat_endpoint_fails_with_1003(self) -> None:
        # RFC 6455 7.4.1: 1003 "received a type of data it cannot accept".
        conn = open_connection(accept_binary=False)
        assert_failed(conn, receive(conn, client_frames(wse.BytesMessage(b"\x00\x01"))), 1003)

    def test_fragmented_binary_on_the_chat_endpoint_fails_with_1003(self) -> None:
        conn = open_connection(accept_binary=False)
        data = raw_frame(OP_BINARY, b"ab", fin=False)
        assert_failed(conn, receive(conn, data), 1003)

    def test_binary_is_received_when_accepted(self) -> None:
        conn = open_connection(accept_binary=True)
        client = Client()
        data = client.send(
            wse.BytesMessage(b"\x00\xff", message_finished=False), wse.BytesMessage(b"\x80")
        )
        assert receive(conn, data) == [BinaryReceived(b"\x00\xff\x80")]
        assert receive(conn, client.send(wse.TextMessage("t"))) == [TextReceived("t")]

    def test_send_binary(self) -> None:
        conn = open_connection(accept_binary=True)
        conn.send_binary(b"\x01\x02")
        assert Client().receive(conn.data_to_send()) == [wse.BytesMessage(data=b"\x01\x02")]

    def test_send_binary_is_ignored_once_closing(self) -> None:
        conn = open_connection(accept_binary=True)
        conn.send_close(1000)
        conn.data_to_send()
        conn.send_binary(b"late")
        assert conn.data_to_send() == []


# -- RFC 6455 8.1: UTF-8 --------------------------------------------------------------


class TestSection8_1HandlingInvalidUtf8:
    @pytest.mark.parametrize(
        "payload",
        [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xf4\x90\x80\x80", b"\xc0\xaf"],
        ids=["ff", "bad-continuation", "surrogate", "over-max", "overlong"],
    )
    def test_invalid_utf8_fails_with_1007(self, payload: bytes) -> None:
        # RFC 6455 8.1: "When an endpoint is to interpret a byte stream as UTF-8 but finds
        # that the byte stream is not, in fact, a valid UTF-8 stream, that endpoint MUST
        # _Fail the WebSocket Connection_" (7.4.1: 1007).
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_TEXT, payload)), 1007)

    def test_truncated_character_at_the_end_of_a_fragmented_message_fails_with_1007(
        self,
    ) -> None:
        conn = open_connection()
        data = raw_frame(OP_TEXT, b"ok", fin=False) + raw_frame(OP_CONTINUATION, b"\xe2\x82")
        assert_failed(conn, receive(conn, data), 1007)

    def test_invalid_utf8_in_close_reason_fails_with_1007(self) -> None:
        conn = open_connection()
        frame = raw_frame(OP_CLOSE, b"\x03\xe8\xff")
        assert_failed(conn, receive(conn, frame), 1007)


# -- RFC 6455 10.4 / 7.4.1 1009: message size -------------------------------------------


class TestSection10_4MessageSizeLimit:
    """RFC 6455 10.4: "implementations SHOULD impose a limit on frame sizes and the total
    message size"; 7.4.1: 1009 "a message that is too big for it to process"."""

    def test_default_cap(self) -> None:
        assert DEFAULT_MAX_MESSAGE_SIZE == 64 * 1024

    def test_single_frame_over_the_cap_fails_with_1009(self) -> None:
        conn = open_connection(max_message_size=1000)
        data = client_frames(wse.TextMessage("x" * 1001))
        assert_failed(conn, receive(conn, data), 1009)

    def test_oversized_frame_is_refused_on_its_header(self) -> None:
        # The announced length alone is enough: no need to buffer 2 GiB to refuse it.
        conn = open_connection(max_message_size=1000)
        head = raw_frame(OP_TEXT, b"", length=2**31)
        assert_failed(conn, receive(conn, head), 1009)

    def test_exactly_the_cap_is_allowed(self) -> None:
        conn = open_connection(max_message_size=1000)
        text = "é" * 500  # 1000 bytes: the cap counts bytes, not characters
        assert receive(conn, client_frames(wse.TextMessage(text))) == [TextReceived(text)]
        assert not conn.close_expected()

    def test_cap_counts_bytes_not_characters(self) -> None:
        conn = open_connection(max_message_size=1000)
        data = client_frames(wse.TextMessage("é" * 501))  # 501 chars, 1002 bytes
        assert_failed(conn, receive(conn, data), 1009)

    def test_fragments_are_counted_together(self) -> None:
        conn = open_connection(max_message_size=1000)
        client = Client()
        assert receive(conn, client.send(wse.TextMessage("a" * 400, message_finished=False))) == []
        assert receive(conn, client.send(wse.TextMessage("b" * 400, message_finished=False))) == []
        events = receive(conn, client.send(wse.TextMessage("c" * 201)))
        assert_failed(conn, events, 1009)

    def test_fragments_exactly_at_the_cap_are_allowed(self) -> None:
        conn = open_connection(max_message_size=1000)
        client = Client()
        data = client.send(
            wse.TextMessage("a" * 400, message_finished=False),
            wse.Ping(b"p" * 100),  # control frames do not count toward the message
            wse.TextMessage("b" * 400, message_finished=False),
            wse.TextMessage("c" * 200),
        )
        assert receive(conn, data) == [TextReceived("a" * 400 + "b" * 400 + "c" * 200)]

    def test_continuation_whose_masking_key_is_split_across_reads_is_counted_once(
        self,
    ) -> None:
        # wsproto reads a frame header again from its start when the masking key has
        # not fully arrived: a 60,000-byte message under the 65,536-byte cap must not
        # be counted as 90,000 (issue 8 item 10).
        conn = open_connection()
        client = Client()
        first = client.send(wse.TextMessage("a" * 30_000, message_finished=False))
        second = client.send(wse.TextMessage("b" * 30_000))
        # 2 header bytes and 2 bytes of extended length, then the 4-byte masking key.
        assert receive(conn, first + second[:6]) == []
        assert receive(conn, second[6:]) == [TextReceived("a" * 30_000 + "b" * 30_000)]
        assert not conn.close_expected()

    def test_fragments_fed_one_byte_at_a_time_are_counted_once(self) -> None:
        conn = open_connection(max_message_size=1000)
        client = Client()
        data = client.send(
            wse.TextMessage("a" * 300, message_finished=False),
            wse.Ping(b"p"),
            wse.TextMessage("b" * 300, message_finished=False),
            wse.TextMessage("c" * 400),
        )
        events = [event for byte in data for event in receive(conn, bytes([byte]))]
        assert events == [TextReceived("a" * 300 + "b" * 300 + "c" * 400)]

    def test_the_count_restarts_with_each_message(self) -> None:
        conn = open_connection(max_message_size=1000)
        client = Client()
        for _ in range(5):
            assert receive(conn, client.send(wse.TextMessage("z" * 1000))) == [
                TextReceived("z" * 1000)
            ]

    def test_binary_over_the_cap_fails_with_1009(self) -> None:
        conn = open_connection(max_message_size=100, accept_binary=True)
        data = client_frames(wse.BytesMessage(b"\x00" * 101))
        assert_failed(conn, receive(conn, data), 1009)

    def test_nothing_is_parsed_after_failing(self) -> None:
        conn = open_connection(max_message_size=10)
        data = client_frames(wse.TextMessage("x" * 11)) + client_frames(wse.TextMessage("ok"))
        events = receive(conn, data)
        assert [type(e) for e in events] == [ConnectionClosed]
        assert receive(conn, client_frames(wse.TextMessage("later"))) == []


# -- RFC 6455 7: closing ------------------------------------------------------------


class TestSection7Closing:
    @pytest.mark.parametrize(
        ("code", "reason"), [(1000, "bye"), (1001, "tab closed"), (4000, ""), (3999, "app")]
    )
    def test_peer_close_is_echoed_with_the_same_code(self, code: int, reason: str) -> None:
        # RFC 6455 5.5.1: "the endpoint MUST send a Close frame in response ... typically
        # echoing the status code it received".
        conn = open_connection()
        client = Client()
        events = receive(conn, client.send(wse.CloseConnection(code, reason)))
        assert events == [ConnectionClosed(code, reason, by_peer=True)]
        assert conn.close_expected()
        assert conn.state is State.CLOSED
        (echo,) = client.receive(conn.data_to_send())
        assert isinstance(echo, wse.CloseConnection)
        assert echo.code == code

    def test_peer_close_without_a_code_is_1005_and_echoed_empty(self) -> None:
        # RFC 6455 7.1.5: no status code in the close frame -> 1005.
        conn = open_connection()
        events = receive(conn, raw_frame(OP_CLOSE, b""))
        assert events == [ConnectionClosed(1005, "", by_peer=True)]
        (data,) = conn.data_to_send()
        assert data == b"\x88\x00"

    def test_server_close_then_peer_close(self) -> None:
        # RFC 6455 7.1.2: start the closing handshake, then wait for the peer's close.
        conn = open_connection()
        client = Client()
        conn.send_close(1001, "going away")
        assert conn.state is State.CLOSING
        assert not conn.close_expected()
        (sent,) = client.receive(conn.data_to_send())
        assert sent == wse.CloseConnection(code=1001, reason="going away")
        events = receive(conn, client.send(sent.response()))
        assert events == [ConnectionClosed(1001, "going away", by_peer=False)]
        assert conn.close_expected()
        assert conn.data_to_send() == []  # no second close frame

    def test_send_close_is_idempotent(self) -> None:
        conn = open_connection()
        conn.send_close(1000)
        conn.send_close(1001)
        frames = parse_server_frames(conn.data_to_send())
        assert close_frames(frames) == [(1000, "")]

    def test_messages_after_our_close_are_dropped(self) -> None:
        # RFC 6455 1.4: after sending a Close frame the endpoint sends no more data,
        # and the application no longer expects it.
        conn = open_connection()
        client = Client()
        conn.send_close(1001, "bye")
        conn.data_to_send()
        data = client.send(wse.TextMessage("late"), wse.Ping(b"late"))
        assert receive(conn, data) == []
        assert conn.data_to_send() == []  # no pong while closing
        conn.send_text("also dropped")
        assert conn.data_to_send() == []
        events = receive(conn, client.send(wse.CloseConnection(1000)))
        assert events == [ConnectionClosed(1001, "bye", by_peer=False)]

    def test_pong_while_closing_is_still_reported(self) -> None:
        conn = open_connection()
        conn.send_close(1001)
        assert receive(conn, raw_frame(OP_PONG, b"ka")) == [PongReceived(b"ka")]

    def test_eof_while_open_is_1006(self) -> None:
        # RFC 6455 7.1.5: TCP closed without a close frame -> 1006.
        conn = open_connection()
        conn.receive_eof()
        assert conn.events_received() == [ConnectionClosed(1006, "", by_peer=True)]
        assert conn.close_expected()
        assert conn.data_to_send() == []  # 1006 is never sent on the wire

    def test_eof_as_empty_receive_data(self) -> None:
        conn = open_connection()
        assert receive(conn, b"") == [ConnectionClosed(1006, "", by_peer=True)]

    def test_eof_while_closing_is_1006(self) -> None:
        conn = open_connection()
        conn.send_close(1000)
        conn.receive_eof()
        assert conn.events_received() == [ConnectionClosed(1006, "", by_peer=True)]

    def test_eof_mid_message_drops_the_partial_message(self) -> None:
        conn = open_connection()
        receive(conn, raw_frame(OP_TEXT, b"half", fin=False))
        conn.receive_eof()
        assert conn.events_received() == [ConnectionClosed(1006, "", by_peer=True)]

    def test_connection_closed_is_emitted_once(self) -> None:
        conn = open_connection()
        receive(conn, client_frames(wse.CloseConnection(1000)))
        conn.receive_eof()
        assert receive(conn, client_frames(wse.TextMessage("x"))) == []
        conn.send_close(1000)
        assert conn.events_received() == []

    def test_nothing_is_sent_after_close(self) -> None:
        conn = open_connection()
        receive(conn, client_frames(wse.CloseConnection(1000)))
        conn.data_to_send()
        conn.send_text("x")
        conn.send_ping()
        conn.send_close(1000)
        assert conn.data_to_send() == []

    @pytest.mark.parametrize(
        "payload",
        [b"\x03", b"\x00\x00", b"\x03\xe7", b"\x03\xed", b"\x03\xee", b"\x04\x00", b"\x13\x88"],
        ids=["1-byte", "0", "999", "1005", "1006", "1024-reserved", "5000"],
    )
    def test_invalid_close_payload_fails_with_1002(self, payload: bytes) -> None:
        # RFC 6455 7.4: codes below 1000, 1004-1006, 1015 and unassigned 1xxx are invalid.
        conn = open_connection()
        assert_failed(conn, receive(conn, raw_frame(OP_CLOSE, payload)), 1002)

    def test_protocol_error_while_closing_ends_without_a_second_close_frame(self) -> None:
        # We already sent our close frame; RFC 6455 5.5.1: no frame may follow it.
        conn = open_connection()
        conn.send_close(1001, "bye")
        conn.data_to_send()
        events = receive(conn, raw_frame(OP_TEXT, b"x", mask=None))
        assert [(e.code, e.by_peer) for e in events if isinstance(e, ConnectionClosed)] == [
            (1002, False)
        ]
        assert conn.data_to_send() == []
        assert conn.close_expected()

    def test_frames_after_the_peers_close_are_ignored(self) -> None:
        conn = open_connection()
        data = client_frames(wse.CloseConnection(1000)) + raw_frame(OP_TEXT, b"after")
        assert receive(conn, data) == [ConnectionClosed(1000, "", by_peer=True)]


# -- RFC 6455 7.1.7: failing the connection after good frames -------------------------


def frame_summary(data: Sequence[bytes]) -> list[tuple[int, object]]:
    """``(opcode, payload)`` of each server frame; a close's payload is its code."""
    return [
        (f.opcode.value, f.payload[0] if isinstance(f.payload, tuple) else f.payload)
        for f in parse_server_frames(data)
    ]


class TestSection7_1_7FailingAfterGoodFrames:
    """Frames before a bad one in the same read are answered before the close goes out.

    The connection fails *at* the bad frame: the echo of a message that came
    before it must not be overtaken by the close (Autobahn 3.2, 3.3, 4.1.3-4.1.5,
    4.2.3, 4.2.4, 5.15 were NON-STRICT for this; issue 8 item 7).
    """

    @pytest.mark.parametrize(
        ("bad", "code"),
        [
            (raw_frame(OP_TEXT, b"x", rsv=2), 1002),  # Autobahn 3.2
            (raw_frame(0x5, b""), 1002),  # 4.1.3: reserved non-control opcode
            (raw_frame(0xB, b""), 1002),  # 4.2.3: reserved control opcode
            (raw_frame(OP_CONTINUATION, b"x"), 1002),  # 5.15: continuation with no start
            (raw_frame(OP_TEXT, b"\xff"), 1007),
            (raw_frame(OP_BINARY, b"\x00"), 1003),
            (raw_frame(OP_TEXT, b"", length=DEFAULT_MAX_MESSAGE_SIZE + 1), 1009),
        ],
        ids=["rsv", "opcode-5", "opcode-B", "continuation", "utf8", "binary", "too-big"],
    )
    def test_echo_goes_out_before_the_close(self, bad: bytes, code: int) -> None:
        conn = open_connection()
        events = receive(conn, client_frames(wse.TextMessage("hello")) + bad)
        assert events[0] == TextReceived("hello")
        assert isinstance(events[1], ConnectionClosed) and events[1].code == code
        assert conn.state is State.CLOSED
        assert not conn.close_expected()  # the close waits behind the caller's replies
        conn.send_text("hello")  # the echo server's reply
        assert frame_summary(conn.data_to_send()) == [(OP_TEXT, "hello"), (OP_CLOSE, code)]
        assert conn.close_expected()
        conn.send_text("too late")
        assert conn.data_to_send() == []

    def test_pongs_echoes_and_close_keep_the_order_of_the_frames(self) -> None:
        conn = open_connection()
        client = Client()
        data = (
            client.send(wse.TextMessage("one"), wse.Ping(b"p"), wse.TextMessage("two"))
            + raw_frame(OP_TEXT, b"x", rsv=1)
            + client.send(wse.TextMessage("never parsed"))
        )
        events = receive(conn, data)
        assert [type(e) for e in events] == [TextReceived, TextReceived, ConnectionClosed]
        for event in events:
            if isinstance(event, TextReceived):
                conn.send_text(event.text)
        assert frame_summary(conn.data_to_send()) == [
            (OP_PONG, b"p"),
            (OP_TEXT, "one"),
            (OP_TEXT, "two"),
            (OP_CLOSE, 1002),
        ]

    def test_close_is_held_until_the_events_are_taken(self) -> None:
        conn = open_connection()
        conn.receive_data(client_frames(wse.TextMessage("hi")) + raw_frame(0x3))
        assert conn.data_to_send() == []  # the caller has not seen "hi" yet
        assert not conn.close_expected()
        assert [type(e) for e in conn.events_received()] == [TextReceived, ConnectionClosed]
        # A caller with no reply to make (the chat endpoint) gets the close next.
        assert frame_summary(conn.data_to_send()) == [(OP_CLOSE, 1002)]
        assert conn.close_expected()

    def test_a_bad_first_frame_closes_at_once(self) -> None:
        conn = open_connection()
        conn.receive_data(raw_frame(0x3))
        assert frame_summary(conn.data_to_send()) == [(OP_CLOSE, 1002)]
        assert conn.close_expected()

    def test_compressed_echo_before_the_close(self) -> None:
        conn, client = open_pair(offer="permessage-deflate")
        events = receive(conn, client.send(wse.TextMessage("zip " * 50)) + raw_frame(0x4))
        assert [type(e) for e in events] == [TextReceived, ConnectionClosed]
        conn.send_text("zip " * 50)
        received = client.receive(conn.data_to_send())
        assert [type(e) for e in received] == [wse.TextMessage, wse.CloseConnection]
        assert received[0].data == "zip " * 50  # type: ignore[union-attr]
        assert received[1].code == 1002  # type: ignore[union-attr]


# -- RFC 7692: permessage-deflate ----------------------------------------------------


class TestRfc7692PermessageDeflate:
    OFFER = "permessage-deflate; client_max_window_bits"

    def test_offer_is_accepted_in_the_101(self) -> None:
        conn = ServerConnection()
        receive(conn, handshake_request(extensions=self.OFFER))
        conn.accept_websocket(compression=True)
        (response,) = parse_http_responses(conn.data_to_send()).responses
        accepted = response.header("sec-websocket-extensions")
        assert accepted is not None
        assert accepted.split(";")[0].strip() == "permessage-deflate"
        assert conn.compressed

    def test_offer_is_declined_by_default(self) -> None:
        # Compression is off unless asked for (issue 9): Chromium's offer gets no extension.
        conn = ServerConnection()
        receive(conn, handshake_request(extensions=self.OFFER))
        conn.accept_websocket()
        (response,) = parse_http_responses(conn.data_to_send()).responses
        assert response.status == 101
        assert response.header("sec-websocket-extensions") is None
        assert not conn.compressed and conn.deflater is None

    def test_compressed_messages_round_trip(self) -> None:
        conn, client = open_pair(offer=self.OFFER)
        assert client.extensions  # the client really negotiated deflate
        for i in range(3):  # no context is kept: each message compressed alone
            text = f"message {i}: " + "compressible " * 50
            data = client.send(wse.TextMessage(text))
            assert data[0] & 0x40, "RSV1: the client compressed it"
            assert len(data) < len(text) // 2
            assert receive(conn, data) == [TextReceived(text)]
            conn.send_text(text)
            out = b"".join(conn.data_to_send())
            assert out[0] & 0x40, "RSV1: the server compressed it"
            assert client.receive(out) == [wse.TextMessage(data=text)]

    def test_compressed_fragments_round_trip(self) -> None:
        conn, client = open_pair(offer=self.OFFER)
        data = client.send(
            wse.TextMessage("first half, ", message_finished=False),
            wse.TextMessage("middle, ", message_finished=False),
            wse.TextMessage("second half"),
        )
        assert receive(conn, data) == [TextReceived("first half, middle, second half")]

    @pytest.mark.parametrize("control", [wse.Ping(b"mid"), wse.Pong(b"mid")], ids=["ping", "pong"])
    def test_control_frame_inside_a_compressed_fragmented_message(self, control: wse.Event) -> None:
        # RFC 6455 5.4: control frames MAY be injected in the middle of a fragmented message;
        # RFC 7692 6.1: only the first frame of a compressed message carries RSV1.
        conn, client = open_pair(offer=self.OFFER)
        data = client.send(
            wse.TextMessage("first half, ", message_finished=False),
            control,
            wse.TextMessage("second half"),
        )
        events = receive(conn, data)
        assert [e for e in events if isinstance(e, (TextReceived, ConnectionClosed))] == [
            TextReceived("first half, second half")
        ]

    def test_uncompressed_message_on_a_compressed_connection(self) -> None:
        # RFC 7692 6: a message with RSV1 clear is not compressed.
        conn, _ = open_pair(offer=self.OFFER)
        assert receive(conn, raw_frame(OP_TEXT, b"plain")) == [TextReceived("plain")]

    def test_client_no_context_takeover(self) -> None:
        conn, client = open_pair(offer="permessage-deflate; client_no_context_takeover")
        for text in ("same text " * 20, "same text " * 20):
            assert receive(conn, client.send(wse.TextMessage(text))) == [TextReceived(text)]

    def test_compression_false_sends_no_extension_header(self) -> None:
        conn, client = open_pair(offer=self.OFFER, compression=False)
        assert not client.extensions
        assert not conn.compressed
        # Without the extension, RSV1 is a protocol error.
        deflated = PerMessageDeflate()
        deflated.finalize("permessage-deflate")
        data = client_frames(wse.TextMessage("zipped"), extensions=[deflated])
        assert_failed(conn, receive(conn, data), 1002)

    def test_no_offer_no_extension(self) -> None:
        conn, client = open_pair(offer=None)
        assert not client.extensions
        assert not conn.compressed

    def test_unknown_extension_is_ignored(self) -> None:
        _, client = open_pair(offer="x-webkit-deflate-frame, permessage-foo")
        assert not client.extensions

    def test_rsv1_on_a_control_frame_fails_with_1002(self) -> None:
        conn, _ = open_pair(offer=self.OFFER)
        assert_failed(conn, receive(conn, raw_frame(OP_PING, b"x", rsv=4)), 1002)

    def test_corrupt_deflate_data_fails(self) -> None:
        conn, _ = open_pair(offer=self.OFFER)
        events = receive(conn, raw_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=4))
        (closed,) = [e for e in events if isinstance(e, ConnectionClosed)]
        assert closed.code == 1007
        assert conn.close_expected()

    def test_compression_bomb_fails_with_1009(self) -> None:
        # 10 MiB of zeros deflate to ~10 KiB: the cap applies to the inflated size, and
        # inflating stops at the cap instead of producing the whole 10 MiB first.
        conn, client = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        data = client.send(wse.BytesMessage(b"\x00" * (10 * 1024 * 1024)))
        assert len(data) < 64 * 1024
        assert_failed(conn, receive(conn, data), 1009)

    def test_text_compression_bomb_fails_with_1009(self) -> None:
        conn, client = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        data = client.send(wse.TextMessage("a" * (10 * 1024 * 1024)))
        assert_failed(conn, receive(conn, data), 1009)

    def test_fragmented_compressed_message_over_the_cap_fails_with_1009(self) -> None:
        conn, client = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        chunk = "a" * (30 * 1024)
        data = client.send(
            wse.TextMessage(chunk, message_finished=False),
            wse.TextMessage(chunk, message_finished=False),
            wse.TextMessage(chunk),
        )
        assert_failed(conn, receive(conn, data), 1009)

    def test_inflated_fragments_are_counted_together(self) -> None:
        # Each fragment sync-flushed (RFC 7692 7.2.1), so each inflates on arrival: the
        # cap trips on the second fragment, before the message is finished.
        conn, _ = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        deflater = zlib.compressobj(wbits=-15)
        chunk = b"a" * (40 * 1024)
        first = deflater.compress(chunk) + deflater.flush(zlib.Z_SYNC_FLUSH)
        second = deflater.compress(chunk) + deflater.flush(zlib.Z_SYNC_FLUSH)
        assert receive(conn, raw_frame(OP_TEXT, first, fin=False, rsv=4)) == []
        events = receive(conn, raw_frame(OP_CONTINUATION, second, fin=False))
        assert_failed(conn, events, 1009)

    def test_inflated_fragments_under_the_cap_are_reassembled(self) -> None:
        conn, _ = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        deflater = zlib.compressobj(wbits=-15)
        chunks = [b"a" * (20 * 1024), b"b" * (20 * 1024), b"c" * (24 * 1024)]
        parts = [deflater.compress(c) + deflater.flush(zlib.Z_SYNC_FLUSH) for c in chunks]
        assert parts[-1].endswith(b"\x00\x00\xff\xff")
        parts[-1] = parts[-1][:-4]  # RFC 7692 7.2.1: the sender drops the tail
        data = (
            raw_frame(OP_TEXT, parts[0], fin=False, rsv=4)
            + raw_frame(OP_CONTINUATION, parts[1], fin=False)
            + raw_frame(OP_CONTINUATION, parts[2])
        )
        assert receive(conn, data) == [TextReceived(b"".join(chunks).decode())]

    def test_exactly_the_cap_inflated_is_allowed(self) -> None:
        conn, client = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        text = "a" * (64 * 1024)
        assert receive(conn, client.send(wse.TextMessage(text))) == [TextReceived(text)]
        # ... and the next message gets its own budget.
        assert receive(conn, client.send(wse.TextMessage(text))) == [TextReceived(text)]

    def test_one_byte_over_the_cap_inflated_fails(self) -> None:
        conn, client = open_pair(offer=self.OFFER, max_message_size=64 * 1024)
        data = client.send(wse.TextMessage("a" * (64 * 1024 + 1)))
        assert_failed(conn, receive(conn, data), 1009)

    def test_cap_holds_for_bytes_inflated_from_the_message_tail(self) -> None:
        # RFC 7692 7.2.2: the receiver appends 00 00 ff ff before inflating. A stream that
        # ends on a length code takes its distance code from those appended bytes, so the
        # last 258 bytes of the message only appear when the tail is inflated.
        cap = 100
        conn, _ = open_pair(offer=self.OFFER, max_message_size=cap)
        payload = _deflate_ending_in_a_length_code(cap)
        events = receive(conn, raw_frame(OP_TEXT, payload, rsv=4))
        texts = [e.text for e in events if isinstance(e, TextReceived)]
        assert all(len(t.encode()) <= cap for t in texts), [len(t.encode()) for t in texts]


def _deflate_ending_in_a_length_code(inflated_before_tail: int) -> bytes:
    """Raw DEFLATE: one fixed-Huffman block of literals ("é" then "a"s) that inflates to
    ``inflated_before_tail`` bytes, ending with the length code for 258 (RFC 1951 3.2.6).
    """
    bits: list[int] = [0, 1, 0]  # BFINAL=0, BTYPE=01 (fixed Huffman), LSB first

    def code(value: int, width: int) -> None:  # Huffman codes are packed MSB first
        bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def literal(byte: int) -> None:
        if byte < 144:
            code(0x30 + byte, 8)
        else:
            code(0x190 + byte - 144, 9)

    for byte in "é".encode():
        literal(byte)
    for _ in range(inflated_before_tail - 2):
        literal(ord("a"))
    code(0b11000101, 8)  # length code 285: copy 258 bytes; the distance code follows
    assert 0 < -len(bits) % 8 < 5, "the distance code must not fit in the padding"
    bits += [0] * (-len(bits) % 8)
    return bytes(sum(bits[i + j] << j for j in range(8)) for i in range(0, len(bits), 8))


# -- RFC 6455 10.2: a page's probe of the Origin check ----------------------------------


class TestSection10_2OriginProbe:
    """A browser hides a refused upgrade's answer and sends no Origin on its plain
    same-origin ``fetch``; the page's probe names its origin in our header, and gets
    the 403 the upgrade got when that origin is refused (and is never upgraded)."""

    HOST = "chat.example:8080"

    def answer(self, data: bytes, allowed: tuple[str, ...] = ()) -> tuple[list[object], bytes]:
        # Any Host: these cases are about Origin.
        conn = ServerConnection(
            origin_policy=OriginPolicy(allowed=allowed), host_policy=HostPolicy(("*",))
        )
        events = receive(conn, data)
        return events, b"".join(conn.data_to_send())

    def probe(self, origin: str, path: str = "/ws?room=lobby") -> bytes:
        return http_request(path, host=self.HOST, headers=[(PROBE_ORIGIN_HEADER, origin)])

    def test_a_refused_origin_gets_the_upgrades_own_403(self) -> None:
        upgrade_events, upgrade_answer = self.answer(
            handshake_request(origin="http://evil.example", host=self.HOST)
        )
        probe_events, probe_answer = self.answer(self.probe("http://evil.example"))
        refused = RequestRejected(403, "origin not allowed: http://evil.example")
        assert upgrade_events == [refused]
        assert probe_events == [RequestRejected(refused.status, refused.reason, probe=True)]
        assert probe_answer == upgrade_answer  # byte for byte
        responses = parse_http_responses([probe_answer]).responses
        assert [(r.status, r.body) for r in responses] == [(403, b"%s\n" % refused.reason.encode())]

    @pytest.mark.parametrize(
        ("origin", "allowed"),
        [("http://chat.example:8080", ()), ("https://app.example", ("https://app.example",))],
        ids=["same-origin", "allowed"],
    )
    def test_an_allowed_origin_is_told_so_and_not_upgraded(
        self, origin: str, allowed: tuple[str, ...]
    ) -> None:
        events, data = self.answer(self.probe(origin), allowed)
        assert events == [
            RequestRejected(400, "origin allowed; this is not a WebSocket upgrade", probe=True)
        ]
        assert [r.status for r in parse_http_responses([data]).responses] == [400]

    def test_without_the_header_a_plain_request_is_the_callers_to_answer(self) -> None:
        events, data = self.answer(http_request("/ws?room=lobby", host=self.HOST))
        assert [type(e) for e in events] == [HttpRequest] and data == b""

    def test_the_header_means_nothing_on_other_paths(self) -> None:
        events, data = self.answer(self.probe("http://evil.example", path="/"))
        assert [type(e) for e in events] == [HttpRequest] and data == b""


# -- encode_text_frame ----------------------------------------------------------------


class TestEncodeTextFrame:
    """frames.py: one unmasked final text frame, shared by every uncompressed recipient."""

    @pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    def test_parses_back_with_wsproto(self, size: int) -> None:
        text = "€" * (size // 3) + "x" * (size % 3)  # exactly ``size`` UTF-8 bytes
        payload = text.encode()
        assert len(payload) == size
        frame = encode_text_frame(payload)
        frames = parse_server_frames(frame)
        assert len(frames) == 1
        (parsed,) = frames
        assert parsed.opcode is Opcode.TEXT
        assert parsed.payload == text
        assert parsed.frame_finished and parsed.message_finished

    @pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
    def test_exact_sizes_match_wsprotos_own_encoding(self, size: int) -> None:
        payload = b"x" * size
        frame = encode_text_frame(payload)
        assert frame == bytes(
            FrameProtocol(client=False, extensions=[]).send_data(payload.decode())
        )
        # Minimal length encoding (RFC 6455 5.2): 2, 4 or 10 header bytes.
        header = 2 if size < 126 else 4 if size < 65536 else 10
        assert len(frame) == header + size

    def test_same_bytes_as_send_text_on_an_uncompressed_connection(self) -> None:
        conn = open_connection(compression=False)
        conn.send_text("broadcast ☃")
        assert b"".join(conn.data_to_send()) == encode_text_frame("broadcast ☃".encode())

    def test_a_wsproto_client_receives_it(self) -> None:
        client = Client()
        assert client.receive(encode_text_frame("hi €".encode())) == [wse.TextMessage(data="hi €")]


def test_deflate_helper_sanity() -> None:
    """The crafted stream inflates as described when the RFC 7692 tail is appended."""
    payload = _deflate_ending_in_a_length_code(100)
    inflater = zlib.decompressobj(-15)
    before = inflater.decompress(payload)
    after = inflater.decompress(b"\x00\x00\xff\xff")
    assert len(before) == 100
    assert before.decode().startswith("é")
    assert after == b"a" * 258
