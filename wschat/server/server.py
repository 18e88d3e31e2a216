"""The anyio transport loop: listener, per-connection tasks, timers, shutdown.

Theory of operation
-------------------
Each TCP connection runs :meth:`Server._handle`. While it speaks HTTP, one
loop reads, feeds :class:`~wschat.protocol.ServerConnection` and writes the
answers, under the handshake timeout. Once a WebSocket is accepted, one task
group runs three tasks (gorilla's readPump/writePump plus a pinger):

- the reader feeds bytes to the protocol and carries out chat commands;
- the writer is the only task that writes: it drains the connection's
  :class:`~.outbox.Outbox`, sending everything queued in one call, each send
  bounded by the write timeout;
- the keepalive task pings and closes with 1011 when the client is silent
  longer than the pong wait.

Whatever way a connection ends, the ``finally`` clause removes it from the Hub.
"""

from __future__ import annotations

import itertools
import logging
import math
import secrets
import ssl
import time
from typing import cast
from urllib.parse import parse_qs

import anyio
from anyio.abc import ByteStream, Listener, SocketAttribute, TaskGroup, TaskStatus
from anyio.streams.tls import TLSListener

from ..chat import (
    DEFAULT_ROOM,
    ChatError,
    ChatSession,
    Join,
    Leave,
    Say,
    ack_event,
    peek_message_id,
    validate_room,
)
from ..hub import BackendUnavailable, Hub, open_backend
from ..protocol import (
    BinaryReceived,
    ConnectionClosed,
    HostPolicy,
    HttpRequest,
    OriginPolicy,
    RequestRejected,
    ServerConnection,
    TextReceived,
    WebSocketRequest,
)
from .client import WRITE_TRANSPORT_METHODS, ClientConnection, WriteTransport
from .config import ServerConfig
from .flusher import Flusher
from .http import CONTENT_TYPE_TEXT, Response, method_not_allowed, not_found, route_static
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import Metrics
from .outbox import Outbox
from .ratelimit import TokenBucket

logger = logging.getLogger("wschat.server")

RECEIVE_SIZE = 65536
CHAT_PATH = "/ws"
ECHO_PATH = "/echo"
# Strikes: rate-limited messages a client may pile up (refilled at one a second)
# before "sustained abuse" closes it with 1008.
STRIKE_REFILL = 1.0

_DISCONNECTED = (
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
    ssl.SSLError,
)


