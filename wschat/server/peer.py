"""One accepted WebSocket as the Hub and the server see it."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections import deque
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING, Protocol

from anyio.abc import ByteStream, SocketAttribute

from ..app import AppSession
from ..chat import ChatSession
from ..hub import PreparedMessage
from ..protocol import ServerConnection, State, encode_text_frame
from .constants import loop_time
from .metrics import Metrics
from .writer import Writer

if TYPE_CHECKING:
    from .dispatch import SenderLimits
    from .watchdog import Timers

logger = logging.getLogger("wschat.server")


class Closings:
    """The connections in their closing handshake, the earliest deadline first.

    :meth:`Peer.close` gives the client ``timeout`` seconds to answer; the
    watchdog (:meth:`expire`) stops reading those that have not. One queue per
    server instead of a timer (a cancel scope) per connection, or around every
    read: every deadline is "now + the same timeout", so the order in which
    connections start closing is the order of their deadlines.

    Args:
        timeout: Seconds a client has to finish a closing handshake.
    """

    __slots__ = ("_queue", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._queue: deque[tuple[float, Peer]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, peer: Peer) -> float:
        """Start ``peer``'s close timeout; its deadline."""
        deadline = loop_time() + self.timeout
        self._queue.append((deadline, peer))
        return deadline

    def expired(self, now: float) -> Iterator[Peer]:
        """Take the connections whose deadline passed by ``now``."""
        queue = self._queue
        while queue and queue[0][0] <= now:
            yield queue.popleft()[1]

    def expire(self, now: float, live: Collection[Peer]) -> None:
        """Stop reading the connections still in ``live`` whose close timeout passed."""
        for peer in self.expired(now):
            if peer in live and not peer.writer.aborted:
                logger.info("! conn %s: close timeout: no close frame back", peer.conn_id)
                peer.stop_reading()


def shutdown_reading(stream: ByteStream) -> None:
    """Shut down the read side of ``stream``'s socket: a pending receive sees end of stream.

    Works under any event loop and under TLS, since it acts on the kernel's
    socket, not on the stream: asyncio, uvloop and trio all see the socket
    readable and read 0 bytes. Nothing is sent to the client. A socket that
    is closed already is left alone.
    """
    sock = stream.extra(SocketAttribute.raw_socket, None)
    if sock is None:
        return
    with contextlib.suppress(OSError, ValueError):
        fd = sock.fileno()
        if fd < 0:
            return
        # uvloop's pseudo-socket has no shutdown(): act through a borrowed socket object.
        alias = socket.socket(fileno=fd)
        try:
            alias.shutdown(socket.SHUT_RD)
        finally:
            alias.detach()


class Reader(Protocol):
    """What reads a connection that is not read through its stream (:mod:`.reader`)."""

    def stop_reading(self) -> None: ...


