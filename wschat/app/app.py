"""The application object: configuration, hub, and the app's hooks, in one value.

::

    from wschat import App

    async def moderate(identity, room, text):
        if "spam" in text:
            raise Rejection("moderated", "no spam here")
        return text

    app = App(on_message=moderate)          # wschat serve myproject.chat:app

Hooks are plain callables, sync or async, given to the constructor or set as
attributes; each has one documented contract (docs/reference-hooks.md):

- ``authenticate(request) -> Identity | None`` at the upgrade (None: no
  credentials; raise :class:`Rejection` to refuse with its status);
- ``verify_token(token) -> Identity`` for a token from anywhere (the default
  ``authenticate`` and the ``auth`` message use it);
- ``authorize(identity, action, room) -> bool`` per ``join``/``say``/``history``;
- ``on_message(identity, room, text) -> str`` before a message is published:
  return the text to publish (rewritten or not), or raise :class:`Rejection`.

The server layer calls them through :meth:`App.admit`, :class:`AppSession`
(:meth:`App.open_session`) and :meth:`App.handle_api`; chat/ never sees them.

Imports: the server imports this package, so this package imports
``wschat.server`` modules only where they are used (inside functions), never
when it is loaded; ``tests/test_app_layering.py`` holds it to that.
A hook that raises anything but :class:`Rejection` is an app bug: it is logged
and the client gets a refusal, never a broken server.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, Union, cast

import anyio
from anyio.abc import TaskStatus

from ..chat import (
    ChatError,
    ChatSession,
    Position,
    validate_message,
    validate_message_id,
    validate_room,
    validate_username,
)
from ..hub import Hub, open_backend
from ..protocol import Headers
from . import config as app_config
from .api import API_CALLS, execute, route_api
from .config import AppConfig, AuthMode
from .credentials import FIRST_MESSAGE, FIRST_MESSAGE_PARAMETER, UpgradeRequest, find_token
from .ephemeral import TYPING, EphemeralType
from .identity import Identity, Rejection, is_display_name
from .permissions import Action, default_authorize, explain_denial, forbidden
from .session import Admission, AppSession
from .tokens import JwtVerifier

if TYPE_CHECKING:
    from ..server.config import ServerConfig
    from ..server.http import Response
    from ..server.server import Server

logger = logging.getLogger("wschat.app")

T = TypeVar("T")
MaybeAwaitable: TypeAlias = Union[T, Awaitable[T]]  # noqa: UP007 - a generic alias
Authenticate = Callable[[UpgradeRequest], MaybeAwaitable[Identity | None]]
VerifyToken = Callable[[str], MaybeAwaitable[Identity]]
Authorize = Callable[[Identity | None, Action, str], MaybeAwaitable[bool]]
OnMessage = Callable[[Identity, str, str], MaybeAwaitable[str]]


class App:
    """A wschat application (see the module docstring).

    Args:
        config: Server settings (address, limits, hub URL, ...).
        settings: Authentication and HTTP API settings.
        hub: The Hub to use (default: one on ``config.hub_url``, made on first use).
        authenticate: The upgrade hook (default: :meth:`default_authenticate`).
        verify_token: The token hook (default: :meth:`default_verify_token`).
        authorize: The permission hook (default:
            :func:`~wschat.app.permissions.default_authorize`).
        on_message: The message hook (default: none, messages go out as sent).
        typing: Register the ``typing`` ephemeral event type.

    Raises:
        ConfigError: The settings cannot work (one line, for stderr).
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        settings: AppConfig | None = None,
        *,
        hub: Hub | None = None,
        authenticate: Authenticate | None = None,
        verify_token: VerifyToken | None = None,
        authorize: Authorize | None = None,
        on_message: OnMessage | None = None,
        typing: bool = True,
    ) -> None:
        from ..server.config import ServerConfig  # (no server import at load: module docstring)

        self.config = config or ServerConfig()
        self.settings = settings or AppConfig()
        self._hub = hub
        self._hub_given = hub is not None
        self._own_hooks = authenticate is not None or verify_token is not None
        self.authenticate: Authenticate = authenticate or self.default_authenticate
        self.verify_token: VerifyToken = verify_token or self.default_verify_token
        self.authorize: Authorize = authorize or default_authorize
        self.on_message: OnMessage | None = on_message
        self.ephemeral_types: dict[str, EphemeralType] = {}
        if typing:
            self.ephemeral_types[TYPING.name] = TYPING
        self._server: Server | None = None
        self.verifier: JwtVerifier | None = None
        self.auth_mode: AuthMode = "off"
        self._configure()

    def _configure(self) -> None:
        self.verifier = app_config.build_verifier(self.settings)
        self.auth_mode = app_config.check(self.settings, self.config, has_hooks=self._own_hooks)

    @property
    def hub(self) -> Hub:
        """The Hub: the one given, or one on the backend ``config.hub_url`` names."""
        if self._hub is None:
            self._hub = Hub(
                open_backend(
                    self.config.hub_url,
                    history_size=self.config.history_size,
                    history_ttl=self.config.history_ttl,
                    presence_ttl=self.config.presence_ttl,
                    max_idle_rooms=self.config.max_idle_rooms,
                )
            )
        return self._hub

    def override(self, **values: Any) -> None:
        """Change settings by name (a :class:`ServerConfig` or :class:`AppConfig` field).

        ``wschat serve module:app`` calls it with the settings the operator gave,
        which win over the ones the app was made with.

        Raises:
            TypeError: A name that is no setting.
            RuntimeError: The app is serving.
            ConfigError: The settings cannot work together.
        """
        if self._server is not None:
            raise RuntimeError("the app is serving: settings are fixed")
        server_fields = {f.name for f in fields(self.config)}
        for name, value in values.items():
            if name in server_fields:
                setattr(self.config, name, value)
            elif name in app_config.FIELDS:
                setattr(self.settings, name, value)
            else:
                raise TypeError(f"unknown setting {name!r}")
        if not self._hub_given:
            self._hub = None  # made again, from the new settings, on first use
        self._configure()

    def ephemeral(self, name: str, *, rate: float, burst: int, max_data: int = 0) -> EphemeralType:
        """Register an ephemeral event type (see :mod:`wschat.app.ephemeral`).

        Args:
            name: The ``type`` on the wire: 1-32 of ``a-z0-9_``, not a protocol type.
            rate: Events per second per connection (0: no limit).
            burst: Events a connection may send at once.
            max_data: Bytes of JSON ``data`` an event may carry (0: none).

        Raises:
            ValueError: A bad or already registered name, or bad limits.
        """
        kind = EphemeralType(name, rate, burst, max_data)
        if name in self.ephemeral_types:
            raise ValueError(f"ephemeral type {name!r} is registered already")
        self.ephemeral_types[name] = kind
        return kind

    # -- the server's calls ------------------------------------------------------

    async def admit(self, request: UpgradeRequest, url_room: str) -> Admission:
        """Decide a valid upgrade to the chat endpoint: who it is, and whether it may enter.

        Call once per upgrade, before ``accept_websocket``.

        Raises:
            Rejection: Refuse the upgrade with ``status`` (401: no valid token, and
                no ``?auth=message`` promise of a first-message ``auth``;
                403: the URL room is not allowed; 500: the hook failed) and ``reason``.
        """
        identity: Identity | None = None
        if self.auth_mode != "off":
            try:
                # Typed as object: hooks are the app's code, their answers are checked.
                answer: object = await _call(self.authenticate, request)
            except Rejection:
                raise
            except Exception:
                logger.exception("! authenticate hook failed for %s", request.peer)
                raise _hook_failed() from None
            if answer is not None and not isinstance(answer, Identity):
                logger.error(
                    "! authenticate returned %r, not an Identity or None", type(answer).__name__
                )
                raise _hook_failed()
            identity = answer
            if identity is None and self.auth_mode == "required":
                if request.query_values(FIRST_MESSAGE_PARAMETER) == [FIRST_MESSAGE]:
                    return Admission(None, pending=True)
                raise Rejection.unauthorized(
                    "a token is required: send it as Authorization: Bearer JWT, ?token=JWT "
                    'or the cookie, or connect with ?auth=message and send {"type": "auth", '
                    '"token": ...} first'
                )
        denial = await self.check(identity, "join", url_room)
        if denial is not None:
            raise denial
        return Admission(identity)

    def open_session(self, chat: ChatSession, admission: Admission, now: float) -> AppSession:
        """The :class:`AppSession` of a connection just accepted (``now``: ``time.time()``)."""
        return AppSession(self, chat, admission, now)

    async def check(self, identity: Identity | None, action: Action, room: str) -> Rejection | None:
        """Ask the ``authorize`` hook; None when allowed, else the :class:`Rejection` to answer."""
        if self.authorize is default_authorize:  # every frame asks: no hook machinery
            denial = explain_denial(identity, action, room)
            return None if denial is None else Rejection.forbidden(denial)
        try:
            allowed = await _call(self.authorize, identity, action, room)
        except Rejection as exc:
            return exc
        except Exception:
            logger.exception("! authorize hook failed (%s %s)", action, room)
            return Rejection.forbidden("permission check failed: server error")
        return None if allowed is True else forbidden(identity, action, room)

    async def verify(self, token: str) -> Identity:
        """Ask the ``verify_token`` hook.

        Raises:
            Rejection: The token is refused (or the hook failed: logged).
        """
        try:
            # Typed as object: hooks are the app's code, their answers are checked.
            identity: object = await _call(self.verify_token, token)
        except Rejection:
            raise
        except Exception:
            logger.exception("! verify_token hook failed")
            raise Rejection.unauthorized("authentication failed: server error") from None
        if not isinstance(identity, Identity):
            logger.error("! verify_token returned %r, not an Identity", type(identity).__name__)
            raise Rejection.unauthorized("authentication failed: server error")
        return identity

    async def rewrite(self, identity: Identity, room: str, text: str) -> str:
        """Ask the ``on_message`` hook for the text to publish.

        Raises:
            Rejection: The hook refused the message (or failed: logged).
            ChatError: The hook's text is not a valid message (``bad_message``).
        """
        if self.on_message is None:
            return text
        try:
            result: object = await _call(self.on_message, identity, room, text)
        except Rejection:
            raise
        except Exception:
            logger.exception("! on_message hook failed (%s)", room)
            raise Rejection("internal_error", "the message could not be processed") from None
        if not isinstance(result, str):
            logger.error("! on_message returned %r, not a str", type(result).__name__)
            raise Rejection("internal_error", "the message could not be processed")
        return validate_message(result)

    async def handle_api(
        self, method: str, path: str, query: str, headers: Headers, body: bytes
    ) -> Response:
        """Answer one request under ``/api/`` (see :mod:`wschat.app.api`)."""
        routed = route_api(method, path, query, headers, body, self.settings.api_key)
        if isinstance(routed, API_CALLS):
            return await execute(routed, self.hub)
        return routed

    # -- the developer's calls ---------------------------------------------------

    async def publish(
        self,
        room: str,
        text: str,
        *,
        username: str,
        name: str | None = None,
        message_id: str | None = None,
    ) -> Position:
        """Publish ``text`` to ``room`` as ``username``, marked ``"server": true``.

        Works while the app is serving (its hub started). The message goes out
        like any other (seq, history, every node) without the ``on_message`` hook.

        Raises:
            ChatError: A bad room, text, username or id (``code`` says which).
            BackendUnavailable: The message was not published.
        """
        validate_room(room)
        validate_message(text)
        validate_username(username)
        if message_id is not None:
            validate_message_id(message_id)
        if name is not None and not is_display_name(name):
            raise ChatError("bad_name", "name must be 1-64 printable characters")
        return await self.hub.say(room, username, text, message_id, name=name, server=True)

    async def default_authenticate(self, request: UpgradeRequest) -> Identity | None:
        """The built-in ``authenticate``: a token from the header, query or cookie, verified.

        Raises:
            Rejection: A token was given and is not valid.
        """
        token = find_token(request, self.settings.jwt_cookie)
        if token is None:
            return None
        return await self.verify(token)

    def default_verify_token(self, token: str) -> Identity:
        """The built-in ``verify_token``: the configured JWT key's :class:`JwtVerifier`.

        Raises:
            Rejection: The token is not valid, or no key is configured.
        """
        if self.verifier is None:
            raise Rejection.unauthorized("this server has no JWT key to check tokens with")
        return self.verifier.verify(token)

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the server for this app until :meth:`stop` (or cancellation); reports the port."""
        from ..server.server import Server

        server = Server(app=self)  # attaches itself
        try:
            await server.serve(task_status=task_status)
        finally:
            self._server = None

    def attach(self, server: Server) -> None:
        """Called by the :class:`~wschat.server.Server` made for this app (by :meth:`serve`
        or ``wschat serve``): :meth:`stop` then stops it, and settings are fixed."""
        self._server = server

    def stop(self) -> None:
        """Make the server serving this app drain its connections and return."""
        if self._server is not None:
            self._server.stop()


def _hook_failed() -> Rejection:
    """The answer to an upgrade whose ``authenticate`` hook failed (an app bug): 500."""
    return Rejection(
        "internal_error", "authentication failed: server error", status=500, close_code=1011
    )


def upgrade_refusal(rejection: Rejection) -> Response:
    """The HTTP answer to an upgrade :meth:`App.admit` refused.

    ``rejection.status`` with the reason as a text body, and for 401 the
    ``WWW-Authenticate`` challenge RFC 7235 3.1 requires.
    """
    from ..server.http import CONTENT_TYPE_TEXT, Response

    headers = (("www-authenticate", 'Bearer realm="wschat"'),) if rejection.status == 401 else ()
    return Response(rejection.status, f"{rejection.reason}\n".encode(), CONTENT_TYPE_TEXT, headers)


async def _call(hook: Callable[..., MaybeAwaitable[T]], *args: Any) -> T:
    result = hook(*args)
    # A plain answer (the built-in hooks' bool, a rewrite's str) skips the ABC check.
    if type(result) not in _PLAIN and inspect.isawaitable(result):
        result = await result
    return cast(T, result)


_PLAIN = frozenset((bool, str, type(None)))
