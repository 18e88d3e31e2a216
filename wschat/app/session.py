"""One connection as the app sees it: identity, first-message auth, hooks, ephemeral events.

Theory of operation
-------------------
The server makes one :class:`AppSession` per chat connection, from the
:class:`Admission` that :meth:`App.admit <wschat.app.App.admit>` gave at the
upgrade, around the connection's pure :class:`~wschat.chat.ChatSession`. Then,
for every text frame, :meth:`AppSession.handle` parses it once, runs the app's
hooks and the chat rules, and answers with exactly one :data:`Outcome`: what
the server must carry out (publish, join, leave, relay, enter the URL room
after a first-message auth) or send (an ``error`` to this client only), or a
close. It never raises for anything a client sends, and never does I/O itself.

Time is wall-clock seconds (``time.time()``), because token expiry is: the
server's watchdog asks :meth:`AppSession.overdue` now and then, and closes with
4401 (no ``auth`` within the handshake timeout) or 4408 (token expired, no
fresh one came) when it says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..chat import (
    Auth,
    ChatError,
    ChatSession,
    Ephemeral,
    Join,
    Leave,
    Position,
    Say,
    UsernameMemo,
    authenticated_event,
    ephemeral_event,
    error_event,
    parse_frame,
)
from .ephemeral import EphemeralLimiter
from .identity import (
    CLOSE_FORBIDDEN,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    Identity,
    Rejection,
)
from .permissions import Action

if TYPE_CHECKING:
    from .app import App


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer to an accepted upgrade (see :meth:`App.admit <wschat.app.App.admit>`).

    Attributes:
        identity: Who the connection is, when a token came with the upgrade.
        pending: True when the connection must authenticate with its first
            message (``--auth required`` and no token at the upgrade): it must
            not enter its URL room before :class:`Authenticated` says so.
    """

    identity: Identity | None
    pending: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """Send ``payload`` (an encoded ``error`` event) to this connection only."""

    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with ``code`` and ``reason``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Publish:
    """Publish a chat message: ``hub.say(room, username, message, id, name=name)``.

    Acknowledge it to this connection (``ack_event``) when ``id`` is not None.
    """

    room: str
    username: str
    message: str
    id: str | None
    name: str | None


@dataclass(frozen=True, slots=True)
class JoinRoom:
    """Join ``room``, recovering from ``since``; send its history only if ``history``."""

    room: str
    since: Position | None
    history: bool


@dataclass(frozen=True, slots=True)
class LeaveRoom:
    """Leave ``room``."""

    room: str


@dataclass(frozen=True, slots=True)
class Relay:
    """Relay ``payload`` (an ephemeral event) to ``room``'s members but this connection."""

    room: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Authenticated:
    """A token was accepted: send ``payload`` (the ``authenticated`` event) to this connection.

    ``enter`` is the URL room to put the connection in now (after a first-message
    auth), else None. The username is bound: update the connection's presence.
    """

    identity: Identity
    payload: bytes
    enter: str | None


Outcome = Reply | Close | Publish | JoinRoom | LeaveRoom | Relay | Authenticated
"""What :meth:`AppSession.handle` asks the server to do with one frame."""


def close_deadline(identity: Identity | None, leeway: float) -> float | None:
    """When a connection of ``identity`` must close unless a fresh token came in.

    Wall-clock seconds (``exp`` plus the clock leeway), or None for an anonymous
    identity or a token without ``exp``.
    """
    if identity is None or not identity.authenticated or identity.expires_at is None:
        return None
    return identity.expires_at + leeway


