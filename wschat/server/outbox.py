"""A connection's bounded, byte-counted outbox (single writer).

The Hub appends without ever waiting. Whatever queued since the last write goes
out in one write: by the server's flusher straight into the transport (plain
TCP on asyncio), or by the connection's own writer task (TLS, trio). A put that
takes the outbox over its byte limit fails, and the connection closes itself as
a slow consumer.
"""

from __future__ import annotations

import anyio


class Outbox:
    """Bytes waiting to be written to one connection.

    Args:
        limit: Most bytes queued at once; 0 means unlimited.
    """

    __slots__ = ("_chunks", "_closed", "_size", "_wakeup", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._wakeup: anyio.Event | None = None
        self._closed = False

    @property
    def size(self) -> int:
        """Bytes queued now."""
        return self._size

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (and nothing queued) when over the limit or closed.

        The limit bounds the backlog: one message larger than the limit still
        goes into an empty outbox (a big history must not make a room unjoinable).
        """
        if self._closed:
            return False
        if not data:
            return True
        size = self._size + len(data)
        if self.limit and size > self.limit and self._chunks:
            return False
        self._chunks.append(data)
        self._size = size
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def put_control(self, chunks: list[bytes]) -> None:
        """Queue protocol output (handshake, pong, close) regardless of the limit."""
        if self._closed:
            return
        self._chunks.extend(chunk for chunk in chunks if chunk)
        self._size += sum(len(chunk) for chunk in chunks)
        if self._wakeup is not None:
            self._wakeup.set()

    def take(self) -> bytes:
        """Everything queued, joined, without waiting (``b""`` when empty)."""
        if not self._chunks:
            return b""
        chunks, self._chunks = self._chunks, []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def discard(self) -> None:
        """Drop everything queued (a slow consumer recovers from history instead)."""
        self._chunks = []
        self._size = 0

    def close(self) -> None:
        """No more puts; the writer drains what is queued, then stops."""
        self._closed = True
        if self._wakeup is not None:
            self._wakeup.set()

    async def get(self) -> bytes:
        """Everything queued, joined; waits while empty. ``b""`` once closed and drained."""
        while not self._chunks:
            if self._closed:
                return b""
            self._wakeup = anyio.Event()
            await self._wakeup.wait()
            self._wakeup = None
        chunks, self._chunks = self._chunks, []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
