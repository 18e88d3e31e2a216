"""The read side of a plain TCP WebSocket on asyncio/uvloop: an asyncio Protocol, no task.

Theory of operation
-------------------
After the upgrade (and once the client is in its room) the pump hands a plain
TCP connection on asyncio or uvloop from anyio's stream to a
:class:`TransportReader`: the transport's protocol is swapped, what anyio had
read but not yet returned is fed in first, and the connection's task ends.
From then on the event loop calls :meth:`TransportReader.data_received`, which
feeds the sans-IO :class:`~wschat.protocol.ServerConnection` and answers what
needs no waiting (pings, closes, echoes) at once. An idle connection holds no
task, no coroutine and no read buffer: just this object, the transport and
the peer (anyio's stream, its protocol's read queue and two Events, the task
and its pending receive held about 5 KiB per connection).

A chat message needs the dispatch, which may wait (a Redis hub, the app's
hooks): the reader then runs the events in a task of its own, and until that
task is done reads nothing more (``pause_reading``: the client's bytes wait in
the kernel, as they did while the read loop awaited). So the order in which a
connection's frames are handled, and the back-pressure a slow hub puts on a
flooding client, are those of the read loop the stream path runs.

The end is the read loop's too: the closing handshake done, or end of stream
(the client's FIN or reset, an abort, the close timeout's
:meth:`TransportReader.stop_reading`), the reader's task drains the writer
within the close timeout, leaves the hub, half-closes and waits for the
client's FIN, then aborts the transport (all written by then, or given up)
and tells the listener. Writes never
go through here: the connection's :class:`~.writer.TransportWriter` writes to
the same transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from ..protocol import ConnectionClosed, Event, TextReceived
from .constants import loop_time
from .peer import Peer

logger = logging.getLogger("wschat.server")


class Owner(Protocol):
    """What a reader needs of the connection pump (its policies)."""

    readers: set[TransportReader]
    close_timeout: float

    def on_event_now(self, peer: Peer, event: Event) -> bool: ...
    async def on_text(self, peer: Peer, text: str) -> None: ...
    async def finish(self, peer: Peer) -> bool: ...
    def closing(self, peer: Peer, closed: ConnectionClosed | None, address: str) -> None: ...
    async def leave_hub(self, peer: Peer) -> None: ...


def stream_state(transport: Any) -> tuple[list[bytes], bool] | None:
    """What anyio's stream protocol on ``transport`` read and has not returned yet
    (chunks, end of stream seen); None when its protocol is not anyio's stream protocol
    as known, or the transport is closing: the connection then keeps its stream."""
    protocol = transport.get_protocol()
    queue = getattr(protocol, "read_queue", None)
    if (
        queue is None
        or not hasattr(protocol, "is_at_eof")
        or getattr(protocol, "exception", None) is not None
        or transport.is_closing()
    ):
        return None
    return list(queue), bool(protocol.is_at_eof)


class TransportReader(asyncio.Protocol):
    """Reads one WebSocket from its asyncio/uvloop transport (see the module docs).

    Args:
        owner: The connection pump.
        peer: The connection, already in its room, its writer released.
        transport: The connection's transport (its writer writes to it too).
        address: The client's address, for logs.
        closed: Called once the socket is closed (the listener's count).
    """

    __slots__ = (
        "_address",
        "_backlog",
        "_closed",
        "_dropped",
        "_event",
        "_fin",
        "_owner",
        "_paused",
        "_peer",
        "_state",
        "_task",
        "_transport",
        "_waiter",
    )

    # _state: reading; ending (the task finishes the connection); out of the hub; done.
    READING, ENDING, LEFT, DONE = 0, 1, 2, 3

    def __init__(
        self,
        owner: Owner,
        peer: Peer,
        transport: Any,
        address: str,
        closed: Callable[[], None] | None,
    ) -> None:
        self._owner = owner
        self._peer = peer
        self._transport = transport
        self._address = address
        self._closed = closed
        self._state = self.READING
        # anyio pauses reading only after a receive that had to wait: ask the transport.
        self._paused = not transport.is_reading()
        self._task: asyncio.Task[None] | None = None
        # Bytes (or b"" for end of stream) that arrived while the task ran.
        self._backlog: list[bytes] | None = None
        self._event: ConnectionClosed | None = None
        self._fin = False  # the client's FIN (or the connection's loss) seen
        self._dropped = False  # the transport aborted (once: a failing abort is logged once)
        self._waiter: asyncio.Future[None] | None = None

    def take_over(self, pending: list[bytes], at_eof: bool) -> None:
        """Become the transport's protocol; read ``pending`` (anyio's unread bytes) first."""
        self._owner.readers.add(self)
        self._transport.set_protocol(self)
        for data in pending:
            self.data_received(data)
        if at_eof:
            self.eof_received()
        elif self._state == self.READING and self._task is None:
            self._process()  # frames that came with the handshake
        if self._state == self.READING and self._task is None:
            self._resume()

    # -- the event loop's calls --------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._state != self.READING:
            return  # after the close: the client's last bytes are not read
        if self._task is not None:
            self._defer(data)
            return
        peer = self._peer
        peer.timers.last_seen = loop_time()
        peer.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self._fin = True
        if self._state == self.READING:
            self._end_of_stream()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)  # the client's FIN after ours
        return True  # the transport stays open: the close frame may still be going out

    def connection_lost(self, exc: Exception | None) -> None:
        self._fin = True
        if self._state == self.READING:
            self._end_of_stream()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def pause_writing(self) -> None:
        pass  # the writer watches the transport's buffer itself

    def resume_writing(self) -> None:
        pass

    # -- the pump's calls ------------------------------------------------------

    def stop_reading(self) -> None:
        """Read nothing more: as if the stream ended here (abort, close timeout)."""
        if self._state == self.READING:
            self._pause()
            self._end_of_stream()

    def cancel(self) -> None:
        """The server stops: drop the connection now, whatever it is doing."""
        self._abort_transport()
        if self._task is not None:
            self._task.cancel()
        elif self._state != self.DONE:
            self._end_of_stream()

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task handling this connection's events or its end, if any."""
        return self._task

    # -- reading ---------------------------------------------------------------

    def _pause(self) -> None:
        if not self._paused and not self._transport.is_closing():
            self._paused = True
            self._transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and not self._transport.is_closing():
            self._paused = False
            self._transport.resume_reading()

    def _defer(self, data: bytes) -> None:
        # The task's dispatch is waiting: nothing more is read until it is done.
        if self._backlog is None:
            self._backlog = []
        self._backlog.append(data)
        self._pause()

    def _end_of_stream(self) -> None:
        if self._task is not None:
            self._defer(b"")
            return
        self._peer.conn.receive_eof()
        self._process()

    def _start(self, events: list[Event]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(events))

    def _process(self) -> None:
        """Answer the connection's new events; a chat message starts the task."""
        peer, owner = self._peer, self._owner
        events = peer.conn.events_received()
        for index, event in enumerate(events):
            if isinstance(event, ConnectionClosed):
                self._event = event
            if not owner.on_event_now(peer, event):
                self._start(events[index:])
                return
        peer.flush()
        # (An abort under the flush may have ended the connection already.)
        if (
            self._state == self.READING
            and self._task is None
            and (peer.conn.close_expected() or peer.writer.aborted)
        ):
            self._state = self.ENDING
            self._start([])

    async def _run(self, events: list[Event]) -> None:
        """Handle ``events`` and whatever arrives meanwhile; finish the connection if it ended."""
        try:
            if self._state == self.READING:
                await self._handle(events)
            if self._state == self.READING:
                self._task = None
                self._resume()
                return
            await self._end()
        except asyncio.CancelledError:
            await self._abandon()
            raise
        except Exception:
            logger.exception("! connection from %s failed", self._address)
            await self._abandon()

    async def _handle(self, events: list[Event]) -> None:
        peer, owner, conn = self._peer, self._owner, self._peer.conn
        while True:
            for event in events:
                if isinstance(event, ConnectionClosed):
                    self._event = event
                if not owner.on_event_now(peer, event):
                    assert isinstance(event, TextReceived)
                    await owner.on_text(peer, event.text)
            peer.flush()
            if conn.close_expected() or peer.writer.aborted:
                self._state = self.ENDING
                return
            backlog, self._backlog = self._backlog, None
            if not backlog:
                return
            for data in backlog:
                if data:
                    peer.timers.last_seen = loop_time()
                    conn.receive_data(data)
                else:
                    conn.receive_eof()
            events = conn.events_received()

    # -- the end ---------------------------------------------------------------

    async def _end(self) -> None:
        peer, owner = self._peer, self._owner
        polite = False
        try:
            polite = await owner.finish(peer)
        finally:
            await self._leave()
        if polite:
            await self._half_close(anyio.current_time() + owner.close_timeout)
        self._done()

    async def _leave(self) -> None:
        self._state = self.LEFT
        self._owner.closing(self._peer, self._event, self._address)
        with anyio.CancelScope(shield=True):
            await self._owner.leave_hub(self._peer)
        self._peer.read_no_more()

    async def _abandon(self) -> None:
        """Cancelled or failed mid-way: out of the hub (if not yet), then closed."""
        if self._state == self.DONE:
            return
        self._abort_transport()
        try:
            if self._state < self.LEFT:
                await self._leave()
        finally:
            self._done()

    async def _half_close(self, deadline: float) -> None:
        """Shut our side, then wait (until ``deadline``) for the client's FIN: closing
        with unread input would send RST, which can destroy the close frame in flight."""
        transport = self._transport
        try:
            if transport.is_closing():
                return
            transport.write_eof()
            if self._fin:
                return  # the client has finished already
            self._waiter = asyncio.get_running_loop().create_future()
            self._resume()
        except Exception:
            return  # uvloop raises RuntimeError on a closed transport: the client is gone
        with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
            await self._waiter

    def _abort_transport(self) -> None:
        if self._dropped:
            return
        self._dropped = True
        try:
            self._transport.abort()
        except Exception as exc:
            logger.info("! closing a socket failed: %r", exc)

    def _done(self) -> None:
        if self._state == self.DONE:
            return
        self._state = self.DONE
        self._abort_transport()
        self._owner.readers.discard(self)
        self._task = None
        if self._closed is not None:
            self._closed()
