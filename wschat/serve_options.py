"""The flags of ``wschat serve``, their ``WSCHAT_*`` variables, and the settings they make.

Every flag maps onto a :class:`~wschat.server.ServerConfig` or
:class:`~wschat.app.AppConfig` field; its environment variable is
``WSCHAT_<FIELD>``. Flags win over the environment, and both win over a loaded
app's own settings (:func:`explicit_settings`); the defaults do not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from . import flags
from .app import CLI_OPTIONS as APP_OPTIONS
from .app import AppConfig
from .flags import count, count_or_zero, non_negative, port, positive, text
from .server import ServerConfig

_DEFAULTS = ServerConfig()
_APP_DEFAULTS = AppConfig()

# (flag, config field, parse, help). Each flag's environment variable is WSCHAT_<FIELD>.
_OPTIONS: list[tuple[str, str, Callable[[str], Any], str]] = [
    ("--host", "host", text, "address to listen on"),
    ("--port", "port", port, "TCP port (0: any free port)"),
    (
        "--hub",
        "hub_url",
        text,
        "hub backend: memory://, redis://host:port/db or redis-cluster://host:port[,host:port...]",
    ),
    ("--max-message-size", "max_message_size", count, "chat message cap in bytes (1009 over it)"),
    ("--max-request-head", "max_request_head", count, "request line + headers cap in bytes (431)"),
    ("--handshake-timeout", "handshake_timeout", positive, "seconds to send a complete request"),
    ("--max-connections", "max_connections", count, "open WebSockets at most (then 503)"),
    ("--ping-interval", "ping_interval", positive, "seconds between keepalive pings"),
    ("--pong-wait", "pong_wait", positive, "seconds of client silence before closing with 1011"),
    (
        "--write-timeout",
        "write_timeout",
        positive,
        "seconds a client's queued bytes may make no progress before it is dropped",
    ),
    ("--close-timeout", "close_timeout", positive, "seconds to wait for the peer's close frame"),
    ("--outbox-limit", "outbox_limit", count, "bytes queued per client before closing with 1013"),
    ("--rate", "rate", non_negative, "messages per second per connection (0: unlimited)"),
    ("--burst", "burst", count, "messages a connection may send at once"),
    (
        "--address-rate",
        "address_rate",
        non_negative,
        "messages per second per client address, all its connections together (0: unlimited)",
    ),
    ("--address-burst", "address_burst", count, "messages a client address may send at once"),
    (
        "--connect-rate",
        "connect_rate",
        non_negative,
        "new WebSocket connections per second per client address (0: unlimited; then 429)",
    ),
    ("--connect-burst", "connect_burst", count, "connections a client address may open at once"),
    (
        "--user-rate",
        "user_rate",
        non_negative,
        "messages per second per authenticated user, all connections (0: unlimited)",
    ),
    ("--user-burst", "user_burst", count, "messages a user may send at once"),
    (
        "--address-table-size",
        "address_table_size",
        count,
        "client addresses each per-address limit tracks (least recently used forgotten)",
    ),
    ("--drain-timeout", "drain_timeout", non_negative, "seconds to wait for clients on exit"),
    ("--history-size", "history_size", count_or_zero, "messages kept per room"),
    (
        "--history-ttl",
        "history_ttl",
        positive,
        "seconds a message stays in history (default: no expiry)",
    ),
    (
        "--max-idle-rooms",
        "max_idle_rooms",
        count_or_zero,
        "rooms nobody is in whose history the memory hub keeps (least recently used forgotten)",
    ),
    (
        "--presence-ttl",
        "presence_ttl",
        positive,
        "seconds before a dead node's members leave presence (redis hub)",
    ),
    ("--certfile", "certfile", text, "TLS certificate (PEM): serve https:// and wss://"),
    ("--keyfile", "keyfile", text, "TLS private key (PEM, unencrypted)"),
    ("--workers", "workers", count, "processes sharing the port (needs a shared hub, e.g. redis)"),
    (
        "--loop",
        "event_loop",
        flags.event_loop,
        "event loop: auto (uvloop when installed), asyncio, uvloop, or trio (memory hub only)",
    ),
    (
        "--compression-min-size",
        "compression_min_size",
        count_or_zero,
        "with --compression, messages shorter than this many bytes go out uncompressed",
    ),
]


def add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    """The arguments of ``wschat serve`` (defaults come from ``WSCHAT_*`` when set)."""
    serve.add_argument(
        "app",
        nargs="?",
        default=flags.env("app"),
        help="the app to serve, module:attribute (e.g. myproject.chat:app; default: the "
        "built-in chat) [env WSCHAT_APP]",
    )
    for flag, field, parse, description in _OPTIONS:
        serve.add_argument(
            flag,
            dest=field,
            type=flags.for_argparse(parse),
            default=flags.env_default(field, parse, getattr(_DEFAULTS, field)),
            help=f"{description} [env WSCHAT_{field.upper()}]",
        )
    for flag, field, parse, description in APP_OPTIONS:
        serve.add_argument(
            flag,
            dest=field,
            type=flags.for_argparse(parse),
            default=flags.env_default(field, parse, getattr(_APP_DEFAULTS, field)),
            help=f"{description} [env WSCHAT_{field.upper()}]",
        )
    origins = flags.env("allowed_origins")
    serve.add_argument(
        "--allow-origin",
        dest="allowed_origins",
        action="append",
        default=[o.strip() for o in origins.split(",") if o.strip()] if origins else [],
        help="allow this browser origin besides the same origin, e.g. https://app.example.com; "
        "repeatable; '*' allows any [env WSCHAT_ALLOWED_ORIGINS, comma-separated]",
    )
    hosts = flags.env("allowed_hosts")
    serve.add_argument(
        "--allow-host",
        dest="allowed_hosts",
        action="append",
        default=[h.strip() for h in hosts.split(",") if h.strip()] if hosts else [],
        help="answer requests whose Host is this name (besides the bound address, localhost, "
        "127.0.0.1, [::1], and any IP when bound to 0.0.0.0/::); '*.example.com' allows "
        "subdomains, '*' any Host (behind a proxy that rewrites it); repeatable "
        "[env WSCHAT_ALLOWED_HOSTS, comma-separated]",
    )
    serve.add_argument(
        "--trusted-proxy",
        dest="trusted_proxies",
        action="append",
        type=flags.for_argparse(flags.network),
        default=flags.env_default("trusted_proxies", flags.networks, None),
        help="an address or network (e.g. 10.0.0.0/8) of a reverse proxy whose "
        "X-Forwarded-For names the client, for the per-address limits; repeatable "
        f"(default: {', '.join(_DEFAULTS.trusted_proxies)}) "
        "[env WSCHAT_TRUSTED_PROXIES, comma-separated]",
    )
    serve.add_argument(
        "--echo",
        action="store_true",
        default=flags.env_default("echo", flags.boolean, False),
        help="also serve /echo, a WebSocket echo endpoint for conformance tests [env WSCHAT_ECHO]",
    )
    serve.add_argument(
        "--compression",
        action=argparse.BooleanOptionalAction,
        default=_compression_default(),
        help="negotiate permessage-deflate with clients that offer it, compressed once per "
        "broadcast; --no-compression (the default) declines it [env WSCHAT_COMPRESSION]",
    )
    serve.add_argument(
        "--log-level",
        type=flags.for_argparse(flags.log_level),
        default=flags.env_default("log_level", flags.log_level, "info"),
        help=f"logging level: {', '.join(flags.LOG_LEVELS)} [env WSCHAT_LOG_LEVEL]",
    )


def _compression_default() -> object:
    # WSCHAT_NO_COMPRESSION=1 was the way to turn compression off while it was on by
    # default: still read, and it wins over WSCHAT_COMPRESSION.
    legacy = flags.env_default("no_compression", flags.boolean, False)
    if legacy is not False:
        return False if legacy is True else legacy  # True, or the BadEnvironment to report
    return flags.env_default("compression", flags.boolean, _DEFAULTS.compression)


def settings_from_args(args: argparse.Namespace) -> AppConfig:
    """The app's :class:`AppConfig` from parsed arguments (authentication, HTTP API)."""
    return AppConfig(**{f.name: getattr(args, f.name) for f in fields(AppConfig)})


