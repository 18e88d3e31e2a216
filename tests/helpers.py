"""Shared test helpers: in-process and subprocess servers, free ports, redis-server."""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import trustme
from anyio.from_thread import BlockingPortal, start_blocking_portal

from wschat.server import Server, ServerConfig

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI", "").lower() == "true"


# Ports for servers the tests start, below the kernel's ephemeral range (32768+,
# where client sockets get theirs) and split between pytest-xdist's workers, so
# that two workers never pick the same free port at the same time.
PORTS = range(20_000, 32_000)
_port_cursor = -1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, from this test worker's own share."""
    global _port_cursor
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    share = len(PORTS) // max(workers, 1)
    first = PORTS.start + index * share
    for _ in range(share):
        _port_cursor = (_port_cursor + 1) % share
        port = first + _port_cursor
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in this worker's share")


def require(condition: bool, what: str) -> None:
    """Skip when ``what`` is missing, but fail under CI=true (CI must run everything)."""
    if not condition:
        if IN_CI:
            pytest.fail(f"CI=true and {what} is missing")
        pytest.skip(f"{what} is missing")


# The event loops the loopback suites run the server on (`pytest.mark.every_loop`).
SERVER_LOOPS = ("asyncio", "uvloop", "trio")
# Set by conftest's anyio_backend fixture for each test: where running_server runs.
server_loop = "asyncio"


class ServerHandle:
    """A running in-process server, on the test's own loop or on trio in a thread of its own.

    Attributes read through (``port``, ``hub``, ``connections``, ``metrics``…)
    are the server's; reading them from the test is safe. Anything that must
    run on the server's loop goes through :meth:`call`; :meth:`stop` does.
    """

    def __init__(self, server: Server, portal: BlockingPortal | None = None) -> None:
        self.server = server
        self.portal = portal

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    @property
    def loop(self) -> str:
        """The loop the server runs on: asyncio, uvloop or trio."""
        return "trio" if self.portal is not None else server_loop

    async def call(self, function: Callable[..., Any], *args: Any) -> Any:
        """Run ``function(*args)`` (sync or async) on the server's loop; return its result."""
        if self.portal is None:
            result = function(*args)
            return await result if inspect.isawaitable(result) else result
        portal = self.portal
        if inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(
            getattr(function, "func", None)
        ):
            return await anyio.to_thread.run_sync(lambda: portal.call(function, *args))
        return await anyio.to_thread.run_sync(lambda: portal.call(lambda: function(*args)))

    def stop(self) -> None:
        """Begin the server's graceful shutdown."""
        if self.portal is None:
            self.server.stop()
        else:
            self.portal.call(self.server.stop)


@asynccontextmanager
async def running_server(
    factory: Callable[[ServerConfig], Server] = Server, **overrides: Any
) -> AsyncIterator[ServerHandle]:
    """An in-process wschat server on a free loopback port, stopped (drained) on exit.

    It runs on the loop the test is parametrised with (see ``every_loop``):
    the test's own for asyncio and uvloop, a thread of its own for trio (the
    `websockets` client the tests use needs asyncio). ``factory`` makes the
    server from its config (a subclass, for fault injection).
    """
    for limit in ("rate", "address_rate", "connect_rate", "user_rate"):
        overrides.setdefault(limit, 0)
    config = ServerConfig(host="127.0.0.1", port=0, **overrides)
    if server_loop != "trio":
        server = factory(config)
        async with anyio.create_task_group() as group:
            await group.start(server.serve)
            try:
                yield ServerHandle(server)
            finally:
                server.stop()
        return
    with start_blocking_portal("trio") as portal:
        server = portal.call(factory, config)
        future, _ = await anyio.to_thread.run_sync(portal.start_task, server.serve)
        try:
            yield ServerHandle(server, portal)
        finally:
            await anyio.to_thread.run_sync(portal.call, server.shutdown)
            await anyio.to_thread.run_sync(future.result)


def ws_url(server: Server | ServerHandle, path: str = "/ws") -> str:
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


def tls_files(directory: Path) -> tuple[dict[str, str], ssl.SSLContext]:
    """A certificate for 127.0.0.1 from a throwaway CA: server options and a client context."""
    authority = trustme.CA()
    cert = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    return {"certfile": str(certfile), "keyfile": str(keyfile)}, client_context
