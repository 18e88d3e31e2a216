"""The command line: flags, environment, operator errors, signals, descriptor limits.

Operator errors are checked against the real ``python -m wschat``: each must
end as one ``wschat: ...`` line on stderr and a non-zero exit, never a traceback.
Variations of one kind of error (each bad value, each bad TLS file) call the
same entry point, :func:`wschat.cli.main`, in-process: a subprocess each would
only add its start-up time.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from wschat import __version__
from wschat.cli import build_parser, config_from_args, main
from wschat.server import ServerConfig, collector

from .helpers import ROOT, free_port, process_output, require, server_process, wait_for_port
from .test_server import raw_http

# A log line of the server (wschat's logging format), as opposed to an error line.
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO|WARNING) ")


def wschat(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m wschat ARGS`` run to completion (30 s at most)."""
    return subprocess.run(
        [sys.executable, "-m", "wschat", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """:func:`wschat.cli.main` in-process: (exit code, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    return code, capsys.readouterr().err


def error_line(output: subprocess.CompletedProcess[str] | str) -> str:
    """The one ``wschat:`` line on stderr; anything else there may only be log lines."""
    stderr = output if isinstance(output, str) else output.stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if not LOG_LINE.match(line)]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("wschat: "), stderr
    return errors[0]


# -- flags and environment -------------------------------------------------------


def test_flags_and_environment_map_onto_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_PORT", "9001")
    monkeypatch.setenv("WSCHAT_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("WSCHAT_NO_COMPRESSION", "1")
    monkeypatch.setenv("WSCHAT_ADDRESS_RATE", "0")
    monkeypatch.setenv("WSCHAT_TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1")
    args = build_parser().parse_args(
        ["serve", "--rate", "0", "--hub", "redis://h:6379/1", "--connect-rate", "2.5"]
    )
    config = config_from_args(args)
    assert config.port == 9001  # from the environment
    assert config.rate == 0 and config.hub_url == "redis://h:6379/1"  # from flags
    assert config.allowed_origins == ("https://a.example", "https://b.example")
    assert config.compression is False
    assert config.address_rate == 0 and config.connect_rate == 2.5
    assert config.trusted_proxies == ("10.0.0.0/8", "192.168.1.1")


def test_defaults_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("WSCHAT_"):
            monkeypatch.delenv(name)
    assert config_from_args(build_parser().parse_args(["serve"])) == ServerConfig()


def test_flag_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_PORT", "9001")
    config = config_from_args(build_parser().parse_args(["serve", "--port", "9002"]))
    assert config.port == 9002


def test_flag_wins_over_a_bad_environment_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WSCHAT_PORT", "abc")
    config = config_from_args(build_parser().parse_args(["serve", "--port", "9002"]))
    assert config.port == 9002


def test_help_lists_every_flag() -> None:
    result = wschat("serve", "--help")
    assert result.returncode == 0
    for flag in (
        "--hub",
        "--allow-origin",
        "--rate",
        "--outbox-limit",
        "--workers",
        "--echo",
        "--address-rate",
        "--connect-rate",
        "--address-table-size",
        "--trusted-proxy",
        "--max-idle-rooms",
    ):
        assert flag in result.stdout


def test_version() -> None:
    result = wschat("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"wschat {__version__}"


# -- bad values: one line, exit 2, before anything starts ---------------------------


def test_bad_environment_value_does_not_break_help_and_is_one_line() -> None:
    helped = wschat("serve", "--help", env={"WSCHAT_PORT": "abc"})
    assert helped.returncode == 0 and "--port" in helped.stdout
    result = wschat("serve", env={"WSCHAT_PORT": "abc"})
    assert result.returncode == 2
    assert error_line(result) == "wschat: WSCHAT_PORT='abc': not a TCP port (0-65535)"


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("WSCHAT_ECHO", "maybe", "not a boolean"),
        ("WSCHAT_LOG_LEVEL", "loud", "not a log level"),
        ("WSCHAT_ADDRESS_RATE", "-1", "must be at least 0"),
        ("WSCHAT_TRUSTED_PROXIES", "proxy.example", "not an IP address or network"),
    ],
)
def test_each_kind_of_bad_environment_value_names_its_variable(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    reason: str,
) -> None:
    monkeypatch.setenv(variable, value)
    code, stderr = run_main(capsys, "serve")
    assert code == 2
    assert error_line(stderr).startswith(f"wschat: {variable}={value!r}: {reason}")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--port", "-1"], "argument --port: '-1': not a TCP port (0-65535)"),
        (["--workers", "0"], "argument --workers: '0': must be at least 1"),
        (["--ping-interval", "0"], "argument --ping-interval: '0': must be above 0"),
        (["--trusted-proxy", "nope"], "argument --trusted-proxy: 'nope': not an IP address"),
        (["--hub", "kafka://x"], "unknown hub backend 'kafka://x'"),
        (["--workers", "2", "--hub", "memory://"], "--workers > 1 needs a shared hub backend"),
        (["--certfile", "cert.pem"], "--certfile and --keyfile go together"),
    ],
)
def test_bad_flag_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], flags: list[str], expected: str
) -> None:
    code, stderr = run_main(capsys, "serve", *flags)
    assert code == 2
    assert error_line(stderr).startswith(f"wschat: {expected}")


def test_port_out_of_range_from_the_real_command() -> None:
    result = wschat("serve", "--port", "70000")
    assert result.returncode == 2
    assert error_line(result) == (
        "wschat: argument --port: '70000': not a TCP port (0-65535); see wschat serve --help"
    )


# -- what serving reveals: one line, exit 1 -------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port something else listens on (without SO_REUSEPORT)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_port_in_use(taken_port: int) -> None:
    result = wschat("serve", "--host", "127.0.0.1", "--port", str(taken_port))
    assert result.returncode == 1
    assert error_line(result) == (
        f"wschat: cannot listen on 127.0.0.1:{taken_port}: address already in use"
    )


def test_address_not_on_this_machine() -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a local address.
    result = wschat("serve", "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 1
    assert error_line(result) == (
        "wschat: cannot listen on 192.0.2.1:0: address not available on this machine"
    )


def test_host_that_does_not_resolve() -> None:
    result = wschat("serve", "--host", "no-such-host.invalid", "--port", "0")
    assert result.returncode == 1
    assert error_line(result).startswith(
        "wschat: cannot listen on no-such-host.invalid: cannot resolve the host name"
    )


def test_privileged_port() -> None:
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start == 0:
        pytest.skip("every port is unprivileged here (net.ipv4.ip_unprivileged_port_start=0)")
    port = str(start - 1)
    command = [sys.executable, "-m", "wschat", "serve", "--port", port]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        require(setpriv is not None, "setpriv (util-linux), to drop root's bind privilege")
        assert setpriv is not None
        command = [setpriv, "--bounding-set", "-net_bind_service", *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert result.returncode == 1
    assert error_line(result) == (
        f"wschat: cannot listen on 127.0.0.1:{port}: permission denied "
        "(ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    )


def test_unreachable_redis_is_one_line() -> None:
    result = wschat("serve", "--hub", "redis://127.0.0.1:1/0", "--port", "0")
    assert result.returncode == 1
    assert error_line(result).startswith(
        "wschat: cannot reach the hub backend redis://127.0.0.1:1/0: "
    )


# -- TLS files: checked before serving ----------------------------------------------


@pytest.fixture(scope="module")
def tls_files() -> Iterator[dict[str, str]]:
    authority = trustme.CA()
    cert, other = authority.issue_cert("localhost"), authority.issue_cert("localhost")
    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with tempfile.TemporaryDirectory() as folder:
        files = {
            "cert": cert.cert_chain_pems[0].bytes(),
            "key": cert.private_key_pem.bytes(),
            "other_key": other.private_key_pem.bytes(),
            "encrypted_key": encrypted,
            "junk": b"not a certificate\n",
        }
        paths = {}
        for name, data in files.items():
            paths[name] = str(Path(folder) / f"{name}.pem")
            Path(paths[name]).write_bytes(data)
        paths["folder"] = folder
        yield paths


@pytest.mark.parametrize(
    ("cert", "key", "expected"),
    [
        ("missing", "key", "cannot read the TLS certificate {cert}: no such file or directory"),
        ("cert", "missing", "cannot read the TLS private key {key}: no such file or directory"),
        ("folder", "key", "cannot read the TLS certificate {cert}: is a directory"),
        ("junk", "key", "the TLS certificate {cert} holds no PEM certificate"),
        ("cert", "junk", "the TLS private key {key} holds no PEM private key"),
        ("cert", "other_key", "the TLS private key {key} does not match the certificate"),
        ("cert", "encrypted_key", "the TLS private key {key} is encrypted"),
    ],
)
def test_bad_tls_files_are_one_line_before_serving(
    capsys: pytest.CaptureFixture[str],
    tls_files: dict[str, str],
    cert: str,
    key: str,
    expected: str,
) -> None:
    cert_path = tls_files.get(cert, "/nonexistent/cert.pem")
    key_path = tls_files.get(key, "/nonexistent/key.pem")
    # In-process: main() returns after the check, before any listener exists.
    code, stderr = run_main(
        capsys, "serve", "--port", str(free_port()), "--certfile", cert_path, "--keyfile", key_path
    )
    assert code == 1
    assert error_line(stderr).startswith("wschat: " + expected.format(cert=cert_path, key=key_path))


def test_missing_certificate_from_the_real_command() -> None:
    result = wschat("serve", "--certfile", "/nonexistent/cert.pem", "--keyfile", "/nonexistent/k")
    assert result.returncode == 1
    assert error_line(result) == (
        "wschat: cannot read the TLS certificate /nonexistent/cert.pem: no such file or directory"
    )


def test_good_tls_files_serve(tls_files: dict[str, str]) -> None:
    with server_process("--certfile", tls_files["cert"], "--keyfile", tls_files["key"]) as (
        proc,
        _,
    ):
        assert proc.poll() is None
        deadline = time.monotonic() + 10  # the line follows the bind by a moment
        while "serving https://" not in process_output(proc) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "serving https://" in process_output(proc)


# -- signals and descriptor limits ------------------------------------------------


@pytest.mark.anyio
async def test_sigterm_drains_with_1001_and_exits_0() -> None:
    with server_process() as (proc, port):
        async with connect(f"ws://127.0.0.1:{port}/ws") as ws:
            await ws.send(json.dumps({"username": "a", "message": "before"}))
            assert json.loads(await ws.recv())["message"] == "before"
            proc.send_signal(signal.SIGTERM)
            proc.send_signal(signal.SIGINT)  # a second signal does not cut the drain short
            with anyio.fail_after(10), pytest.raises(ConnectionClosed) as info:
                await ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
        assert await anyio.to_thread.run_sync(lambda: proc.wait(15)) == 0
        output = process_output(proc)
        assert output.count("draining") >= 1 and "Traceback" not in output


def test_serve_raises_the_soft_open_file_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves no room to lower the soft one")

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "wschat", "serve", "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=lower_soft_limit,
            cwd=ROOT,
        )
        try:
            wait_for_port(port)
            limits = Path(f"/proc/{proc.pid}/limits").read_text()
            soft = re.search(r"^Max open files\s+(\d+)", limits, re.M)
            assert soft is not None and int(soft.group(1)) == hard
        finally:
            proc.terminate()
            proc.wait(15)
        log.seek(0)
        assert f"open-file limit raised from 256 to {hard}" in log.read().decode()


def test_a_loaded_app_keeps_its_settings_unless_the_operator_gives_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from wschat.app import AppRecipe
    from wschat.cli import explicit_settings, settings_from_args

    def recipe(argv: list[str]) -> AppRecipe:
        sys.modules.pop("tests.app_without_typing", None)  # a fresh app each time
        parser = build_parser()
        args = parser.parse_args(argv)
        return AppRecipe(
            args.app,
            config_from_args(args),
            settings_from_args(args),
            explicit_settings(argv),
        )

    app = recipe(["serve", "tests.app_without_typing:tuned"]).build()
    assert (app.config.history_size, app.config.max_connections) == (7, 123)
    assert "typing" not in app.ephemeral_types
    app = recipe(["serve", "tests.app_without_typing:tuned", "--history-size", "9"]).build()
    assert (app.config.history_size, app.config.max_connections) == (9, 123)
    monkeypatch.setenv("WSCHAT_MAX_CONNECTIONS", "55")
    app = recipe(["serve", "tests.app_without_typing:tuned"]).build()
    assert (app.config.history_size, app.config.max_connections) == (7, 55)


def test_an_app_that_cannot_be_loaded_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "no_such_module:app"]) == 2
    assert (
        capsys.readouterr().err
        == "wschat: app 'no_such_module:app': no module named 'no_such_module'\n"
    )
    assert main(["serve", "tests.app_without_typing:nothing"]) == 2
    assert "has no attribute 'nothing'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (
            "redis://127.0.0.1:abc/0",
            "bad hub URL 'redis://127.0.0.1:abc/0': Port could not be cast",
        ),
        ("redis-cluster://h:abc", "bad hub URL 'redis-cluster://h:abc'"),
        ("bogus://", "unknown hub backend 'bogus://'"),
    ],
)
def test_a_bad_hub_url_is_one_line(url: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--hub", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wschat: ") and said in err and err.count("\n") == 1


def test_the_loop_flag_picks_the_event_loop_and_refuses_what_cannot_work(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for loop in ("asyncio", "uvloop", "trio"):
        with server_process("--loop", loop) as (proc, port):
            request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
            status, _, body = anyio.run(raw_http, port, request)
            assert (status, body) == (200, b"ok\n"), loop
            expected = "writes=task" if loop == "trio" else "writes=direct"
            deadline = time.monotonic() + 10
            while expected not in process_output(proc) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert expected in process_output(proc), loop
    assert main(["serve", "--loop", "trio", "--hub", "redis://127.0.0.1:1/0"]) == 2
    assert "--loop trio needs the memory hub" in capsys.readouterr().err


def test_a_hub_password_is_never_shown(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("redis://user:s3cret@127.0.0.1:abc/0", "redis-cluster://u:s3cret@h:abc"):
        assert main(["serve", "--hub", url]) == 2
        err = capsys.readouterr().err
        assert "s3cret" not in err and ":***@" in err
    # Serving, the hub unreachable: the one line names the hub, without its password.
    result = wschat(
        "serve", "--port", str(free_port()), "--hub", "redis://user:s3cret@127.0.0.1:1/0"
    )
    assert result.returncode == 1
    assert "s3cret" not in result.stderr and "user:***@127.0.0.1:1" in result.stderr


def test_long_lived_objects_are_frozen_and_a_sweep_frees_the_cycles_they_kept() -> None:
    # In a process of its own: the collector's settings are process-wide.
    script = """
import gc, weakref
from wschat.server import collector

class Node:
    pass

collector.tune_collector()
plain, parent = Node(), Node()
parent.child = Node()
parent.child.parent = parent  # a cycle
gc.collect(0)
young = {id(o) for o in gc.get_objects(1)}
print("a young collection freezes nothing", id(plain) in young)
gc.collect(1)  # both survive a middle collection: long-lived
tracked = {id(o) for g in range(3) for o in gc.get_objects(g)}
print("frozen", id(plain) not in tracked and id(parent) not in tracked)
gone, kept = weakref.ref(plain), weakref.ref(parent)
del plain, parent
gc.collect()
print("refcount frees frozen", gone() is None, "cycle kept", kept() is not None)
print("sweep found", collector.sweep() >= 2, "cycle freed", kept() is None)
print("frozen again", gc.get_freeze_count() > 1000)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == [
        "a young collection freezes nothing True",
        "frozen True",
        "refcount frees frozen True cycle kept True",
        "sweep found True cycle freed True",
        "frozen again True",
    ]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop", "trio"])
def test_serve_sets_the_collector_for_many_connections(loop: str) -> None:
    # A full collection walks every tracked object: with the defaults a server of
    # 10,000 connections stalls for a quarter of a second or more every half minute.
    script = f"""
import gc, os, signal
from wschat import App
from wschat.cli import run
from wschat.server import ServerConfig

app = App(ServerConfig(host="127.0.0.1", port={free_port()}, event_loop={loop!r}))
def ready():
    print(gc.get_threshold(), gc.get_freeze_count() > 1000, flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
assert gc.get_threshold() == (700, 10, 10)
run(app, on_ready=ready)
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    expected = (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD, collector.FULL_AFTER)
    assert result.stdout.split("\n")[0] == f"{expected} True"