class _Unset(list[str]):
    """The value of a flag the operator did not give (see :func:`explicit_settings`)."""


def explicit_settings(argv: Sequence[str] | None) -> frozenset[str]:
    """The settings the operator gave on the ``serve`` command line or in ``WSCHAT_*``.

    They win over a loaded app's own settings; argparse's defaults do not.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    serve = flags.Parser(prog="wschat serve", add_help=False)
    add_serve_arguments(serve)
    # A list, so that append flags (--allow-host, --allow-origin) can copy and extend it;
    # a copy is not ``unset``, so such a flag counts as given.
    unset: list[str] = _Unset()
    dests = [action.dest for action in serve._actions]
    # argparse leaves alone what the namespace already holds, unless the argument is given.
    namespace = argparse.Namespace(**dict.fromkeys(dests, unset))
    given = vars(serve.parse_args(argv[1:], namespace=namespace))
    settings = {f.name for f in fields(ServerConfig)} | {f.name for f in fields(AppConfig)}
    chosen = {dest for dest in dests if given.get(dest) is not unset or flags.env(dest) is not None}
    if flags.env("no_compression") is not None:
        chosen.add("compression")
    return frozenset(chosen & settings)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from parsed arguments.

    Raises:
        ValueError: A ``WSCHAT_*`` value is invalid; the message names it.
    """
    for value in vars(args).values():
        if isinstance(value, flags.BadEnvironment):
            raise ValueError(value.message)
    names = {f.name for f in fields(ServerConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["allowed_origins"] = tuple(args.allowed_origins)
    values["allowed_hosts"] = tuple(args.allowed_hosts)
    if args.trusted_proxies is None:
        values["trusted_proxies"] = _DEFAULTS.trusted_proxies
    else:
        values["trusted_proxies"] = tuple(args.trusted_proxies)
    return ServerConfig(**values)
