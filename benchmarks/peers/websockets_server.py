"""The peer: a minimal broadcast chat on the `websockets` library, same JSON protocol as wschat.

Connect to ws://HOST:PORT/ws?room=NAME; send {"username": "u1", "message": "..."} (with or
without "type": "message"); every member of the room, sender included, receives
{"type":"message","room","seq","epoch","username","message","time"} (chat.py).
Compression is off unless --deflate turns on the library's default permessage-deflate.
"""

import argparse
import asyncio

from chat import event, room_of
from websockets.asyncio.server import broadcast, serve

ROOMS: dict[str, set] = {}


async def handler(ws):
    room = room_of(ws.request.path)
    members = ROOMS.setdefault(room, set())
    members.add(ws)
    try:
        async for text in ws:
            out = event(room, text)
            if out is not None:
                broadcast(members, out)
    finally:
        members.discard(ws)


async def main(host: str, port: int, deflate: bool) -> None:
    # compression="deflate" is the library's default (context takeover, server window 2**12)
    compression = "deflate" if deflate else None
    async with serve(
        handler, host, port, compression=compression, max_size=65536, backlog=4096
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--deflate", action="store_true", help="the default permessage-deflate")
    args = parser.parse_args()
    try:
        import uvloop  # same event loop as wschat gets, for a fair comparison

        uvloop.run(main(args.host, args.port, args.deflate))
    except ImportError:
        asyncio.run(main(args.host, args.port, args.deflate))
