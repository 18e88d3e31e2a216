"""The second peer: a minimal broadcast chat on picows (Cython, on uvloop), wschat's JSON protocol.

Connect to ws://HOST:PORT/ws?room=NAME; send {"username": "u1", "message": "..."} (with or
without "type": "message"); every member of the room, sender included, receives
{"type":"message","room","seq","epoch","username","message","time"} (chat.py). picows has no
permessage-deflate: it answers a deflate offer with no extension.
"""

import argparse
import asyncio

from chat import event, room_of
from picows import WSListener, WSMsgType, ws_create_server

ROOMS: dict[str, set] = {}


class Member(WSListener):
    def __init__(self, room: str) -> None:
        self.room = room
        self.members = ROOMS.setdefault(room, set())

    def on_ws_connected(self, transport):
        self.members.add(transport)

    def on_ws_disconnected(self, transport):
        self.members.discard(transport)

    def on_ws_frame(self, transport, frame):
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code(), frame.get_close_message())
            transport.disconnect()
            return
        if frame.msg_type != WSMsgType.TEXT or not frame.fin:
            return  # the benchmark sends single-frame text messages only
        out = event(self.room, frame.get_payload_as_bytes())
        if out is None:
            return
        payload = out.encode()
        for member in self.members:
            member.send(WSMsgType.TEXT, payload)


def listener_factory(request):
    return Member(room_of(request.path.decode()))


async def main(host: str, port: int) -> None:
    server = await ws_create_server(
        listener_factory, host, port, max_frame_size=65536, backlog=4096
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    try:
        import uvloop  # same event loop as wschat gets, for a fair comparison

        uvloop.run(main(args.host, args.port))
    except ImportError:
        asyncio.run(main(args.host, args.port))
