"""Encoding server frames once for many connections.

Server-to-client frames are not masked (RFC 6455 5.1), so a text frame's bytes
are the same for every connection that negotiated no extension. A broadcast
therefore frames its payload once and hands the same ``bytes`` to every
uncompressed recipient.
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def encode_text_frame(payload: bytes) -> bytes:
    """Frame UTF-8 ``payload`` as one unmasked, final text frame."""
    length = len(payload)
    if length < 126:
        header = bytes((_FIN_TEXT, length))
    elif length < 65536:
        header = struct.pack("!BBH", _FIN_TEXT, 126, length)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, length)
    return header + payload
