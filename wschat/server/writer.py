"""The write path: one policy, two ways to carry the bytes.

Theory of operation
-------------------
Every WebSocket has exactly one :class:`~.backlog.Writer`, which holds the
policy (the byte limit over the whole backlog, the write timeout as no
progress; see :mod:`.backlog`). Two subclasses carry the bytes.

:class:`TransportWriter` (plain TCP on asyncio or uvloop) hands the backlog
straight to the event loop's transport: at once in the flusher's direct mode,
else once per batch, from the server-wide :class:`~.flusher.Flusher`; no task
switch per recipient either way. :class:`TaskWriter` (TLS streams, trio) runs a
task that sends through the anyio stream in slices of :data:`WRITE_SLICE`
bytes, each a unit of progress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, cast

import anyio
from anyio.abc import ByteStream, SocketAttribute

from .backlog import Writer, reset_on_close
from .constants import DISCONNECTED
from .flusher import Flusher

__all__ = [
    "WRITE_SLICE",
    "TaskWriter",
    "TransportWriter",
    "WriteTransport",
    "Writer",
    "direct_transport",
    "reset_on_close",
    "send_with_timeout",
]

logger = logging.getLogger("wschat.server")

# The task writer's unit of progress: a client is "stalled" only when not even
# this much went to the kernel within the write timeout (16 KiB is one TLS record).
WRITE_SLICE = 16 * 1024


class WriteTransport(Protocol):
    """What :class:`TransportWriter` needs of an asyncio (or uvloop) transport."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str, default: Any = None) -> Any: ...


WRITE_TRANSPORT_METHODS = (
    "write",
    "get_write_buffer_size",
    "is_closing",
    "abort",
    "get_extra_info",
)


class TransportWriter(Writer):
    """Writes straight into an asyncio/uvloop transport: at once, or once per batch.

    A frame put into an empty queue, while the :class:`~.flusher.Flusher` is in
    direct mode and this connection has not been written yet this batch, goes
    to the transport at once (uvloop then tries ``send(2)`` right away): a
    fan-out that cannot be batched costs one pass over the room, and its first
    recipients have the frame before the last one is reached. Anything else
    queues, and the flusher writes it once per batch, joined.

    Args:
        limit: The byte limit.
        transport: The connection's transport.
        flusher: The server's flusher, which calls :meth:`write_now` once per batch.
    """

    __slots__ = ("_base", "_batch", "_flusher", "_sent", "_transport", "dirty")

    def __init__(self, limit: int, transport: WriteTransport, flusher: Flusher) -> None:
        super().__init__(limit)
        self._transport = transport
        self._flusher = flusher
        self._base = 0
        self._sent = 0
        self._batch = -1  # the flusher's batch this connection was last written in at once
        self.dirty = False

    @property
    def transport(self) -> WriteTransport:
        """The transport this writer writes to."""
        return self._transport

    def unsent(self) -> int:
        if self._size:
            # Between the first put of a batch and its flush nothing is written,
            # so the transport's buffer is the one read when the batch began.
            return self._base
        return self._transport.get_write_buffer_size()

    def put(self, data: bytes) -> bool:
        # Writer.put, inlined for the fan-out (per recipient): one buffer-size
        # read per frame, and _admits only near the limit or an oversized item.
        # No counter is incremented per frame written at once (an int object made
        # and freed each time, at C = 5,000 a fifth of this method's cost): the
        # flusher lists the frames instead.
        if self.aborted:
            return True
        size = len(data)
        if not size:
            return True
        limit = self.limit
        if self._size:
            backlog = self._size + self._base
            if (
                limit
                and (backlog + size > limit or self._oversized_end + backlog > self._total)
                and not self._admits(backlog, size)
            ):
                return self._final
            self._chunks.append(data)
            self._size += size
            self._total += size
            return True
        transport = self._transport
        buffered = transport.get_write_buffer_size()
        if buffered:
            if (
                limit
                and (buffered + size > limit or self._oversized_end + buffered > self._total)
                and not self._admits(buffered, size)
            ):
                return self._final
        elif size > limit and limit and not self._admits(0, size):
            # Nothing waits anywhere (so no oversized item either): only an item
            # bigger than the limit needs the rules. The common case costs one compare.
            return self._final
        flusher = self._flusher
        if self.held or not flusher.direct or self._batch == flusher.batch:
            self._base = buffered
            self._chunks.append(data)
            self._size = size
            self._total += size
            if not self.held and not self.dirty:
                self.dirty = True
                flusher.mark(self)
            return True
        self._total += size
        if transport.is_closing():
            return True
        self._batch = flusher.batch
        transport.write(data)
        flusher.written_at_once.append(data)
        if not flusher.open:
            flusher.begin()
        return True

    def _queued(self) -> None:
        self._base = self._transport.get_write_buffer_size()
        if not self.dirty:
            self.dirty = True
            self._flusher.mark(self)

    def write_now(self) -> int:
        """Hand the queue to the transport; the bytes written (the flusher calls this)."""
        self.dirty = False
        flusher = self._flusher
        chunks = self._chunks
        flusher.frames += len(chunks)
        if self._batch != flusher.batch:
            flusher.writers += 1
        if not chunks:
            return 0
        self._chunks = []
        self._size = 0
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if self.aborted or self._transport.is_closing():
            return 0
        self._transport.write(data)
        return len(data)

    def stalled_for(self, now: float) -> float:
        # Handed to the transport: everything ever queued but what is queued here.
        # (Bytes dropped for a closing transport or a slow consumer count as handed
        # on: such a connection is on its way out anyway.)
        # (Writer.stalled_for inlined: the watchdog asks every connection once
        # a second, and nearly all have nothing waiting.)
        size = self._size
        buffered = self._transport.get_write_buffer_size()
        sent = self._total - size - buffered
        if sent != self._sent or self.held or not (size or buffered):
            self._sent = sent
            self._progress_at = now
            return 0.0
        return now - self._progress_at

    def _abort(self) -> None:
        reset_on_close(self._transport.get_extra_info("socket"))
        self._transport.abort()

    async def drain(self, deadline: float) -> bool:
        self.write_now()
        pause = 0.005
        while not self.aborted and self._transport.get_write_buffer_size():
            if self._transport.is_closing() or anyio.current_time() >= deadline:
                return False
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.1)
        return not self.aborted


