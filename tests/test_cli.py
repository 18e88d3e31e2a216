"""The command line: flags, environment, start-up errors, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wschat.cli import build_parser, config_from_args

from .helpers import process_output, server_process


def test_flags_and_environment_map_onto_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_PORT", "9001")
    monkeypatch.setenv("WSCHAT_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("WSCHAT_NO_COMPRESSION", "1")
    args = build_parser().parse_args(["serve", "--rate", "0", "--hub", "redis://h:6379/1"])
    config = config_from_args(args)
    assert config.port == 9001  # from the environment
    assert config.rate == 0 and config.hub_url == "redis://h:6379/1"  # from flags
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.compression is False


def test_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_PORT", "9001")
    config = config_from_args(build_parser().parse_args(["serve", "--port", "9002"]))
    assert config.port == 9002


def test_help_lists_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wschat", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for flag in ("--hub", "--allow-origin", "--rate", "--outbox-limit", "--workers", "--echo"):
        assert flag in result.stdout


def test_workers_with_memory_hub_is_a_clear_startup_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wschat", "serve", "--workers", "2", "--hub", "memory://"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--workers > 1 needs a shared hub backend" in result.stderr


def test_unknown_hub_is_a_clear_startup_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wschat", "serve", "--hub", "kafka://x", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "unknown hub backend 'kafka://x'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.anyio
async def test_sigterm_drains_with_1001_and_exits_0() -> None:
    with server_process() as (proc, port):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"username": "a", "message": "before"}))
            assert json.loads(await ws.recv())["message"] == "before"
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(10), pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await anyio.to_thread.run_sync(lambda: proc.wait(15)) == 0
        assert "draining" in process_output(proc)


def test_unreachable_redis_is_a_clear_startup_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wschat", "serve", "--hub", "redis://127.0.0.1:1/0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot reach the hub backend redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr
