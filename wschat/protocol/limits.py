"""A message-size limit inside wsproto's frame pipeline.

wsproto has no limit on message size (features.md 3.1). This object sits in
the connection's extension list and sees every frame header: it adds up the
announced sizes of an uncompressed message's fragments and fails the
connection with 1009 before reading a frame that would take the message over
the cap. Compressed messages are capped after inflation by
:class:`~.deflate.CappedPerMessageDeflate`. It is never offered to or
negotiated with the peer and uses no RSV bit.
"""

from __future__ import annotations

from wsproto.extensions import Extension
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits

_NO_RSV = RsvBits(False, False, False)


class MessageSizeLimit(Extension):
    """Fail messages larger than ``max_size`` bytes (after decompression) with 1009."""

    name = "x-wschat-message-size-limit"

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._size = 0  # bytes of the current message's completed frames
        self._frame_size = 0  # the frame being read, not yet in _size
        self._compressed = False

    def enabled(self) -> bool:
        return True

    def offer(self) -> bool | str:
        return False  # never offered: a local limit, not a negotiated extension

    def frame_inbound_header(
        self,
        proto: FrameDecoder | FrameProtocol,
        opcode: Opcode,
        rsv: RsvBits,
        payload_length: int,
    ) -> CloseReason | RsvBits:
        # Idempotent: wsproto calls this again for the same frame when its header
        # was split across reads (it rolls back and re-parses), so nothing is added here.
        self._frame_size = 0
        if opcode.iscontrol():
            return _NO_RSV
        if opcode is not Opcode.CONTINUATION:
            self._size = 0
            self._compressed = rsv.rsv1
        if self._compressed:
            return _NO_RSV  # counted after inflation by CappedPerMessageDeflate
        # An uncompressed frame announces its size: refuse it before reading it.
        if self._size + payload_length > self.max_size:
            return CloseReason.MESSAGE_TOO_BIG
        self._frame_size = payload_length
        return _NO_RSV

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        return data

    def frame_inbound_complete(
        self, proto: FrameDecoder | FrameProtocol, fin: bool
    ) -> bytes | CloseReason | None:
        self._size += self._frame_size
        self._frame_size = 0
        return None
