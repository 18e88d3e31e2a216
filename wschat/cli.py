"""``wschat serve ...``: flags, ``WSCHAT_*`` environment variables, signals, workers."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import fields
from typing import Any
from urllib.parse import urlsplit

import anyio

from .hub import BackendUnavailable
from .server import Server, ServerConfig

logger = logging.getLogger("wschat")

_DEFAULTS = ServerConfig()

# (flag, config field, type, help). Each flag's environment variable is WSCHAT_<FIELD>.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--host", "host", str, "address to listen on"),
    ("--port", "port", int, "TCP port"),
    ("--hub", "hub_url", str, "hub backend: memory:// or redis://host:port/db"),
    ("--max-message-size", "max_message_size", int, "chat message cap in bytes (1009 over it)"),
    ("--max-request-head", "max_request_head", int, "request line + headers cap in bytes (431)"),
    ("--handshake-timeout", "handshake_timeout", float, "seconds to send a complete request"),
    ("--max-connections", "max_connections", int, "open WebSockets at most (then 503)"),
    ("--ping-interval", "ping_interval", float, "seconds between keepalive pings"),
    ("--pong-wait", "pong_wait", float, "seconds of client silence before closing with 1011"),
    ("--write-timeout", "write_timeout", float, "seconds a blocked send may take"),
    ("--close-timeout", "close_timeout", float, "seconds to wait for the peer's close frame"),
    ("--outbox-limit", "outbox_limit", int, "bytes queued per client before closing with 1013"),
    ("--rate", "rate", float, "messages per second per connection (0: unlimited)"),
    ("--burst", "burst", int, "messages a connection may send at once"),
    ("--drain-timeout", "drain_timeout", float, "seconds to wait for clients on shutdown"),
    ("--history-size", "history_size", int, "messages kept per room"),
    (
        "--history-ttl",
        "history_ttl",
        float,
        "seconds a message stays in history (default: no expiry)",
    ),
    (
        "--presence-ttl",
        "presence_ttl",
        float,
        "seconds before a dead node's members leave presence (redis hub)",
    ),
    ("--certfile", "certfile", str, "TLS certificate (PEM): serve https:// and wss://"),
    ("--keyfile", "keyfile", str, "TLS private key (PEM)"),
    ("--workers", "workers", int, "processes sharing the port (needs a shared hub, e.g. redis)"),
]


def _env(name: str) -> str | None:
    return os.environ.get(f"WSCHAT_{name.upper()}")


def _truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    """The ``wschat`` argument parser (defaults come from ``WSCHAT_*`` when set)."""
    parser = argparse.ArgumentParser(
        prog="wschat",
        description="wschat: a real-time chat server. Open http://HOST:PORT/ in two tabs.",
        epilog="Every flag has an environment equivalent: --max-message-size is "
        "WSCHAT_MAX_MESSAGE_SIZE, --hub is WSCHAT_HUB_URL. Flags win over the environment.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="serve the chat page and the WebSocket endpoint /ws",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for flag, field, kind, text in _OPTIONS:
        env = _env(field)
        default = kind(env) if env is not None else getattr(_DEFAULTS, field)
        serve.add_argument(
            flag,
            dest=field,
            type=kind,
            default=default,
            help=f"{text} [env WSCHAT_{field.upper()}]",
        )
    origins = _env("allowed_origins")
    serve.add_argument(
        "--allow-origin",
        dest="allowed_origins",
        action="append",
        default=[o.strip() for o in origins.split(",") if o.strip()] if origins else [],
        help="allow this browser origin besides the same origin, e.g. https://app.example.com; "
        "repeatable; '*' allows any [env WSCHAT_ALLOWED_ORIGINS, comma-separated]",
    )
    serve.add_argument(
        "--echo",
        action="store_true",
        default=_truthy(_env("echo")),
        help="also serve /echo, a WebSocket echo endpoint for conformance tests [env WSCHAT_ECHO]",
    )
    serve.add_argument(
        "--no-compression",
        action="store_true",
        default=_truthy(_env("no_compression")),
        help="do not negotiate permessage-deflate [env WSCHAT_NO_COMPRESSION]",
    )
    serve.add_argument(
        "--log-level",
        default=_env("log_level") or "info",
        choices=["debug", "info", "warning", "error"],
        help="logging level [env WSCHAT_LOG_LEVEL]",
    )
    return parser


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from parsed arguments."""
    names = {f.name for f in fields(ServerConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values["allowed_origins"] = tuple(args.allowed_origins)
    values["compression"] = not args.no_compression
    return ServerConfig(**values)


async def run_server(config: ServerConfig) -> None:
    """Serve until SIGINT or SIGTERM, then drain gracefully."""
    server = Server(config)
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                logger.info("= %s: draining", signal.Signals(signum).name)
                server.stop()
                break


def _run(config: ServerConfig) -> None:
    backend_options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}
    try:
        anyio.run(run_server, config, backend="asyncio", backend_options=backend_options)
    except* BackendUnavailable as group:
        cause: BaseException = group
        while isinstance(cause, BaseExceptionGroup):
            cause = cause.exceptions[0]
        raise SystemExit(
            f"wschat: cannot reach the hub backend {config.hub_url}: {cause}"
        ) from None


def _worker(config: ServerConfig, log_level: str) -> None:
    _setup_logging(log_level)
    _run(config)


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``wschat`` command."""
    parser = build_parser()
    args = parser.parse_args(argv)
    config = config_from_args(args)
    if config.workers < 1:
        parser.error("--workers must be at least 1")
    if config.workers > 1 and config.hub_url.startswith("memory:"):
        parser.error(
            "--workers > 1 needs a shared hub backend (e.g. --hub redis://127.0.0.1:6379/0): "
            "with memory:// each worker would be a separate chat"
        )
    if urlsplit(config.hub_url).scheme not in ("memory", "redis", "rediss", "redis-cluster"):
        parser.error(
            f"unknown hub backend {config.hub_url!r}: use memory://, redis://host:port/db"
            " or redis-cluster://host:port[,host:port...]"
        )
    if bool(config.certfile) != bool(config.keyfile):
        parser.error("--certfile and --keyfile go together")
    _setup_logging(args.log_level)
    if config.workers == 1:
        with contextlib.suppress(KeyboardInterrupt):
            _run(config)
        return 0
    return _run_workers(config, args.log_level)


def _run_workers(config: ServerConfig, log_level: str) -> int:
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(config, log_level), name=f"wschat-worker-{i}")
        for i in range(config.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.is_alive() and worker.pid is not None:
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    return max((w.exitcode or 0) for w in workers)
