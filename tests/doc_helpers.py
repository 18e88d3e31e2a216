"""Running what the docs tell a reader to run: their code blocks, their commands, their pages.

Used by the tests that follow examples/README.md and docs/tutorial.md as
written. A command runs as the reader's shell would run it (``bash``, with
``.venv/bin`` first on ``PATH``, as after ``. .venv/bin/activate``); only the
port numbers are moved to free ones (:func:`with_ports`), through the same
variables a reader would use (``WSCHAT_PORT``, ``EXAMPLE_LOGIN_PORT``, ...).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from tests.browser_helpers import expect
from tests.helpers import wait_for_port

if TYPE_CHECKING:
    from playwright.sync_api import Page

BIN = str(Path(sys.executable).parent)  # .venv/bin under make


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced ``language`` blocks of a Markdown file, in order."""
    return re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.DOTALL)


def with_ports(text: str, ports: Mapping[int, int]) -> str:
    """``text`` with each port number the docs use replaced by the test's free one."""
    return re.sub(r"\b(\d{4,5})\b", lambda m: str(ports.get(int(m[1]), m[1])), text)


def shell_env(**values: str) -> dict[str, str]:
    """The environment of a reader's shell with the venv activated, plus ``values``."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)  # what the reader has: the installed package, the cwd
    env.update(values)
    return env


def shell(line: str, cwd: Path, env: Mapping[str, str], stdin: str | None = None) -> str:
    """Run one command line to its end (``bash -c``); its stdout and stderr together."""
    done = subprocess.run(
        ["bash", "-c", line],
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout + done.stderr


def exported(line: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The value an ``export NAME=…`` line of the docs gives ``NAME``."""
    match = re.fullmatch(r"export (\w+)=.*", line.strip())
    assert match is not None, line
    value = shell(f'{line}\nprintf %s "${match[1]}"', cwd, env)
    assert value and "\n" not in value, (line, value)
    return value


class Processes:
    """Long-running commands (servers, the bot), each logged to a file, all stopped at exit."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
        self._stack = ExitStack()

    def start(
        self, name: str, line: str, cwd: Path, env: Mapping[str, str], port: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``line`` under ``bash``, in a process group of its own (stopped as a
        whole); with ``port``, return once it accepts connections there."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                ["bash", "-c", line],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[name] = (proc, log)
        if port is not None:
            try:
                wait_for_port(port)
            except TimeoutError:
                raise AssertionError(f"{line!r} did not start: {self.output(name)}") from None
        return proc

    def output(self, name: str) -> str:
        return self.running[name][1].read_text(errors="replace")

    def stop(self, name: str) -> None:
        """Stop one (SIGTERM to its group, as Ctrl-C would; SIGKILL after 15 s)."""
        proc, _ = self.running.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for name in list(self.running):
            self.stop(name)


def sign_in(page: Page, login_url: str, username: str, password: str) -> None:
    """Sign in on the JWT login example's page and wait for the chat's ``authenticated``."""
    page.goto(login_url)
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login button")
    expect(page.locator("#chat")).to_be_visible()
    expect(page.locator("#me")).not_to_be_empty()


def say(page: Page, text: str) -> None:
    """Send ``text`` from the login example's page."""
    page.fill("#text", text)
    page.click("#send button")


def open_direct_room(page: Page, peer: str, room: str) -> None:
    """On the login example's page, open the direct room with ``peer`` ("private chat with…")."""
    page.fill("#peer", peer)
    page.click("#dm")
    expect(page.locator("#room")).to_have_text(room)
