"""Shared test helpers: in-process and subprocess servers, free ports, redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from wschat.server import Server, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require(condition: bool, what: str) -> None:
    """Skip when ``what`` is missing, but fail under CI=true (CI must run everything)."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {what} is missing")
        pytest.skip(f"{what} is missing")


@asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[Server]:
    """An in-process wschat server on a free loopback port, stopped (drained) on exit."""
    overrides.setdefault("rate", 0)
    config = ServerConfig(host="127.0.0.1", port=0, **overrides)
    server = Server(config)
    async with anyio.create_task_group() as group:
        await group.start(server.serve)
        try:
            yield server
        finally:
            server.stop()


def ws_url(server: Server, path: str = "/ws") -> str:
    """The ws:// URL of ``path`` on an in-process server."""
    return f"ws://127.0.0.1:{server.port}{path}"


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts TCP connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@contextmanager
def server_process(
    *args: str, port: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``python -m wschat serve`` in a subprocess on a free port; SIGTERM on exit.

    Its output goes to a temporary file (never a pipe nobody reads, which could
    fill and stall the server); read it with :func:`process_output`.
    """
    port = port or free_port()
    command = [sys.executable, "-m", "wschat", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with tempfile.NamedTemporaryFile(prefix="wschat-server-", suffix=".log") as log:
        proc = subprocess.Popen([*command, *args], stdout=log, stderr=subprocess.STDOUT)
        _logs[proc.pid] = log.name
        try:
            wait_for_port(port)
            yield proc, port
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


_logs: dict[int, str] = {}


def process_output(proc: subprocess.Popen[bytes]) -> str:
    """What a :func:`server_process` has logged so far."""
    return Path(_logs[proc.pid]).read_text(errors="replace")


class RedisProcess:
    """A private ``redis-server`` (no persistence) on a fixed port, restartable."""

    def __init__(self, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        require(binary is not None, "redis-server")
        assert binary is not None
        self.binary = binary
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start (or restart) the server on the same port; returns once it accepts."""
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        """Stop the server (its data is lost: nothing is persisted)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RedisProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def redis_server() -> Iterator[str]:
    """A private ``redis-server`` on a free port (no persistence); yields its URL."""
    with RedisProcess() as redis:
        yield redis.url
