"""One accepted WebSocket connection as the server and the Hub see it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ..chat import ChatSession, error_event
from ..hub import PreparedMessage
from ..protocol import ServerConnection, State
from .outbox import Outbox
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from .metrics import Metrics


class ClientConnection:
    """A WebSocket client: protocol state, outbox, chat session, timers.

    Implements the Hub's ``Member`` protocol. ``send`` never blocks: over the
    outbox limit the client is closed with 1013 (slow consumer) and the room
    goes on without it.
    """

    __slots__ = (
        "_metrics",
        "bucket",
        "close_timeout",
        "closing_deadline",
        "conn",
        "conn_id",
        "deflate",
        "last_seen",
        "open",
        "outbox",
        "path",
        "peer",
        "read_scope",
        "session",
        "strikes",
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
        self.deflate = conn.compressed
        self.open = True
        self.last_seen = anyio.current_time()
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
            if self.outbox.put(b"".join(self.conn.data_to_send())):
                return
        elif self.outbox.put(message.frame):
            return
        self._metrics.slow_consumer_closes.inc()
        self.outbox.discard()  # it will recover what it missed from history
        self.close(1013, f"slow consumer: more than {self.outbox.limit} bytes queued")

    # -- server side -----------------------------------------------------------

    def send_error(self, code: str, reason: str) -> None:
        """Reply ``{"type": "error", ...}`` to this client only."""
        if self.open:
            self.outbox.put_control([PreparedMessage(error_event(code, reason)).frame])

    def flush(self) -> None:
        """Move the protocol's pending output (pong, close, echo) to the outbox."""
        data = self.conn.data_to_send()
        if data:
            self.outbox.put_control(data)

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
