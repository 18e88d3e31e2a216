"""The anyio half of the client: :class:`ChatClient` (asyncio, uvloop, trio).

Theory of operation
-------------------
A :class:`ChatClient` owns one task group for its whole life, entered with
``async with``. In it one :class:`~.supervisor.Supervisor` task opens
connections one after the other (:mod:`.link`: TCP, TLS, handshake, then a
reader, a writer and a keepalive task) and feeds what they read to the
sans-IO :class:`~.session.ClientSession`, which keeps the rooms, positions
and unsettled messages across connections. The session's events go to the
:class:`~.inbox.Inbox` the user iterates; its results wake the callers of
:meth:`~ChatClient.say` and :meth:`~ChatClient.join`.

When a connection ends, the supervisor waits (full-jitter backoff) and opens
the next one; the session re-joins every room with ``since`` and what was
missed comes out of the iterator, each message once. Nothing a connection
raises reaches the user's code as such: what cannot be retried ends the
iterator (and every waiting call) with a :class:`~.errors.ClientError`.
There is no global state: everything belongs to one client.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from types import TracebackType

import anyio
from anyio.abc import TaskGroup

from ..chat import Position
from .backoff import Backoff
from .errors import ConnectError, ConnectionClosedError, JoinError, SayError
from .events import Event
from .joins import JoinResult
from .link import LinkSettings
from .outgoing import SayResult
from .session import ClientSession
from .supervisor import Supervisor, TokenSource, Waiter

# Before the one retry of a message refused with ``unavailable``: long enough for
# the hub's Redis client to reconnect after a blip, short enough not to matter.
UNAVAILABLE_RETRY_DELAY = 0.5


class ChatClient:
    """A connection to a wschat server that outlives restarts; made by :func:`~.connecting.connect`.

    Iterate over it for :mod:`~wschat.client.events`. Enter and leave it in
    the same task; its methods may be called from any task of that event loop.
    """

    def __init__(
        self,
        settings: LinkSettings,
        *,
        rooms: Sequence[str],
        username: str | None,
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
        # Made on entering: anyio objects need the running event loop.
        self._group: TaskGroup | None = None
        self._core: Supervisor | None = None

    # -- public state --------------------------------------------------------------

    @property
    def url(self) -> str:
        """The server URL."""
        return self._settings.address.url

    @property
    def username(self) -> str | None:
        """The username this client chats under (with a token: the one it names,
        known once connected)."""
        return self._session.username

    @property
    def name(self) -> str | None:
        """The display name the server knows this client by (from its token), if any."""
        return self._session.name

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
        core = self._core = Supervisor(
            self._settings,
            self._session,
            self._token,
            self._reconnect,
            self._random,
            self._max_queue,
        )
        joins = {room: core.expect_join(room) for room in self._session.rooms}
        group = self._group = anyio.create_task_group()
        await group.__aenter__()
        try:
            group.start_soon(core.run)
            await core.connected_once.wait()  # open_link() is bounded by the open timeout
            if core.error is not None:
                raise core.error
            with anyio.move_on_after(self._settings.open_timeout) as waiting:
                for room, waiter in joins.items():
                    await self._await_join(room, waiter)
            if waiting.cancelled_caught:
                timeout = self._settings.open_timeout
                raise ConnectError(self.url, f"the joins got no answer within {timeout:g} s")
        except BaseException as exc:
            core.stop()
            await self._exit_group(exc)
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
        await self._exit_group(exc)

    async def _exit_group(self, exc: BaseException | None) -> None:
        """Leave the task group once its tasks are stopped.

        The user's code ran inside it; only a cancellation is passed on (so that
        its scope can tell whose it is): anyio would wrap any other exception in
        an ExceptionGroup, and the user's own exception must come out unchanged.
        """
        assert self._group is not None
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            await self._group.__aexit__(type(exc), exc, exc.__traceback__)
        else:
            await self._group.__aexit__(None, None, None)

    async def aclose(self) -> None:
        """Close the connection (1000) and stop reconnecting. Idempotent.

        Waits up to the close timeout for the server's half of the close.
        """
        core = self._core
        if core is None:
            return
        with anyio.CancelScope(shield=True):
            if core.close():
                with anyio.move_on_after(self._settings.close_timeout):
                    await core.stopped.wait()
        core.stop()  # only the client's own tasks: the user's code goes on

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
        core = self._usable()
        message_id = self._session.say(room or self._default_room, text)
        waiter = core.expect_say(message_id)
        core.flush()
        try:
            while True:
                result = await self._wait(waiter)
                assert isinstance(result, SayResult)
                if not result.retry:
                    break
                await anyio.sleep(UNAVAILABLE_RETRY_DELAY)
                waiter = core.expect_say(message_id)
                self._session.resend(message_id)
                core.flush()
        finally:
            core.waiters.says.pop(message_id, None)
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
        core = self._usable()
        waiter = core.waiters.joins.get(room)
        if self._session.join(room):
            waiter = core.expect_join(room)
            core.flush()
        if waiter is not None:
            await self._await_join(room, waiter)

    def leave(self, room: str) -> None:
        """Leave ``room``: its events stop; its unsettled messages fail with ``not_joined``."""
        core = self._usable()
        self._session.leave(room)
        core.dispatch()
        core.flush()

    def typing(self, room: str | None = None) -> None:
        """Tell ``room`` (default: the first room) that this user is typing.

        Sent at most every few seconds per room however often it is called,
        and only while connected: call it on every keystroke.
        """
        core = self._usable()
        if self._session.typing(room or self._default_room, anyio.current_time()):
            core.flush()

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
        core = self._entered()
        try:
            return await core.inbox.get()
        except anyio.EndOfStream:
            if core.error is not None:
                raise core.error from None
            raise StopAsyncIteration from None

    # -- waiting -------------------------------------------------------------------

    def _entered(self) -> Supervisor:
        if self._core is None:
            raise RuntimeError("use the client in 'async with wschat.client.connect(...)'")
        return self._core

    def _usable(self) -> Supervisor:
        core = self._entered()
        if core.error is not None:
            raise core.error
        if core.closing:
            raise ConnectionClosedError(1000, "the client was closed")
        return core

    async def _wait(self, waiter: Waiter) -> JoinResult | SayResult:
        await waiter.done.wait()
        if waiter.result is None:  # woken because the client stopped
            self._usable()
        assert waiter.result is not None
        return waiter.result

    async def _await_join(self, room: str, waiter: Waiter) -> None:
        joins = self._entered().waiters.joins
        try:
            result = await self._wait(waiter)
        finally:
            if joins.get(room) is waiter:
                del joins[room]
        if result.error is not None:
            raise JoinError(room, result.error.code, result.error.reason)