class TaskWriter(Writer):
    """Sends through the anyio stream from a task of the connection's own (TLS, trio).

    Args:
        limit: The byte limit.
        stream: The connection's stream; :meth:`run` is its only writer.
        count_bytes: Called with the bytes of each send the stream took (a metrics counter).
    """

    __slots__ = ("_count_bytes", "_done", "_in_flight", "_scope", "_stream", "_wakeup", "failed")

    def __init__(
        self, limit: int, stream: ByteStream, count_bytes: Callable[[int], None] | None = None
    ) -> None:
        super().__init__(limit)
        self._stream = stream
        self._count_bytes = count_bytes
        self._in_flight = 0
        self._wakeup = anyio.Event()
        self._done = anyio.Event()
        self._scope = anyio.CancelScope()
        self.failed = False
        """True when a send failed: the connection is gone."""

    def unsent(self) -> int:
        return self._in_flight

    def _queued(self) -> None:
        self._wakeup.set()

    def _abort(self) -> None:
        reset_on_close(self._stream.extra(SocketAttribute.raw_socket, None))
        self._scope.cancel()
        self._wakeup.set()

    async def run(self) -> None:
        """Send whatever is queued until aborted or the stream fails; never raises for I/O."""
        with self._scope:
            try:
                while True:
                    data = self.take()
                    if not data:
                        if self._final and self.backlog() == 0:
                            return  # the close frame is out
                        self._wakeup = anyio.Event()
                        await self._wakeup.wait()
                        continue
                    await self._send(data)
            except DISCONNECTED:
                self.failed = True
                self.abort()
            except Exception as exc:
                # The stream failed in a way it should not: still this client's loss only.
                logger.info("! write failed, dropping the connection: %r", exc)
                self.failed = True
                self.abort()
            finally:
                self._in_flight = 0
                self._done.set()

    async def _send(self, data: bytes) -> None:
        self._in_flight = len(data)
        count = self._count_bytes
        if len(data) <= WRITE_SLICE:
            await self._stream.send(data)
            self._in_flight = 0
            self._progressed()
            if count is not None:
                count(len(data))
            return
        view = memoryview(data)
        for start in range(0, len(data), WRITE_SLICE):
            chunk = bytes(view[start : start + WRITE_SLICE])
            await self._stream.send(chunk)
            self._in_flight -= len(chunk)
            self._progressed()
            if count is not None:
                count(len(chunk))

    async def drain(self, deadline: float) -> bool:
        self._final = True  # nothing but the close frame may follow
        self._wakeup.set()
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
            await self._done.wait()
        return self._done.is_set() and not (self.failed or self.aborted) and not self.backlog()


async def send_with_timeout(stream: ByteStream, data: bytes, timeout: float) -> None:
    """Send ``data`` in slices, each of which must reach the kernel within ``timeout``.

    For the HTTP phase (page, assets, the 101): the same "no progress" rule as
    a WebSocket's writer.

    Raises:
        TimeoutError: A slice made no progress in time.
    """
    view = memoryview(data)
    for start in range(0, len(data), WRITE_SLICE):
        with anyio.fail_after(timeout):
            await stream.send(bytes(view[start : start + WRITE_SLICE]))


def direct_transport(stream: ByteStream) -> WriteTransport | None:
    """The asyncio transport under a plain TCP stream, for direct writes.

    anyio does not expose it publicly; its asyncio SocketStream keeps it as
    ``_transport``. Writing there keeps order with anyio's own writes (it uses the
    same transport) and skips a task switch per write. uvloop's transports do not
    derive from ``asyncio.WriteTransport``, so the check is by behaviour. TLS
    streams and trio get None and use a writer task.
    """
    transport = getattr(stream, "_transport", None)
    if all(hasattr(transport, name) for name in WRITE_TRANSPORT_METHODS):
        return cast(WriteTransport, transport)
    return None
