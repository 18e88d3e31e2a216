"""Encoding server frames once for many connections.

Server-to-client frames are not masked (RFC 6455 5.1), so a text frame's bytes
are the same for every connection that negotiated the same thing: no
extension, or permessage-deflate with the same window (without context
takeover, see :mod:`.deflate`). A broadcast therefore frames its payload once
per such setting and hands the same ``bytes`` to every recipient.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81
_RSV1 = 0x40  # RFC 7692 6: set on the first frame of a compressed message


def encode_text_frame(payload: bytes, compressed: bool = False) -> bytes:
    """Frame ``payload`` as one unmasked, final text frame.

    Args:
        payload: UTF-8 text, or its DEFLATE data when ``compressed``.
        compressed: Set RSV1: the payload is permessage-deflate data.
    """
    first = _FIN_TEXT | _RSV1 if compressed else _FIN_TEXT
    length = len(payload)
    if length < 126:
        header = bytes((first, length))
    elif length < 65536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + payload
