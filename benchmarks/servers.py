"""Starting the servers under test, pinned to a CPU, and reading their CPU time and RSS."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from host import cpu_seconds, machine, rss_kib, system_cpu, wait_quiet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON = sys.executable

SERVERS = ("wschat", "picows", "websockets")
PEERS = ("picows", "websockets")  # benchmarks/peers/<name>_server.py
# benchmarks/experiments/wschat_variants.py
VARIANTS = ("duck", "batches", "gcstats", "queued", "trace")
__all__ = ["cpu_seconds", "machine", "rss_kib", "system_cpu", "wait_quiet"]  # from host.py

_SOURCES: dict[str, Path] = {}


def parse_kind(kind: str) -> tuple[str | None, str | None]:
    """Split a server name into (wschat source, experiment variant).

    ``websockets``, ``picows``: the peers (no source). ``wschat``: a snapshot of
    the working tree's ``wschat/``. ``wschat@REV``: ``wschat/`` as of git revision REV.
    ``...+VARIANT``: that source run through ``experiments/wschat_variants.py``.
    """
    if kind in PEERS:
        return None, None
    base, _, variant = kind.partition("+")
    name, _, rev = base.partition("@")
    if name != "wschat" or (variant and variant not in VARIANTS):
        raise ValueError(
            f"unknown server {kind!r}: {', '.join(PEERS)}, wschat, wschat@REV, "
            f"wschat[@REV]+{'|'.join(VARIANTS)}"
        )
    return (rev or "worktree"), (variant or None)


def source(spec: str) -> Path:
    """A private copy of a wschat source to run, made once per process.

    The servers run from this copy (PYTHONPATH), not from the working tree, so
    edits made to wschat/ while a benchmark runs cannot mix two versions in one
    result. ``worktree`` copies ``wschat/`` as it is now; anything else is a git
    revision, extracted with ``git archive``.
    """
    if spec in _SOURCES:
        return _SOURCES[spec]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if spec == "worktree":
        target = HERE / "results" / "src" / f"worktree-{stamp}-{os.getpid()}"
        shutil.copytree(
            ROOT / "wschat", target / "wschat", ignore=shutil.ignore_patterns("__pycache__")
        )
    else:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", spec],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        target = HERE / "results" / "src" / rev
        if not (target / "wschat").exists():
            target.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "archive", "--format=tar", rev, "wschat"],
                cwd=ROOT,
                capture_output=True,
                check=True,
            ).stdout
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                tar.extractall(target, filter="data")
    _SOURCES[spec] = target
    return target


def describe(kind: str) -> dict[str, str]:
    """Which code a server name ran: git revision, local changes, and a hash of the files."""
    spec, variant = parse_kind(kind)
    if spec is None:
        return {"kind": kind}
    path = source(spec)
    digest = hashlib.sha256()
    for file in sorted((path / "wschat").rglob("*.py")):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0" + file.read_bytes())
    info = {"kind": kind, "path": str(path), "sha256": digest.hexdigest()[:16]}
    if spec == "worktree":
        info["revision"] = _git("rev-parse", "--short", "HEAD")
        info["local_changes"] = "yes" if _git("status", "--porcelain", "--", "wschat") else "no"
    else:
        info["revision"] = path.name
    if variant:
        info["variant"] = variant
    return info


def _git(*args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    return ""


@dataclass(frozen=True)
class Options:
    """How a server is run beyond its name: compression, hub, rate limit.

    Attributes:
        compression: Offer permessage-deflate the server's way (wschat: ``--compression``
            where the flag exists, otherwise the server's negotiate-when-offered default;
            websockets: its default ``compression="deflate"``; picows has none).
        hub_url: wschat's ``--hub`` (None: the memory hub).
        rate: wschat's ``--rate``/``--burst`` (0: no limit, the limiter skipped).
        extra: More ``wschat serve`` flags (experiments; not for the peers).
    """

    compression: bool = False
    hub_url: str | None = None
    rate: float = 0.0
    extra: tuple[str, ...] = ()  # more wschat flags, for experiments


@functools.cache
def _serve_flags(src: Path) -> frozenset[str]:
    """The long flags ``wschat serve --help`` of this source lists."""
    env = dict(os.environ, PYTHONPATH=str(src))
    text = subprocess.run(
        [PYTHON, "-m", "wschat", "serve", "--help"],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return frozenset(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


def compression_flags(src: Path, compression: bool) -> list[str]:
    """wschat's flags for compression on or off, before and after issue 9's ``--compression``.

    Before issue 9 the server negotiates deflate whenever a client offers it and has
    only ``--no-compression``; with issue 9 compression is off unless ``--compression``.
    """
    flags = _serve_flags(src)
    if compression:
        return ["--compression"] if "--compression" in flags else []
    return ["--no-compression"] if "--no-compression" in flags else []


def address_limit_flags(src: Path) -> list[str]:
    """Per-address limits off, where the source has them.

    Every load-generator client comes from 127.0.0.1: one address opening 10,000
    connections, and all of them sending, is what those limits exist to refuse.
    """
    flags = _serve_flags(src)
    return [
        arg for flag in ("--address-rate", "--connect-rate") if flag in flags for arg in (flag, "0")
    ]


def command(
    kind: str, host: str, port: int, options: Options = Options()
) -> tuple[list[str], Path | None]:
    """The command line that serves ``kind`` on ``host:port``, and its wschat source."""
    spec, variant = parse_kind(kind)
    if spec is None:
        argv = [PYTHON, str(HERE / "peers" / f"{kind}_server.py"), "--host", host, "--port"]
        argv.append(str(port))
        if options.compression and kind == "websockets":
            argv.append("--deflate")
        return argv, None
    src = source(spec)
    program = (
        [PYTHON, str(HERE / "experiments" / "wschat_variants.py"), variant]
        if variant
        else [PYTHON, "-m", "wschat"]
    )
    argv = [*program, "serve", "--host", host, "--port", str(port)]
    argv += ["--rate", f"{options.rate:g}"]
    if options.rate:
        argv += ["--burst", str(max(1, int(options.rate)))]
    argv += compression_flags(src, options.compression)
    argv += address_limit_flags(src)
    if options.hub_url:
        argv += ["--hub", options.hub_url]
    argv += options.extra
    # one log line per connection is not what is measured here
    return [*argv, "--max-connections", "12000", "--log-level", "warning"], src


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def raise_nofile() -> int:
    """Raise the open-file limit to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _pin(cpu: int | None) -> None:
    raise_nofile()
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


