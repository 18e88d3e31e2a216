"""One task that writes every connection's queued bytes: no task switch per recipient.

A broadcast appends the same frame to many outboxes. Waking one writer task per
connection per message costs a task switch each (tens of microseconds in
total per recipient with anyio's stream machinery). Instead, a connection whose
outbox goes from empty to non-empty marks itself dirty here; the flusher wakes
once, after the current task yields, and hands each dirty connection's bytes,
joined, straight to its transport. Everything a batch of incoming frames
queued goes out in one write per connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from .client import ClientConnection
    from .metrics import Metrics


class Flusher:
    """Writes dirty connections' outboxes in batches.

    Args:
        metrics: Where the bytes written are counted.
    """

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._dirty: list[ClientConnection] = []
        self._wakeup: anyio.Event | None = None

    def mark(self, client: ClientConnection) -> None:
        """Schedule ``client``'s outbox to be written (once per batch)."""
        self._dirty.append(client)
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    def flush(self) -> None:
        """Write every dirty connection's outbox now."""
        dirty, self._dirty = self._dirty, []
        written = 0
        for client in dirty:
            written += client.write_now()
        if written:
            self._metrics.bytes_out.inc(written)

    async def run(self) -> None:
        """Flush whenever connections are dirty; runs until cancelled."""
        while True:
            if not self._dirty:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            self.flush()
