"""The client's connection loop: open, run, lose, wait, open again.

Theory of operation
-------------------
One :class:`Supervisor` task runs for the life of a
:class:`~.client.ChatClient`. It opens a connection (:func:`~.link.open_link`),
tells the :class:`~.session.ClientSession` (which re-joins every room with
``since``), and runs it (:meth:`~.link.Link.run`), feeding every text to the
session: its events go to the :class:`~.inbox.Inbox` the user iterates, its
results wake the waiting ``say`` and ``join`` calls (:class:`Waiters`).

When the connection ends it decides: a close code or HTTP status that a new
attempt can get past (:mod:`.backoff`) means waiting a full-jitter delay and
opening the next one; anything else, or the attempts running out, stops the
client with a :class:`~.errors.ClientError` that the iterator and every
waiting call raise. The first connection is never retried: a wrong URL or a
refusal shows at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from ..protocol import TextReceived
from ..protocol.events import Event as ProtocolEvent
from .backoff import Backoff, delay_before_retry, reconnect_after_close
from .errors import ClientError, ConnectError, ConnectionClosedError, HandshakeRejectedError
from .events import Disconnected, Reconnected
from .inbox import Inbox
from .joins import JoinResult
from .link import Link, LinkSettings, open_link
from .outgoing import SayResult
from .session import ClientSession

logger = logging.getLogger("wschat.client")

# The longest a token is renewed ahead of its expiry.
TOKEN_REFRESH_LEAD = 60.0

TokenSource = str | Callable[[], Awaitable[str]]
"""A token, or an async function returning a fresh one for each connection."""


@dataclass(slots=True)
class Waiter:
    """One caller waiting for a join or send result (None: the client stopped)."""

    done: anyio.Event = field(default_factory=anyio.Event)
    result: JoinResult | SayResult | None = None

    def set(self, result: JoinResult | SayResult) -> None:
        """Hand over the result and wake the caller."""
        self.result = result
        self.done.set()


@dataclass(slots=True)
class Waiters:
    """The callers waiting for joins (by room) and for sends (by message id)."""

    joins: dict[str, Waiter] = field(default_factory=dict)
    says: dict[str, Waiter] = field(default_factory=dict)

    def dispatch(self, results: list[JoinResult | SayResult]) -> None:
        """Wake the callers these results are for."""
        for result in results:
            if isinstance(result, JoinResult):
                waiter = self.joins.get(result.room)
            else:
                waiter = self.says.get(result.id)
            if waiter is not None:
                waiter.set(result)

    def __bool__(self) -> bool:
        """True while any caller waits."""
        return bool(self.joins or self.says)

    def wake_all(self) -> None:
        """Wake every caller without a result: the client stopped."""
        for waiter in (*self.joins.values(), *self.says.values()):
            waiter.done.set()


class Supervisor:
    """Keeps a client connected; see the module docstring.

    Args:
        settings: How connections are opened and kept.
        session: The client's chat state.
        token: The auth token or its source.
        reconnect: Backoff between attempts, or None to never reconnect.
        random: Uniform numbers in [0, 1) for the jitter.
        max_queue: Events held for the user before reading pauses.
    """

    def __init__(
        self,
        settings: LinkSettings,
        session: ClientSession,
        token: TokenSource | None,
        reconnect: Backoff | None,
        random: Callable[[], float],
        max_queue: int,
    ) -> None:
        self.settings = settings
        self.session = session
        self.token = token
        self.reconnect = reconnect
        self.random = random
        self.inbox = Inbox(max_queue)
        self.waiters = Waiters()
        self.link: Link | None = None
        """The open connection, if any."""
        self.error: ClientError | None = None
        """Why the client stopped, when its user did not close it."""
        self.closing = False
        self.connected_once = anyio.Event()
        """Set once the first connection is open (or failed: then ``error`` says why)."""
        self.stopped = anyio.Event()
        self._scope = anyio.CancelScope()
        self._authenticated = anyio.Event()
        self._authentications = 0

    def flush(self) -> None:
        """Hand the session's texts to the connection, if there is one."""
        texts = self.session.texts_to_send()
        if self.link is not None:
            for text in texts:
                self.link.send_text(text)

    def dispatch(self) -> None:
        """Wake the callers of the session's new results."""
        self.waiters.dispatch(self.session.results())

    def expect_join(self, room: str) -> Waiter:
        """A caller will wait for the answer to joining ``room``."""
        waiter = self.waiters.joins[room] = Waiter()
        self.inbox.wake()  # the answer must be read, even if the user is not reading
        return waiter

    def expect_say(self, message_id: str) -> Waiter:
        """A caller will wait for the answer to message ``message_id``."""
        waiter = self.waiters.says[message_id] = Waiter()
        self.inbox.wake()
        return waiter

    def close(self) -> bool:
        """Start closing the connection (1000); False when there is none to close."""
        self.closing = True
        self.inbox.wake()
        link = self.link
        if link is None or link.closed is not None:
            return False
        link.close(1000)
        return True

    def stop(self) -> None:
        """Stop now: cancel the loop and end the iterator (no error)."""
        self.closing = True
        self._scope.cancel()
        self.finish(None)

    def finish(self, error: ClientError | None) -> None:
        """The client stops: end the iterator (with ``error``), wake every waiter."""
        if self.stopped.is_set():
            return
        self.error = error
        self.closing = True
        self.stopped.set()
        self.connected_once.set()
        self.inbox.close()
        self.waiters.wake_all()

    async def run(self) -> None:
        """Connect, and reconnect, until stopped; never raises (``error`` says why it stopped)."""
        try:
            with self._scope:
                await self._connect_forever()
        except ClientError as exc:
            self.finish(exc)
        except Exception as exc:
            logger.exception("! the client failed")
            self.finish(ClientError(f"the client failed: {exc!r}"))
        finally:
            self.finish(None)

    async def _connect_forever(self) -> None:
        attempts = 0  # failed in a row, or closed before recovering
        previous: tuple[int, str] | None = None  # how the last connection ended
        while not self._stopping():
            try:
                token = await self._token()
                link = await open_link(self.settings, self.session.url_room, token)
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
            backoff = self.reconnect
            if (
                backoff is None
                or not reconnect_after_close(code, callable(self.token))
                or backoff.gives_up(attempts)
            ):
                raise ConnectionClosedError(code, reason)
            delay = backoff.delay(attempts, self.random)
            self.inbox.put([Disconnected(code, reason, delay)])
            await anyio.sleep(delay)

    async def _token(self) -> str | None:
        """The token for the next connection (or the open one).

        Raises:
            ConnectError: The token function failed: a failure like a refused
                connection, retried with backoff, never the end of the client.
        """
        if not callable(self.token):
            return self.token
        try:
            return await self.token()
        except Exception as exc:
            raise ConnectError(
                self.settings.address.url, f"the token function failed: {exc!r}"
            ) from exc

    async def _keep_token_fresh(self, link: Link) -> None:
        """Send a fresh token before the connection's expires (the server closes 4408 at it)."""
        assert callable(self.token)
        seen = 0
        while True:
            if self.session.authentications == seen:
                await self._authenticated.wait()  # the answer to a token, with its expiry
                continue
            seen = self.session.authentications
            expires = self.session.token_expires
            if expires is None:
                continue  # a token that does not expire
            remaining = expires - time.time()
            # Ahead by a fifth of what is left, at most a minute: a 1-hour token is
            # renewed a minute early, a 10-second one two seconds early.
            await anyio.sleep(max(0.0, remaining - min(TOKEN_REFRESH_LEAD, remaining / 5)))
            try:
                fresh = await self._token()
            except ConnectError as exc:
                logger.info("! %s; keeping the current token", exc)
                await anyio.sleep(min(TOKEN_REFRESH_LEAD, max(remaining / 5, 1.0)))
                continue
            assert fresh is not None
            self.session.authenticate(fresh)
            self.flush()
            logger.info("= sent a fresh token (the current one expires in %.0fs)", remaining)

    def _must_read(self) -> bool:
        # An answer someone waits for, or the close echo, may be in what is not read yet.
        return self.closing or bool(self.waiters)

    def _stopping(self) -> bool:
        return self.closing  # a method: mypy would narrow the attribute across awaits

    def _retry_delay(self, error: ClientError, attempt: int, first: bool) -> float | None:
        """Seconds before the next attempt after ``error``, or None to give up."""
        if first:
            return None
        if isinstance(error, HandshakeRejectedError):
            return delay_before_retry(
                self.reconnect, attempt, self.random, error.status, error.headers
            )
        return delay_before_retry(self.reconnect, attempt, self.random)

    async def _serve(self, link: Link, reconnected: Reconnected | None) -> tuple[int, str, bool]:
        """Run one connection: (close code, reason, whether every room recovered on it)."""
        self.link = link
        self._authentications = 0
        self.session.connection_made(link.url_room, reconnected)
        self.flush()
        self.connected_once.set()
        recovered = False

        async def handle(link: Link, events: list[ProtocolEvent]) -> None:
            nonlocal recovered
            session = self.session
            for event in events:
                if isinstance(event, TextReceived):
                    session.receive_text(event.text)
            self.dispatch()
            self.inbox.put(session.events_received())
            if session.rejoin_failed is not None and link.closed is None:
                # Recovery needs a room this connection could not re-join: start over.
                link.end(1013, session.rejoin_failed)
                link.close(1000, "reconnecting")
            recovered = recovered or session.recovered
            if session.authentications != self._authentications:
                self._authentications = session.authentications
                self._authenticated.set()
                self._authenticated = anyio.Event()
            self.flush()
            await self.inbox.wait_for_room(unless=self._must_read)

        refresh = (self._keep_token_fresh,) if callable(self.token) else ()
        try:
            code, reason = await link.run(handle, *refresh)
        finally:
            self.link = None
            self.session.connection_lost()
        return code, reason, recovered
