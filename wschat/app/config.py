"""The app's settings (authentication, HTTP API key), each with its flag and its checks.

``wschat serve`` maps ``--auth``, ``--jwt-*`` and ``--api-key`` (and their
``WSCHAT_*`` variables) onto :class:`AppConfig` through :data:`CLI_OPTIONS`,
as it maps the server's flags onto :class:`~wschat.server.ServerConfig`.
:func:`check` turns every combination that cannot work into one
:class:`ConfigError` line for stderr.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal

from .errors import ConfigError
from .tokens import DEFAULT_LEEWAY, JwtVerifier

if TYPE_CHECKING:
    from ..server.config import ServerConfig

AuthMode = Literal["off", "optional", "required"]
AUTH_MODES: tuple[AuthMode, ...] = ("off", "optional", "required")
# An API key is a password for every room: long enough that guessing is hopeless
# (16 random characters of base64 are 96 bits).
MIN_API_KEY_LENGTH = 16
# RFC 6265 4.1.1: a cookie name is an RFC 2616 token.
COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def auth_mode(value: str) -> AuthMode:
    """Parse ``--auth``: ``off``, ``optional`` or ``required``.

    Raises:
        ConfigError: Another value (a ValueError, as argparse's ``type=`` expects).
    """
    if value not in AUTH_MODES:
        raise ConfigError(f"--auth must be off, optional or required, not {value!r}")
    return value


@dataclass(slots=True)
class AppConfig:
    """Authentication and HTTP API settings. Flags and ``WSCHAT_*`` variables map onto it.

    Attributes:
        auth: ``off`` (anyone, names chosen by clients: today's chat), ``optional``
            (a token makes an identity; without one, a read-only guest) or ``required``
            (no identity, no chat). None: ``required`` when a JWT key or an
            ``authenticate``/``verify_token`` hook is configured, else ``off``.
        jwt_secret: HS256 secret (at least 32 bytes). Prefer ``WSCHAT_JWT_SECRET``
            to the flag: command lines are visible to every local user.
        jwt_public_key: Path of a PEM public key or certificate (RS256, ES256, ...).
        jwt_audience: The ``aud`` tokens must name.
        jwt_issuer: The ``iss`` tokens must carry.
        jwt_cookie: Name of a cookie that may carry the token.
        jwt_leeway: Seconds of clock difference allowed on ``exp``/``nbf``/``iat``.
        api_key: Enables the HTTP API under ``/api/`` with ``Authorization: Bearer``
            this key (None: ``/api/`` is 404).
    """

    auth: AuthMode | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_cookie: str | None = None
    jwt_leeway: float = DEFAULT_LEEWAY
    api_key: str | None = None


FIELDS = frozenset(f.name for f in fields(AppConfig))

# (flag, AppConfig field, type, help), in the shape of cli.py's _OPTIONS; each
# flag's environment variable is WSCHAT_<FIELD>.
CLI_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--auth", "auth", auth_mode, "off, optional or required (default: required with a JWT key)"),
    ("--jwt-secret", "jwt_secret", str, "HS256 secret, 32+ bytes (prefer the env variable)"),
    ("--jwt-public-key", "jwt_public_key", str, "PEM public key or certificate (RS256/ES256)"),
    ("--jwt-audience", "jwt_audience", str, "the aud tokens must name"),
    ("--jwt-issuer", "jwt_issuer", str, "the iss tokens must carry"),
    ("--jwt-cookie", "jwt_cookie", str, "cookie that may carry the token"),
    ("--jwt-leeway", "jwt_leeway", float, "seconds of clock skew allowed on exp/nbf/iat"),
    ("--api-key", "api_key", str, "enable /api/ with Authorization: Bearer KEY"),
]


def build_verifier(config: AppConfig) -> JwtVerifier | None:
    """The JWT verifier ``config`` describes, or None when it names no key.

    Raises:
        ConfigError: Both a secret and a public key, or a key that cannot be used.
    """
    if config.jwt_secret is not None and config.jwt_public_key is not None:
        raise ConfigError("give --jwt-secret or --jwt-public-key, not both")
    if config.jwt_leeway < 0:
        raise ConfigError("--jwt-leeway must be 0 or more seconds")
    make: Callable[..., JwtVerifier]
    if config.jwt_secret is not None:
        make, key = JwtVerifier.from_secret, config.jwt_secret
    elif config.jwt_public_key is not None:
        make, key = JwtVerifier.from_public_key_file, config.jwt_public_key
    else:
        return None
    return make(
        key, audience=config.jwt_audience, issuer=config.jwt_issuer, leeway=config.jwt_leeway
    )


def check(config: AppConfig, server: ServerConfig, *, has_hooks: bool) -> AuthMode:
    """Check the settings together; return the authentication mode in force.

    Args:
        config: The app settings.
        server: The server settings (for the Origin policy).
        has_hooks: The app brings its own ``authenticate`` or ``verify_token`` hook.

    Raises:
        ConfigError: A combination that cannot work, e.g. ``--auth required``
            with nothing to check tokens with.
    """
    has_key = config.jwt_secret is not None or config.jwt_public_key is not None
    if config.auth is not None:
        auth_mode(config.auth)
    mode: AuthMode = config.auth or ("required" if has_key or has_hooks else "off")
    if mode != "off" and not has_key and not has_hooks:
        raise ConfigError(
            f"--auth {mode} needs --jwt-secret or --jwt-public-key (or an app with an "
            "authenticate hook)"
        )
    if config.jwt_cookie is not None:
        if not COOKIE_NAME.fullmatch(config.jwt_cookie):
            raise ConfigError(f"--jwt-cookie {config.jwt_cookie!r} is not a cookie name")
        if "*" in server.allowed_origins:
            # Browsers send cookies with cross-site WebSocket requests: with any
            # origin allowed, any site could act as the user (cross-site WebSocket
            # hijacking).
            raise ConfigError(
                "--jwt-cookie with --allow-origin '*' would let any site connect as your "
                "users: list the origins instead"
            )
    if config.api_key is not None and len(config.api_key) < MIN_API_KEY_LENGTH:
        raise ConfigError(f"--api-key must be at least {MIN_API_KEY_LENGTH} characters")
    return mode
