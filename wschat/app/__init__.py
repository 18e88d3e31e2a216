"""The application layer: the :class:`App` object, identities, permissions, hooks, HTTP API.

It runs in the server layer, beside ``wschat/server/``: the server calls
:meth:`App.admit` at each upgrade, an :class:`AppSession` per connection for
every text frame, and :meth:`App.handle_api` for ``/api/``. The pure chat rules
(``wschat/chat/``) never import it.
"""

from .api import (
    ApiCall,
    GetHistory,
    GetPresence,
    ListRooms,
    PostMessage,
    is_api_path,
)
from .app import App, upgrade_refusal
from .config import AUTH_MODES, CLI_OPTIONS, AppConfig, AuthMode
from .credentials import UpgradeRequest, find_token, redact_query, redact_target
from .ephemeral import TYPING, EphemeralType
from .errors import AppLoadError, ConfigError
from .identity import (
    CLOSE_FORBIDDEN,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_UNAUTHORIZED,
    Identity,
    Rejection,
)
from .loader import AppRecipe, load_app
from .permissions import Action, default_authorize, direct_room
from .session import (
    Admission,
    AppSession,
    Authenticated,
    Close,
    JoinRoom,
    LeaveRoom,
    Outcome,
    Publish,
    Relay,
    Reply,
    close_deadline,
)
from .tokens import JwtVerifier

__all__ = [
    "AUTH_MODES",
    "CLI_OPTIONS",
    "CLOSE_FORBIDDEN",
    "CLOSE_TOKEN_EXPIRED",
    "CLOSE_UNAUTHORIZED",
    "TYPING",
    "Action",
    "Admission",
    "ApiCall",
    "App",
    "AppConfig",
    "AppLoadError",
    "AppRecipe",
    "AppSession",
    "AuthMode",
    "Authenticated",
    "Close",
    "ConfigError",
    "EphemeralType",
    "GetHistory",
    "GetPresence",
    "Identity",
    "JoinRoom",
    "JwtVerifier",
    "LeaveRoom",
    "ListRooms",
    "Outcome",
    "PostMessage",
    "Publish",
    "Rejection",
    "Relay",
    "Reply",
    "UpgradeRequest",
    "close_deadline",
    "default_authorize",
    "direct_room",
    "find_token",
    "is_api_path",
    "load_app",
    "redact_query",
    "redact_target",
    "upgrade_refusal",
]