class Server:
    """A wschat server: HTTP page, WebSocket chat (and echo), Hub.

    Args:
        config: Settings; see :class:`ServerConfig`.
        hub: The Hub to use (default: one on the backend ``config.hub_url`` names).
    """

    def __init__(self, config: ServerConfig | None = None, hub: Hub | None = None) -> None:
        self.config = config or ServerConfig()
        self.hub = hub or Hub(
            open_backend(
                self.config.hub_url,
                history_size=self.config.history_size,
                history_ttl=self.config.history_ttl,
                presence_ttl=self.config.presence_ttl,
            )
        )
        self.metrics = Metrics(self.hub.statistics)
        self.hub.fanout_observer = self.metrics.fanout_seconds.observe
        self._flusher = Flusher(self.metrics)
        self.node_id = secrets.token_hex(4)
        self.connections: set[ClientConnection] = set()
        self.draining = False
        self.port = 0
        self._ids = itertools.count(1)
        self._paths = frozenset({CHAT_PATH, ECHO_PATH} if self.config.echo else {CHAT_PATH})
        self._origins = OriginPolicy(self.config.allowed_origins)
        self._stop = anyio.Event()

    # -- lifecycle -------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`stop`; then drain. Reports the bound port."""
        listener = await self._listen()
        async with anyio.create_task_group() as service_group:
            await self.hub.start(service_group)
            service_group.start_soon(self._flusher.run)
            service_group.start_soon(self._watchdog)
            async with anyio.create_task_group() as connection_group:
                accept_scope = anyio.CancelScope()
                connection_group.start_soon(self._accept, listener, connection_group, accept_scope)
                logger.info(
                    "= serving http://%s:%d hub=%s",
                    self.config.host,
                    self.port,
                    self.config.hub_url,
                )
                task_status.started(self.port)
                await self._stop.wait()
                accept_scope.cancel()
                await self._drain()
                connection_group.cancel_scope.cancel()
            await self.hub.aclose()
            service_group.cancel_scope.cancel()

    def stop(self) -> None:
        """Stop accepting, send 1001 to every client, wait up to the drain timeout, return."""
        self._stop.set()

    async def _listen(self) -> Listener[ByteStream]:
        listener: Listener[ByteStream] = await anyio.create_tcp_listener(
            local_host=self.config.host,
            local_port=self.config.port,
            reuse_port=self.config.workers > 1,
        )
        self.port = _bound_port(listener)
        if self.config.certfile:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.config.certfile, self.config.keyfile)
            context.set_alpn_protocols(["http/1.1"])
            listener = TLSListener(
                listener,
                context,
                standard_compatible=False,
                handshake_timeout=self.config.handshake_timeout,
            )
        return listener

    async def _accept(
        self, listener: Listener[ByteStream], group: TaskGroup, scope: anyio.CancelScope
    ) -> None:
        with scope:
            async with listener:
                await listener.serve(self._handle, task_group=group)

    async def _drain(self) -> None:
        self.draining = True
        if not self.connections:
            return
        logger.info("= draining %d connections", len(self.connections))
        for client in list(self.connections):
            client.close(1001, "going away: server shutting down")
        with anyio.move_on_after(self.config.drain_timeout):
            while self.connections:
                await anyio.sleep(0.05)

    # -- one TCP connection ----------------------------------------------------

    async def _handle(self, stream: ByteStream) -> None:
        conn = ServerConnection(
            self._paths,
            self._origins,
            self.config.max_request_head,
            host_policy=HostPolicy.for_bind(self.config.host, self.config.allowed_hosts),
        )
        peer = _peer(stream)
        try:
            request = await self._serve_http(stream, conn)
            if request is not None:
                path, query = request.path, request.query
                del request  # its headers are not needed for the connection's life
                await self._serve_websocket(stream, conn, path, query, peer)
        except _DISCONNECTED:
            pass
        except Exception:
            # A bug in handling one connection must not take the others down.
            logger.exception("! connection from %s failed", peer)
        finally:
            try:
                if conn.close_expected():
                    await _finish_close(stream, self.config.close_timeout)
            finally:
                with anyio.CancelScope(shield=True):
                    await anyio.aclose_forcefully(stream)

    async def _serve_http(
        self, stream: ByteStream, conn: ServerConnection
    ) -> WebSocketRequest | None:
        """Answer plain HTTP requests; return the accepted WebSocket request, if any."""
        deadline = anyio.current_time() + self.config.handshake_timeout
        while True:
            with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                data = await _receive(stream)
            if scope.cancelled_caught:
                self.metrics.handshakes_rejected.labels("timeout").inc()
                return None
            conn.receive_data(data)
            # Answering one request may parse the next pipelined one: loop until quiet.
            while events := conn.events_received():
                for event in events:
                    if isinstance(event, HttpRequest):
                        response = self._route(event)
                        conn.send_response(
                            response.status, response.body, response.content_type, response.headers
                        )
                        deadline = anyio.current_time() + self.config.handshake_timeout
                    elif isinstance(event, WebSocketRequest):
                        if self._answer_upgrade(conn, event):
                            await _send_all(stream, conn.data_to_send())
                            return event
                    elif isinstance(event, RequestRejected):
                        self.metrics.handshakes_rejected.labels(str(event.status)).inc()
            await _send_all(stream, conn.data_to_send())
            if conn.close_expected():
                return None

    def _route(self, request: HttpRequest) -> Response:
        if request.path == "/healthz":
            if request.method != "GET":
                return method_not_allowed()
            if self.draining:
                return Response(503, b"draining\n")
            return Response(200, b"ok\n")
        if request.path == "/metrics":
            if request.method != "GET":
                return method_not_allowed()
            return Response(200, self.metrics.render(), METRICS_CONTENT_TYPE)
        return route_static(request) or not_found(request)

    def _answer_upgrade(self, conn: ServerConnection, request: WebSocketRequest) -> bool:
        """Accept or refuse a valid upgrade on server grounds (room, capacity, draining)."""
        rejection: tuple[int, str, str, tuple[tuple[str, str], ...]] | None = None
        if self.draining:
            rejection = (503, "server is shutting down", "draining", (("retry-after", "5"),))
        elif len(self.connections) >= self.config.max_connections:
            rejection = (503, "too many connections", "capacity", (("retry-after", "5"),))
        elif request.path == CHAT_PATH:
            try:
                _url_room(request.query)
            except ChatError as exc:
                rejection = (400, exc.reason, "bad_room", ())
        if rejection is not None:
            status, reason, label, headers = rejection
            self.metrics.handshakes_rejected.labels(label).inc()
            conn.send_response(status, f"{reason}\n".encode(), CONTENT_TYPE_TEXT, headers)
            return False
        echo = request.path == ECHO_PATH
        conn.accept_websocket(
            max_message_size=(
                self.config.echo_max_message_size if echo else self.config.max_message_size
            ),
            accept_binary=echo,
            compression=self.config.compression,
        )
        return True

    async def _serve_websocket(
        self, stream: ByteStream, conn: ServerConnection, path: str, query: str, peer: str
    ) -> None:
        now = anyio.current_time()
        chat = path == CHAT_PATH
        room = _url_room(query)
        client = ClientConnection(
            conn_id=f"{self.node_id}-{next(self._ids)}",
            peer=peer,
            path=path,
            conn=conn,
            outbox=Outbox(self.config.outbox_limit),
            session=ChatSession(room) if chat else None,
            bucket=TokenBucket(self.config.rate, self.config.burst, now),
            strikes=TokenBucket(
                STRIKE_REFILL if self.config.rate > 0 else 0, self.config.burst, now
            ),
            metrics=self.metrics,
            close_timeout=self.config.close_timeout,
            transport=_asyncio_transport(stream),
            flusher=self._flusher,
        )
        self.connections.add(client)
        if self.draining:  # upgraded while the drain began
            client.close(1001, "going away: server shutting down")
        self.metrics.connections_open.inc()
        logger.info(
            "= conn %s %s open path=%s room=%s deflate=%s",
            client.conn_id,
            peer,
            path,
            room if chat else "-",
            client.deflate,
        )
        close_code, close_reason = 1006, "connection lost"
        try:
            if chat:
                try:
                    await self.hub.enter(client, room)
                except BackendUnavailable as exc:
                    logger.warning("! conn %s: hub backend unavailable: %s", client.conn_id, exc)
                    client.close(1013, "hub backend unavailable: try again later")
            if client.transport is not None:
                closed = await self._read_loop(stream, client)
                client.open = False
                client.write_now()  # the close frame and whatever is still queued
            else:
                async with anyio.create_task_group() as group:
                    group.start_soon(self._write_loop, stream, client, group.cancel_scope)
                    closed = await self._read_loop(stream, client)
                    client.open = False
                    client.outbox.close()  # the writer sends what is queued, then returns
                    group.cancel_scope.deadline = anyio.current_time() + self.config.write_timeout
            if closed is not None:
                close_code, close_reason = closed.code, closed.reason
        finally:
            client.open = False
            self.connections.discard(client)
            self.metrics.connections_open.dec()
            self.metrics.close_codes.labels(str(close_code)).inc()
            logger.info(
                "x conn %s %s closed code=%d reason=%r",
                client.conn_id,
                peer,
                close_code,
                close_reason,
            )
            with anyio.CancelScope(shield=True):
                await self.hub.disconnect(client)

    async def _read_loop(
        self, stream: ByteStream, client: ClientConnection
    ) -> ConnectionClosed | None:
        conn = client.conn
        closed: ConnectionClosed | None = None
        for event in conn.events_received():  # frames that came with the handshake
            closed = await self._on_event(client, event) or closed
        client.flush()
        while not conn.close_expected():
            # close() moves this deadline (close_timeout); abort() cancels the scope.
            # Only the receive is bounded: chat commands always run to completion.
            with anyio.CancelScope(deadline=client.closing_deadline or math.inf) as scope:
                client.read_scope = scope
                data = await _receive(stream)
            client.read_scope = None
            if scope.cancel_called:
                break
            client.last_seen = anyio.current_time()
            conn.receive_data(data)
            for event in conn.events_received():
                closed = await self._on_event(client, event) or closed
            client.flush()
        return closed

    async def _on_event(self, client: ClientConnection, event: object) -> ConnectionClosed | None:
        if isinstance(event, TextReceived):
            self.metrics.messages_in.inc()
            if client.session is None:
                client.conn.send_text(event.text)
            else:
                await self._on_chat_text(client, event.text)
        elif isinstance(event, BinaryReceived):
            self.metrics.messages_in.inc()
            client.conn.send_binary(event.data)
        elif isinstance(event, ConnectionClosed):
            client.open = False
            return event
        return None

    async def _on_chat_text(self, client: ClientConnection, text: str) -> None:
        session = client.session
        assert session is not None
        now = anyio.current_time()
        if not client.bucket.take(now):
            self.metrics.rate_limited.inc()
            if not client.strikes.take(now):
                client.close(1008, "rate limit exceeded repeatedly")
            else:
                client.send_error(
                    "rate_limited",
                    f"over {self.config.rate:g} messages/s (burst {self.config.burst}): dropped",
                    peek_message_id(text),
                )
            return
        had_username = session.username is not None
        rooms_before = set(session.rooms)
        try:
            command = session.handle(text)
        except ChatError as exc:
            client.send_error(exc.code, exc.reason, exc.id)
            return
        try:
            if not had_username and session.username is not None:
                await self.hub.update_presence(client)
            if isinstance(command, Say):
                assert command.room is not None and command.username is not None
                position = await self.hub.say(
                    command.room, command.username, command.message, command.id
                )
                if command.id is not None:
                    client.send_event(ack_event(command.room, position, command.id))
            elif isinstance(command, Join):
                await self.hub.join(client, command.room, command.since)
            elif isinstance(command, Leave):
                await self.hub.leave(client, command.room)
        except BackendUnavailable as exc:
            if isinstance(command, Join) and command.room not in rooms_before:
                session.rooms.discard(command.room)  # the join did not happen
            message_id = command.id if isinstance(command, Say) else None
            client.send_error("unavailable", f"not done, try again: {exc}", message_id)

    async def _write_loop(
        self, stream: ByteStream, client: ClientConnection, scope: anyio.CancelScope
    ) -> None:
        try:
            while data := await client.outbox.get():
                with anyio.fail_after(self.config.write_timeout):
                    await stream.send(data)
                self.metrics.bytes_out.inc(len(data))
        except TimeoutError:
            logger.info(
                "! conn %s write timeout (%.0fs)", client.conn_id, self.config.write_timeout
            )
            scope.cancel()
        except _DISCONNECTED:
            scope.cancel()

    async def _watchdog(self) -> None:
        """Keepalive and write timeouts for every connection, from one task."""
        config = self.config
        tick = min(1.0, config.ping_interval, config.pong_wait, config.write_timeout) / 2
        while True:
            await anyio.sleep(tick)
            now = anyio.current_time()
            for client in list(self.connections):
                self._check(client, now)

    def _check(self, client: ClientConnection, now: float) -> None:
        config = self.config
        if client.open:
            if now - client.last_seen >= config.pong_wait:
                logger.info("%% conn %s keepalive timeout", client.conn_id)
                client.close(1011, "keepalive timeout: no pong")
            elif now - client.last_ping >= config.ping_interval:
                client.conn.send_ping(int(time.time() * 1000).to_bytes(8, "big"))
                client.flush()
                client.last_ping = now
        transport = client.transport
        if transport is None:
            return  # the writer task enforces the write timeout itself
        if not transport.get_write_buffer_size():
            client.blocked_since = None
        elif client.blocked_since is None:
            client.blocked_since = now
        elif now - client.blocked_since >= config.write_timeout:
            # The kernel took nothing for the whole write timeout: the peer is gone
            # or not reading (gorilla's writeWait).
            logger.info("! conn %s write timeout (%.0fs)", client.conn_id, config.write_timeout)
            client.abort()


