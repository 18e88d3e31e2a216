"""A Python client for wschat: async, reconnecting, recovering what it missed.

::

    import anyio
    import wschat.client

    async def main() -> None:
        async with wschat.client.connect("ws://127.0.0.1:8080/ws",
                                         room="lobby", username="bot") as chat:
            await chat.say("hello")
            async for event in chat:
                if isinstance(event, wschat.client.Message) and not event.mine:
                    print(event.username, event.text)

    anyio.run(main)

It runs on asyncio, uvloop and trio (through anyio). The sans-IO half (the
WebSocket client connection) is :mod:`wschat.protocol.client`; the chat state
across connections is :class:`~wschat.client.session.ClientSession`.

``MAX_MESSAGE_LENGTH`` (4096) is the server's cap on a message's text, in code
points: :meth:`ChatClient.say` refuses longer text (``bad_message``) before
sending it, so a bot that repeats others cuts its answer to it.
"""

from ..chat import MAX_MESSAGE_LENGTH
from .backoff import Backoff
from .client import ChatClient
from .connecting import connect
from .errors import (
    ClientError,
    ConnectError,
    ConnectionClosedError,
    HandshakeRejectedError,
    JoinError,
    SayError,
)
from .events import (
    Ack,
    Disconnected,
    Error,
    Event,
    Gap,
    History,
    Joined,
    Left,
    Message,
    Position,
    Presence,
    Reconnected,
    Typing,
)
from .supervisor import TokenSource

__all__ = [
    "MAX_MESSAGE_LENGTH",
    "Ack",
    "Backoff",
    "ChatClient",
    "ClientError",
    "ConnectError",
    "ConnectionClosedError",
    "Disconnected",
    "Error",
    "Event",
    "Gap",
    "HandshakeRejectedError",
    "History",
    "JoinError",
    "Joined",
    "Left",
    "Message",
    "Position",
    "Presence",
    "Reconnected",
    "SayError",
    "TokenSource",
    "Typing",
    "connect",
]
