"""The client's front door: :func:`connect` and the defaults it gives a :class:`ChatClient`."""

from __future__ import annotations

import random as random_module
import ssl as ssl_module
from collections.abc import Callable, Iterable, Sequence

from .backoff import Backoff
from .client import ChatClient
from .link import LinkSettings
from .supervisor import TokenSource
from .url import parse_server_url

# The server pings every 20 s too; proxies drop sockets idle for ~60 s.
DEFAULT_PING_INTERVAL = 20.0
# websockets' default ping_timeout: 20 s without any answer ends the connection.
DEFAULT_PING_TIMEOUT = 20.0
# The server's handshake timeout (and websockets' open_timeout) is 10 s.
DEFAULT_OPEN_TIMEOUT = 10.0
# The server's close timeout: 5 s for the other half of the closing handshake.
DEFAULT_CLOSE_TIMEOUT = 5.0
# Events held for a user who is not reading, then reading pauses (websockets
# holds 16 frames; a chat's events are small and a whole history is one).
DEFAULT_MAX_QUEUE = 1024
# The server caps incoming messages at 64 KiB, but its answer to a join is one
# frame: 100 messages (its default history) of 4,096 characters, escaped as JSON,
# can come near 2.5 MiB.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def connect(
    url: str,
    *,
    room: str | Sequence[str] = "lobby",
    username: str | None = None,
    token: TokenSource | None = None,
    ssl: ssl_module.SSLContext | None = None,
    reconnect: Backoff | None = Backoff(),  # noqa: B008 (frozen: safe to share)
    origin: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    ping_interval: float | None = DEFAULT_PING_INTERVAL,
    ping_timeout: float = DEFAULT_PING_TIMEOUT,
    open_timeout: float = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    compression: bool = False,
    max_queue: int = DEFAULT_MAX_QUEUE,
    random: Callable[[], float] | None = None,
) -> ChatClient:
    """A chat client for the wschat server at ``url``; use it with ``async with``.

    ::

        async with wschat.client.connect("ws://127.0.0.1:8080/ws",
                                         room="lobby", username="bot") as chat:
            await chat.say("hello")
            async for event in chat:
                ...

    Entering the ``async with`` connects and joins the rooms (their
    :class:`~.events.History` is the first event); leaving it closes the
    connection (code 1000).

    Args:
        url: ``ws://HOST:PORT/ws`` or ``wss://...`` (``http(s)://`` works too;
            a URL without a path gets ``/ws``).
        room: The room to join, or several; the first is the default room of
            :meth:`ChatClient.say`.
        username: The name to chat under (checked against the server's rules
            before connecting). With a token it may be left out: the server
            binds the user the token names (given, it must be that user).
        token: An auth token (a JWT), sent in an ``Authorization: Bearer``
            header with each connection's handshake (never in the URL, which
            proxies log); or an async function returning a fresh one, called for
            each connection and again shortly before the current token expires
            (the fresh one is sent on the open connection: no reconnect).
        ssl: The TLS context for ``wss://`` (default: the system's trusted CAs).
        reconnect: The backoff between reconnection attempts, or None to
            never reconnect (a lost connection then ends the iteration with
            :class:`~.errors.ConnectionClosedError`).
        origin: An ``Origin`` header, to talk to a server that checks it.
        headers: More handshake headers (e.g. a cookie).
        ping_interval: Seconds between keepalive pings (None: no pings).
        ping_timeout: Seconds without an answer to a ping before the
            connection is dropped (and, with ``reconnect``, opened again).
        open_timeout: Seconds for TCP, TLS and the handshake; also for the
            first joins when entering.
        close_timeout: Seconds to wait for the server's half of a close.
        max_message_size: Cap on one incoming message, bytes (1009 over it);
            raise it for a server that keeps more than 100 messages of history.
        compression: Offer permessage-deflate.
        max_queue: Events held for a user who is not reading before reading pauses.
        random: Source of uniform numbers in [0, 1) for the backoff jitter
            (default: a private ``random.Random``).

    Raises:
        ValueError: A bad URL, room name or username, or neither a username
            nor a token (nothing was sent).
    """
    if username is None and token is None:
        raise ValueError("give a username, or a token that names the user")
    address = parse_server_url(url)
    if ssl is not None and not address.secure:
        raise ValueError(f"an SSL context was given for {url}: use wss://")
    if address.secure and ssl is None:
        ssl = ssl_module.create_default_context()
        ssl.set_alpn_protocols(["http/1.1"])
    settings = LinkSettings(
        address=address,
        ssl=ssl,
        origin=origin,
        headers=tuple(headers),
        max_message_size=max_message_size,
        compression=compression,
        open_timeout=open_timeout,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
    return ChatClient(
        settings,
        rooms=[room] if isinstance(room, str) else list(room),
        username=username,
        token=token,
        reconnect=reconnect,
        max_queue=max_queue,
        random=random or random_module.Random().random,
    )
