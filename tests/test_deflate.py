"""permessage-deflate (RFC 7692) as wschat negotiates it, bytes in and bytes out.

What each offer gets (off unless asked for: see test_protocol's RFC 7692 class);
the compressed frame, inflated here with zlib (the reference, not our code);
messages under the size threshold left plain; one compression per broadcast for
every member of a setting; the bounds on what a client can make the server
inflate. Then the operator's switch: off unless ``--compression``.
"""

from __future__ import annotations

import random
import tracemalloc
import zlib

import pytest
from wsproto import events as wse
from wsproto.extensions import PerMessageDeflate

from tests.protocol_helpers import (
    OP_CONTINUATION,
    OP_TEXT,
    Client,
    handshake_request,
    parse_http_responses,
    raw_frame,
    receive,
)
from wschat.chat import Position, message_event
from wschat.cli import build_parser, config_from_args
from wschat.hub import PreparedMessage
from wschat.protocol import (
    ConnectionClosed,
    DeflatePolicy,
    MessageDeflater,
    ServerConnection,
    TextReceived,
    encode_text_frame,
)
from wschat.server import ServerConfig

CHROMIUM = "permessage-deflate; client_max_window_bits"  # also Edge, websockets, ws (Node)
ANSWER = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
TAIL = b"\x00\x00\xff\xff"
WORDS = ["hello", "room", "see", "you", "at", "the", "meeting", "later", "thanks", "ok"]


def negotiate(
    offer: str | None, policy: DeflatePolicy | None = None
) -> tuple[ServerConnection, str | None]:
    """A server connection that accepted a handshake offering ``offer``, and its answer."""
    conn = ServerConnection()
    receive(conn, handshake_request(extensions=offer))
    conn.accept_websocket(compression=policy or DeflatePolicy())
    (response,) = parse_http_responses(conn.data_to_send()).responses
    assert response.status == 101
    return conn, response.header("sec-websocket-extensions")


def split_frame(frame: bytes) -> tuple[int, bytes]:
    """(first byte, payload) of one unmasked server frame."""
    length = frame[1] & 0x7F
    start = 2 if length < 126 else 4 if length == 126 else 10
    return frame[0], frame[start:]


def inflate(data: bytes, window_bits: int = 15) -> bytes:
    """RFC 7692 7.2.2: append 00 00 ff ff and inflate, with a fresh inflater."""
    inflater = zlib.decompressobj(-window_bits)
    return inflater.decompress(data + TAIL) + inflater.flush()


def deflated_frame(payload: bytes, window_bits: int) -> bytes:
    """A client's masked, compressed text frame of ``payload`` alone (no context)."""
    deflater = zlib.compressobj(6, zlib.DEFLATED, -window_bits)
    data = deflater.compress(payload) + deflater.flush(zlib.Z_SYNC_FLUSH)
    return raw_frame(OP_TEXT, data[:-4], rsv=4)


def chat_event(text: str, seq: int = 1) -> bytes:
    """A ``message`` event as every member of a room receives it."""
    return message_event(
        "lobby", Position("3f9a1c0e7b2d", seq), "alice", text, "2026-01-01T12:00:00.000Z"
    )


def wsproto_client(answer: str) -> Client:
    """An independent client (wsproto) that finalized the server's answer."""
    deflate = PerMessageDeflate()
    deflate.finalize(answer)
    return Client([deflate])


# -- RFC 7692 5 and 7: what each offer gets ---------------------------------------------


