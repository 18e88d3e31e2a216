"""Server settings, each with its default and the reason for it."""

from __future__ import annotations

from dataclasses import dataclass

from ..hub.memory import DEFAULT_MAX_IDLE_ROOMS
from ..protocol import (
    DEFAULT_COMPRESSION_MIN_SIZE,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_REQUEST_HEAD,
)


@dataclass(slots=True)
class ServerConfig:
    """Everything ``wschat serve`` can set. Flags and ``WSCHAT_*`` variables map onto it.

    Attributes:
        host: Address to listen on.
        port: TCP port (0: any free port).
        hub_url: Backend URL: ``memory://``, ``redis://host:port/db`` or
            ``redis-cluster://host:port[,host:port...]``.
        allowed_origins: Origins allowed besides the same origin (``*`` for any).
        allowed_hosts: Host names answered besides the bound address and loopback
            names (``*.example.com`` for subdomains, ``*`` for any); others get 421.
        echo: Serve ``/echo`` (for the Autobahn conformance suite).
        compression: Negotiate permessage-deflate when a client offers it
            (compressed once per broadcast, see :mod:`wschat.protocol.deflate`).
        compression_min_size: With ``compression``, messages shorter than this
            many bytes go out uncompressed.
        max_message_size: Chat endpoint cap on a message, bytes (1009 over it).
        echo_max_message_size: ``/echo`` cap; Autobahn's 9.* cases send 16 MiB.
        max_request_head: Request line + headers cap, bytes (431 over it).
        handshake_timeout: Seconds for a client to send a complete request.
        max_connections: Open WebSocket connections at most (503 beyond).
        ping_interval: Seconds between keepalive pings.
        pong_wait: Seconds without any data from the client before closing with 1011.
        write_timeout: Seconds a client's queued bytes may make no progress (the
            kernel takes none) before the connection is dropped.
        close_timeout: Seconds to wait for the peer's half of the closing handshake.
        outbox_limit: Bytes queued for one client before it is closed with 1013.
        rate: Messages per second per connection (0: no limit).
        burst: Messages a connection may send at once above ``rate``.
        address_rate: Messages per second per client address, across all its
            connections (0: no limit).
        address_burst: Messages a client address may send at once.
        connect_rate: New WebSocket connections per second per client address
            (0: no limit).
        connect_burst: Connections a client address may open at once.
        user_rate: Messages per second per authenticated user, across all their
            connections (0: no limit).
        user_burst: Messages a user may send at once.
        address_table_size: Client addresses tracked by each per-address limit
            (least recently used forgotten first).
        trusted_proxies: Networks whose ``X-Forwarded-For`` names the client
            (its rightmost address not itself trusted).
        drain_timeout: Seconds to wait for clients to close on shutdown.
        history_size: Messages kept per room.
        history_ttl: Seconds a message stays in history (None: forever).
        max_idle_rooms: Rooms nobody is in that the memory backend keeps, with
            their history (least recently used forgotten first).
        presence_ttl: Seconds after which a dead node's members leave presence (Redis).
        certfile: TLS certificate (PEM); serve https/wss when set.
        keyfile: TLS private key (PEM).
        workers: Processes sharing the port (SO_REUSEPORT); needs a shared backend.
        event_loop: What ``wschat serve`` runs on: ``auto`` (uvloop when installed,
            else asyncio), ``asyncio``, ``uvloop`` or ``trio`` (memory hub only:
            redis-py is asyncio's).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    hub_url: str = "memory://"
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    echo: bool = False
    # Off, as in Socket.IO (since v3), Phoenix and Centrifugo: it costs CPU per
    # broadcast and saves bytes mostly on big payloads (history).
    compression: bool = False
    compression_min_size: int = DEFAULT_COMPRESSION_MIN_SIZE
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    # Autobahn 9.1.6 and 9.2.6 send 16 MiB messages; leave room for them.
    echo_max_message_size: int = 16 * 1024 * 1024 + 1024
    max_request_head: int = DEFAULT_MAX_REQUEST_HEAD
    # A slowloris holds a socket by trickling headers; 10 s is ample for real clients.
    handshake_timeout: float = 10.0
    # Well under the default file-descriptor limits raised for servers (65536).
    max_connections: int = 10_000
    # Proxies drop sockets idle for ~60 s (nginx proxy_read_timeout); websockets uses 20 s.
    ping_interval: float = 20.0
    # gorilla chat's pongWait: 60 s.
    pong_wait: float = 60.0
    # gorilla chat's writeWait: 10 s.
    write_timeout: float = 10.0
    close_timeout: float = 5.0
    # Centrifugo's client.queue_max_size: 1 MiB.
    outbox_limit: int = 1024 * 1024
    rate: float = 10.0
    burst: int = 20
    # Many people can share one address (an office or campus NAT, a mobile
    # carrier's CGNAT), so the per-address limits are far above one connection's:
    # 50 messages/s is 500 people each sending one every 10 s; a reconnecting
    # flooder (~480/s measured) is held to it.
    address_rate: float = 50.0
    address_burst: int = 100
    # One page load is one connection. After a restart everyone behind a NAT
    # reconnects at once: 50 at once, then 10/s, has 500 of them back within
    # 45 s (refused ones get 429 with Retry-After, and browsers back off).
    connect_rate: float = 10.0
    connect_burst: int = 50
    # One user across all their tabs and devices: twice one connection's limit.
    user_rate: float = 20.0
    user_burst: int = 40
    # Above --max-connections: every address with an open connection keeps its
    # bucket (~220 B each, ~3.5 MiB per table when full).
    address_table_size: int = 16_384
    # uvicorn's --forwarded-allow-ips default: a proxy on this host is trusted.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Centrifugo's shutdown.timeout is 30 s; a chat client reconnects within seconds.
    drain_timeout: float = 10.0
    history_size: int = 100
    history_ttl: float | None = None
    max_idle_rooms: int = DEFAULT_MAX_IDLE_ROOMS
    # Centrifugo's presence_ttl is 60 s; 30 s removes a dead node's members sooner.
    presence_ttl: float = 30.0
    certfile: str | None = None
    keyfile: str | None = None
    workers: int = 1
    event_loop: str = "auto"
