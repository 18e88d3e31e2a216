"""One client's backlog under one byte limit: the policy every writer shares.

Every WebSocket has exactly one :class:`Writer`. Whatever the server sends a
client (broadcasts, history, errors and acks, pongs, echoes, the close frame)
is put into it, and the same rules hold whichever subclass carries the bytes:

- **The byte limit covers the whole backlog**: what is queued here plus what
  the transport or the writer task holds and the kernel has not taken yet.
  :meth:`Writer.put` refuses (returns False, queues nothing) when the backlog
  would pass the limit, and the caller closes the client as a slow consumer.
  One item larger than the limit itself (a big history reply) is still taken
  when no other such item is waiting, and does not count: the limit covers
  everything else, before and behind it (the presence list and live messages
  that follow a history reply). So a big history never makes a room
  unjoinable, and a client holds at most the limit plus that one item. The
  close frame goes in through :meth:`Writer.put_final`, past the limit, once.
- **The write timeout means no progress**: :meth:`Writer.stalled_for` is how
  long the backlog has been non-empty while the kernel took nothing. The
  watchdog drops a client stalled for the write timeout; a slow but steady
  reader is only ever dropped by the byte limit.

How the bytes travel is the subclasses' part (:mod:`.writer`).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable

import anyio


def reset_on_close(sock: socket.socket | None) -> None:
    """Make closing ``sock`` send RST and drop what the kernel still holds for it.

    A client dropped for not reading has up to megabytes in the kernel's send
    buffer; a plain close would keep sending them (and keep the memory) until
    the client reads them. ``SO_LINGER`` 0 discards them at once.
    """
    if sock is None:
        return
    # Closed already: OSError, or ValueError from uvloop's pseudo-socket of a closed transport.
    with contextlib.suppress(OSError, ValueError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class Writer:
    """Bytes on their way to one client, under one byte limit.

    Args:
        limit: Most bytes the backlog may hold (0: unlimited).
    """

    __slots__ = (
        "_chunks",
        "_final",
        "_oversized_end",
        "_oversized_start",
        "_progress_at",
        "_size",
        "_total",
        "aborted",
        "held",
        "limit",
        "on_abort",
    )

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._total = 0  # bytes ever queued
        # Where the last item bigger than the limit lies in the stream of _total bytes.
        self._oversized_start = self._oversized_end = 0
        self._final = False
        self.aborted = False
        self._progress_at = anyio.current_time()
        self.on_abort: Callable[[], None] | None = None
        """Called once when the writer aborts (the connection stops reading too)."""
        self.held = True
        """While held, bytes queue up but are not sent (see :meth:`release`)."""

    # -- what the subclasses provide ---------------------------------------------

    def unsent(self) -> int:
        """Bytes handed on (to the transport or the writer task) but not yet to the kernel."""
        raise NotImplementedError

    def _queued(self) -> None:
        """Called after bytes were queued into an empty queue (and when released)."""
        raise NotImplementedError

    def release(self) -> None:
        """Start sending. A new connection's writer is held until its 101 and its
        room's first events are queued in the order the client must read them."""
        self.held = False
        if self._size:
            self._queued()

    def abort(self) -> None:
        """Drop the connection now; queued bytes are lost. Tells ``on_abort`` first."""
        if self.aborted:
            return
        self.aborted = True
        self.discard()
        if self.on_abort is not None:
            self.on_abort()
        self._abort()

    def _abort(self) -> None:
        raise NotImplementedError

    async def drain(self, deadline: float) -> bool:
        """Send everything queued; True once the kernel took it all before ``deadline``."""
        raise NotImplementedError

    # -- the policy ----------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Bytes queued here, not yet handed on."""
        return self._size

    def backlog(self) -> int:
        """Everything this client has not received yet, in bytes."""
        return self._size + self.unsent()

    def put(self, data: bytes) -> bool:
        """Queue ``data``; False (nothing queued) when it would take the backlog over the limit.

        After the close frame only what fits in the limit is taken (and True
        returned either way): the connection is closing.
        """
        if self.aborted or not data:
            return True
        limit = self.limit
        if limit:
            backlog, size = self._size + self.unsent(), len(data)
            # _admits only near the limit or behind an oversized item.
            if (
                backlog + size > limit or self._oversized_end + backlog > self._total
            ) and not self._admits(backlog, size):
                return self._final
        self._append(data)
        return True

    def _admits(self, backlog: int, size: int) -> bool:
        """Whether ``size`` more bytes fit next to ``backlog``; notes an oversized item taken."""
        # Bytes leave the backlog in order: the first (_total - backlog) have left.
        left = self._total - backlog
        if self._oversized_end > left:  # some of the last oversized item is still waiting
            if size > self.limit:
                return False  # one such item at a time
            rest = min(self._oversized_end - left, self._oversized_end - self._oversized_start)
            return backlog - rest + size <= self.limit
        if size > self.limit:
            self._oversized_start, self._oversized_end = self._total, self._total + size
            return True
        return backlog + size <= self.limit

    def put_final(self, data: bytes) -> None:
        """Queue the close frame (with whatever protocol output precedes it), past the limit."""
        if self._final:
            self.put(data)
            return
        self._final = True
        if self.aborted or not data:
            return
        self._append(data)

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self._total += len(data)
        if self._size == len(data) and not self.held:
            self._queued()

    def discard(self) -> None:
        """Drop what is queued and not yet handed on (a slow consumer recovers from history)."""
        self._chunks = []
        self._size = 0

    def take(self) -> bytes:
        """Everything queued, joined (``b""`` when empty)."""
        if not self._chunks:
            return b""
        chunks, self._chunks = self._chunks, []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def stalled_for(self, now: float) -> float:
        """Seconds the backlog has waited without the kernel taking a byte (0: not stalled).

        A held writer is not stalled: it waits for the server (the client's room
        to be entered), not for the client.
        """
        # (TransportWriter.stalled_for has this inlined: keep the two alike.)
        if self.held or not self.backlog():
            self._progress_at = now
            return 0.0
        return now - self._progress_at

    def _progressed(self) -> None:
        self._progress_at = anyio.current_time()