ACCEPTED = [
    pytest.param(CHROMIUM, ANSWER + "; client_max_window_bits=10", 12, id="chromium"),
    pytest.param("permessage-deflate", ANSWER, 12, id="firefox-safari"),
    pytest.param(
        "permessage-deflate; client_max_window_bits=15; server_max_window_bits=15",
        ANSWER + "; server_max_window_bits=12; client_max_window_bits=10",
        12,
        id="wsproto-default",
    ),
    pytest.param(
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ANSWER,
        12,
        id="gorilla",
    ),
    pytest.param(
        "permessage-deflate; server_max_window_bits=10",
        ANSWER + "; server_max_window_bits=10",
        10,
        id="smaller-server-window",
    ),
    pytest.param(
        "permessage-deflate; client_max_window_bits=9",
        ANSWER + "; client_max_window_bits=9",
        12,
        id="client-hints-9",
    ),
    pytest.param(
        "permessage-deflate; client_max_window_bits=8",
        ANSWER + "; client_max_window_bits=8",
        12,
        id="client-hints-8",
    ),
    pytest.param(
        'permessage-deflate; client_max_window_bits="11"',
        ANSWER + "; client_max_window_bits=10",
        12,
        id="quoted-value",
    ),
    pytest.param(
        "permessage-deflate; server_max_window_bits=8, "
        "permessage-deflate; server_max_window_bits=11",
        ANSWER + "; server_max_window_bits=11",
        11,
        id="first-acceptable-offer",
    ),
    pytest.param("x-webkit-deflate-frame, permessage-deflate", ANSWER, 12, id="after-another"),
]

DECLINED = [
    pytest.param(None, id="no-offer"),
    pytest.param("x-webkit-deflate-frame", id="another-extension"),
    pytest.param("permessage-deflate; server_max_window_bits=8", id="server-window-8"),
    pytest.param("permessage-deflate; server_max_window_bits", id="server-window-no-value"),
    pytest.param("permessage-deflate; client_max_window_bits=16", id="window-over-15"),
    pytest.param("permessage-deflate; client_max_window_bits=7", id="window-under-8"),
    pytest.param("permessage-deflate; client_max_window_bits=010", id="leading-zero"),
    pytest.param("permessage-deflate; server_max_window_bits=abc", id="not-a-number"),
    pytest.param("permessage-deflate; max_window_bits=10", id="unknown-parameter"),
    pytest.param(
        "permessage-deflate; client_max_window_bits; client_max_window_bits", id="repeated"
    ),
    pytest.param("permessage-deflate; server_no_context_takeover=1", id="flag-with-value"),
    pytest.param("permessage-deflate;", id="empty-parameter"),
]


class TestNegotiation:
    @pytest.mark.parametrize(("offer", "answer", "server_bits"), ACCEPTED)
    def test_accepted_offer(self, offer: str, answer: str, server_bits: int) -> None:
        conn, got = negotiate(offer)
        assert got == answer
        assert conn.compressed
        assert conn.deflater is not None and conn.deflater.window_bits == server_bits

    @pytest.mark.parametrize("offer", DECLINED)
    def test_declined_offer_opens_without_the_extension(self, offer: str | None) -> None:
        # RFC 7692 7: "A server MUST decline an extension negotiation offer for this
        # extension if ... invalid"; the WebSocket itself still opens.
        conn, got = negotiate(offer)
        assert got is None
        assert not conn.compressed and conn.deflater is None
        assert receive(conn, raw_frame(OP_TEXT, b"plain")) == [TextReceived("plain")]
        conn.send_text("x" * 500)
        assert conn.data_to_send() == [encode_text_frame(b"x" * 500)]  # RSV1 clear

    @pytest.mark.parametrize(
        "settings",
        [{"min_size": -1}, {"server_max_window_bits": 8}, {"client_max_window_bits": 16}],
    )
    def test_policy_refuses_impossible_settings(self, settings: dict[str, int]) -> None:
        with pytest.raises(ValueError):
            DeflatePolicy(**settings)


# -- RFC 7692 7.2.1: the compressed frame --------------------------------------------------