class AppSession:
    """The app's rules for one chat connection (see the module docstring).

    Args:
        app: The application.
        chat: The connection's chat session (its URL room, rooms, username).
        admission: What :meth:`App.admit` answered at the upgrade.
        now: Wall-clock time (``time.time()``) of the upgrade.
    """

    def __init__(self, app: App, chat: ChatSession, admission: Admission, now: float) -> None:
        self.app = app
        self.chat = chat
        self.identity: Identity | None = None
        self._anonymous: Identity | None = None
        self.pending_until = now + app.config.handshake_timeout if admission.pending else None
        """While first-message authentication is awaited: the time it must arrive by."""
        self._limiter = EphemeralLimiter(app.ephemeral_types, now)
        self._ephemeral_names = frozenset(app.ephemeral_types)
        self._usernames = UsernameMemo()
        if admission.identity is not None:
            self._bind(admission.identity)

    def greeting(self) -> bytes | None:
        """The ``authenticated`` event to send first, when the upgrade carried a token."""
        return self._authenticated_event() if self.identity is not None else None

    def deadline(self) -> float | None:
        """The next wall-clock time :meth:`overdue` may answer a close (None: never)."""
        if self.pending_until is not None:
            return self.pending_until
        return close_deadline(self.identity, self.app.settings.jwt_leeway)

    def overdue(self, now: float) -> Close | None:
        """The close this connection is due at ``now``: 4401 or 4408; None when none is."""
        if self.pending_until is not None:
            if now >= self.pending_until:
                return Close(CLOSE_UNAUTHORIZED, "no auth message within the handshake timeout")
            return None
        deadline = close_deadline(self.identity, self.app.settings.jwt_leeway)
        if deadline is not None and now >= deadline:
            return Close(CLOSE_TOKEN_EXPIRED, "token expired: send a fresh auth message before exp")
        return None

    async def handle(self, text: str, now: float) -> Outcome:
        """Carry one client text frame through parsing, hooks and chat rules.

        Args:
            text: The frame.
            now: Wall-clock time (``time.time()``).
        """
        try:
            frame = parse_frame(text, self._ephemeral_names, self._usernames)
        except ChatError as exc:
            if self.pending_until is not None:
                return Close(CLOSE_UNAUTHORIZED, f"authenticate first: {exc.reason}")
            return _error(exc.code, exc.reason, exc.id)
        if isinstance(frame, Auth):
            self.chat.legacy = False
            return await self._authenticate(frame.token)
        if self.pending_until is not None:
            return Close(CLOSE_UNAUTHORIZED, 'authenticate first: {"type": "auth", "token": ...}')
        if isinstance(frame, Ephemeral):
            self.chat.legacy = False
            return await self._ephemeral(frame, now)
        try:
            return await self._command(frame)
        except (ChatError, Rejection) as exc:
            return _refusal(frame, exc.code, exc.reason, self.chat.url_room)

    # -- auth ------------------------------------------------------------------

    async def _authenticate(self, token: str) -> Outcome:
        if self.app.auth_mode == "off":
            return _error("bad_type", "authentication is off on this server")
        try:
            identity = await self.app.verify(token)
        except Rejection as exc:
            if self.pending_until is not None:
                return Close(CLOSE_UNAUTHORIZED, exc.reason)
            # A failed refresh: the connection goes on until its token expires.
            return _error(exc.code, exc.reason)
        # (Nothing is bound while first-message auth is pending: no frame got this far.)
        bound = self.identity.user_id if self.identity is not None else self.chat.username
        if bound is not None and identity.user_id != bound:
            return _error(
                "username_mismatch",
                f"this connection is {bound!r}: a token for another user cannot change it",
            )
        enter = None
        if self.pending_until is not None:
            room = self.chat.url_room
            denial = await self.app.check(identity, "join", room)
            if denial is not None:
                return Close(CLOSE_FORBIDDEN, denial.reason)
            self.pending_until = None
            enter = room
        self._bind(identity)
        return Authenticated(identity, self._authenticated_event(), enter)

    def _bind(self, identity: Identity) -> None:
        self.identity = identity
        self.chat.username = identity.user_id

    def _authenticated_event(self) -> bytes:
        identity = self.identity
        assert identity is not None
        expires = int(identity.expires_at) if identity.expires_at is not None else None
        return authenticated_event(identity.user_id, identity.name, expires)

    # -- chat ------------------------------------------------------------------

    def _acting(self, username: str | None = None) -> Identity | None:
        """The identity hooks see: the token's, or an anonymous one for a chosen name."""
        if self.identity is not None:
            return self.identity
        name = self.chat.username or username
        if name is None:
            return None
        if self._anonymous is None or self._anonymous.user_id != name:
            self._anonymous = Identity.anonymous(name)  # made once per name, not per frame
        return self._anonymous

    async def _command(self, command: Join | Say | Leave) -> Outcome:
        if isinstance(command, Leave):
            self.chat.apply(command)
            return LeaveRoom(command.room)
        self._guests_read_only(command)
        identity = self._acting(command.username)
        if isinstance(command, Join):
            await self._require(identity, "join", command.room)
            self.chat.apply(command)
            history = await self.app.check(identity, "history", command.room) is None
            return JoinRoom(command.room, command.since, history)
        room = command.room or self.chat.url_room
        denial = await self.app.check(identity, "say", room)
        if denial is not None:
            raise denial
        checked = self.chat.apply(command)
        assert isinstance(checked, Say) and checked.username is not None
        sender = self._acting()
        assert sender is not None
        text = checked.message
        if self.app.on_message is not None:
            try:
                text = await self.app.rewrite(sender, room, text)
            except ChatError as exc:  # the rewrite is no valid message (a Rejection goes up)
                return _error(exc.code, exc.reason, checked.id)
        name = self.identity.name if self.identity is not None else None
        return Publish(room, checked.username, text, checked.id, name)

    def _guests_read_only(self, frame: Join | Say | Ephemeral) -> None:
        """Under ``--auth optional`` a connection without a token is a guest: it may
        join rooms and read, but not speak or take a name (it could take a signed-in
        user's; a name is proven only by a token).

        Raises:
            Rejection: ``unauthorized``, for a message, an event, or a join that names a user.
        """
        if self.app.auth_mode != "optional" or self.identity is not None:
            return
        if isinstance(frame, Join) and frame.username is None:
            return
        raise Rejection.unauthorized(
            "sign in to speak: without a token this connection may read but not send or pick a name"
        )

    async def _require(self, identity: Identity | None, action: Action, room: str) -> None:
        denial = await self.app.check(identity, action, room)
        if denial is not None:
            raise denial

    async def _ephemeral(self, event: Ephemeral, now: float) -> Outcome:
        room = event.room or self.chat.url_room
        try:
            return await self._relay(event, room, now)
        except Rejection as exc:
            return _refusal(event, exc.code, exc.reason, room)

    async def _relay(self, event: Ephemeral, room: str, now: float) -> Outcome:
        self._guests_read_only(event)
        if room not in self.chat.rooms:
            raise Rejection("not_joined", f"join room {room!r} before sending to it")
        username = self.chat.username
        if username is None:
            raise Rejection("no_username", "send a username (in a join or message) first")
        kind = self.app.ephemeral_types[event.kind]
        if event.data is not None and len(event.data) > kind.max_data:
            limit = f"at most {kind.max_data} bytes of" if kind.max_data else "no"
            raise Rejection("bad_data", f"{kind.name} events carry {limit} data")
        denial = await self.app.check(self._acting(), "say", room)
        if denial is not None:
            raise denial
        if not self._limiter.allow(kind.name, now):
            raise Rejection(
                "rate_limited",
                f"over {kind.rate:g} {kind.name} events/s (burst {kind.burst}): dropped",
            )
        name = self.identity.name if self.identity is not None else None
        return Relay(room, ephemeral_event(kind.name, room, username, name, event.data))


def _refusal(frame: Join | Say | Leave | Ephemeral, code: str, reason: str, url_room: str) -> Reply:
    """An ``error`` that names the frame it refuses: its type, room and message id."""
    if isinstance(frame, Say):
        return Reply(error_event(code, reason, frame.id, "message", frame.room or url_room))
    if isinstance(frame, Ephemeral):
        return Reply(error_event(code, reason, None, frame.kind, frame.room or url_room))
    kind = "join" if isinstance(frame, Join) else "leave"
    return Reply(error_event(code, reason, None, kind, frame.room))


def _error(code: str, reason: str, message_id: str | None = None) -> Reply:
    return Reply(error_event(code, reason, message_id))
