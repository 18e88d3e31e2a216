"""permessage-deflate (RFC 7692): negotiation, shared compression, capped inflation.

Theory of operation
-------------------
**Outbound, compressed once.** The server always answers an accepted offer
with ``server_no_context_takeover`` (RFC 7692 7.1.1.1 lets a server add it
although the client did not ask), so every message it sends is compressed on
its own: the compressed bytes depend on the payload and the LZ77 window only,
not on the connection. A :class:`MessageDeflater` compresses for one window
size; a :class:`DeflatePolicy` keeps one per window size it negotiated, so
every connection with the same setting shares one, and a broadcast is
compressed once per deflater (``PreparedMessage.frame_for`` in the Hub), the
same bytes going to each member, exactly as plain frames are shared. No
compressor lives on between messages, on any connection. Messages under the
policy's ``min_size`` go out uncompressed: RFC 7692 6 lets a sender choose
per message (RSV1 clear).

**Inbound, bounded.** The answer also carries ``client_no_context_takeover``
(7.1.1.2: a server may add it) and, when the client offered
``client_max_window_bits``, a small client window: a connection holds an
inflater only while a compressed message is arriving, of at most
``2**client_max_window_bits`` bytes of window plus zlib's ~7 KiB of state.
:class:`CappedPerMessageDeflate` (both sides) inflates at most the bytes
still allowed for the message and fails with 1009 past the cap, so a
"compression bomb" never expands.

**Negotiation** is strict (RFC 7692 7): an offer with an unknown, repeated or
invalid parameter is declined and the next offer is tried; with none left the
WebSocket opens without the extension.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Final

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

from .frames import encode_text_frame

EXTENSION_NAME: Final = "permessage-deflate"

# Measured on wschat's own events (README "Compression": chat message events,
# median 194 B, and history replies of 100 of them, ~21 KB), zlib level 6:
# - every message event fits the window from 2**9 on, so the window changes
#   nothing for them (0.78 of the plain frame's bytes at 9, 12 and 15 bits);
# - a history reply is 2.9x smaller at 9 bits, 3.6x at 10, 3.9x at 12, 4.3x at
#   15, and a small window costs CPU on it (10 bits: 2.4x the time of 12).
# 12 bits (4 KiB) holds a whole 4 KiB chat text; offers of 12 bits and more
# share one compression, and a client that asks for a window is told 4 KiB.
DEFAULT_SERVER_MAX_WINDOW_BITS = 12
# What the server inflates with, when the client lets it choose: zlib's state
# is ~7 KiB at any window, plus the window (1 KiB at 10 bits, 32 KiB at 15).
# The client pays nothing on messages under 1 KiB (chat messages are) and
# ~6% more bytes on a 4 KiB one (0.425 of its size instead of 0.401).
DEFAULT_CLIENT_MAX_WINDOW_BITS = 10
# Measured on the same events: under ~100 B (joined/left, typing, small
# presence) DEFLATE saves 6-9% (a few bytes, less than a TCP/TLS header's
# variance) for an inflate on every client; from 125 B on it saves 15-27%.
# Centrifugo calls this compression_min_size.
DEFAULT_COMPRESSION_MIN_SIZE = 128

# zlib cannot deflate with an 8-bit window (it uses 9), so an offer that asks
# the server for 8 is declined (RFC 7692 7.1.2.1: or decline the offer).
_MIN_DEFLATE_BITS = 9
# RFC 7692 7.1.2.1/7.1.2.2: a decimal integer from 8 to 15, no leading zero.
_WINDOW_BITS = re.compile(r"(?:[89]|1[0-5])")
_FLAGS = ("server_no_context_takeover", "client_no_context_takeover")
_TAIL = b"\x00\x00\xff\xff"


class MessageDeflater:
    """Compresses whole messages for every connection that negotiated one window.

    Shared: it keeps no state between messages (``server_no_context_takeover``)
    but a counter. Hashes by identity, so a broadcast can cache its frame per
    deflater with one dict lookup per recipient.

    Args:
        window_bits: The LZ77 window the server uses (9-15).
        min_size: Payloads shorter than this many bytes are sent uncompressed.
    """

    __slots__ = ("compressions", "min_size", "window_bits")

    def __init__(self, window_bits: int, min_size: int) -> None:
        self.window_bits = window_bits
        self.min_size = min_size
        self.compressions = 0
        """Messages compressed so far."""

    def compress(self, payload: bytes) -> bytes:
        """RFC 7692 7.2.1: ``payload`` deflated alone, without the final ``00 00 ff ff``."""
        compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.window_bits)
        data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self.compressions += 1
        return data[: -len(_TAIL)]

    def frame(self, payload: bytes) -> bytes:
        """``payload`` as one final text frame: compressed (RSV1) from ``min_size`` bytes on."""
        if len(payload) < self.min_size:
            return encode_text_frame(payload)
        return encode_text_frame(self.compress(payload), compressed=True)

    def __repr__(self) -> str:
        return f"MessageDeflater(window_bits={self.window_bits}, min_size={self.min_size})"


class DeflatePolicy:
    """What a server negotiates for permessage-deflate, and its shared deflaters.

    Give one policy to every ``accept_websocket`` so that connections with the
    same setting share a :class:`MessageDeflater`.

    Args:
        min_size: Messages shorter than this many bytes go out uncompressed.
        server_max_window_bits: The window the server compresses with (9-15);
            a client that asks for a smaller one gets it.
        client_max_window_bits: The window asked of clients that offer
            ``client_max_window_bits`` (8-15), bounding the inflater's memory.

    Raises:
        ValueError: A window size or ``min_size`` is out of range.
    """

    def __init__(
        self,
        min_size: int = DEFAULT_COMPRESSION_MIN_SIZE,
        server_max_window_bits: int = DEFAULT_SERVER_MAX_WINDOW_BITS,
        client_max_window_bits: int = DEFAULT_CLIENT_MAX_WINDOW_BITS,
    ) -> None:
        if min_size < 0:
            raise ValueError(f"min_size must be at least 0, not {min_size}")
        if not _MIN_DEFLATE_BITS <= server_max_window_bits <= 15:
            raise ValueError(f"server_max_window_bits must be 9-15, not {server_max_window_bits}")
        if not 8 <= client_max_window_bits <= 15:
            raise ValueError(f"client_max_window_bits must be 8-15, not {client_max_window_bits}")
        self.min_size = min_size
        self.server_max_window_bits = server_max_window_bits
        self.client_max_window_bits = client_max_window_bits
        self._deflaters: dict[int, MessageDeflater] = {}

    def deflater(self, window_bits: int) -> MessageDeflater:
        """The shared deflater for ``window_bits`` (made on first use)."""
        deflater = self._deflaters.get(window_bits)
        if deflater is None:
            deflater = self._deflaters[window_bits] = MessageDeflater(window_bits, self.min_size)
        return deflater

    def accept(
        self, offers: Sequence[str], max_message_size: int
    ) -> tuple[str, ServerPerMessageDeflate] | None:
        """Choose the first acceptable permessage-deflate offer (RFC 7692 5).

        Args:
            offers: The client's extension offers, in its order of preference.
            max_message_size: Cap on an inflated message (1009 over it).

        Returns:
            The ``Sec-WebSocket-Extensions`` answer and the extension to frame
            with, or None when no offer is acceptable (no extension).
        """
        for offer in offers:
            name, semicolon, rest = offer.partition(";")
            if name.strip().lower() != EXTENSION_NAME:
                continue
            params = parse_parameters(rest) if semicolon else {}
            if params is None:
                continue  # RFC 7692 7: decline it; a later offer may do
            answer = [EXTENSION_NAME, *_FLAGS]
            server_bits = self.server_max_window_bits
            if "server_max_window_bits" in params:
                asked = params["server_max_window_bits"]
                if asked is None or int(asked) < _MIN_DEFLATE_BITS:
                    continue  # a value is required; 8 bits zlib cannot do
                server_bits = min(server_bits, int(asked))
                answer.append(f"server_max_window_bits={server_bits}")
            client_bits = 15  # RFC 7692 7.1.2.2: the client may use up to 15 unless told
            if "client_max_window_bits" in params:
                hint = params["client_max_window_bits"]
                client_bits = min(self.client_max_window_bits, 15 if hint is None else int(hint))
                answer.append(f"client_max_window_bits={client_bits}")
            extension = ServerPerMessageDeflate(
                max_message_size, self.deflater(server_bits), client_bits
            )
            return "; ".join(answer), extension
        return None

    def statistics(self) -> dict[str, int]:
        """Counters: messages compressed, and the distinct settings negotiated so far."""
        return {
            "compressions": sum(d.compressions for d in self._deflaters.values()),
            "deflate_settings": len(self._deflaters),
        }


def parse_parameters(text: str) -> dict[str, str | None] | None:
    """The parameters of a permessage-deflate offer: the text after its first ``;``.

    Returns:
        Name -> value (None when it has none), or None when the offer must be
        declined (RFC 7692 7): an unknown or repeated parameter, a value where
        none belongs, a missing or invalid window size.
    """
    params: dict[str, str | None] = {}
    for part in text.split(";"):
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        value = _unquote(raw.strip()) if eq else None
        if name in params:
            return None
        if name in _FLAGS:
            if value is not None:
                return None
        elif name in ("server_max_window_bits", "client_max_window_bits"):
            if value is not None and not _WINDOW_BITS.fullmatch(value):
                return None
        else:
            return None
        params[name] = value
    return params


def _unquote(value: str) -> str:
    # RFC 7692 7.1.2: a quoted-string value is checked after unescaping.
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


class CappedPerMessageDeflate(PerMessageDeflate):
    """PerMessageDeflate whose inbound messages inflate to at most ``max_size`` bytes."""

    def __init__(self, max_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self._inflated = 0
        self._in_control_frame = False

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            # A control frame may come between a compressed message's fragments
            # (RFC 6455 5.4); wsproto's PerMessageDeflate forgets the message's
            # compression state on it, so control frames bypass that state here.
            self._in_control_frame = True
            if rsv.rsv1:
                return CloseReason.PROTOCOL_ERROR
            return RsvBits(True, False, False)
        self._in_control_frame = False
        if opcode is not Opcode.CONTINUATION:
            self._inflated = 0
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if self._in_control_frame or not self._inbound_compressed:
            return data
        if not self._inbound_is_compressible:
            return data
        assert self._decompressor is not None
        try:
            # One byte more than allowed tells "too big" apart from "exactly the cap".
            inflated = self._decompressor.decompress(bytes(data), self._allowed() + 1)
        except zlib.error:
            return CloseReason.INVALID_FRAME_PAYLOAD_DATA
        return self._count(inflated)

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        if self._in_control_frame:
            self._in_control_frame = False
            return None
        tail = super().frame_inbound_complete(proto, fin)
        # The final flush can inflate a few hundred bytes more: they count too.
        return self._count(tail) if isinstance(tail, bytes) else tail

    def _allowed(self) -> int:
        return max(self.max_size - self._inflated, 0)

    def _count(self, inflated: bytes) -> bytes | CloseReason:
        self._inflated += len(inflated)
        if self._inflated > self.max_size:
            return CloseReason.MESSAGE_TOO_BIG
        return inflated


class ServerPerMessageDeflate(CappedPerMessageDeflate):
    """The server's negotiated permessage-deflate: no context kept either way.

    Whole messages it sends are compressed by the shared ``deflater``;
    inbound ones are inflated with a fresh inflater per message.

    Args:
        max_size: Cap on an inflated inbound message (1009 over it).
        deflater: The shared deflater of the negotiated server window.
        client_window_bits: The window the client may use (8-15).
    """

    def __init__(self, max_size: int, deflater: MessageDeflater, client_window_bits: int) -> None:
        super().__init__(max_size)
        self.deflater = deflater
        self.server_no_context_takeover = True
        self.client_no_context_takeover = True
        self.server_max_window_bits = deflater.window_bits
        # An inflater with a larger window reads any stream of a smaller one;
        # zlib's smallest raw window is 9 bits.
        self.client_max_window_bits = max(client_window_bits, _MIN_DEFLATE_BITS)

    def enabled(self) -> bool:
        return True

    def frame_outbound(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        data: bytes,
        fin: bool,
    ) -> tuple[RsvBits, bytes]:
        if opcode in (Opcode.TEXT, Opcode.BINARY) and fin:
            # A whole message (all wschat sends): the shared deflater, and the
            # same per-message choice as for broadcasts.
            if len(data) < self.deflater.min_size:
                return rsv, data
            return RsvBits(True, rsv.rsv2, rsv.rsv3), self.deflater.compress(bytes(data))
        # Control frames pass; a fragmented message is wsproto's, reset at its end.
        return super().frame_outbound(proto, opcode, rsv, data, fin)
