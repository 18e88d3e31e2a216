"""The listener: accept loops that survive running out of descriptors, under a socket cap.

Every accepted socket, HTTP phase included, counts against ``cap``. At the
cap the loops stop accepting until a socket closes: new clients wait in the
kernel's accept queue instead of the process running out of file descriptors
(Go's ``netutil.LimitListener``). If ``accept`` fails anyway for lack of
descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM: other processes, the
hub's own sockets) the loop backs off, 5 ms doubling to 1 s, and keeps
serving, as Go's ``net/http`` does; errors that concern only the connection
being accepted (ECONNABORTED, EPROTO) are skipped.

On asyncio (and uvloop) each connection runs in a bare asyncio task, not one
of an anyio task group: anyio gives every task it starts a handle with an
Event and a CancelScope of its own (about 2.5 KiB with its task state), which
an idle connection does not need. The listener cancels those tasks itself when
it stops serving, and waits for them. On trio they run in ``group``. A
connection whose task hands it over to an asyncio Protocol (the pump's
:class:`~.reader.TransportReader`) tells the listener through ``closed.detach()``:
the task is forgotten, the socket counted until ``closed()``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketListener, TaskGroup

logger = logging.getLogger("wschat.server")

EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ABORTED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.ECONNRESET})
BACKOFF_MIN = 0.005
BACKOFF_MAX = 1.0


class _Slot:
    """The ``closed`` callback every connection of a listener gets (see the module docs)."""

    __slots__ = ("_listener",)

    def __init__(self, listener: Listener) -> None:
        self._listener = listener

    def __call__(self) -> None:
        self._listener._closed()

    def detach(self) -> None:
        self._listener._detached()


class Listener:
    """Accepts connections on every socket of a listener, at most ``cap`` open at once.

    Args:
        listeners: The bound listening sockets.
        handle: Serves one accepted socket to its end (must not raise), then calls
            the callback it is given: the socket is closed.
        cap: Most sockets open at once.
    """

    def __init__(
        self,
        listeners: list[SocketListener],
        handle: Callable[[ByteStream, Callable[[], None]], Coroutine[Any, Any, None]],
        cap: int,
    ) -> None:
        self._listeners = listeners
        self._handle = handle
        self.cap = cap
        self.open_sockets = 0
        """Accepted sockets not yet closed."""
        self.accept_failures = 0
        self._slot_freed: anyio.Event | None = None
        self._paused = False  # logged once per episode at the cap
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot = _Slot(self)

    async def serve(self, group: TaskGroup) -> None:
        """Accept on every listening socket, serving connections in ``group`` (on trio)
        or in tasks of the listener's own (asyncio); until cancelled, then cancel those."""
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None  # trio
        try:
            async with anyio.create_task_group() as loops:
                for listener in self._listeners:
                    loops.start_soon(self._accept_loop, listener, group)
        finally:
            with anyio.CancelScope(shield=True):
                for listener in self._listeners:
                    await listener.aclose()
                await self._cancel_tasks()

    def _spawn(self, group: TaskGroup, stream: ByteStream) -> None:
        # The handler itself is the task (no wrapper coroutine kept per connection).
        if self._loop is None:
            group.start_soon(self._handle, stream, self._slot)
        else:
            # No done callback either: the handler's ``closed`` call forgets the task.
            self._tasks.add(self._loop.create_task(self._handle(stream, self._slot)))

    async def _cancel_tasks(self) -> None:
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self._tasks.difference_update(tasks)  # also those cancelled before they ran

    async def _accept_loop(self, listener: SocketListener, group: TaskGroup) -> None:
        backoff = 0.0
        while True:
            while self.open_sockets >= self.cap:
                if not self._paused:
                    self._paused = True
                    logger.warning("! %d sockets open (the cap): accepting paused", self.cap)
                if self._slot_freed is None:
                    self._slot_freed = anyio.Event()
                await self._slot_freed.wait()
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in ABORTED:
                    continue
                if exc.errno not in EXHAUSTED:
                    raise
                self.accept_failures += 1
                if not backoff:
                    logger.warning("! accept failed (%s): backing off", exc.strerror or exc)
                backoff = min(backoff * 2 or BACKOFF_MIN, BACKOFF_MAX)
                await anyio.sleep(backoff)
                continue
            if backoff:
                logger.info("= accepting again")
                backoff = 0.0
            self.open_sockets += 1
            self._spawn(group, stream)

    def _detached(self) -> None:
        if self._loop is not None:
            self._tasks.discard(asyncio.current_task())

    def _closed(self) -> None:
        if self._loop is not None:
            self._tasks.discard(asyncio.current_task())
        self.open_sockets -= 1
        if self._paused and self.open_sockets < self.cap * 0.9:
            self._paused = False
            logger.info("= %d sockets open: below the cap again", self.open_sockets)
        if self._slot_freed is not None:
            self._slot_freed.set()
            self._slot_freed = None
