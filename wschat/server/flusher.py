"""One task that writes every connection's queued bytes: no task switch per recipient.

A broadcast appends the same frame to many writers. Waking one writer task per
connection per message costs a task switch each (tens of microseconds in
total per recipient with anyio's stream machinery). Instead, a connection whose
queue goes from empty to non-empty marks itself dirty here; the flusher wakes
once, after the current task yields, and hands each dirty connection's bytes,
joined, straight to its transport. Everything a batch of incoming frames
queued goes out in one write per connection.

A fan-out that cannot be batched (one message per batch, a big room) gains
nothing from the queue and pays for it: a second pass over every recipient,
and a first recipient that waits until the last is queued. So while batches
carry about one frame per connection, the flusher is in *direct mode* and a
connection's first frame of a batch goes to its transport at once (see
:class:`Flusher`).

A connection whose transport fails while being written is aborted; the batch
goes on (failure isolation: one client never stops the others' writes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio

from .constants import loop_time

logger = logging.getLogger("wschat.server")

# After a batch of several frames per connection, frames go at once again only
# once batches of about one frame per connection have touched this many times
# as many connections (about this many such fan-outs to the same room). Going
# back is slow on purpose: in a batch of several messages a frame written at
# once costs a send(2) of its own (half as much again for two messages), while
# one that waits for the flush when it need not costs a little Python (about a
# tenth as much).
DIRECT_AFTER = 8

# A batch that took longer than this (the fan-out and its flush), begun after
# less idle time than it took, means a busy loop: messages are bound to meet in
# the next batches, so they queue. (Shorter ones are too small to matter.)
BUSY_BATCH = 0.005


class Flushable(Protocol):
    """A connection's writer as the flusher sees it."""

    def write_now(self) -> int:
        """Hand the queued bytes to the transport; return how many."""

    def abort(self) -> None:
        """Drop the connection now."""


class Flusher:
    """Writes dirty connections' queues in batches, and decides when frames go at once.

    A *batch* lasts from the first write or mark after a flush until the
    flusher runs again (after the current task yields). In **direct mode** a
    connection's first frame of a batch is written at once by its
    :class:`~.writer.TransportWriter`; only what follows in the same batch
    queues. A flush that ends a batch which gave connections several frames
    each (many messages per read) turns direct mode off: one joined write per
    connection. About :data:`DIRECT_AFTER` batches in a row of one frame per
    connection (fan-outs that cannot be batched) turn it on again: writing at
    once spares a second pass over the room and lets the first recipients have
    the frame before the fan-out reaches the last. A busy loop (a long batch
    begun after less idle time than it took, see :data:`BUSY_BATCH`) turns it
    off too: there, messages are about to meet in a batch, where a frame
    written at once would cost a send(2) of its own.

    Args:
        count_bytes: Called with the bytes written by each batch (a metrics counter).
        busy_batch: Seconds a batch may take before a busy loop is suspected.
    """

    def __init__(self, count_bytes: Callable[[int], None], busy_batch: float = BUSY_BATCH) -> None:
        self._count_bytes = count_bytes
        self._busy_batch = busy_batch
        self._dirty: list[Flushable] = []
        self._wakeup: anyio.Event | None = None
        self.open = False
        """Whether a batch has begun (and the flusher is to run to end it)."""
        self.written_at_once: list[bytes] = []
        """The frames written at once in this batch (by writers, which list them here)."""
        # Connections touched by batches of about one frame each since the last
        # batch of several, and how many turn direct mode on again.
        self._singles = self._singles_wanted = 0
        self._began = self._ended = 0.0  # when the batch began, when the last one ended
        self.direct = True
        """Whether a connection's first frame of a batch is written at once."""
        self.batch = 0
        """The current batch's number."""
        self.frames = 0
        """Frames queued (not written at once) in this batch, counted as they are flushed."""
        self.writers = 0
        """Connections flushed this batch that were not also written at once in it."""
        self.failures = 0
        """Writes that raised (each cost only its own connection)."""

    def mark(self, writer: Flushable) -> None:
        """Schedule ``writer``'s queue to be written (once per batch)."""
        self._dirty.append(writer)
        if not self.open:
            self.begin()

    def begin(self) -> None:
        """Begin a batch: the flusher runs (to end it) once the current task yields."""
        self.open = True
        self._began = loop_time()
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def flush(self) -> None:
        """Write every dirty connection's queue now; end the batch."""
        dirty, self._dirty = self._dirty, []
        at_once = self.written_at_once
        direct_writes = len(at_once)
        written = sum(map(len, at_once)) if direct_writes else 0
        if direct_writes:
            self.written_at_once = []
        for writer in dirty:
            try:
                written += writer.write_now()
            except Exception as exc:
                self._failed(writer, exc)
        if written:
            self._count_bytes(written)
        if dirty:
            # Frames per connection touched this batch, written at once or queued.
            frames = direct_writes + self.frames
            touched = direct_writes + self.writers
            if 2 * frames > 3 * touched:
                self.direct = False
                self._singles = 0
                self._singles_wanted = DIRECT_AFTER * touched
            elif not self.direct:
                self._singles += touched
                self.direct = self._singles >= self._singles_wanted
        if self.open:
            now = loop_time()
            busy = now - self._began
            if busy > self._busy_batch and self._began - self._ended < busy:
                self.direct = False
            self._ended = now
        self.batch += 1
        self.frames = self.writers = 0
        self.open = False

    def _failed(self, writer: Flushable, exc: Exception) -> None:
        self.failures += 1
        logger.info("! write failed, dropping the connection: %r", exc)
        try:
            writer.abort()
        except Exception as abort_exc:
            logger.info("! abort failed too: %r", abort_exc)

    async def run(self) -> None:
        """Flush whenever a batch has begun; runs until cancelled."""
        while True:
            if not self.open:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self.flush()
