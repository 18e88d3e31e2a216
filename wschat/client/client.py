"""The anyio half of the client: :func:`connect` and :class:`ChatClient` (asyncio, uvloop, trio).

Theory of operation
-------------------
A :class:`ChatClient` owns one task group for its whole life, entered with
``async with``. In it one supervisor task opens connections one after the
other (:mod:`.link`: TCP, TLS, handshake, then reader, writer and keepalive)
and feeds what they read to the sans-IO :class:`~.session.ClientSession`,
which keeps the rooms, positions and unsettled messages across connections.
The session's events go to the :class:`~.inbox.Inbox` the user iterates;
its results wake the callers of :meth:`~ChatClient.say` and
:meth:`~ChatClient.join`.

When a connection ends, the supervisor waits (full-jitter backoff) and opens
the next one; the session re-joins every room with ``since`` and what was
missed comes out of the iterator, each message once. Nothing a connection
raises reaches the user's code as such: what cannot be retried ends the
iterator (and every waiting call) with a :class:`~.errors.ClientError`.
There is no global state: everything belongs to one client.
"""

from __future__ import annotations

import logging
import random as random_module
import secrets
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from ..chat import Position
from ..protocol import TextReceived
from ..protocol.events import Event as ProtocolEvent
from .backoff import Backoff, reconnect_after_close, reconnect_after_status, retry_after
from .errors import (
    ClientError,
    ConnectError,
    ConnectionClosedError,
    HandshakeRejectedError,
    JoinError,
    SayError,
)
from .events import Disconnected, Event, Reconnected
from .inbox import Inbox
from .link import Link, LinkSettings, open_link
from .session import ClientSession, JoinResult, SayResult
from .url import parse_server_url

logger = logging.getLogger("wschat.client")

TokenSource = str | Callable[[], Awaitable[str]]
"""A token, or an async function returning a fresh one for each connection."""

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
# The server caps incoming messages at 64 KiB, but a history of 100 messages of
# 4,096 characters can be ~1.3 MiB as one frame.
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024
# Before the one retry of a message refused with ``unavailable``: long enough for
# the hub's Redis client to reconnect after a blip, short enough not to matter.
UNAVAILABLE_RETRY_DELAY = 0.5


