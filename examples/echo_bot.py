"""An echo bot: repeats what others say in the lobby. Run: python examples/echo_bot.py [URL]"""
import sys

import anyio

import wschat.client


async def main(url: str) -> None:
    async with wschat.client.connect(url, room="lobby", username="echo-bot") as chat:
        async for event in chat:
            if isinstance(event, wschat.client.Message) and not event.mine:
                await chat.say(f"echo: {event.text}"[:4096], room=event.room)


anyio.run(main, sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8080/ws")
