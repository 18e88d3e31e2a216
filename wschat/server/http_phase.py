"""The HTTP phase of a connection: TLS, plain requests, and the upgrade decision.

Pipelined requests are answered a few at a time: the protocol stops parsing
while unsent answers pile up, so the loop answers what it is given, sends
(each slice bounded by the write timeout: no progress, no connection) and asks
again. An accepted upgrade's 101 is not sent here: it is the first thing the
WebSocket's writer sends, once the client is in its room.
"""

from __future__ import annotations

import logging
import math
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs

import anyio
from anyio.abc import ByteStream, SocketAttribute
from anyio.streams.tls import TLSStream

from ..app import Admission, App, Rejection, UpgradeRequest, upgrade_refusal
from ..chat import DEFAULT_ROOM, ChatError, validate_room
from ..protocol import (
    DeflatePolicy,
    Headers,
    HttpRequest,
    RequestRejected,
    ServerConnection,
    WebSocketRequest,
)
from .config import ServerConfig
from .constants import CHAT_PATH, DISCONNECTED, ECHO_PATH, RECEIVE_SIZE
from .http import CONTENT_TYPE_TEXT, Response, method_not_allowed
from .metrics import Metrics
from .ratelimit import KeyedRateLimiter, address_key, client_address, parse_networks
from .routes import Routes
from .writer import reset_on_close, send_with_timeout

logger = logging.getLogger("wschat.server")

TLS_FAILURES: tuple[type[BaseException], ...] = (TimeoutError, *DISCONNECTED)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """An accepted WebSocket upgrade.

    Attributes:
        request: The upgrade request.
        client_key: The client's address as the per-address limits key it
            (through trusted proxies; IPv6 by its /64).
        admission: The app's answer (who the client is, whether it must
            authenticate with its first message).
    """

    request: WebSocketRequest
    client_key: str
    admission: Admission | None = None
    """What the app said at the upgrade (chat connections only)."""