def connect(
    url: str,
    *,
    room: str | Sequence[str] = "lobby",
    username: str,
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
        username: The name to chat under (1-32 printable characters).
        token: An auth token, sent as ``?token=`` on each connection; or an async
            function that returns a fresh one each time (then a close with 4408,
            token expired, reconnects with a new token).
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
        max_message_size: Cap on one incoming message, bytes (1009 over it).
        compression: Offer permessage-deflate.
        max_queue: Events held for a user who is not reading before reading pauses.
        random: Source of uniform numbers in [0, 1) for the backoff jitter
            (default: a private ``random.Random``).

    Raises:
        ValueError: A bad URL, room name or username (nothing was sent).
    """
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


@dataclass(slots=True)
class _Waiter:
    """One caller waiting for a join or send result."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: JoinResult | SayResult | None = None

    def set(self, result: JoinResult | SayResult) -> None:
        self.result = result
        self.done.set()


class ChatClient:
    """A connection to a wschat server that outlives restarts; made by :func:`connect`.

    Iterate over it for :mod:`~wschat.client.events`. Enter and leave it in
    the same task; its methods may be called from any task of that event loop.
    """

    def __init__(
        self,
        settings: LinkSettings,
        *,
        rooms: Sequence[str],
        username: str,
        token: TokenSource | None,
        reconnect: Backoff | None,
        max_queue: int,
        random: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._session = ClientSession(username, rooms, secrets.token_urlsafe(6))
        self._default_room = self._session.url_room
        self._token = token
        self._reconnect = reconnect
        self._max_queue = max_queue
        self._random = random
        self._link: Link | None = None
        self._join_waiters: dict[str, _Waiter] = {}
        self._say_waiters: dict[str, _Waiter] = {}
        self._closing = False
        self._error: ClientError | None = None
        """Why the client stopped, when its user did not close it."""
        # Made on entering: anyio objects need the running event loop.
        self._group: TaskGroup | None = None
        self._tasks: anyio.CancelScope
        self._inbox: Inbox
        self._connected_once: anyio.Event
        self._stopped: anyio.Event

    # -- public state --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL."""
        return self._settings.address.url

    @property
    def username(self) -> str:
        """The username this client chats under."""
        return self._session.username

    @property
    def rooms(self) -> tuple[str, ...]:
        """The rooms this client is in (or joining), in the order joined."""
        return self._session.rooms

    @property
    def connected(self) -> bool:
        """True while a connection is open (False while reconnecting)."""
        return self._session.connected

    def position(self, room: str) -> Position | None:
        """Where the client is in ``room``: its last message yielded (or its history's end)."""
        return self._session.position(room)

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> ChatClient:
        if self._group is not None:
            raise RuntimeError("a ChatClient can be entered once")
        self._inbox = Inbox(self._max_queue)
        self._tasks = anyio.CancelScope()
        self._connected_once = anyio.Event()
        self._stopped = anyio.Event()
        for room in self._session.rooms:
            self._join_waiters[room] = _Waiter()
        group = self._group = anyio.create_task_group()
        await group.__aenter__()
        try:
            group.start_soon(self._supervise)
            await self._connected_once.wait()  # open_link() is bounded by the open timeout
            if self._error is not None:
                raise self._error
            with anyio.move_on_after(self._settings.open_timeout) as waiting:
                for room, waiter in list(self._join_waiters.items()):
                    await self._await_join(room, waiter)
            if waiting.cancelled_caught:
                timeout = self._settings.open_timeout
                raise ConnectError(self.url, f"the joins got no answer within {timeout:g} s")
        except BaseException as exc:
            self._stop_now()
            await self._exit_group(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        await self._exit_group(exc)
        return None

    async def _exit_group(self, exc: BaseException | None) -> None:
        """Leave the task group once its tasks are stopped.

        The user's code ran inside it; only a cancellation is passed on (so that
        its scope can tell whose it is): anyio would wrap any other exception in
        an ExceptionGroup, and the user's own exception must come out unchanged.
        """
        assert self._group is not None
        cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
        if cancelled and exc is not None:
            await self._group.__aexit__(type(exc), exc, exc.__traceback__)
        else:
            await self._group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the connection (1000) and stop reconnecting. Idempotent.

        Waits up to the close timeout for the server's half of the close.
        """
        self._closing = True
        link = self._link
        with anyio.CancelScope(shield=True):
            if link is not None and link.closed is None:
                link.close(1000)
                with anyio.move_on_after(self._settings.close_timeout):
                    await self._stopped.wait()
        self._stop_now()

    def _stop_now(self) -> None:
        # Only the client's own tasks: the user's code in ``async with`` goes on.
        self._closing = True
        if self._group is not None:
            self._tasks.cancel()
            self._finish(None)

    # -- commands ------------------------------------------------------------------

    async def say(self, text: str, room: str | None = None) -> Position:
        """Send ``text`` to ``room`` (default: the first room) and wait until it is published.

        The message carries an id. It is settled by the server's ``ack``; after
        a reconnect, by its copy in the recovered history, or else it is sent
        again with the same id. Refused with ``unavailable`` (the hub backend is
        down), it is sent once more after a moment.

        Returns:
            Where it was published in the room.

        Raises:
            SayError: It was refused; ``code`` says why (``rate_limited``,
                ``bad_message``, ``not_joined``, ``unavailable``, ...).
            ConnectionClosedError: The client stopped before it was settled.
        """
        self._check_usable()
        message_id = self._session.say(room or self._default_room, text)
        waiter = self._say_waiters[message_id] = _Waiter()
        self._flush()
        try:
            while True:
                result = await self._wait(waiter)
                assert isinstance(result, SayResult)
                if not result.retry:
                    break
                await anyio.sleep(UNAVAILABLE_RETRY_DELAY)
                waiter = self._say_waiters[message_id] = _Waiter()
                self._session.resend(message_id)
                self._flush()
        finally:
            self._say_waiters.pop(message_id, None)
            self._session.forget(message_id)
        if result.error is not None:
            raise SayError(result.error.code, result.error.reason, message_id)
        assert result.position is not None
        return result.position

    async def join(self, room: str) -> None:
        """Join ``room`` and wait for the server's answer.

        Its :class:`~.events.History` and :class:`~.events.Presence` come
        through the iterator. Returns at once when already in the room.

        Raises:
            ValueError: Not a valid room name.
            JoinError: The server refused (``forbidden``, ``too_many_rooms``, ...).
        """
        self._check_usable()
        waiter = self._join_waiters.get(room)
        if self._session.join(room):
            waiter = self._join_waiters[room] = _Waiter()
            self._flush()
        if waiter is not None:
            await self._await_join(room, waiter)

    def leave(self, room: str) -> None:
        """Leave ``room``: its events stop; its unsettled messages fail with ``not_joined``."""
        self._session.leave(room)
        self._dispatch_results()
        self._flush()

    def typing(self, room: str | None = None) -> None:
        """Tell ``room`` (default: the first room) that this user is typing.

        Sent at most every few seconds per room however often it is called,
        and only while connected: call it on every keystroke.
        """
        if self._session.typing(room or self._default_room, anyio.current_time()):
            self._flush()

    # -- iteration -----------------------------------------------------------------

    def __aiter__(self) -> ChatClient:
        return self

    async def __anext__(self) -> Event:
        """The next event.

        Raises:
            StopAsyncIteration: The client was closed.
            ClientError: The client stopped on its own: the connection closed
                and could not be reopened (:class:`~.errors.ConnectionClosedError`,
                :class:`~.errors.HandshakeRejectedError`, ...).
        """
        if self._group is None:
            raise RuntimeError("use the client in 'async with wschat.client.connect(...)'")
        try:
            return await self._inbox.get()
        except anyio.EndOfStream:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

    # -- waiting -------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._group is None:
            raise RuntimeError("use the client in 'async with wschat.client.connect(...)'")
        if self._error is not None:
            raise self._error
        if self._closing:
            raise ConnectionClosedError(1000, "the client was closed")

    async def _wait(self, waiter: _Waiter) -> JoinResult | SayResult:
        await waiter.done.wait()
        if waiter.result is None:  # woken by _finish()
            self._check_usable()
        assert waiter.result is not None
        return waiter.result

    async def _await_join(self, room: str, waiter: _Waiter) -> None:
        try:
            result = await self._wait(waiter)
        finally:
            if self._join_waiters.get(room) is waiter:
                del self._join_waiters[room]
        if result.error is not None:
            raise JoinError(room, result.error.code, result.error.reason)

    def _dispatch_results(self) -> None:
        for result in self._session.results():
            if isinstance(result, JoinResult):
                waiter = self._join_waiters.get(result.room)
            else:
                waiter = self._say_waiters.get(result.id)
            if waiter is not None:
                waiter.set(result)

    def _finish(self, error: ClientError | None) -> None:
        """The client stops: end the iterator (with ``error``), wake every waiter."""
        if self._stopped.is_set():
            return
        self._error = error
        self._closing = True
        self._stopped.set()
        self._connected_once.set()
        self._inbox.close()
        for waiter in (*self._join_waiters.values(), *self._say_waiters.values()):
            waiter.done.set()

    # -- the connection loop -------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            with self._tasks:
                await self._connect_forever()
        except ClientError as exc:
            self._finish(exc)
        except Exception as exc:
            logger.exception("! the client failed")
            self._finish(ClientError(f"the client failed: {exc!r}"))
        finally:
            self._finish(None)

    async def _connect_forever(self) -> None:
        attempts = 0  # failed in a row, or closed before recovering
        previous: tuple[int, str] | None = None  # how the last connection ended
        while not self._stopping():
            try:
                token = await self._fresh_token()
                link = await open_link(self._settings, self._session.url_room, token)
            except ClientError as exc:
                attempts += 1
                delay = self._retry_delay(exc, attempts, first=previous is None)
                if delay is None:
                    raise
                logger.info("! %s; retrying in %.1fs", exc, delay)
                await anyio.sleep(delay)
                continue
            reconnected = Reconnected(attempts, *previous) if previous is not None else None
            code, reason, recovered = await self._serve(link, reconnected)
            if self._stopping():
                return
            logger.info("x connection closed: %d %s", code, reason)
            previous = (code, reason)
            attempts = 1 if recovered else attempts + 1
            backoff = self._reconnect
            if (
                backoff is None
                or not reconnect_after_close(code, callable(self._token))
                or backoff.gives_up(attempts)
            ):
                raise ConnectionClosedError(code, reason)
            delay = backoff.delay(attempts, self._random)
            self._inbox.put([Disconnected(code, reason, delay)])
            await anyio.sleep(delay)

    def _stopping(self) -> bool:
        return self._closing

    async def _fresh_token(self) -> str | None:
        return await self._token() if callable(self._token) else self._token

    def _retry_delay(self, error: ClientError, attempt: int, first: bool) -> float | None:
        """Seconds before the next attempt after ``error``, or None to give up."""
        backoff = self._reconnect
        if first or backoff is None or backoff.gives_up(attempt):
            return None  # the first connection fails loudly: a wrong URL shows at once
        delay = backoff.delay(attempt, self._random)
        if isinstance(error, HandshakeRejectedError):
            if not reconnect_after_status(error.status):
                return None
            wanted = retry_after(error.headers)
            if wanted is not None:
                delay = max(delay, min(wanted, backoff.maximum))
        return delay

    async def _serve(self, link: Link, reconnected: Reconnected | None) -> tuple[int, str, bool]:
        """Run one connection: (close code, reason, whether every room recovered on it)."""
        self._link = link
        self._session.connection_made(link.url_room, reconnected)
        self._flush()
        self._connected_once.set()
        recovered = False

        async def handle(link: Link, events: list[ProtocolEvent]) -> None:
            nonlocal recovered
            session = self._session
            for event in events:
                if isinstance(event, TextReceived):
                    session.receive_text(event.text)
            self._dispatch_results()
            self._inbox.put(session.events_received())
            if session.rejoin_failed is not None and link.closed is None:
                # Recovery needs a room this connection could not re-join: start over.
                link.end(1013, session.rejoin_failed)
                link.close(1000, "reconnecting")
            recovered = recovered or session.recovered
            self._flush()
            await self._inbox.wait_for_room()

        try:
            code, reason = await link.run(handle)
        finally:
            self._link = None
            self._session.connection_lost()
        return code, reason, recovered

    def _flush(self) -> None:
        """Hand the session's texts to the connection, if there is one."""
        texts = self._session.texts_to_send()
        link = self._link
        if link is not None:
            for text in texts:
                link.send_text(text)
