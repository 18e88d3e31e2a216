"""One task that writes every connection's queued bytes: no task switch per recipient.

A broadcast appends the same frame to many writers. Waking one writer task per
connection per message costs a task switch each (tens of microseconds in
total per recipient with anyio's stream machinery). Instead, a connection whose
queue goes from empty to non-empty marks itself dirty here; the flusher wakes
once, after the current task yields, and hands each dirty connection's bytes,
joined, straight to its transport. Everything a batch of incoming frames
queued goes out in one write per connection.

A connection whose transport fails while being written is aborted; the batch
goes on (failure isolation: one client never stops the others' writes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

import anyio

logger = logging.getLogger("wschat.server")


class Flushable(Protocol):
    """A connection's writer as the flusher sees it."""

    def write_now(self) -> int:
        """Hand the queued bytes to the transport; return how many."""

    def abort(self) -> None:
        """Drop the connection now."""


class Flusher:
    """Writes dirty connections' queues in batches.

    Args:
        count_bytes: Called with the bytes written by each batch (a metrics counter).
    """

    def __init__(self, count_bytes: Callable[[int], None]) -> None:
        self._count_bytes = count_bytes
        self._dirty: list[Flushable] = []
        self._wakeup: anyio.Event | None = None
        self.failures = 0
        """Writes that raised (each cost only its own connection)."""

    def mark(self, writer: Flushable) -> None:
        """Schedule ``writer``'s queue to be written (once per batch)."""
        self._dirty.append(writer)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def flush(self) -> None:
        """Write every dirty connection's queue now."""
        dirty, self._dirty = self._dirty, []
        written = 0
        for writer in dirty:
            try:
                written += writer.write_now()
            except Exception as exc:
                self._failed(writer, exc)
        if written:
            self._count_bytes(written)

    def _failed(self, writer: Flushable, exc: Exception) -> None:
        self.failures += 1
        logger.info("! write failed, dropping the connection: %r", exc)
        try:
            writer.abort()
        except Exception as abort_exc:
            logger.info("! abort failed too: %r", abort_exc)

    async def run(self) -> None:
        """Flush whenever connections are dirty; runs until cancelled."""
        while True:
            if not self._dirty:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self.flush()