class HttpPhase:
    """Serves a connection until it is a WebSocket (or closed).

    Args:
        config: The server settings.
        app: The application (it admits chat upgrades).
        metrics: The server's metrics.
        routes: Answers plain HTTP requests.
        open_websockets: How many WebSockets are open (for ``--max-connections``).
        draining: Tells whether the server is shutting down.
    """

    def __init__(
        self,
        config: ServerConfig,
        app: App,
        metrics: Metrics,
        routes: Routes,
        open_websockets: Callable[[], int],
        draining: Callable[[], bool],
    ) -> None:
        self.config = config
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.tls: ssl.SSLContext | None = None
        """The TLS context, when serving https/wss (set at start-up)."""
        self._open_websockets = open_websockets
        self._draining = draining
        self.websocket_paths = frozenset({CHAT_PATH, ECHO_PATH} if config.echo else {CHAT_PATH})
        """The paths that upgrade to a WebSocket (/ws, and /echo when enabled)."""
        self._proxies = parse_networks(config.trusted_proxies)
        self._connects = KeyedRateLimiter(
            config.connect_rate, config.connect_burst, config.address_table_size
        )
        self.deflate = DeflatePolicy(config.compression_min_size) if config.compression else None
        """The permessage-deflate policy every WebSocket shares (None: compression off)."""

    async def start_tls(self, stream: ByteStream, address: str) -> ByteStream | None:
        """The TLS handshake, when serving TLS; None when it failed (logged as one line)."""
        if self.tls is None:
            return stream
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=self.tls, standard_compatible=False
                )
        except TLS_FAILURES as exc:
            # A plain-TCP probe or a scanner: worth one line, not a traceback.
            self.metrics.handshakes_rejected.labels("tls").inc()
            logger.info("x %s TLS handshake failed: %s", address, describe(exc))
            return None

    async def serve(
        self, stream: ByteStream, conn: ServerConnection, address: str, peer_ip: str
    ) -> Upgrade | None:
        """Answer plain HTTP requests; return the accepted WebSocket upgrade, if any."""
        config = self.config
        deadline = anyio.current_time() + config.handshake_timeout
        while True:
            with anyio.move_on_after(deadline - anyio.current_time()) as scope:
                data = await receive(stream)
            if scope.cancelled_caught:
                self.metrics.handshakes_rejected.labels("timeout").inc()
                logger.info(
                    "x %s no complete request within %gs", address, config.handshake_timeout
                )
                return None
            conn.receive_data(data)
            # The protocol stops parsing pipelined requests while unsent answers
            # pile up: answer what it gives, send, and ask again.
            while events := conn.events_received():
                for event in events:
                    if isinstance(event, HttpRequest):
                        if event.path in self.websocket_paths:
                            response = await self._probe(event, address)
                        else:
                            response = await self.routes.answer(event)
                        conn.send_response(
                            response.status, response.body, response.content_type, response.headers
                        )
                        deadline = anyio.current_time() + config.handshake_timeout
                    elif isinstance(event, WebSocketRequest):
                        upgrade = await self._upgrade(conn, event, address, peer_ip)
                        if upgrade is not None:
                            return upgrade  # the 101 goes out through the peer's writer
                    elif isinstance(event, RequestRejected) and event.probe:
                        # (the handshake it probes was counted and logged already)
                        self.metrics.handshake_probes.labels(str(event.status)).inc()
                        logger.debug("x %s probe: %d %s", address, event.status, event.reason)
                    elif isinstance(event, RequestRejected):
                        self.metrics.handshakes_rejected.labels(str(event.status)).inc()
                        logger.info("x %s refused: %d %s", address, event.status, event.reason)
                if not await self._send(stream, conn, address):
                    return None
            if conn.close_expected():
                return None

    async def _send(self, stream: ByteStream, conn: ServerConnection, address: str) -> bool:
        """Send the answers; False when the client took nothing for the write timeout
        (a pipeliner that does not read: dropped, one info line)."""
        data = b"".join(conn.data_to_send())
        if data:
            try:
                await send_with_timeout(stream, data, self.config.write_timeout)
            except TimeoutError:
                reset_on_close(stream.extra(SocketAttribute.raw_socket, None))
                self.metrics.handshakes_rejected.labels("write_timeout").inc()
                logger.info(
                    "! %s write timeout: no progress for %gs", address, self.config.write_timeout
                )
                return False
        return True

    def _client_key(self, request: WebSocketRequest, peer_ip: str) -> str:
        forwarded = ", ".join(v for k, v in request.headers if k == "x-forwarded-for")
        return address_key(client_address(peer_ip, forwarded or None, self._proxies))

    async def _upgrade(
        self, conn: ServerConnection, request: WebSocketRequest, address: str, peer_ip: str
    ) -> Upgrade | None:
        """Accept a valid upgrade, or refuse it on server grounds: the address's
        connection rate, then :meth:`_refusal`'s.

        Nothing awaits between the capacity check and the peer's registration,
        so the capacity check cannot race.
        """
        client_key = self._client_key(request, peer_ip)
        now = anyio.current_time()
        if not self._connects.take(client_key, now):
            retry = str(max(1, math.ceil(self._connects.retry_after(client_key, now))))
            reason = "too many connections from your address"
            self._refuse(conn, address, _text(429, reason, _retry(retry)), "address_rate")
            return None
        refusal, admission = await self._refusal(
            request.path, request.query, request.headers, address
        )
        if refusal is not None:
            response, label = refusal
            self._refuse(conn, address, response, label)
            return None
        echo = request.path == ECHO_PATH
        config = self.config
        conn.accept_websocket(
            max_message_size=config.echo_max_message_size if echo else config.max_message_size,
            accept_binary=echo,
            compression=self.deflate or False,
        )
        return Upgrade(request, client_key, admission)

    def deflate_statistics(self) -> dict[str, int]:
        """Messages compressed and compression settings negotiated (zero when off)."""
        if self.deflate is None:
            return {"compressions": 0, "deflate_settings": 0}
        return self.deflate.statistics()

    async def _refusal(
        self, path: str, query: str, headers: Headers, address: str
    ) -> tuple[tuple[Response, str] | None, Admission | None]:
        """Why an upgrade to ``path`` would be refused (the answer and its metrics
        label), or None and the app's admission: the room, the app (who it is,
        whether it may enter), draining, capacity; in that order."""
        admission: Admission | None = None
        if path == CHAT_PATH:
            try:
                room = url_room(query)
            except ChatError as exc:
                return (_text(400, exc.reason), "bad_room"), None
            try:
                admission = await self._admit(path, query, headers, address, room)
            except Rejection as rejection:
                return (upgrade_refusal(rejection), f"app_{rejection.status}"), None
        if self._draining():
            return (_text(503, "server is shutting down", _retry("5")), "draining"), None
        if self._open_websockets() >= self.config.max_connections:
            return (_text(503, "too many connections", _retry("5")), "capacity"), None
        return None, admission

    async def _probe(self, request: HttpRequest, address: str) -> Response:
        """A plain request to a WebSocket path (a page asking why its upgrade failed):
        the refusal the upgrade would get, else 426 (RFC 9110 15.5.22)."""
        if request.method not in ("GET", "HEAD"):
            return method_not_allowed("GET, HEAD")
        refusal, _ = await self._refusal(request.path, request.query, request.headers, address)
        if refusal is not None:
            return refusal[0]
        headers = (("upgrade", "websocket"), ("connection", "Upgrade"))
        return _text(426, "this is a WebSocket endpoint: connect with a WebSocket client", headers)

    async def _admit(
        self, path: str, query: str, headers: Headers, address: str, room: str
    ) -> Admission:
        upgrade = UpgradeRequest(path, query, headers, address)
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                return await self.app.admit(upgrade, room)
        except TimeoutError:
            logger.warning(
                "! %s: the app took over %gs to admit", address, self.config.handshake_timeout
            )
            raise Rejection("timeout", "authentication timed out", status=503) from None

    def _refuse(self, conn: ServerConnection, address: str, response: Response, label: str) -> None:
        self.metrics.handshakes_rejected.labels(label).inc()
        logger.info("x %s refused: %d %s", address, response.status, response.body.decode().strip())
        conn.send_response(response.status, response.body, response.content_type, response.headers)


def _retry(seconds: str) -> Headers:
    return (("retry-after", seconds),)


def _text(status: int, reason: str, headers: Headers = ()) -> Response:
    return Response(status, f"{reason}\n".encode(), CONTENT_TYPE_TEXT, headers)


def url_room(query: str) -> str:
    """The room of ``/ws?room=NAME``; raises ChatError for an empty or repeated one."""
    values = parse_qs(query, keep_blank_values=True).get("room")
    if not values:
        return DEFAULT_ROOM
    if len(values) > 1:
        raise ChatError("bad_room", "give room once")
    return validate_room(values[0])


def describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, anyio.BrokenResourceError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return str(exc) or type(exc).__name__


async def receive(stream: ByteStream) -> bytes:
    try:
        return await stream.receive(RECEIVE_SIZE)
    except DISCONNECTED:
        return b""