def _asyncio_transport(stream: ByteStream) -> WriteTransport | None:
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


def _url_room(query: str) -> str:
    """The room of ``/ws?room=NAME``; raises ChatError for an empty or repeated one."""
    values = parse_qs(query, keep_blank_values=True).get("room")
    if not values:
        return DEFAULT_ROOM
    if len(values) > 1:
        raise ChatError("bad_room", "give room once")
    return validate_room(values[0])


def _peer(stream: ByteStream) -> str:
    try:
        address = stream.extra(SocketAttribute.remote_address)
    except Exception:
        return "?"
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def _bound_port(listener: Listener[ByteStream]) -> int:
    port: int = listener.extra(SocketAttribute.local_port)
    return port


async def _receive(stream: ByteStream) -> bytes:
    try:
        return await stream.receive(RECEIVE_SIZE)
    except _DISCONNECTED:
        return b""


async def _send_all(stream: ByteStream, chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    if data:
        await stream.send(data)


async def _finish_close(stream: ByteStream, timeout: float) -> None:
    """After a clean close: half-close, then let the peer finish (bounded by ``timeout``).

    Closing a socket with unread input makes the kernel send RST, which can
    destroy our close frame before the peer reads it; so we shut down our side
    first and read until the peer closes too.
    """
    with anyio.move_on_after(timeout):
        try:
            await stream.send_eof()
            while await stream.receive(RECEIVE_SIZE):
                pass
        except (*_DISCONNECTED, NotImplementedError):
            pass
