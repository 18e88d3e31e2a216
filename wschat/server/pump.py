"""The connection pump: one TCP connection from its first byte to its last.

Theory of operation
-------------------
:meth:`ConnectionPump.handle` runs once per accepted socket and is the
connection's failure boundary: whatever happens inside (a transport that
raises, a protocol or hub bug, a reset) is caught there, logged once, and
costs only this connection. It never raises, except for cancellation.

1. TLS and HTTP (:class:`~.http_phase.HttpPhase`): the TLS handshake, plain
   requests, the upgrade decision.
2. WebSocket: a :class:`~.peer.Peer` with its :class:`~.writer.Writer` (a
   direct transport writer for plain TCP on asyncio/uvloop, else a writer
   task), the read loop (chat text goes to :class:`~.dispatch.ChatDispatch`),
   then the end of the closing handshake: drain the writer (so the close frame
   arrives), half-close, wait for the client's FIN, all within the close
   timeout. On asyncio/uvloop a plain TCP connection leaves its task once in
   its room: a :class:`~.reader.TransportReader` reads it from then on, the
   same way, with no task while idle (:mod:`.reader`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import anyio
from anyio.abc import ByteStream

from ..app import App
from ..chat import ChatSession
from ..hub import BackendUnavailable, Hub
from ..protocol import (
    BinaryReceived,
    ConnectionClosed,
    Event,
    HostPolicy,
    OriginPolicy,
    ServerConnection,
    TextReceived,
)
from .config import ServerConfig
from .constants import CHAT_PATH, DISCONNECTED, RECEIVE_SIZE
from .dispatch import ChatDispatch
from .flusher import Flusher
from .http_phase import HttpPhase, Upgrade, url_room
from .metrics import Metrics
from .peer import Closings, Peer
from .reader import TransportReader, stream_state
from .routes import Routes
from .streams import close_quietly, half_close, peer_address
from .watchdog import Timers
from .writer import TaskWriter, TransportWriter, Writer, direct_transport

logger = logging.getLogger("wschat.server")


@runtime_checkable
class SocketSlot(Protocol):
    """The listener's ``closed`` callback, which also hears when a task stops serving
    a socket that stays open (a :class:`~.reader.TransportReader` took it over)."""

    def __call__(self) -> None: ...
    def detach(self) -> None: ...


class ConnectionPump:
    """Serves accepted sockets: HTTP, the upgrade, the WebSocket, the close.

    Args:
        config: The server settings.
        app: The application (hooks, identities).
        hub: This node's Hub.
        metrics: The server's metrics.
        routes: Answers plain HTTP requests.
        flusher: Writes direct-transport writers' batches.
        node_id: Prefix of connection ids (unique across nodes).
        draining: Tells whether the server is shutting down.
    """

    def __init__(
        self,
        config: ServerConfig,
        app: App,
        hub: Hub,
        metrics: Metrics,
        routes: Routes,
        flusher: Flusher,
        node_id: str,
        draining: Callable[[], bool],
    ) -> None:
        self.config = config
        self.app = app
        self.hub = hub
        self.metrics = metrics
        self.flusher = flusher
        self.node_id = node_id
        self.direct_writes = False
        """Whether plain TCP streams may be written through their asyncio transport
        (checked once at start-up)."""
        self.transport_readers = True
        """Whether such connections are read by a :class:`TransportReader` once in
        their room (else by the read loop, as TLS and trio are)."""
        self.readers: set[TransportReader] = set()
        """The connections :class:`TransportReader` serves."""
        self.close_timeout = config.close_timeout
        self.peers: set[Peer] = set()
        """The open WebSockets."""
        self.closings = Closings(config.close_timeout)
        """The close timeouts running (the watchdog enforces them)."""
        self.http = HttpPhase(config, app, metrics, routes, lambda: len(self.peers), draining)
        self.dispatch = ChatDispatch(app, hub, config, metrics)
        self._draining = draining
        self._ids = itertools.count(1)
        self._origins = OriginPolicy(config.allowed_origins)
        self._hosts = HostPolicy.for_bind(config.host, config.allowed_hosts)

    # -- the boundary ----------------------------------------------------------

    async def handle(self, stream: ByteStream, closed: Callable[[], None] | None = None) -> None:
        """Serve one accepted socket to its end, then call ``closed``.

        Never raises (but for cancellation); ``closed`` is called either way,
        once the socket is closed: by the :class:`~.reader.TransportReader`
        when one took the connection over (then ``closed.detach()``, if it is
        a :class:`SocketSlot`, is called as this task ends).
        """
        handed_over = False
        address, peer_ip = peer_address(stream)
        try:
            secured = await self.http.start_tls(stream, address)
            if secured is None:
                return
            stream = secured
            conn = ServerConnection(
                self.http.websocket_paths,
                self._origins,
                self.config.max_request_head,
                host_policy=self._hosts,
            )
            upgrade = await self.http.serve(stream, conn, address, peer_ip)
            if upgrade is not None:
                websocket = self._serve_websocket(stream, conn, upgrade, address, closed)
                del upgrade  # its request's headers are not kept for the connection's life
                handed_over = await websocket
        except DISCONNECTED:
            pass
        except Exception:
            logger.exception("! connection from %s failed", address)
        finally:
            if not handed_over:
                try:
                    with anyio.CancelScope(shield=True):
                        await close_quietly(stream)
                finally:
                    if closed is not None:
                        closed()

    # -- WebSocket -------------------------------------------------------------

    async def _serve_websocket(
        self,
        stream: ByteStream,
        conn: ServerConnection,
        upgrade: Upgrade,
        address: str,
        closed: Callable[[], None] | None,
    ) -> bool:
        """Serve the WebSocket to its end, or until a :class:`~.reader.TransportReader`
        took it over (True: the socket is its to close)."""
        # Set up in a plain call: its locals are not kept in this coroutine's
        # frame for the connection's whole life.
        peer, room = self._open_peer(stream, conn, upgrade, address)
        del upgrade
        writer = peer.writer
        self.peers.add(peer)
        self.metrics.connections_open.inc()
        logger.info(
            "= conn %s %s open path=%s room=%s deflate=%s",
            peer.conn_id,
            address,
            peer.path,
            room,
            peer.deflate,
        )
        event: ConnectionClosed | None = None
        polite = handed_over = False
        try:
            # The 101 is the writer's first item, held back until the client has
            # entered its URL room: once the client sees its handshake complete,
            # every message published after reaches it.
            peer.flush()
            if peer.app_session is not None and (greeting := peer.app_session.greeting()):
                peer.send_event(greeting)  # "authenticated": who the token says it is
            if self._draining():  # upgraded while the drain began
                peer.close(1001, "going away: server shutting down")
            if isinstance(writer, TaskWriter):
                async with anyio.create_task_group() as group:
                    group.start_soon(writer.run)
                    await self._enter(peer, room)
                    event = await self._read_loop(stream, peer)
                    polite = await self.finish(peer)
                    group.cancel_scope.cancel()
            else:
                await self._enter(peer, room)
                handed_over = self._hand_over(stream, peer, address, closed)
                if handed_over:
                    return True
                event = await self._read_loop(stream, peer)
                polite = await self.finish(peer)
        finally:
            if not handed_over:
                self.closing(peer, event, address)
                with anyio.CancelScope(shield=True):
                    await self.leave_hub(peer)
                peer.read_no_more()  # no cycle left: freed at once, not by a full collection
        if polite:
            # Gone from the room already; the TCP goodbye has the close timeout.
            await half_close(stream, anyio.current_time() + self.config.close_timeout)
        return False

    def _hand_over(
        self, stream: ByteStream, peer: Peer, address: str, closed: Callable[[], None] | None
    ) -> bool:
        """Give a plain TCP connection on asyncio/uvloop to a :class:`TransportReader`
        (no task, no stream while idle); False when it keeps its stream."""
        if not self.transport_readers or not isinstance(peer.writer, TransportWriter):
            return False
        transport = peer.writer.transport
        state = stream_state(transport)
        if state is None:
            return False
        reader = TransportReader(self, peer, transport, address, closed)
        peer.read_by(reader)
        if isinstance(closed, SocketSlot):
            closed.detach()  # this task ends here; the socket stays counted
        reader.take_over(*state)
        return True

    def closing(self, peer: Peer, event: ConnectionClosed | None, address: str) -> None:
        """The WebSocket is over: out of the server's books, its close counted and logged."""
        peer.open = False
        self.peers.discard(peer)
        self.metrics.connections_open.dec()
        # The code this server sent when it started the close, else the client's.
        if peer.close_code is not None:
            code, reason = peer.close_code, peer.close_reason
        elif event is not None:
            code, reason = event.code, event.reason
        else:
            code, reason = 1006, "connection lost"
        self.metrics.count_close(code)
        logger.info("x conn %s %s closed code=%d reason=%r", peer.conn_id, address, code, reason)

    def _open_peer(
        self, stream: ByteStream, conn: ServerConnection, upgrade: Upgrade, address: str
    ) -> tuple[Peer, str]:
        """The new connection's Peer (app session opened) and its URL room."""
        request, admission, client_key = upgrade.request, upgrade.admission, upgrade.client_key
        config = self.config
        now = anyio.current_time()
        chat = request.path == CHAT_PATH
        room = url_room(request.query) if chat else "-"
        writer = self._writer(stream)
        peer = Peer(
            conn_id=f"{self.node_id}-{next(self._ids)}",
            address=address,
            path=request.path,
            conn=conn,
            stream=stream,
            writer=writer,
            session=ChatSession(room) if chat else None,
            limits=self.dispatch.limits_for(client_key, now),
            timers=Timers(now, config.ping_interval),
            metrics=self.metrics,
            closings=self.closings,
        )
        if peer.session is not None and admission is not None:
            peer.app_session = self.app.open_session(peer.session, admission, time.time())
        return peer, room

    def _writer(self, stream: ByteStream) -> Writer:
        limit = self.config.outbox_limit
        transport = direct_transport(stream) if self.direct_writes else None
        if transport is not None:
            return TransportWriter(limit, transport, self.flusher)
        return TaskWriter(limit, stream, self.metrics.bytes_out.inc)

    async def _enter(self, peer: Peer, room: str) -> None:
        """Enter the URL room, then release the writer (the 101 and the room's first events)."""
        # A connection that must authenticate with its first message enters its
        # room once it has (the dispatch does it then).
        pending = peer.app_session is not None and peer.app_session.pending_until is not None
        if peer.session is not None and peer.open and not pending:
            try:
                await self.hub.enter(peer, room)
            except BackendUnavailable as exc:
                logger.warning("! conn %s: hub backend unavailable: %s", peer.conn_id, exc)
                peer.close(1013, "hub backend unavailable: try again later")
            except Exception:
                logger.exception("! conn %s: entering %s failed", peer.conn_id, room)
                peer.close(1011, "internal error")
        peer.writer.release()

    async def stop_readers(self) -> None:
        """Drop the connections :class:`TransportReader` serves, and wait until they are closed
        (the server stops: after the drain, with the listener's tasks)."""
        while self.readers:
            readers = list(self.readers)
            for reader in readers:
                reader.cancel()
            tasks = [reader.task for reader in readers if reader.task is not None]
            if tasks:
                await asyncio.wait(tasks)
            self.readers.difference_update(readers)

    async def _read_loop(self, stream: ByteStream, peer: Peer) -> ConnectionClosed | None:
        conn, timers = peer.conn, peer.timers
        closed: ConnectionClosed | None = None
        for event in conn.events_received():  # frames that came with the handshake
            closed = await self._on_event(peer, event) or closed
        peer.flush()
        # No timer per read: an abort, or the watchdog at the end of the close
        # timeout, shuts the socket's read side and this receive returns b"".
        while not conn.close_expected() and not peer.writer.aborted:
            # Inline, not http_phase.receive(): no coroutine frame per idle connection.
            try:
                data = await stream.receive(RECEIVE_SIZE)
            except DISCONNECTED:
                data = b""
            timers.last_seen = anyio.current_time()
            conn.receive_data(data)
            for event in conn.events_received():
                closed = await self._on_event(peer, event) or closed
            peer.flush()
        return closed

    async def _on_event(self, peer: Peer, event: Event) -> ConnectionClosed | None:
        if not self.on_event_now(peer, event):
            assert isinstance(event, TextReceived)
            await self.on_text(peer, event.text)
        elif isinstance(event, ConnectionClosed):
            return event
        return None

    def on_event_now(self, peer: Peer, event: Event) -> bool:
        """Answer an event that needs no waiting; False (nothing done) for a chat message."""
        if isinstance(event, TextReceived):
            if peer.session is not None:
                return False
            self.metrics.messages_in.inc()
            peer.conn.send_text(event.text)
        elif isinstance(event, BinaryReceived):
            self.metrics.messages_in.inc()
            peer.conn.send_binary(event.data)
        elif isinstance(event, ConnectionClosed):
            peer.open = False
        return True

    async def on_text(self, peer: Peer, text: str) -> None:
        """A chat client's message, to the dispatch."""
        self.metrics.messages_in.inc()
        await self.dispatch.on_text(peer, text)

    async def finish(self, peer: Peer) -> bool:
        """Deliver what is queued (the close frame above all) within the close timeout.

        True when the closing handshake is complete and TCP may be closed politely.
        """
        peer.open = False
        peer.flush()
        if peer.writer.aborted:
            return False
        now = anyio.current_time()
        deadline = peer.timers.closing_deadline or now + self.config.close_timeout
        if now >= deadline:
            return False  # the close timeout ended the read loop: no polite goodbye
        if not await peer.writer.drain(deadline):
            logger.info("! conn %s: close frame not delivered in time", peer.conn_id)
            return False
        return peer.conn.close_expected()

    async def leave_hub(self, peer: Peer) -> None:
        """Out of the Hub's rooms (a failure is logged, not raised)."""
        try:
            await self.hub.disconnect(peer)
        except Exception:
            logger.exception("! conn %s: leaving the hub failed", peer.conn_id)