@dataclass
class ServerProcess:
    kind: str
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    argv: list[str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start(
    kind: str,
    cpu: int | None,
    log_dir: Path,
    host: str = "127.0.0.1",
    options: Options = Options(),
) -> ServerProcess:
    """Start a server pinned to ``cpu``; return once it accepts TCP connections."""
    port = free_port(host)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{kind.replace('/', '_')}-{port}.log"
    argv, src = command(kind, host, port, options)
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=src or ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _pin(cpu),
        )
    server = ServerProcess(kind, host, port, process, log, argv)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{kind} exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
            return server
        time.sleep(0.05)
    server.stop()
    raise TimeoutError(f"{kind} did not start listening within 30 s")


@dataclass
class RedisServer:
    """A private ``redis-server`` on a free loopback port (no persistence), for ``--hub``."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def start_redis(cpu: int | None, log_dir: Path) -> RedisServer:
    """Start ``redis-server`` pinned to ``cpu``; return once it answers PING."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found (Debian: apt-get install redis-server)")
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    with open(log_dir / f"redis-{port}.log", "wb") as out:
        process = subprocess.Popen(
            [
                *(binary, "--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--maxclients", "20000"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: _pin(cpu),
        )
    redis = RedisServer(port, process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return redis
        time.sleep(0.05)
    redis.stop()
    raise TimeoutError("redis-server did not answer PING within 20 s")