class Peer:
    """A WebSocket client: protocol state and chat session, beside what each part of the
    server keeps for it: its writer (:mod:`.writer`), its rate limits (the chat
    dispatch's :class:`~.dispatch.SenderLimits`), its clocks (the watchdog's
    :class:`~.watchdog.Timers`).

    Implements the Hub's ``Member`` protocol. Nothing here blocks or raises
    into its caller: :meth:`send` puts into the :class:`~.writer.Writer`, and a
    client whose backlog would pass the byte limit is closed with 1013 (slow
    consumer) while the room goes on without it.

    Args:
        conn_id: Unique across nodes.
        address: The client's address, for logs.
        path: The WebSocket path (``/ws`` or ``/echo``).
        conn: The sans-IO connection, already upgraded.
        stream: The connection's stream (read by the pump; here only to stop reading),
            until :meth:`read_by` gives the connection to a reader.
        writer: Carries this client's bytes.
        session: Chat state (None on ``/echo``).
        limits: Its own rate limits (:meth:`~.dispatch.ChatDispatch.limits_for`).
        timers: Its keepalive clocks and close deadline.
        metrics: The server's metrics.
        closings: Where :meth:`close` starts the close timeout.
    """

    __slots__ = (
        "_closings",
        "_metrics",
        "_reader",
        "_stream",
        "address",
        "app_session",
        "close_code",
        "close_reason",
        "conn",
        "conn_id",
        "deflate",
        "limits",
        "open",
        "path",
        "session",
        "timers",
        "writer",
    )

    def __init__(
        self,
        conn_id: str,
        address: str,
        path: str,
        conn: ServerConnection,
        stream: ByteStream,
        writer: Writer,
        session: ChatSession | None,
        limits: SenderLimits,
        timers: Timers,
        metrics: Metrics,
        closings: Closings,
    ) -> None:
        self.conn_id = conn_id
        self.app_session: AppSession | None = None
        """The app's view of this chat connection (None on ``/echo``)."""
        self.address = address
        self.path = path
        self.conn = conn
        self._stream: ByteStream | None = stream
        self._reader: Reader | None = None
        self.writer = writer
        self.session = session
        self.limits = limits
        self.timers = timers
        self._metrics = metrics
        self._closings = closings
        self.deflate = conn.deflater
        """The permessage-deflate compressor this client shares, or None."""
        self.open = True
        self.close_code: int | None = None
        """The close code this server sent, if it started the close."""
        self.close_reason = ""
        writer.on_abort = self.stop_reading

    # -- Member protocol -------------------------------------------------------

    @property
    def username(self) -> str | None:
        """The username bound to this connection, if any."""
        return self.session.username if self.session is not None else None

    @property
    def legacy(self) -> bool:
        """True while the client speaks only the seed's format."""
        return self.session.legacy if self.session is not None else True

    def send(self, message: PreparedMessage) -> None:
        """Queue a broadcast; close as a slow consumer when the backlog is full."""
        if not self.open:
            return
        deflater = self.deflate
        # Shared with every member of the same setting: at most a dict lookup here.
        frame = message.frame if deflater is None else message.frame_for(deflater)
        try:
            if self.writer.put(frame):
                return
            self._slow_consumer()
        except Exception as exc:
            # The transport failed under us: this client only, never the fan-out.
            self.abort(f"send failed: {exc!r}")

    def missed(self, room: str) -> None:
        """Close with 1012 so the client reconnects and recovers ``room`` from history."""
        self.close(1012, f"missed messages of {room}: reconnect to recover")

    # -- server side -----------------------------------------------------------

    def send_event(self, payload: bytes) -> None:
        """Send one encoded server event to this client only (an error, an ack)."""
        if not self.open:
            return
        try:
            if not self.writer.put(encode_text_frame(payload)):
                self._slow_consumer()
        except Exception as exc:
            self.abort(f"send failed: {exc!r}")

    def flush(self) -> None:
        """Move the protocol's pending output (pong, close, echo) into the writer."""
        data = self.conn.data_to_send()
        if not data:
            return
        joined = data[0] if len(data) == 1 else b"".join(data)
        try:
            if self.conn.state in (State.CLOSING, State.CLOSED):
                self.writer.put_final(joined)  # the close frame (and what precedes it)
            elif not self.writer.put(joined):
                self._slow_consumer()
        except Exception as exc:
            self.abort(f"write failed: {exc!r}")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the client has the close timeout to answer.

        Never raises (the Hub calls it for whole rooms, the drain for everyone):
        a transport that fails under it aborts this connection only.
        """
        if not self.open:
            return
        self.open = False
        self.close_code, self.close_reason = code, reason
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason)
            self.flush()
        self.timers.closing_deadline = self._closings.add(self)

    def abort(self, why: str) -> None:
        """Drop TCP now (a stalled or failed write); the read loop ends too."""
        if self.writer.aborted:
            return
        logger.info("! conn %s %s", self.conn_id, why)
        self.open = False
        try:
            self.writer.abort()
        except Exception as exc:
            logger.info("! conn %s abort failed: %r", self.conn_id, exc)
            self.stop_reading()

    def _slow_consumer(self) -> None:
        self._metrics.slow_consumer_closes.inc()
        self.writer.discard()  # it will recover what it missed from history
        self.close(1013, f"slow consumer: more than {self.writer.limit} bytes queued")

    def read_by(self, reader: Reader) -> None:
        """From now on ``reader`` reads this connection; its stream is not kept."""
        self._reader, self._stream = reader, None

    def read_no_more(self) -> None:
        """The connection's reading is over: drop what refers back here (the writer's
        abort hook, the reader), so the connection is freed by reference counting."""
        self.writer.on_abort = None
        self._reader = None

    def stop_reading(self) -> None:
        """End the read loop (abort, close timeout): its pending receive sees end of stream."""
        self.open = False
        if self._reader is not None:
            self._reader.stop_reading()
        elif self._stream is not None:
            shutdown_reading(self._stream)
