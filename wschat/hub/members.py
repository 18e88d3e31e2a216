"""What the Hub hands its members: a broadcast encoded once, and the member protocol.

A fan-out hands the same :class:`PreparedMessage` to every member of a room; a
:class:`Member` (the server's connection) takes the frame its negotiated
compression needs, made once for all members that share it.
"""

from __future__ import annotations

from typing import Protocol

from ..protocol import MessageDeflater, encode_text_frame


class PreparedMessage:
    """A broadcast, encoded once: the JSON payload, its text frame, compressed frames on use.

    The plain text frame (``frame``) is the same for every uncompressed member
    and made at once: nearly every fan-out needs it, and a plain attribute is
    cheaper per recipient than a property. A compressed frame is the same for
    every member that negotiated the same :class:`~wschat.protocol.MessageDeflater`,
    so it is made once per deflater.
    """

    __slots__ = ("_deflated", "frame", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.frame = encode_text_frame(payload)
        """The payload as one unmasked text frame."""
        self._deflated: dict[MessageDeflater, bytes] | None = None

    def frame_for(self, deflater: MessageDeflater) -> bytes:
        """The frame for members that negotiated ``deflater``: compressed once for all of them."""
        frames = self._deflated
        if frames is None:
            frames = self._deflated = {}
        frame = frames.get(deflater)
        if frame is None:
            frame = frames[deflater] = deflater.frame(self.payload)
        return frame


class Member(Protocol):
    """A local connection as the Hub sees it."""

    @property
    def conn_id(self) -> str:
        """Unique across nodes."""

    @property
    def username(self) -> str | None:
        """The bound username, or None while the connection is anonymous."""

    @property
    def legacy(self) -> bool:
        """True for seed-format clients, which receive only ``message`` events."""

    def send(self, message: PreparedMessage) -> None:
        """Queue ``message`` for this member. Must never block."""

    def missed(self, room: str) -> None:
        """Live messages of ``room`` were lost on the way to this node: resync."""