class TestCompressedFrames:
    def test_frame_inflates_to_the_payload(self) -> None:
        conn, answer = negotiate(CHROMIUM)
        assert conn.deflater is not None and answer is not None
        payload = chat_event("the quick brown fox jumps over the lazy dog, twice: " * 3)
        frame = conn.deflater.frame(payload)
        first, data = split_frame(frame)
        assert first == 0xC1  # FIN, RSV1 (compressed), text
        assert len(data) < len(payload)
        assert inflate(data) == payload
        # ... and an independent client that negotiated the same reads the text.
        assert wsproto_client(answer).receive(frame) == [wse.TextMessage(payload.decode())]

    def test_frames_respect_the_negotiated_window(self) -> None:
        # Repeats 3,000 bytes apart: a deflater with a window over 2**10 would refer back
        # that far, and an inflater holding 1 KiB of window would fail on it.
        chunk = random.Random(7).randbytes(1500).hex().encode()
        conn, _ = negotiate("permessage-deflate; server_max_window_bits=10")
        assert conn.deflater is not None
        _, data = split_frame(conn.deflater.frame(chunk + chunk))
        assert inflate(data, window_bits=10) == chunk + chunk

    def test_no_context_between_messages(self) -> None:
        # server_no_context_takeover: each message inflates alone, so the same payload
        # makes the same bytes every time, whoever it goes to.
        conn, _ = negotiate(CHROMIUM)
        assert conn.deflater is not None
        payload = chat_event("same text " * 20)
        frames = [conn.deflater.frame(payload) for _ in range(3)]
        assert frames[0] == frames[1] == frames[2]
        assert all(inflate(split_frame(f)[1]) == payload for f in frames)

    def test_under_the_min_size_rsv1_is_clear(self) -> None:
        # RFC 7692 6: a sender may leave any message uncompressed (RSV1 clear).
        deflater = DeflatePolicy(min_size=128).deflater(12)
        small, big = b"s" * 127, b"b" * 128
        assert deflater.frame(small) == encode_text_frame(small)
        first, data = split_frame(deflater.frame(big))
        assert first == 0xC1 and inflate(data) == big
        assert deflater.compressions == 1

    def test_min_size_zero_compresses_even_the_empty_message(self) -> None:
        deflater = DeflatePolicy(min_size=0).deflater(12)
        first, data = split_frame(deflater.frame(b""))
        assert first == 0xC1 and inflate(data) == b""

    def test_send_text_follows_the_broadcast_rules(self) -> None:
        # The echo endpoint's path (wsproto framing) makes the same bytes as a broadcast.
        conn, _ = negotiate(CHROMIUM)
        assert conn.deflater is not None
        conn.send_text("hi")
        assert conn.data_to_send() == [encode_text_frame(b"hi")]
        text = "a broadcast long enough to be worth compressing, " * 4
        conn.send_text(text)
        assert conn.data_to_send() == [conn.deflater.frame(text.encode())]


# -- compressed once per broadcast -----------------------------------------------------------


class TestSharedCompression:
    def test_one_prepared_message_serves_n_members_with_one_compression(self) -> None:
        policy = DeflatePolicy()
        offers = [CHROMIUM] * 5 + ["permessage-deflate"] * 3  # one setting: 12 bits
        members = [negotiate(offer, policy) for offer in offers]
        deflaters = {id(conn.deflater) for conn, _ in members}
        assert len(deflaters) == 1
        payload = chat_event("hello everyone, this goes to the whole room at once")
        message = PreparedMessage(payload)
        frames = []
        for conn, _ in members:
            assert conn.deflater is not None
            frames.append(message.frame_for(conn.deflater))
        assert all(frame is frames[0] for frame in frames)  # the same bytes object
        assert policy.statistics() == {"compressions": 1, "deflate_settings": 1}
        for (_, answer), frame in zip(members, frames, strict=True):
            assert answer is not None
            assert wsproto_client(answer).receive(frame) == [wse.TextMessage(payload.decode())]

    def test_one_compression_per_distinct_setting(self) -> None:
        policy = DeflatePolicy()
        offers = [
            CHROMIUM,
            CHROMIUM,
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=15",  # gets 12: Chromium's setting
        ]
        deflaters: list[MessageDeflater] = []
        for offer in offers:
            conn, _ = negotiate(offer, policy)
            assert conn.deflater is not None
            deflaters.append(conn.deflater)
        message = PreparedMessage(chat_event("one broadcast, two settings " * 3))
        frames = {deflater: message.frame_for(deflater) for deflater in deflaters}
        assert policy.statistics() == {"compressions": 2, "deflate_settings": 2}
        for deflater, frame in frames.items():
            assert inflate(split_frame(frame)[1], deflater.window_bits) == message.payload
        assert message.frame == encode_text_frame(message.payload)  # uncompressed members

    def test_small_broadcast_is_not_compressed_for_anyone(self) -> None:
        policy = DeflatePolicy()
        conn, _ = negotiate(CHROMIUM, policy)
        assert conn.deflater is not None
        message = PreparedMessage(b'{"type":"joined","room":"lobby","username":"alice"}')
        assert message.frame_for(conn.deflater) == message.frame
        assert policy.statistics()["compressions"] == 0


