"""One accepted WebSocket connection as the server and the Hub see it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import anyio

from ..chat import ChatSession, error_event
from ..hub import PreparedMessage
from ..protocol import ServerConnection, State
from .outbox import Outbox
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .flusher import Flusher
    from .metrics import Metrics


class WriteTransport(Protocol):
    """What the flusher needs of an asyncio (or uvloop) transport."""

    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...
    def abort(self) -> None: ...


WRITE_TRANSPORT_METHODS = ("write", "get_write_buffer_size", "is_closing", "abort")


class ClientConnection:
    """A WebSocket client: protocol state, outbox, chat session, timers.

    Implements the Hub's ``Member`` protocol. ``send`` never blocks: it appends
    to the outbox and, on plain TCP under asyncio, marks the connection dirty
    for the server's :class:`~.flusher.Flusher`, which writes it straight into
    the transport. Over the byte limit (outbox plus what the transport could
    not yet hand to the kernel) the client is closed with 1013 (slow consumer)
    and the room goes on without it.

    Args:
        transport: The asyncio transport to write to directly, or None to use a
            writer task (TLS streams, trio).
        flusher: The server's flusher (used with ``transport``).
    """

    __slots__ = (
        "_metrics",
        "blocked_since",
        "bucket",
        "close_timeout",
        "closing_deadline",
        "conn",
        "conn_id",
        "deflate",
        "dirty",
        "flusher",
        "last_ping",
        "last_seen",
        "open",
        "outbox",
        "path",
        "peer",
        "read_scope",
        "session",
        "strikes",
        "transport",
    )

    def __init__(
        self,
        conn_id: str,
        peer: str,
        path: str,
        conn: ServerConnection,
        outbox: Outbox,
        session: ChatSession | None,
        bucket: TokenBucket,
        strikes: TokenBucket,
        metrics: Metrics,
        close_timeout: float,
        transport: WriteTransport | None = None,
        flusher: Flusher | None = None,
    ) -> None:
        self.conn_id = conn_id
        self.peer = peer
        self.path = path
        self.conn = conn
        self.outbox = outbox
        self.session = session
        self.bucket = bucket
        self.strikes = strikes
        self._metrics = metrics
        self.close_timeout = close_timeout
        self.transport = transport if flusher is not None else None
        self.flusher = flusher
        self.deflate = conn.compressed
        self.open = True
        self.dirty = False
        self.last_seen = self.last_ping = anyio.current_time()
        self.blocked_since: float | None = None
        self.closing_deadline: float | None = None
        self.read_scope: anyio.CancelScope | None = None

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
        """Queue a broadcast; close as a slow consumer when the outbox is full."""
        if not self.open:
            return
        if self.deflate:
            # permessage-deflate keeps per-connection compressor state: encode here.
            self.conn.send_text(message.text)
            queued = self.outbox.put(b"".join(self.conn.data_to_send()))
        else:
            queued = self.outbox.put(message.frame)
        if not queued:
            self._slow_consumer()
        elif not self.dirty and self.transport is not None:
            self.dirty = True
            self.flusher.mark(self)  # type: ignore[union-attr]

    def missed(self, room: str) -> None:
        """Close with 1012 so the client reconnects and recovers ``room`` from history."""
        self.close(1012, f"missed messages of {room}: reconnect to recover")

    # -- server side -----------------------------------------------------------

    def send_error(self, code: str, reason: str, message_id: str | None = None) -> None:
        """Reply ``{"type": "error", ...}`` to this client only."""
        self.send_event(error_event(code, reason, message_id))

    def send_event(self, payload: bytes) -> None:
        """Send one encoded server event to this client only (an error, an ack)."""
        if self.open:
            self._put_control([PreparedMessage(payload).frame])

    def flush(self) -> None:
        """Move the protocol's pending output (pong, close, echo) to the outbox."""
        data = self.conn.data_to_send()
        if data:
            self._put_control(data)

    def _put_control(self, chunks: list[bytes]) -> None:
        self.outbox.put_control(chunks)
        if not self.dirty and self.transport is not None:
            self.dirty = True
            self.flusher.mark(self)  # type: ignore[union-attr]

    def write_now(self) -> int:
        """Hand the outbox to the transport (flusher path); return the bytes written."""
        self.dirty = False
        transport = self.transport
        data = self.outbox.take()
        if not data or transport is None or transport.is_closing():
            return 0
        # What the kernel has not taken from earlier writes is this client's backlog.
        backlog = transport.get_write_buffer_size()
        transport.write(data)
        if self.open and backlog > self.outbox.limit > 0:
            self._slow_consumer()
        return len(data)

    def _slow_consumer(self) -> None:
        self._metrics.slow_consumer_closes.inc()
        self.outbox.discard()  # it will recover what it missed from history
        self.close(1013, f"slow consumer: more than {self.outbox.limit} bytes queued")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the peer has ``close_timeout`` to answer."""
        if not self.open:
            return
        self.open = False
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason)
            self.flush()
        self.closing_deadline = anyio.current_time() + self.close_timeout
        if self.read_scope is not None:
            self.read_scope.deadline = self.closing_deadline

    def abort(self) -> None:
        """Drop TCP now (a write blocked past the write timeout)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()
        if self.read_scope is not None:
            self.read_scope.cancel()
