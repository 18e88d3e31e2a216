"""permessage-deflate (RFC 7692) with a cap on the decompressed size.

wsproto's :class:`PerMessageDeflate` inflates whatever arrives with no bound: a
few KiB of zeros can expand to gigabytes (a "compression bomb"). This subclass
asks zlib for at most the bytes still allowed for the current message and
fails the connection with 1009 as soon as a message would exceed the cap.
"""

from __future__ import annotations

import zlib

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, RsvBits


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
