"""The server object: composes the listener, the connection pump, the flusher, the watchdog.

Theory of operation
-------------------
:meth:`Server.serve` binds, then runs two task groups. The service group holds
the Hub's backend work, the :class:`~.flusher.Flusher` (batched writes for
plain TCP on asyncio/uvloop) and the :class:`~.watchdog.Watchdog` (keepalive,
write timeouts). The connection group holds one task per accepted socket,
each run by :meth:`~.pump.ConnectionPump.handle`, which is that connection's
failure boundary: nothing a connection does reaches these groups.

Imports run one way: this module composes the parts and nothing imports it.
listener → pump → dispatch / routes / watchdog → peer → writer → flusher. A
:class:`~.peer.Peer` holds what the dispatch (its rate limits) and the
watchdog (its timers) keep for it, and names their types only for the type
checker.

Shutdown (:meth:`Server.stop`): the server keeps accepting while it drains, so
load balancers polling ``/healthz`` read 503 and new upgrades are refused with
503; every client gets 1001; after the drain timeout (or once all are gone)
the listener closes and the remaining connections are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
from typing import Any, cast

import anyio
from anyio.abc import SocketAttribute, SocketListener, SocketStream, TaskStatus

from ..app import App
from ..hub import BackendUnavailable, Hub, shown_url
from .config import ServerConfig
from .descriptors import connection_cap, raise_open_file_limit
from .flusher import Flusher
from .listener import Listener
from .metrics import Metrics
from .peer import Peer
from .pump import ConnectionPump
from .routes import Routes
from .watchdog import Watchdog
from .writer import direct_transport

logger = logging.getLogger("wschat.server")


class Server:
    """A wschat server: HTTP page and API, WebSocket chat (and echo), Hub.

    Args:
        config: Settings; see :class:`ServerConfig` (with ``app``: the app's).
        hub: The Hub to use (default: one on the backend ``config.hub_url`` names).
        app: The application (default: the built-in chat, ``App(config, hub=hub)``).
    """

    def __init__(
        self, config: ServerConfig | None = None, hub: Hub | None = None, app: App | None = None
    ) -> None:
        self.app = app or App(config, hub=hub)
        self.app.attach(self)
        self.config = self.app.config
        self.hub = self.app.hub
        self.metrics = Metrics(self.hub.statistics)
        self.hub.fanout_observer = self.metrics.fanout_seconds.observe
        self.node_id = secrets.token_hex(4)
        self.draining = False
        self.port = 0
        self.direct_writes = False
        """Whether plain TCP connections are written straight to their transport."""
        self._flusher = Flusher(self.metrics.bytes_out.inc)
        self._pump = ConnectionPump(
            self.config,
            self.app,
            self.hub,
            self.metrics,
            Routes(self.app, self.metrics, lambda: self.draining),
            self._flusher,
            self.node_id,
            lambda: self.draining,
        )
        self._watchdog = Watchdog(
            lambda: self._pump.peers,
            self.config.ping_interval,
            self.config.pong_wait,
            self.config.write_timeout,
            self._pump.closings,
        )
        self._listener: Listener | None = None
        self._stop = anyio.Event()
        self._stopped = anyio.Event()

    @property
    def connections(self) -> set[Peer]:
        """The open WebSocket connections."""
        return self._pump.peers

    def statistics(self) -> dict[str, Any]:
        """Counters: sockets open (HTTP phase included), the socket cap, WebSockets,
        failures, messages compressed (permessage-deflate)."""
        listener = self._listener
        return {
            "sockets": listener.open_sockets if listener else 0,
            "socket_cap": listener.cap if listener else 0,
            "websockets": len(self._pump.peers),
            "accept_failures": listener.accept_failures if listener else 0,
            "write_failures": self._flusher.failures,
            **self._pump.http.deflate_statistics(),
        }

    # -- lifecycle -------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until :meth:`stop`, then drain. Reports the bound port.

        Raises:
            OSError: The address cannot be bound.
            BackendUnavailable: The hub backend cannot be reached.
        """
        _check_backend_runs_here(self.config.hub_url)
        self._pump.http.tls = self._tls_context()
        self._pump.direct_writes = self.direct_writes = await _direct_writes_work()
        listeners = await self._bind()
        self._listener = Listener(listeners, self._pump.handle, self._socket_cap())
        try:
            async with anyio.create_task_group() as service_group:
                await self.hub.start(service_group)
                service_group.start_soon(self._flusher.run)
                service_group.start_soon(self._watchdog.run)
                async with anyio.create_task_group() as connection_group:
                    accept_scope = anyio.CancelScope()
                    connection_group.start_soon(self._accept, connection_group, accept_scope)
                    logger.info(
                        "= serving %s://%s:%d hub=%s writes=%s cap=%d",
                        "https" if self.config.certfile else "http",
                        self.config.host,
                        self.port,
                        shown_url(self.config.hub_url),
                        "direct" if self.direct_writes else "task",
                        self._listener.cap,
                    )
                    task_status.started(self.port)
                    await self._stop.wait()
                    await self._drain()
                    accept_scope.cancel()
                    connection_group.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    # No task of the connection group holds these (see reader.py).
                    await self._pump.stop_readers()
                await self.hub.aclose()
                service_group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._pump.stop_readers()  # cancelled from outside: still closed
                for listener in listeners:  # closed already after serving; not if start-up failed
                    await listener.aclose()
            self._stopped.set()

    def stop(self) -> None:
        """Begin the graceful shutdown and return at once; :meth:`serve` returns once drained.

        Clients get 1001 and up to the drain timeout to go; :meth:`shutdown`
        does the same and waits.
        """
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop (see :meth:`stop`) and wait until :meth:`serve` has returned."""
        self.stop()
        await self._stopped.wait()

    async def _bind(self) -> list[SocketListener]:
        multi = await anyio.create_tcp_listener(
            local_host=self.config.host,
            local_port=self.config.port,
            reuse_port=self.config.workers > 1,
        )
        self.port = multi.extra(SocketAttribute.local_port)
        return [cast(SocketListener, listener) for listener in multi.listeners]

    def _tls_context(self) -> ssl.SSLContext | None:
        if not self.config.certfile:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.config.certfile, self.config.keyfile)
        context.set_alpn_protocols(["http/1.1"])
        return context

    def _socket_cap(self) -> int:
        # Room above the WebSocket cap for HTTP-phase sockets, so that a full
        # server still answers upgrades with 503 instead of leaving them unaccepted.
        wanted = self.config.max_connections + max(64, self.config.max_connections // 10)
        return connection_cap(wanted, raise_open_file_limit())

    async def _accept(self, group: anyio.abc.TaskGroup, scope: anyio.CancelScope) -> None:
        assert self._listener is not None
        with scope:
            await self._listener.serve(group)

    async def _drain(self) -> None:
        self.draining = True
        peers = self._pump.peers
        if not peers:
            return
        logger.info("= draining %d connections", len(peers))
        for peer in list(peers):
            peer.close(1001, "going away: server shutting down")
        with anyio.move_on_after(self.config.drain_timeout):
            while peers:
                await anyio.sleep(0.05)


def _check_backend_runs_here(hub_url: str) -> None:
    """The Redis backend is built on redis-py's asyncio client: refuse it on trio, clearly."""
    if not hub_url.startswith(("redis", "rediss")):
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        raise BackendUnavailable(
            f"{shown_url(hub_url)}: the Redis backend needs the asyncio event loop (redis-py); "
            "run the server on asyncio or uvloop"
        ) from None


async def _direct_writes_work() -> bool:
    """Whether this event loop's plain TCP streams expose a transport to write to.

    Checked once at start-up on a socket pair, and logged, so that a change in
    anyio's internals shows in the start-up line instead of as a slow server.
    """
    first, second = socket.socketpair()
    try:
        stream = await SocketStream.from_socket(first)
        try:
            transport = direct_transport(stream)
        finally:
            await stream.aclose()
    finally:
        second.close()
    if transport is None:
        logger.info("= writes: a writer task per connection (no transport on this event loop)")
        return False
    logger.debug("= writes: direct to %s", type(transport).__name__)
    return True
