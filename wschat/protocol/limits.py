"""A message-size limit inside wsproto's frame pipeline.

wsproto has no limit on message size (features.md 3.1). This object sits last
in the connection's extension list, so it sees every data frame's payload
after decompression and before UTF-8 decoding: it counts the message's real
bytes across fragments and fails the connection with 1009 the moment the
message goes over. It is never offered to or negotiated with the peer and uses
no RSV bit.
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
        self._size = 0
        self._control = False
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
        self._control = opcode.iscontrol()
        if self._control:
            return _NO_RSV
        if opcode is not Opcode.CONTINUATION:
            self._size = 0
            self._compressed = rsv.rsv1
        # An uncompressed frame announces its size: refuse it before reading it.
        if not self._compressed and self._size + payload_length > self.max_size:
            return CloseReason.MESSAGE_TOO_BIG
        return _NO_RSV

    def frame_inbound_payload_data(
        self, proto: FrameDecoder | FrameProtocol, data: bytes
    ) -> bytes | CloseReason:
        if not self._control:
            self._size += len(data)
            if self._size > self.max_size:
                return CloseReason.MESSAGE_TOO_BIG
        return data
