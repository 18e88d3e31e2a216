"""An echo bot: repeats what others say in the lobby. Run: python examples/echo_bot.py [URL]"""

import sys

import anyio

from wschat.client import MAX_MESSAGE_LENGTH, Message, connect


async def main(url: str) -> None:
    async with connect(url, room="lobby", username="echo-bot") as chat:
        async for event in chat:
            if isinstance(event, Message) and not event.mine:
                await chat.say(f"echo: {event.text}"[:MAX_MESSAGE_LENGTH], room=event.room)


anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws")
