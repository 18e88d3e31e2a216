"""Chat dispatch: what a chat client's text message makes the server do.

The app's rules and the pure chat rules decide (:class:`~wschat.app.AppSession`
answers every frame with one outcome); this module applies the rate limits
(per connection, per client address, per user), carries the outcome out on
the Hub and answers the sender (``ack``, ``error``). Each connection's own
limits are a :class:`SenderLimits` the dispatch makes for it when it opens
(:meth:`ChatDispatch.limits_for`). A Hub call that fails for
a reason other than an unavailable backend is a bug: it costs this connection
(closed with 1011) and is logged once, never the server.

Publishes in flight. On a backend whose publish is a round trip (Redis), a
connection does not wait for one message's publish before it reads its next
frame: up to :data:`MAX_IN_FLIGHT` of its messages are queued on the backend
at once (in order: the backend publishes a room's messages in the order they
were queued), and past that the read loop waits for the oldest. Each message's
answer (its ``ack``, or the ``error`` that refused it) is sent once its result
is in and every earlier frame's answer has gone: the sender gets its answers in
the order of its frames, as when each publish was awaited. A frame that does
more than answer (join, leave, a relayed event, authentication, close) waits
until the connection's publishes are all answered, so it sees their outcome as
before. A backend whose publish never suspends (memory) is awaited as it is.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import anyio

from ..app import (
    App,
    Authenticated,
    Close,
    JoinRoom,
    LeaveRoom,
    Outcome,
    Publish,
    Relay,
    Reply,
)
from ..chat import ChatError, Position, ack_event, check_distinct, error_event, peek_message_id
from ..hub import BackendUnavailable, Hub
from .config import ServerConfig
from .metrics import Metrics
from .peer import Peer
from .ratelimit import KeyedRateLimiter, TokenBucket

logger = logging.getLogger("wschat.server")

# Messages of one connection published at once (queued on the backend, not yet
# answered); past it the connection's read loop waits (backpressure). One
# sender's window is one pipeline to Redis and one pub/sub read, so the bound is
# the batch a fan-out gets: measured at C = 1,000 with one sender keeping 128 in
# flight, 32 gave 0.46x the memory hub's deliveries/s, 64 0.58x, 128 0.82x. At
# most 128 messages of 4,096 characters (MAX_MESSAGE_LENGTH: 0.5-2 MiB of UTF-8)
# wait per connection; the default rate limit (burst 20) binds first.
MAX_IN_FLIGHT = 128

# Strikes: rate-limited messages a client may pile up (refilled at one a second)
# before "sustained abuse" closes it with 1008.
STRIKE_REFILL = 1.0


class SenderLimits:
    """One chat connection's own rate limits, as :class:`ChatDispatch` applies them.

    Args:
        messages: Its messages per second (``--rate``, ``--burst``).
        strikes: Rate-limited messages it may pile up before it is closed with 1008.
        client_key: Its address as the per-address limits key it.
    """

    __slots__ = ("client_key", "messages", "strikes")

    def __init__(self, messages: TokenBucket, strikes: TokenBucket, client_key: str) -> None:
        self.messages = messages
        self.strikes = strikes
        self.client_key = client_key


class Answers:
    """One connection's answers not yet sent, in the order of its frames.

    Each entry is ``[payload or None, ready]``; a publish's entry becomes ready
    when its result is in. Ready entries at the head go out at once.
    """

    __slots__ = ("changed", "entries", "in_flight")

    def __init__(self) -> None:
        self.entries: deque[list[bytes | bool | None]] = deque()
        self.in_flight = 0
        """Publishes queued and not yet answered."""
        self.changed: anyio.Event | None = None
        """Set when a publish is answered (the read loop may be waiting)."""


class ChatDispatch:
    """Carries out chat clients' frames.

    Args:
        app: The application (its session per connection answers each frame).
        hub: This node's Hub.
        config: The server settings (rate limits).
        metrics: The server's metrics.
    """

    def __init__(self, app: App, hub: Hub, config: ServerConfig, metrics: Metrics) -> None:
        self.app = app
        self.hub = hub
        self.config = config
        self.metrics = metrics
        self._addresses = KeyedRateLimiter(
            config.address_rate, config.address_burst, config.address_table_size
        )
        self._users = KeyedRateLimiter(
            config.user_rate, config.user_burst, config.address_table_size
        )
        self._keyed_limits = self._addresses.enabled or self._users.enabled
        # With --rate 0 every connection shares this bucket: one that is off never changes.
        self._unlimited = TokenBucket(0, config.burst, 0.0)
        self._answers: dict[Peer, Answers] = {}
        """Connections with publishes in flight (or answers waiting behind one)."""

    def limits_for(self, client_key: str, now: float) -> SenderLimits:
        """A new connection's own limits.

        Args:
            client_key: Its address as the per-address limits key it.
            now: The event loop's clock.
        """
        config = self.config
        if config.rate <= 0:
            return SenderLimits(self._unlimited, self._unlimited, client_key)
        return SenderLimits(
            TokenBucket(config.rate, config.burst, now),
            TokenBucket(STRIKE_REFILL, config.burst, now),
            client_key,
        )

    async def on_text(self, peer: Peer, text: str) -> None:
        """Handle one text message from a chat client."""
        session, app_session = peer.session, peer.app_session
        assert session is not None and app_session is not None
        limits = peer.limits
        # The clock only for limits that are on (the benchmarks run with none).
        now = anyio.current_time() if limits.messages.rate > 0 or self._keyed_limits else 0.0
        if not limits.messages.take(now):
            self._rate_limited(peer, text, now)
            return
        if not self._addresses.take(limits.client_key, now):
            # Maybe a neighbour behind the same NAT: refused, but no strike.
            self.metrics.address_rate_limited.inc()
            reason = f"over {self.config.address_rate:g} messages/s from your address: dropped"
            self._answer(peer, error_event("rate_limited", reason, peek_message_id(text)))
            return
        had_username = session.username is not None
        rooms_before = set(session.rooms)
        message_id: str | None = None
        outcome: Outcome | None = None
        try:
            outcome = await app_session.handle(text, time.time())  # never raises, by contract
            message_id = outcome.id if isinstance(outcome, Publish) else None
            if not isinstance(outcome, (Publish, Reply)) and peer in self._answers:
                await self._all_answered(peer)  # it acts on what its publishes did
            # (A bound name is checked again only on joining a room.)
            if (
                not had_username or isinstance(outcome, JoinRoom)
            ) and not await self._names_distinct(peer, outcome, had_username, rooms_before):
                return
            if not had_username and session.username is not None:
                await self.hub.update_presence(peer)
            await self._carry_out(peer, outcome, now)
        except BackendUnavailable as exc:
            if isinstance(outcome, JoinRoom) and outcome.room not in rooms_before:
                session.rooms.discard(outcome.room)  # the join did not happen
            reason = f"not done, try again: {exc}"
            command, room = _refused(outcome)
            self._answer(peer, error_event("unavailable", reason, message_id, command, room))
        except Exception:
            logger.exception("! conn %s: a frame failed", peer.conn_id)
            peer.close(1011, "internal error")

    async def _names_distinct(
        self, peer: Peer, outcome: Outcome, had_username: bool, rooms_before: set[str]
    ) -> bool:
        """A name a client chose must not look like another present in its rooms
        (UTS #39): checked when the name is bound (every room the connection is
        in) and on joining a room. Names from tokens are the app's and not checked.
        Best effort across nodes: two look-alikes joining at the same moment on
        two nodes may both pass.

        On a look-alike the frame is undone (the name unbound, the room not
        joined), the client told ``name_confusable``, and False returned.
        """
        session, app_session = peer.session, peer.app_session
        assert session is not None and app_session is not None
        username = session.username
        if username is None or (app_session.identity and app_session.identity.authenticated):
            return True
        if not had_username:
            rooms = set(session.rooms)
        elif isinstance(outcome, JoinRoom) and outcome.room not in rooms_before:
            rooms = {outcome.room}
        else:
            return True
        try:
            for room in sorted(rooms):
                check_distinct(username, await self.hub.backend.presence(room), room)
        except (ChatError, BackendUnavailable) as exc:
            # Undone either way: a name is never bound, nor a room joined, unchecked.
            if not had_username:
                session.username = None
            session.rooms.intersection_update(rooms_before)
            if isinstance(exc, BackendUnavailable):
                raise
            message_id = outcome.id if isinstance(outcome, Publish) else None
            command, refused_room = _refused(outcome)
            self._answer(peer, error_event(exc.code, exc.reason, message_id, command, refused_room))
            return False
        return True

    async def _carry_out(self, peer: Peer, outcome: Outcome, now: float) -> None:
        if isinstance(outcome, Publish):
            identity = peer.app_session.identity if peer.app_session else None
            user = f"user:{identity.user_id}" if identity and identity.authenticated else None
            if user is not None and not self._users.take(user, now):
                reason = f"over {self.config.user_rate:g} messages/s for your user: dropped"
                self._answer(
                    peer, error_event("rate_limited", reason, outcome.id, "message", outcome.room)
                )
                return
            if self.hub.pipelined:
                await self._say_soon(peer, outcome)
                return
            position = await self.hub.say(
                outcome.room, outcome.username, outcome.message, outcome.id, name=outcome.name
            )
            if outcome.id is not None:
                peer.send_event(ack_event(outcome.room, position, outcome.id))
        elif isinstance(outcome, Reply):
            self._answer(peer, outcome.payload)
        elif isinstance(outcome, JoinRoom):
            await self.hub.join(peer, outcome.room, outcome.since, history=outcome.history)
        elif isinstance(outcome, LeaveRoom):
            await self.hub.leave(peer, outcome.room)
        elif isinstance(outcome, Relay):
            await self.hub.relay(outcome.room, outcome.payload, exclude=peer)
        elif isinstance(outcome, Authenticated):
            peer.send_event(outcome.payload)
            if outcome.enter is not None:
                await self.hub.enter(peer, outcome.enter)
            await self.hub.update_presence(peer)
        elif isinstance(outcome, Close):
            peer.close(outcome.code, outcome.reason)

    def _rate_limited(self, peer: Peer, text: str, now: float) -> None:
        self.metrics.rate_limited.inc()
        if not peer.limits.strikes.take(now):
            peer.close(1008, "rate limit exceeded repeatedly")
            return
        reason = f"over {self.config.rate:g} messages/s (burst {self.config.burst}): dropped"
        self._answer(peer, error_event("rate_limited", reason, peek_message_id(text)))

    # -- publishes in flight -----------------------------------------------------

    def _answer(self, peer: Peer, payload: bytes) -> None:
        """Send ``payload`` to ``peer`` after the answers to its earlier frames."""
        answers = self._answers.get(peer)
        if answers is None:
            peer.send_event(payload)
        else:
            answers.entries.append([payload, True])

    async def _say_soon(self, peer: Peer, outcome: Publish) -> None:
        """Queue ``outcome``'s publish; wait first while ``peer`` has too many in flight."""
        answers = self._answers.get(peer)
        if answers is None:
            answers = self._answers[peer] = Answers()
        while answers.in_flight >= MAX_IN_FLIGHT:
            changed = answers.changed = anyio.Event()
            await changed.wait()
        entry: list[bytes | bool | None] = [None, False]
        answers.entries.append(entry)
        answers.in_flight += 1
        room, message_id = outcome.room, outcome.id

        def done(result: Position | BackendUnavailable) -> None:
            try:
                if isinstance(result, BackendUnavailable):
                    reason = f"not done, try again: {result}"
                    entry[0] = error_event("unavailable", reason, message_id, "message", room)
                elif message_id is not None:
                    entry[0] = ack_event(room, result, message_id)
                entry[1] = True
                answers.in_flight -= 1
                self._send_ready(peer, answers)
            except Exception:  # a bug costs this connection, never the backend's task
                logger.exception("! conn %s: answering a publish failed", peer.conn_id)
                peer.close(1011, "internal error")

        try:
            self.hub.say_soon(
                room, outcome.username, outcome.message, message_id, done, name=outcome.name
            )
        except Exception as exc:  # never queued: answered now, or the entry waits forever
            logger.exception("! conn %s: publishing failed", peer.conn_id)
            done(BackendUnavailable(f"publishing failed: {exc!r}"))

    def _send_ready(self, peer: Peer, answers: Answers) -> None:
        entries = answers.entries
        while entries and entries[0][1]:
            payload = entries.popleft()[0]
            if isinstance(payload, bytes):
                peer.send_event(payload)
        if not entries and self._answers.get(peer) is answers:
            del self._answers[peer]
        changed = answers.changed
        if changed is not None:
            answers.changed = None
            changed.set()

    async def _all_answered(self, peer: Peer) -> None:
        """Wait until every publish of ``peer`` in flight is answered."""
        answers = self._answers.get(peer)
        while answers is not None and answers.in_flight:
            changed = answers.changed = anyio.Event()
            await changed.wait()
        if answers is not None and self._answers.get(peer) is answers:
            self._send_ready(peer, answers)  # the ready answers left (errors) go now


def _refused(outcome: Outcome | None) -> tuple[str | None, str | None]:
    """The ``command`` and ``room`` an error about ``outcome`` names."""
    if isinstance(outcome, Publish):
        return "message", outcome.room
    if isinstance(outcome, JoinRoom):
        return "join", outcome.room
    if isinstance(outcome, LeaveRoom):
        return "leave", outcome.room
    if isinstance(outcome, Relay):
        return None, outcome.room
    return None, None
