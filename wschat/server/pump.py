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
   timeout.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream, SocketAttribute

from ..app import App
from ..chat import ChatSession
from ..hub import BackendUnavailable, Hub
from ..protocol import (
    BinaryReceived,
    ConnectionClosed,
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
from .ratelimit import TokenBucket
from .routes import Routes
from .writer import TaskWriter, TransportWriter, Writer, direct_transport

logger = logging.getLogger("wschat.server")

# Strikes: rate-limited messages a client may pile up (refilled at one a second)
# before "sustained abuse" closes it with 1008.
STRIKE_REFILL = 1.0


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

        Never raises (but for cancellation); ``closed`` is called either way.
        """
        address, peer_ip = _address(stream)
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
                websocket = self._serve_websocket(stream, conn, upgrade, address)
                del upgrade  # its request's headers are not kept for the connection's life
                await websocket
        except DISCONNECTED:
            pass
        except Exception:
            logger.exception("! connection from %s failed", address)
        finally:
            try:
                with anyio.CancelScope(shield=True):
                    await _close_quietly(stream)
            finally:
                if closed is not None:
                    closed()

    # -- WebSocket -------------------------------------------------------------

    async def _serve_websocket(
        self, stream: ByteStream, conn: ServerConnection, upgrade: Upgrade, address: str
    ) -> None:
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
        closed: ConnectionClosed | None = None
        polite = False
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
                    closed = await self._read_loop(stream, peer)
                    polite = await self._finish(peer)
                    group.cancel_scope.cancel()
            else:
                await self._enter(peer, room)
                closed = await self._read_loop(stream, peer)
                polite = await self._finish(peer)
        finally:
            peer.open = False
            self.peers.discard(peer)
            self.metrics.connections_open.dec()
            # The code this server sent when it started the close, else the client's.
            if peer.close_code is not None:
                code, reason = peer.close_code, peer.close_reason
            elif closed is not None:
                code, reason = closed.code, closed.reason
            else:
                code, reason = 1006, "connection lost"
            self.metrics.count_close(code)
            logger.info(
                "x conn %s %s closed code=%d reason=%r", peer.conn_id, address, code, reason
            )
            with anyio.CancelScope(shield=True):
                await self._leave_hub(peer)
            # Nothing reads any more. Peer -> writer -> on_abort -> Peer is a cycle:
            # broken, the connection is freed at once instead of by a full collection.
            writer.on_abort = None
        if polite:
            # Gone from the room already; the TCP goodbye has the close timeout.
            await _half_close(stream, anyio.current_time() + self.config.close_timeout)

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
            bucket=TokenBucket(config.rate, config.burst, now),
            strikes=TokenBucket(STRIKE_REFILL if config.rate > 0 else 0, config.burst, now),
            metrics=self.metrics,
            closings=self.closings,
            client_key=client_key,
        )
        # Pings spread over the interval: clients that connected together (after
        # a restart) are not all pinged in one tick.
        peer.last_ping -= random.random() * config.ping_interval
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

    async def _read_loop(self, stream: ByteStream, peer: Peer) -> ConnectionClosed | None:
        conn = peer.conn
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
            peer.last_seen = anyio.current_time()
            conn.receive_data(data)
            for event in conn.events_received():
                closed = await self._on_event(peer, event) or closed
            peer.flush()
        return closed

    async def _on_event(self, peer: Peer, event: object) -> ConnectionClosed | None:
        if isinstance(event, TextReceived):
            self.metrics.messages_in.inc()
            if peer.session is None:
                peer.conn.send_text(event.text)
            else:
                await self.dispatch.on_text(peer, event.text)
        elif isinstance(event, BinaryReceived):
            self.metrics.messages_in.inc()
            peer.conn.send_binary(event.data)
        elif isinstance(event, ConnectionClosed):
            peer.open = False
            return event
        return None

    async def _finish(self, peer: Peer) -> bool:
        """Deliver what is queued (the close frame above all) within the close timeout.

        True when the closing handshake is complete and TCP may be closed politely.
        """
        peer.open = False
        peer.flush()
        if peer.writer.aborted:
            return False
        now = anyio.current_time()
        deadline = peer.closing_deadline or now + self.config.close_timeout
        if now >= deadline:
            return False  # the close timeout ended the read loop: no polite goodbye
        if not await peer.writer.drain(deadline):
            logger.info("! conn %s: close frame not delivered in time", peer.conn_id)
            return False
        return peer.conn.close_expected()

    async def _leave_hub(self, peer: Peer) -> None:
        try:
            await self.hub.disconnect(peer)
        except Exception:
            logger.exception("! conn %s: leaving the hub failed", peer.conn_id)


def _address(stream: ByteStream) -> tuple[str, str]:
    """``host:port`` of the client for logs, and its IP address alone."""
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except Exception:
        return "?", "?"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}", str(address[0])
    return str(address), str(address)


async def _half_close(stream: ByteStream, deadline: float) -> None:
    """After a clean close: shut our side, then let the client finish (until ``deadline``).

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our close frame before the client reads it; so we shut down our
    side first and read until the client closes too. Any error here means the
    client is already gone.
    """
    with anyio.move_on_after(max(deadline - anyio.current_time(), 0)):
        try:
            await stream.send_eof()
            while await stream.receive(RECEIVE_SIZE):
                pass
        except Exception:
            # uvloop raises RuntimeError on a transport that is closed, anyio's
            # TLSStream TypeError or NotImplementedError: the client is gone.
            return


async def _close_quietly(stream: ByteStream) -> None:
    try:
        await anyio.aclose_forcefully(stream)
    except Exception as exc:
        logger.info("! closing a socket failed: %r", exc)
