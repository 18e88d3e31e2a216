"""``wschat serve ...``: flags, ``WSCHAT_*`` environment variables, signals, workers.

Every operator mistake ends in one line on stderr and a non-zero exit: a bad
flag or ``WSCHAT_*`` value (exit 2, before anything starts), and what serving
reveals, such as a port in use or an unreachable hub (exit 1; see
:mod:`wschat.startup`). Never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import anyio

from . import __version__, flags
from .app import CLI_OPTIONS as APP_OPTIONS
from .app import App, AppConfig, AppLoadError, AppRecipe, ConfigError
from .client import commands as client_commands
from .flags import count, count_or_zero, non_negative, port, positive, text
from .server import Server, ServerConfig
from .server.descriptors import connection_cap, raise_open_file_limit
from .startup import StartupError, check_before_serving, describe_startup_failure

logger = logging.getLogger("wschat")

_DEFAULTS = ServerConfig()
_APP_DEFAULTS = AppConfig()

# How often a worker copies the Hub's counters into the shared metrics files.
_METRICS_SYNC_INTERVAL = 1.0


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
    ("--max-connections", "max_connections", count, "open connections at most (then 503)"),
    ("--ping-interval", "ping_interval", positive, "seconds between keepalive pings"),
    ("--pong-wait", "pong_wait", positive, "seconds of client silence before closing with 1011"),
    ("--write-timeout", "write_timeout", positive, "seconds a blocked send may take"),
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


def build_parser() -> argparse.ArgumentParser:
    """The ``wschat`` argument parser (defaults come from ``WSCHAT_*`` when set)."""
    parser = flags.Parser(
        prog="wschat",
        description="wschat: a real-time chat server. Open http://HOST:PORT/ in two tabs.",
        epilog="Every flag has an environment equivalent: --max-message-size is "
        "WSCHAT_MAX_MESSAGE_SIZE, --hub is WSCHAT_HUB_URL. Flags win over the environment.",
    )
    parser.add_argument("--version", action="version", version=f"wschat {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the chat page and the WebSocket endpoint /ws",
        formatter_class=flags.HelpFormatter,
    )
    add_serve_arguments(serve)
    client_commands.add_commands(commands)  # wschat chat, wschat say
    return parser


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


async def run_server(app: App, on_ready: Callable[[], None] | None = None) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then drain gracefully.

    Args:
        app: The application (its ``config`` holds the server settings).
        on_ready: Called once the server listens (and its hub is connected).

    Raises:
        StartupError: The server could not start (port in use, hub unreachable...).
    """
    config = app.config
    server = Server(app=app)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as group:

            async def serve(*, task_status: anyio.abc.TaskStatus[int]) -> None:
                await server.serve(task_status=task_status)
                group.cancel_scope.cancel()  # drained: stop listening for signals

            try:
                await group.start(serve)
            except Exception as exc:
                line = describe_startup_failure(exc, config)
                if line is None:
                    raise
                raise StartupError(line) from None
            if on_ready is not None:
                on_ready()
            if server.metrics.shared:
                group.start_soon(_sync_metrics_forever, server)
            # Keep the receiver open through the drain: a second signal (a terminal
            # sends SIGINT to every worker, and the parent forwards it) must not
            # interrupt it.
            draining = False
            async for signum in signals:
                if not draining:
                    logger.info("= %s: draining", signal.Signals(signum).name)
                    server.stop()
                    draining = True


async def _sync_metrics_forever(server: Server) -> None:
    while True:
        server.metrics.sync()
        await anyio.sleep(_METRICS_SYNC_INTERVAL)


def run(app: App, on_ready: Callable[[], None] | None = None) -> None:
    """Serve ``app`` until a signal, on ``app.config.event_loop`` (auto: uvloop when installed).

    Raises:
        StartupError: The server could not start.
    """
    loop = app.config.event_loop
    if loop == "auto":
        loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    backend = "trio" if loop == "trio" else "asyncio"
    backend_options = {"use_uvloop": True} if loop == "uvloop" else {}
    try:
        anyio.run(run_server, app, on_ready, backend=backend, backend_options=backend_options)
    except* StartupError as group:
        failure: BaseException = group
        while isinstance(failure, BaseExceptionGroup):
            failure = failure.exceptions[0]
        raise failure from None


def setup_logging(level: str, worker: int | None = None) -> None:
    """Log to stderr; a worker of ``--workers N`` puts its number in every line."""
    tag = f" worker={worker}" if worker is not None else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s{tag} %(name)s %(message)s",
        stream=sys.stderr,
    )


def prepare(config: ServerConfig) -> None:
    """What every process does before serving: raise the descriptor limit, log the cap."""
    limit = raise_open_file_limit()
    cap = connection_cap(config.max_connections, limit)
    if cap < config.max_connections:
        logger.warning(
            "! open-file limit %d: at most %d connections, not --max-connections %d",
            limit,
            cap,
            config.max_connections,
        )


def fail(message: str, status: int = 1) -> int:
    """Print ``wschat: message`` on stderr; return ``status`` for the exit code."""
    print(f"wschat: {message}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wschat`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in client_commands.COMMANDS:
        return client_commands.run_command(args)
    try:
        recipe = AppRecipe(
            args.app,
            config_from_args(args),
            settings_from_args(args),
            explicit_settings(argv),
        )
        app = recipe.build()
    except (ValueError, ConfigError, AppLoadError) as exc:
        return fail(str(exc), 2)
    config = app.config
    if config.workers > 1 and config.hub_url.startswith("memory:"):
        return fail(
            "--workers > 1 needs a shared hub backend (e.g. --hub redis://127.0.0.1:6379/0): "
            "with memory:// each worker would be a separate chat",
            2,
        )
    if urlsplit(config.hub_url).scheme not in ("memory", "redis", "rediss", "redis-cluster"):
        return fail(
            f"unknown hub backend {config.hub_url!r}: use memory://, redis://host:port/db"
            " or redis-cluster://host:port[,host:port...]",
            2,
        )
    try:
        app.hub  # noqa: B018 - makes the backend, which checks its URL
    except ValueError as exc:
        return fail(f"bad hub URL {config.hub_url!r}: {exc}", 2)
    if bool(config.certfile) != bool(config.keyfile):
        return fail("--certfile and --keyfile go together", 2)
    if config.event_loop == "uvloop" and not importlib.util.find_spec("uvloop"):
        return fail("--loop uvloop: uvloop is not installed (pip install 'wschat[uvloop]')", 2)
    if config.event_loop == "trio" and not config.hub_url.startswith("memory:"):
        return fail("--loop trio needs the memory hub: the Redis backend runs on asyncio", 2)
    try:
        check_before_serving(config)
    except StartupError as exc:
        return fail(str(exc))
    if config.workers > 1:
        from .workers import run_workers  # it imports this module

        status: int = run_workers(recipe, config, args.log_level)
        return status
    setup_logging(args.log_level)
    prepare(config)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            run(app)
    except StartupError as exc:
        return fail(str(exc))
    return 0
