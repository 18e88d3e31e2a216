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
from urllib.parse import urlsplit

import anyio

from . import __version__, flags
from .app import App, AppLoadError, AppRecipe, ConfigError
from .client import commands as client_commands
from .hub import shown_url
from .serve_options import (
    add_serve_arguments,
    config_from_args,
    explicit_settings,
    settings_from_args,
)
from .server import Server, ServerConfig
from .server.collector import sweep_forever, tune_collector
from .server.descriptors import connection_cap, raise_open_file_limit
from .startup import StartupError, check_before_serving, describe_startup_failure

logger = logging.getLogger("wschat")

# How often a worker copies the Hub's counters into the shared metrics files.
_METRICS_SYNC_INTERVAL = 1.0


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


async def run_server(app: App, on_ready: Callable[[], None] | None = None) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, then drain gracefully.

    Once the server listens, the garbage collector is set for many connections
    (:func:`~wschat.server.collector.tune_collector`, with its periodic
    :func:`~wschat.server.collector.sweep_forever`), before ``on_ready``.

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
            tune_collector()
            group.start_soon(sweep_forever)
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
            f"unknown hub backend {shown_url(config.hub_url)!r}: use memory://, redis://host:port/db"
            " or redis-cluster://host:port[,host:port...]",
            2,
        )
    try:
        app.hub  # noqa: B018 - makes the backend, which checks its URL
    except ValueError as exc:
        return fail(f"bad hub URL {shown_url(config.hub_url)!r}: {exc}", 2)
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
