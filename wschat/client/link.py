"""One connection of the client: TCP, TLS, the handshake, then its reader, writer and keepalive.

Theory of operation
-------------------
:func:`open_link` connects and runs the handshake through the sans-IO
:class:`~wschat.protocol.client.ClientConnection`, bounded by the open
timeout. :meth:`Link.run` then runs the connection until it closes, in one
task group (as the server does per connection, gorilla's readPump/writePump):

- the reader (the calling task) feeds received bytes to the protocol and
  hands its events to the caller's handler, one batch per read;
- the writer is the only task that writes: whatever the protocol queued
  (messages, pings, pongs, the close frame) goes out in one call;
- the keepalive task pings and drops a connection that stays silent.

After a close the writer sends what is left (the close echo) and the link
waits, bounded by the close timeout, for the server to close TCP first, as
RFC 6455 7.1.1 asks.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ByteStream

from ..protocol import ConnectionClosed, HandshakeAccepted, HandshakeRejected
from ..protocol.client import ClientConnection
from ..protocol.events import Event as ProtocolEvent
from .errors import ConnectError, HandshakeRejectedError
from .url import ServerAddress

logger = logging.getLogger("wschat.client")

RECEIVE_SIZE = 65536

TRANSPORT_ERRORS = (
    OSError,
    ssl.SSLError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)
"""What a broken or closed TCP/TLS stream raises."""


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """How every connection of one client is opened and kept.

    Attributes:
        address: The server.
        ssl: TLS context for ``wss://`` (None for ``ws://``).
        origin: ``Origin`` header, or None.
        headers: More handshake headers.
        max_message_size: Cap on one incoming message (1009 over it).
        compression: Offer permessage-deflate.
        open_timeout: Seconds for TCP, TLS and the handshake.
        close_timeout: Seconds for the server's half of the close.
        ping_interval: Seconds between pings (None: none).
        ping_timeout: Seconds without an answer before the link is dropped.
    """

    address: ServerAddress
    ssl: ssl.SSLContext | None
    origin: str | None
    headers: tuple[tuple[str, str], ...]
    max_message_size: int
    compression: bool
    open_timeout: float
    close_timeout: float
    ping_interval: float | None
    ping_timeout: float


Handler = Callable[["Link", list[ProtocolEvent]], Awaitable[None]]
"""Called by :meth:`Link.run` with each batch of protocol events (may block)."""


async def open_link(settings: LinkSettings, url_room: str, token: str | None) -> Link:
    """Connect and complete the WebSocket handshake for ``/ws?room={url_room}``.

    Raises:
        ConnectError: No TCP/TLS connection, a timeout, or a broken answer.
        HandshakeRejectedError: The server answered with an HTTP error.
    """
    address = settings.address
    try:
        with anyio.fail_after(settings.open_timeout):
            if settings.ssl is not None:
                stream: ByteStream = await anyio.connect_tcp(
                    address.host,
                    address.port,
                    ssl_context=settings.ssl,
                    tls_standard_compatible=False,
                )
            else:
                stream = await anyio.connect_tcp(address.host, address.port)
            try:
                return await _handshake(stream, settings, url_room, token)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(stream)
                raise
    except TimeoutError:
        raise ConnectError(address.url, f"timed out after {settings.open_timeout:g} s") from None
    except TRANSPORT_ERRORS as exc:
        raise ConnectError(address.url, describe(exc)) from None


async def _handshake(
    stream: ByteStream, settings: LinkSettings, url_room: str, token: str | None
) -> Link:
    # The token goes in a header, not the URL: URLs end up in proxies' access logs.
    credentials = (("Authorization", f"Bearer {token}"),) if token is not None else ()
    conn = ClientConnection(
        host=settings.address.host_header,
        target=settings.address.target(url_room),
        origin=settings.origin,
        extra_headers=(*settings.headers, *credentials),
        max_message_size=settings.max_message_size,
        compression=settings.compression,
    )
    await stream.send(b"".join(conn.data_to_send()))
    while True:
        conn.receive_data(await receive(stream))
        events = conn.events_received()
        for index, event in enumerate(events):
            if isinstance(event, HandshakeAccepted):
                return Link(stream, conn, settings, url_room, events[index + 1 :])
            if isinstance(event, HandshakeRejected):
                if event.status in (0, 101):  # not an HTTP refusal: a broken answer
                    raise ConnectError(settings.address.url, event.reason)
                body = event.body.decode("utf-8", errors="replace")
                raise HandshakeRejectedError(event.status, body, event.headers)


class Link:
    """An open WebSocket connection to the server (see the module docstring).

    Args:
        stream: The connected TCP (or TLS) stream.
        conn: Its protocol state, past the handshake.
        settings: Timeouts and keepalive.
        url_room: The room its URL named.
        early_events: Protocol events that came with the handshake answer.
    """

    def __init__(
        self,
        stream: ByteStream,
        conn: ClientConnection,
        settings: LinkSettings,
        url_room: str,
        early_events: list[ProtocolEvent],
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.settings = settings
        self.url_room = url_room
        self.closed: tuple[int, str] | None = None
        """(code, reason) once the connection has ended (or is ending)."""
        self._early_events = early_events
        self._wake = anyio.Event()
        self._activity: anyio.Event | None = None
        self._receiving_since: float | None = None
        self._scope: anyio.CancelScope | None = None
        self._finished = False
        self._flushed = anyio.Event()

    def send_text(self, text: str) -> None:
        """Queue a text message; the writer sends it."""
        self.conn.send_text(text)
        self._wake.set()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake; :meth:`run` returns when it is done."""
        self.conn.send_close(code, reason)
        self._wake.set()

    def end(self, code: int, reason: str) -> None:
        """Record why the connection ends (kept if a reason is known already)."""
        if self.closed is None:
            self.closed = (code, reason)

    def abort(self, code: int, reason: str) -> None:
        """Drop the connection now (keepalive timeout, failed write)."""
        self.end(code, reason)
        if self._scope is not None:
            self._scope.cancel()

    async def run(
        self, handle: Handler, *tasks: Callable[[Link], Coroutine[Any, Any, None]]
    ) -> tuple[int, str]:
        """Run until the connection closes; returns its close code and reason.

        Args:
            handle: Called with each batch of protocol events.
            tasks: More tasks that live as long as the connection (e.g. a token
                refresh); each gets the link.
        """
        try:
            async with anyio.create_task_group() as group:
                self._scope = group.cancel_scope
                group.start_soon(self._write_loop)
                if self.settings.ping_interval is not None:
                    group.start_soon(self._keepalive, self.settings.ping_interval)
                for task in tasks:
                    group.start_soon(task, self)
                await self._read_loop(handle)
                # Send what is queued (the close echo), then let the server close TCP.
                self._finished = True
                self._wake.set()
                with anyio.move_on_after(self.settings.close_timeout):
                    await self._flushed.wait()
                    while await receive(self.stream):
                        pass
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self.stream)
        return self.closed or (1006, "connection lost")

    async def _read_loop(self, handle: Handler) -> None:
        events = self._early_events
        while True:
            for event in events:
                if isinstance(event, ConnectionClosed):
                    self.end(event.code, event.reason)
            await handle(self, events)
            self._wake.set()
            if self.conn.close_expected():
                return
            self._receiving_since = anyio.current_time()
            data = await receive(self.stream)
            self._receiving_since = None
            if self._activity is not None:
                self._activity.set()
            self.conn.receive_data(data)
            events = self.conn.events_received()

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wake.wait()
                # No await between the wake-up and taking the data: nothing is missed.
                self._wake = anyio.Event()
                data = b"".join(self.conn.data_to_send())
                if data:
                    await self.stream.send(data)
                if self._finished:
                    self._flushed.set()
                    return
        except TRANSPORT_ERRORS as exc:
            self.abort(1006, f"connection lost: {describe(exc)}")

    async def _keepalive(self, interval: float) -> None:
        count = 0
        while True:
            await anyio.sleep(interval)
            count += 1
            activity = self._activity = anyio.Event()
            sent_at = anyio.current_time()
            self.conn.send_ping(count.to_bytes(4, "big"))
            self._wake.set()
            with anyio.move_on_after(self.settings.ping_timeout):
                await activity.wait()
            waiting = self._receiving_since
            # Silent means: we were reading the whole time and nothing came. A reader
            # paused by a user who does not iterate proves nothing about the server.
            if not activity.is_set() and waiting is not None and waiting <= sent_at:
                logger.info("%% keepalive timeout: no answer in %.0fs", self.settings.ping_timeout)
                self.abort(1011, "keepalive timeout")
                return


async def receive(stream: ByteStream) -> bytes:
    """The next bytes from ``stream``; ``b""`` once it has ended or broken."""
    try:
        return await stream.receive(RECEIVE_SIZE)
    except TRANSPORT_ERRORS:
        return b""


def describe(exc: BaseException) -> str:
    """A short, lower-case account of a connection error."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    # anyio.connect_tcp raises "All connection attempts failed" from the last one.
    while isinstance(exc, OSError) and exc.errno is None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if isinstance(exc, OSError) and exc.errno is not None:
        return os.strerror(exc.errno).lower()  # asyncio words it "Connect call failed (...)"
    return str(exc) or type(exc).__name__
