"""The queue between the client's reader and the user's ``async for``.

Putting never blocks and never loses an event, even when the task that puts
is cancelled (a dropped connection): the reader puts a whole batch
synchronously, then waits for room before reading more. That wait is the
backpressure: a user who does not iterate pauses reading, and the server's
slow-consumer rule (close 1013, recover from history) takes over. Except
while a call waits for an answer (``say``, ``join``): the answer must be
read, so the queue may grow beyond its bound meanwhile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable

import anyio

from .events import Event


class Inbox:
    """A queue of events with a soft bound and an end.

    Args:
        max_size: Above this many events, :meth:`wait_for_room` waits.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self.max_size = max_size
        self._items: deque[Event] = deque()
        self._changed = anyio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, events: Iterable[Event]) -> None:
        """Append ``events`` (ignored once closed)."""
        if self._closed:
            return
        before = len(self._items)
        self._items.extend(events)
        if len(self._items) != before:
            self._notify()

    async def wait_for_room(self, unless: Callable[[], bool]) -> None:
        """Wait while the inbox holds ``max_size`` events or more and ``unless()`` is false.

        Call :meth:`wake` when what ``unless`` says may have changed.
        """
        while len(self._items) >= self.max_size and not self._closed and not unless():
            await self._changed.wait()

    def wake(self) -> None:
        """Make :meth:`wait_for_room` look again."""
        self._notify()

    async def get(self) -> Event:
        """The oldest event; waits for one.

        Raises:
            anyio.EndOfStream: The inbox is closed and empty.
        """
        while not self._items:
            if self._closed:
                raise anyio.EndOfStream
            await self._changed.wait()
        item = self._items.popleft()
        self._notify()
        return item

    def close(self) -> None:
        """No more events: :meth:`get` ends once the rest are taken."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        # Waiters hold the old event; each change wakes them and starts a new one.
        self._changed.set()
        self._changed = anyio.Event()
