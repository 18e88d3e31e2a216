"""The server's own reading of plain text frames (websocket.py's fast path) against wsproto's.

A ServerConnection reads whole, unfragmented, uncompressed text frames itself
while wsproto holds nothing. These tests feed the same bytes, cut into reads
at arbitrary places, to a connection with that fast path and to one without
it (every frame through wsproto, as before), and require the same events and
the same bytes out after every read: valid frames, fragments, control frames,
bad UTF-8, reserved bits, unmasked frames, over-long lengths, messages over the cap.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol_helpers import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    handshake_request,
    open_connection,
    raw_frame,
)
from wschat.protocol import ServerConnection, TextReceived

SETTINGS = settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_SIZE = 300


def pair(**options: object) -> tuple[ServerConnection, ServerConnection]:
    """Two connections alike but that the second never takes the fast path."""
    fast = open_connection(max_message_size=MAX_SIZE, compression=False, **options)  # type: ignore[arg-type]
    slow = open_connection(max_message_size=MAX_SIZE, compression=False, **options)  # type: ignore[arg-type]
    assert fast._idle_check is not None
    slow._idle_check = None
    return fast, slow


texts = st.text(max_size=MAX_SIZE // 2).map(lambda s: s.encode())
masks = st.binary(min_size=4, max_size=4)
frame = st.one_of(
    # the fast path's frames, short and with a 2-byte length, at and over the cap
    st.builds(lambda p, m: raw_frame(OP_TEXT, p, mask=m), texts, masks),
    st.builds(lambda n, m: raw_frame(OP_TEXT, b"x" * n, mask=m), st.integers(120, 310), masks),
    st.builds(lambda n: raw_frame(OP_TEXT, b"c" * n), st.sampled_from([125, 126, 299, 300, 301])),
    # what it must hand to wsproto
    st.builds(lambda p, m: raw_frame(OP_TEXT, p, mask=m), st.binary(max_size=40), masks),
    st.builds(lambda p: raw_frame(OP_TEXT, p, mask=None), texts),
    st.builds(lambda p, r: raw_frame(OP_TEXT, p, rsv=r), texts, st.integers(1, 7)),
    st.builds(lambda p: raw_frame(OP_TEXT, p, fin=False), texts),
    st.builds(lambda p, fin: raw_frame(OP_CONTINUATION, p, fin=fin), texts, st.booleans()),
    st.builds(lambda p: raw_frame(OP_TEXT, p, length=len(p) + 3)[:-3], st.binary(max_size=8)),
    st.just(raw_frame(OP_TEXT, b"short", length=126)[:4] + b"\x00\x00\x00\x00" + b"short"),
    st.just(bytes((0x81, 0xFE, 0x00, 0x05)) + b"\x00" * 4 + b"hello"),  # 2 bytes for 5
    st.just(bytes((0x81, 0xFF)) + (200).to_bytes(8, "big") + b"\x00" * 4 + b"z" * 200),
    st.builds(lambda p: raw_frame(OP_BINARY, p), st.binary(max_size=20)),
    st.builds(lambda p: raw_frame(OP_PING, p), st.binary(max_size=20)),
    st.builds(lambda p: raw_frame(OP_PONG, p), st.binary(max_size=20)),
    st.builds(lambda p: raw_frame(OP_CLOSE, p), st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8ok"])),
    st.binary(min_size=1, max_size=12),
)


EDGE_CASES = {
    "text": raw_frame(OP_TEXT, "plain é".encode()),
    "empty text": raw_frame(OP_TEXT, b""),
    "125 bytes": raw_frame(OP_TEXT, b"a" * 125),
    "126 bytes": raw_frame(OP_TEXT, b"a" * 126),
    "at the cap": raw_frame(OP_TEXT, b"a" * MAX_SIZE),
    "over the cap": raw_frame(OP_TEXT, b"a" * (MAX_SIZE + 1)),
    "bad utf-8": raw_frame(OP_TEXT, b"ok \xff"),
    "surrogate": raw_frame(OP_TEXT, b"\xed\xa0\x80"),
    "unmasked": raw_frame(OP_TEXT, b"plain", mask=None),
    "rsv1": raw_frame(OP_TEXT, b"plain", rsv=4),
    "rsv3": raw_frame(OP_TEXT, b"plain", rsv=1),
    "first fragment": raw_frame(OP_TEXT, b"part", fin=False),
    "fragments": raw_frame(OP_TEXT, b"pa", fin=False) + raw_frame(OP_CONTINUATION, b"rt"),
    "stray continuation": raw_frame(OP_CONTINUATION, b"rt"),
    "2-byte length for 5": bytes((0x81, 0xFE, 0, 5)) + b"\x00" * 4 + b"hello",
    "8-byte length": bytes((0x81, 0xFF)) + (200).to_bytes(8, "big") + b"\x00" * 4 + b"z" * 200,
    "binary": raw_frame(OP_BINARY, b"\x00\x01"),
    "ping": raw_frame(OP_PING, b"p"),
    "pong": raw_frame(OP_PONG, b"p"),
    "close": raw_frame(OP_CLOSE, b"\x03\xe8bye"),
    "opcode 3": raw_frame(0x3, b"x"),
    # cut after its first byte, what is left looks like a (masked, empty) frame
    "mask like a header": bytes((0x81, 0x81, 0x80, 0, 0, 0, 0xE1)),
    # cut after its header, what is left looks like a frame of its own
    "frame in a frame": raw_frame(
        OP_TEXT, raw_frame(OP_TEXT, b"inner", mask=b"\0\0\0\0"), mask=b"\0\0\0\0"
    ),
}


@pytest.mark.parametrize("name", list(EDGE_CASES))
def test_each_kind_of_frame_whole_or_cut_anywhere(name: str) -> None:
    data = EDGE_CASES[name] + EDGE_CASES["text"] + EDGE_CASES["126 bytes"]
    for point in range(len(data) + 1):
        fast, slow = pair(accept_binary=True)
        for piece in (data[:point], data[point:]):
            for conn in (fast, slow):
                conn.receive_data(piece)
            assert fast.events_received() == slow.events_received(), (name, point)
            assert fast.data_to_send() == slow.data_to_send(), (name, point)
            assert fast.close_expected() == slow.close_expected()


def cut(data: bytes, points: list[int]) -> list[bytes]:
    if not data:
        return []
    edges = sorted({p % len(data) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@SETTINGS
@given(
    frames=st.lists(frame, max_size=8),
    points=st.lists(st.integers(min_value=0), max_size=5),
    accept_binary=st.booleans(),
    eof=st.booleans(),
    closing=st.booleans(),
)
def test_the_fast_path_answers_as_wsproto_does(
    frames: list[bytes], points: list[int], accept_binary: bool, eof: bool, closing: bool
) -> None:
    fast, slow = pair(accept_binary=accept_binary)
    if closing:  # the server started the closing handshake: messages are not delivered
        for conn in (fast, slow):
            conn.send_close(1001, "going away")
        assert fast.data_to_send() == slow.data_to_send()
    for piece in cut(b"".join(frames), points):
        for conn in (fast, slow):
            conn.receive_data(piece)
        assert fast.events_received() == slow.events_received()
        assert fast.data_to_send() == slow.data_to_send()
        assert (fast.state, fast.close_expected()) == (slow.state, slow.close_expected())
    if eof:
        fast.receive_eof()
        slow.receive_eof()
        assert fast.events_received() == slow.events_received()
        assert fast.data_to_send() == slow.data_to_send()
        assert fast.close_expected() == slow.close_expected()


def test_plain_text_frames_do_not_reach_wsproto() -> None:
    """The differential test would pass with no fast path at all: this one would not."""
    fast, _ = pair()
    seen: list[bytes] = []
    assert fast._ws is not None
    original = fast._ws.receive_data
    fast._ws.receive_data = lambda data: (seen.append(data), original(data))[1]  # type: ignore[method-assign]
    frames = [raw_frame(OP_TEXT, f"message {i} é".encode() * (i + 1)) for i in range(12)]
    fast.receive_data(b"".join(frames))
    assert fast.events_received() == [TextReceived(f"message {i} é" * (i + 1)) for i in range(12)]
    assert seen == []
    # A ping goes to wsproto, and with it what follows; then the fast path resumes.
    ping, text = raw_frame(OP_PING, b"p"), raw_frame(OP_TEXT, b"after")
    fast.receive_data(ping + text)
    assert seen == [ping + text]
    assert fast.events_received() == [TextReceived("after")]
    fast.receive_data(text)
    assert seen == [ping + text]
    assert fast.events_received() == [TextReceived("after")]


def test_a_frame_split_across_reads_goes_to_wsproto_then_the_fast_path_resumes() -> None:
    fast, _ = pair()
    frame_bytes = raw_frame(OP_TEXT, b"split in two")
    fast.receive_data(frame_bytes[:5])
    assert fast.events_received() == []
    fast.receive_data(frame_bytes[5:] + frame_bytes)
    assert fast.events_received() == [TextReceived("split in two")] * 2


def test_no_fast_path_with_compression_or_on_the_client_side() -> None:
    compressed = open_connection(
        handshake_request(extensions="permessage-deflate"), compression=True
    )
    assert compressed.compressed and compressed._idle_check is None
