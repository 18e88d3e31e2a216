"""docs/howto-three-nodes.md, followed literally: three nodes behind a real nginx, on Redis.

The test reads the how-to's shell block (the three ``serve`` commands) and its
nginx block, and runs them as written; only the port numbers are replaced by
free ones (the how-to's 8081-8083, 18800 and 6379). The nginx block goes where
the how-to says: a file in ``conf.d/``, included from the ``http { }`` block of
a main configuration like the stock one. A client that connects through nginx
sends the ``Origin`` a browser would send for the page nginx serves.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

import wschat.client
from wschat.client import HandshakeRejectedError, Message

from .helpers import ROOT, RedisProcess, free_port, require, wait_for_port
from .test_client import next_event

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

HOWTO = ROOT / "docs" / "howto-three-nodes.md"
DOC_PORTS = (8081, 8082, 8083, 18800, 6379)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", HOWTO.read_text(), flags=re.DOTALL)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found is None and Path("/usr/sbin/nginx").exists():
        found = "/usr/sbin/nginx"
    return found


def with_ports(text: str, ports: dict[int, int]) -> str:
    return re.sub(r"\b(\d{4,5})\b", lambda m: str(ports.get(int(m[1]), m[1])), text)


def wschat_command(line: str) -> list[str]:
    """One of the how-to's commands, as written (``.venv/bin/wschat`` from the repository root)."""
    words = shlex.split(line.strip().removesuffix("&"))
    assert words[0] == ".venv/bin/wschat", line
    if not (ROOT / words[0]).exists():  # a test run outside make's .venv
        return [sys.executable, "-m", "wschat", *words[1:]]
    return words


@contextmanager
def running(command: list[str], log: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_for_port(port)
        except TimeoutError:
            raise AssertionError(f"{command} did not start: {log.read_text()}") from None
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def nginx_config(tmp: Path) -> Path:
    """A main configuration like the stock one: ``http { include conf.d/*.conf; }``."""
    for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp / name).mkdir()
        (tmp / name).chmod(0o777)  # nginx's workers may run as another user
    main = tmp / "nginx.conf"
    main.write_text(
        f"""daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {tmp}/conf.d/*.conf;
}}
"""
    )
    return main


async def node_connections(port: int) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    match = re.search(r"^wschat_connections_open (\S+)$", text, flags=re.MULTILINE)
    assert match is not None
    return float(match[1])


async def test_the_three_node_howto_works_as_written() -> None:
    nginx = nginx_binary()
    require(nginx is not None, "nginx")
    assert nginx is not None
    (serve,) = [block for block in code_blocks("sh") if block.count(" serve --host ") == 3]
    (site,) = code_blocks("nginx")
    assert "proxy_set_header Host $http_host;" in site
    # A client's own X-Forwarded-For must not reach wschat, which trusts the header from
    # 127.0.0.1 for its per-address limits: nginx replaces it with the real address.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in site
    ports = {doc_port: free_port() for doc_port in DOC_PORTS}
    with RedisProcess(port=ports[6379]), ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="wschat-howto-")))
        node_ports = [ports[8081], ports[8082], ports[8083]]
        for index, line in enumerate(serve.strip().splitlines()):
            command = wschat_command(with_ports(line, ports))
            stack.enter_context(running(command, tmp / f"node{index}.log", node_ports[index]))
        (tmp / "conf.d").mkdir()
        (tmp / "conf.d" / "wschat.conf").write_text(with_ports(site, ports))
        # The same site with the old advice ($host), on one more port: it must fail.
        wrong_port = free_port()
        wrong = with_ports(site, {**ports, 18800: wrong_port}).replace("$http_host", "$host")
        wrong = wrong.replace("upstream wschat", "upstream wschat_wrong")
        (tmp / "conf.d" / "wrong.conf").write_text(
            wrong.replace("http://wschat;", "http://wschat_wrong;")
        )
        proxy = ports[18800]
        command = [
            nginx,
            "-e",
            str(tmp / "error.log"),
            "-p",
            str(tmp),
            "-c",
            str(nginx_config(tmp)),
        ]
        stack.enter_context(running(command, tmp / "nginx.log", proxy))

        async with httpx.AsyncClient() as http:
            page = await http.get(f"http://127.0.0.1:{proxy}/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert (await http.get(f"http://127.0.0.1:{proxy}/healthz")).status_code == 200

        def through(port: int, username: str) -> wschat.client.ChatClient:
            # What a browser sends for the page nginx served. Not reconnecting: a dropped
            # connection fails the test instead of landing on another node.
            origin = f"http://127.0.0.1:{port}"
            return wschat.client.connect(
                f"ws://127.0.0.1:{port}/ws", username=username, origin=origin, reconnect=None
            )

        with pytest.raises(HandshakeRejectedError) as refused:
            async with through(wrong_port, "mallory"):
                pass
        assert refused.value.status == 403

        async with (
            through(proxy, "alice") as alice,  # each is joined to the lobby once entered
            through(proxy, "bob") as bob,
            through(proxy, "carol") as carol,
        ):
            # nginx went round-robin: one client on each node.
            assert [await node_connections(port) for port in node_ports] == [1, 1, 1]
            await alice.say("across nodes")
            for chat in (bob, carol):
                message = await next_event(chat, Message)
                assert (message.username, message.text) == ("alice", "across nodes")