# -- inbound: what a client can make the server hold ------------------------------------------


class TestInboundBounds:
    def test_messages_in_the_negotiated_client_window_are_read(self) -> None:
        conn, answer = negotiate(CHROMIUM)
        assert answer is not None and answer.endswith("client_max_window_bits=10")
        texts = [f"message {i}: " + "compressible text " * 30 for i in range(3)]
        for text in texts:
            assert receive(conn, deflated_frame(text.encode(), 10)) == [TextReceived(text)]

    def test_inflater_memory_is_bounded_and_freed(self) -> None:
        # While a compressed message is arriving the connection holds one inflater:
        # ~7 KiB of zlib state and the negotiated 2**10-byte window (a client that
        # offers no client_max_window_bits may use 32 KiB). Once it is read, nothing.
        text = " ".join(random.Random(1).choice(WORDS) for _ in range(800)).encode()
        deflater = zlib.compressobj(6, zlib.DEFLATED, -10)
        first = deflater.compress(text) + deflater.flush(zlib.Z_SYNC_FLUSH)
        second = (deflater.compress(text) + deflater.flush(zlib.Z_SYNC_FLUSH))[:-4]
        tracemalloc.start()
        try:
            conn, _ = negotiate(CHROMIUM)
            before = tracemalloc.get_traced_memory()[0]
            assert receive(conn, raw_frame(OP_TEXT, first, fin=False, rsv=4)) == []
            during = tracemalloc.get_traced_memory()[0] - before
            events = receive(conn, raw_frame(OP_CONTINUATION, second))
            assert events == [TextReceived((text + text).decode())]
            del events
            after = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert during < len(text) + 10 * 1024  # the first half's text, and the inflater
        assert after < 1024

    def test_no_inflater_is_kept_between_messages(self) -> None:
        # client_no_context_takeover: each message is inflated alone. A client that
        # (against the agreement) refers back into its previous message fails.
        conn, _ = negotiate(CHROMIUM)
        deflater = zlib.compressobj(6, zlib.DEFLATED, -10)
        text = b"a line the client repeats, word for word, in its next message"

        def next_frame() -> bytes:
            data = deflater.compress(text) + deflater.flush(zlib.Z_SYNC_FLUSH)
            return raw_frame(OP_TEXT, data[:-4], rsv=4)

        assert receive(conn, next_frame()) == [TextReceived(text.decode())]
        events = receive(conn, next_frame())  # refers back to the first message
        assert [e.code for e in events if isinstance(e, ConnectionClosed)] == [1007]


# -- the operator's switch ------------------------------------------------------------------


class TestServeFlags:
    @pytest.fixture(autouse=True)
    def clean_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("WSCHAT_COMPRESSION", "WSCHAT_NO_COMPRESSION", "WSCHAT_COMPRESSION_MIN_SIZE"):
            monkeypatch.delenv(name, raising=False)

    def config(self, *argv: str) -> ServerConfig:
        return config_from_args(build_parser().parse_args(["serve", *argv]))

    def test_off_by_default(self) -> None:
        assert ServerConfig().compression is False
        assert self.config().compression is False
        assert self.config("--no-compression").compression is False  # the default: accepted

    def test_compression_flag_and_min_size(self) -> None:
        config = self.config("--compression", "--compression-min-size", "64")
        assert config.compression is True and config.compression_min_size == 64
        assert self.config("--compression", "--no-compression").compression is False
        assert self.config().compression_min_size == 128

    def test_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WSCHAT_COMPRESSION", "1")
        assert self.config().compression is True
        assert self.config("--no-compression").compression is False  # flags win
        monkeypatch.setenv("WSCHAT_NO_COMPRESSION", "1")  # the old switch still turns it off
        assert self.config().compression is False

    def test_min_size_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("WSCHAT_COMPRESSION_MIN_SIZE", "0")  # 0: compress every message
        assert self.config("--compression").compression_min_size == 0
        assert self.config("--compression-min-size", "512").compression_min_size == 512
