"""``wschat chat`` (a terminal chat) and ``wschat say`` (send one message), on :mod:`wschat.client`.

``wschat chat URL --room lobby --name bob`` prints the rooms' history (with
times), who is there, who comes and goes and every message as it arrives,
and sends each line typed on stdin; it reconnects by itself and recovers
what it missed. Lines starting with ``/`` are commands: ``/join ROOM`` (later
lines go there), ``/leave ROOM``, ``/quit``. End of input (Ctrl-D) closes it.

``wschat say URL --room R --name N TEXT`` sends one message and exits 0 once
the server has acknowledged it, or 1 with one line on stderr saying why not
(for scripts and cron jobs).

Both take ``--token`` (or ``WSCHAT_TOKEN``, which keeps it out of ``ps``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from typing import Any, TextIO

import anyio

from .client import ChatClient
from .connecting import connect
from .errors import ClientError
from .render import render

COMMANDS = ("chat", "say")
# Long enough to ride out a server restart (the client reconnects meanwhile),
# short enough for a cron job to notice a server that is gone.
DEFAULT_SAY_TIMEOUT = 10.0


def add_commands(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``chat`` and ``say`` to the ``wschat`` parser's subcommands."""
    chat = commands.add_parser(
        "chat",
        help="chat in the terminal: events are printed, lines typed are sent",
        description="Chat in the terminal. Lines typed are sent to the current room; "
        "/join ROOM, /leave ROOM and /quit are commands. Reconnects by itself.",
    )
    _common(chat)
    chat.add_argument(
        "--room",
        dest="rooms",
        action="append",
        metavar="ROOM",
        help="room to join (repeatable; default lobby); lines go to the first",
    )
    say = commands.add_parser(
        "say",
        help="send one message; exit 1 if it was not acknowledged",
        description="Send TEXT to ROOM and wait for the server's acknowledgement. "
        "Exit status 0: published; 1: not (the reason on stderr).",
    )
    _common(say)
    say.add_argument("--room", default="lobby", help="room to send to (default lobby)")
    say.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_SAY_TIMEOUT,
        help=f"seconds to wait for the acknowledgement (default {DEFAULT_SAY_TIMEOUT:g})",
    )
    say.add_argument("text", nargs="+", help="the message (several words are joined by spaces)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the server's WebSocket URL, e.g. ws://127.0.0.1:8080/ws")
    parser.add_argument("--name", help="your username (optional with --token: the token's user)")
    parser.add_argument(
        "--token",
        default=os.environ.get("WSCHAT_TOKEN"),
        help="auth token, sent as Authorization: Bearer [env WSCHAT_TOKEN]",
    )


def run_command(args: argparse.Namespace) -> int:
    """Run ``wschat chat`` or ``wschat say``; returns the exit status."""
    if args.name is None and args.token is None:
        return _fail(f"give --name NAME (or --token TOKEN); see wschat {args.command} --help", 2)
    options = {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}
    try:
        if args.command == "chat":
            rooms = args.rooms or ["lobby"]
            return anyio.run(
                chat_main,
                args.url,
                rooms,
                args.name,
                args.token,
                sys.stdin,
                sys.stdout,
                backend="asyncio",
                backend_options=options,
            )
        text = " ".join(args.text)
        return anyio.run(
            say_main,
            args.url,
            args.room,
            args.name,
            args.token,
            text,
            args.timeout,
            backend="asyncio",
            backend_options=options,
        )
    except KeyboardInterrupt:
        return 130


async def say_main(
    url: str, room: str, name: str | None, token: str | None, text: str, timeout: float
) -> int:
    """Send ``text``; 0 once acknowledged, else 1 (or 2 for a bad argument) and one stderr line."""
    try:
        with anyio.fail_after(timeout):
            async with connect(url, room=room, username=name, token=token) as chat:
                await chat.say(text)
    except TimeoutError:
        return _fail(f"no acknowledgement within {timeout:g} s")
    except ValueError as exc:
        return _fail(str(exc), status=2)
    except ClientError as exc:
        return _fail(str(exc))
    return 0


async def chat_main(
    url: str, rooms: list[str], name: str | None, token: str | None, stdin: TextIO, out: TextIO
) -> int:
    """The terminal chat: events to ``out``, lines from ``stdin`` sent. Returns the exit status."""
    failure: list[ClientError] = []
    try:
        async with (
            connect(url, room=rooms, username=name, token=token) as chat,
            anyio.create_task_group() as group,
        ):
            group.start_soon(_print_events, chat, out, group.cancel_scope, failure)
            await _send_lines(chat, stdin, out)
            group.cancel_scope.cancel()
    except ValueError as exc:
        return _fail(str(exc), status=2)
    except ClientError as exc:
        failure.append(exc)
    if failure:
        return _fail(str(failure[0]))
    return 0


async def _print_events(
    chat: ChatClient, out: TextIO, scope: anyio.CancelScope, failure: list[ClientError]
) -> None:
    try:
        async for event in chat:
            for line in render(event):
                print(line, file=out, flush=True)
    except ClientError as exc:
        failure.append(exc)
    scope.cancel()  # the client stopped: so does the chat


async def _send_lines(chat: ChatClient, stdin: TextIO, out: TextIO) -> None:
    current = chat.rooms[0]
    while True:
        line = await anyio.to_thread.run_sync(stdin.readline, abandon_on_cancel=True)
        if not line:
            return  # end of input
        text = line.rstrip("\r\n")
        command, _, argument = text.partition(" ")
        try:
            if command == "/quit":
                return
            if command == "/join" and argument:
                await chat.join(argument.strip())
                current = argument.strip()
            elif command == "/leave" and argument:
                chat.leave(argument.strip())
                if current == argument.strip() and chat.rooms:
                    current = chat.rooms[0]
            elif text.strip():
                await chat.say(text, room=current)
        except (ClientError, ValueError) as exc:
            print(f"! {exc}", file=out, flush=True)


def _fail(message: str, status: int = 1) -> int:
    print(f"wschat: {message}", file=sys.stderr, flush=True)
    return status
