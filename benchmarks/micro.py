#!/usr/bin/env python
"""Microbenchmarks of wschat's per-message and per-recipient costs (plain timeit, fixed seeds).

    .venv/bin/python benchmarks/micro.py            # all, ~1 minute
    .venv/bin/python benchmarks/micro.py --quick    # fewer repeats

Each figure is the best of ``--repeat`` timeit repeats, per operation:

- frames: ``wschat.protocol.encode_text_frame`` against wsproto's own framing;
  a ServerConnection receiving masked client frames against a bare wsproto
  Connection doing the same;
- chat: ``parse_command`` and ``ChatSession.handle`` on a client message,
  ``message_event`` encoding the broadcast, ``format_time``;
- hub: ``await hub.say(...)`` under anyio with a MemoryBackend and N members,
  (a) fake members whose ``send`` appends to a list, (b) real Peers with their
  TransportWriter (no flusher running); per-recipient cost is the slope
  between N = 10 and N = 10,000;
- inbound (``micro_inbound.py``): one client message through the server's
  whole per-message path, without its deliveries; ``--callgrind`` counts
  instructions per operation under valgrind instead of timing, including one
  fan-out to 50 or 500 real Peers (``fanout_direct_*``, ``fanout_batched_*``:
  per recipient is the difference over 450).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from wsproto import ConnectionType
from wsproto import connection as ws
from wsproto import events as wse
from wsproto.frame_protocol import FrameProtocol

from wschat.chat import ChatSession, Position, format_time, message_event, parse_command
from wschat.hub import Hub, MemoryBackend, PreparedMessage
from wschat.protocol import ServerConnection, TextReceived, encode_text_frame

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = 20261126
ROOM = "bench"


def best(fn: Callable[[], object], number: int, repeat: int) -> float:
    """Seconds per call: the best of ``repeat`` timeit runs of ``number`` calls."""
    return min(timeit.Timer(fn).repeat(repeat=repeat, number=number)) / number


def text_message(rng: random.Random, size: int = 100) -> str:
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789 ") for _ in range(size))


def masked(payload: bytes, rng: random.Random, opcode: int = 0x1) -> bytes:
    n = len(payload)
    header = (
        bytes((0x80 | opcode, 0x80 | n))
        if n < 126
        else bytes((0x80 | opcode, 0xFE)) + (n.to_bytes(2, "big"))
    )
    key = rng.randbytes(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def handshake_request(rng: random.Random) -> bytes:
    import base64

    key = base64.b64encode(rng.randbytes(16))
    return (
        b"GET /ws?room=bench HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: "
        + key
        + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )


def open_server_connection(rng: random.Random) -> ServerConnection:
    conn = ServerConnection({"/ws"})
    conn.receive_data(handshake_request(rng))
    conn.events_received()
    conn.accept_websocket(compression=False)
    conn.data_to_send()
    return conn


def bench_frames(rng: random.Random, number: int, repeat: int) -> dict[str, float]:
    text = text_message(rng)
    event = message_event(ROOM, Position("e", 1), "alice", text, "2026-11-26T16:00:00.000Z")
    event_text = event.decode()
    results: dict[str, float] = {}
    results["encode: wschat encode_text_frame"] = best(
        lambda: encode_text_frame(event), number, repeat
    )
    proto = FrameProtocol(client=False, extensions=[])
    results["encode: wsproto FrameProtocol.send_data"] = best(
        lambda: proto.send_data(event_text, fin=True), number, repeat
    )
    server = ws.Connection(ConnectionType.SERVER)
    message = wse.TextMessage(data=event_text)
    results["encode: wsproto Connection.send(TextMessage)"] = best(
        lambda: server.send(message), number, repeat
    )
    assert encode_text_frame(event) == server.send(message)

    client_message = b'{"type":"message","message":"%s"}' % text.encode()
    frame = masked(client_message, rng)
    batch = b"".join(masked(client_message, rng) for _ in range(10))
    conn = open_server_connection(rng)

    def wschat_one() -> None:
        conn.receive_data(frame)
        conn.events_received()

    def wschat_ten() -> None:
        conn.receive_data(batch)
        conn.events_received()

    bare = ws.Connection(ConnectionType.SERVER)

    def wsproto_one() -> None:
        bare.receive_data(frame)
        for _ in bare.events():
            pass

    def wsproto_ten() -> None:
        bare.receive_data(batch)
        for _ in bare.events():
            pass

    conn.receive_data(frame)
    received = conn.events_received()
    assert len(received) == 1 and isinstance(received[0], TextReceived)
    assert received[0].text == client_message.decode()
    results["decode: wschat ServerConnection, 1 frame per read"] = best(wschat_one, number, repeat)
    results["decode: wsproto Connection, 1 frame per read"] = best(wsproto_one, number, repeat)
    results["decode: wschat ServerConnection, 10 frames per read (per frame)"] = (
        best(wschat_ten, max(1, number // 10), repeat) / 10
    )
    results["decode: wsproto Connection, 10 frames per read (per frame)"] = (
        best(wsproto_ten, max(1, number // 10), repeat) / 10
    )
    return results


def bench_chat(rng: random.Random, number: int, repeat: int) -> dict[str, float]:
    text = text_message(rng)
    typed = f'{{"type":"message","message":"{text}","username":"u1"}}'
    seed = f'{{"username":"u1","message":"{text}"}}'
    session = ChatSession(ROOM)
    session.handle(seed)
    position = Position("0123456789ab", 41)
    now = 1_795_000_000.123
    return {
        "parse_command (typed message)": best(lambda: parse_command(typed), number, repeat),
        "parse_command (seed format)": best(lambda: parse_command(seed), number, repeat),
        "ChatSession.handle (seed format)": best(lambda: session.handle(seed), number, repeat),
        "message_event (JSON encode, ~230 B)": best(
            lambda: message_event(ROOM, position, "u1", text, "2026-11-26T16:00:00.123Z"),
            number,
            repeat,
        ),
        "format_time": best(lambda: format_time(now), number, repeat),
    }


class FakeMember:
    """A Hub member whose ``send`` appends to a list (no I/O at all)."""

    __slots__ = ("box", "conn_id", "legacy", "username")

    def __init__(self, index: int) -> None:
        self.conn_id = f"fake-{index}"
        self.username: str | None = None
        self.legacy = False
        self.box: list[PreparedMessage] = []

    def send(self, message: PreparedMessage) -> None:
        self.box.append(message)


async def _hub_say_cost(members: list[Any], says: int, repeat: int, text: str) -> float:
    """Seconds per ``await hub.say`` with ``members`` in the room (best of ``repeat``)."""
    hub = Hub(MemoryBackend())
    async with anyio.create_task_group() as group:
        await hub.start(group)
        for member in members:
            await hub.enter(member, ROOM)
        timings = []
        for _ in range(repeat):
            for member in members:
                _drain(member)
            started = time.perf_counter()
            for _ in range(says):
                await hub.say(ROOM, "alice", text)
            timings.append((time.perf_counter() - started) / says)
        for member in members:
            _drain(member)
        await hub.aclose()
        group.cancel_scope.cancel()
    return min(timings)


def _drain(member: Any) -> None:
    if isinstance(member, FakeMember):
        member.box.clear()
    else:
        member.writer.discard()


class _IdleTransport:
    """A transport that takes nothing: the flusher never runs in this benchmark."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None: ...

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class _NoStream:
    """What a Peer asks of its stream when it is told to stop reading: no socket here."""

    def extra(self, attribute: Any, default: Any = None) -> Any:
        return default


async def _real_members(n: int) -> list[Any]:
    from wschat.server.dispatch import SenderLimits
    from wschat.server.flusher import Flusher
    from wschat.server.metrics import Metrics
    from wschat.server.peer import Closings, Peer
    from wschat.server.ratelimit import TokenBucket
    from wschat.server.watchdog import Timers
    from wschat.server.writer import TransportWriter

    rng = random.Random(SEED)
    metrics = Metrics(lambda: {"rooms": 0, "members": 0, "broadcasts": 0, "deliveries": 0})
    flusher = Flusher(lambda written: None)
    now = anyio.current_time()
    members = []
    for i in range(n):
        writer = TransportWriter(1024 * 1024, _IdleTransport(), flusher)
        writer.release()
        members.append(
            Peer(
                conn_id=f"real-{i}",
                address="127.0.0.1:1",
                path="/ws",
                conn=open_server_connection(rng),
                writer=writer,
                session=ChatSession(ROOM),
                limits=SenderLimits(TokenBucket(0, 20, now), TokenBucket(0, 20, now), ""),
                timers=Timers(now),
                metrics=metrics,
                closings=Closings(5.0),
                stream=_NoStream(),  # type: ignore[arg-type]
            )
        )
    return members


def bench_hub(rng: random.Random, repeat: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    text = text_message(rng)
    results: dict[str, Any] = {}
    for kind in ("fake", "real"):
        per_size: dict[int, float] = {}
        for n in sizes:
            says = max(20, 200_000 // max(n, 1))

            async def run(n: int = n, says: int = says, kind: str = kind) -> float:
                members = (
                    [FakeMember(i) for i in range(n)] if kind == "fake" else await _real_members(n)
                )
                return await _hub_say_cost(members, says, repeat, text)

            per_size[n] = anyio.run(run)
        low, high = min(sizes), max(sizes)
        slope = (per_size[high] - per_size[low]) / (high - low)
        results[kind] = {"per_say": per_size, "per_recipient": slope, "fixed": per_size[low]}
    return results


def bench_send_floor(clients: int = 1000, rounds: int = 50) -> dict[str, float]:
    """The kernel's share: send(2) of one ~230-byte frame to each of ``clients`` loopback sockets.

    A forked reader process (CPU 1) drains the client ends, as the load generator
    does; this process (CPU 0) sends one frame to every socket, then waits 10 ms
    (the latency benchmark's regime at C=1000, 100,000 deliveries/s), and again.
    No server can fan out to ``clients`` TCP sockets faster than this sweep.
    """
    import selectors
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(clients)
    client_ends = [socket.create_connection(listener.getsockname()) for _ in range(clients)]
    server_ends = [listener.accept()[0] for _ in range(clients)]
    listener.close()
    pid = os.fork()
    if pid == 0:  # the reader
        for sock in server_ends:  # else the parent's close never reaches us as EOF
            sock.close()
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {1})
        selector = selectors.EpollSelector()
        for sock in client_ends:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while True:
            for key, _ in selector.select():
                try:
                    if not key.fileobj.recv(65536):  # type: ignore[union-attr]
                        os._exit(0)
                except BlockingIOError:
                    pass
    affinity = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {0})
    for sock in client_ends:
        sock.close()
    for sock in server_ends:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    frame = encode_text_frame(b"x" * 230)
    sweeps = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            for sock in server_ends:
                sock.send(frame)
            sweeps.append(time.perf_counter() - started)
            time.sleep(0.010)
    finally:
        for sock in server_ends:
            sock.close()
        os.waitpid(pid, 0)
        os.sched_setaffinity(0, affinity)
    sweeps.sort()
    median = sweeps[len(sweeps) // 2]
    return {"clients": clients, "sweep_s": median, "per_send_s": median / clients}


def main() -> int:
    import micro_inbound  # (it imports this module's helpers)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeat", type=int)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument(
        "--callgrind",
        nargs="*",
        metavar="OP",
        help="instructions per operation under valgrind (OPs: default all; see _loops)",
    )
    parser.add_argument("--loop", help=argparse.SUPPRESS)  # one run under valgrind
    parser.add_argument("--number", type=int, default=2000, help="operations per callgrind run")
    args = parser.parse_args()
    if args.loop:
        # Warm-up operations in both runs: lazy imports and tables, first-use caches
        # and the first message of a connection are not counted as per-operation work.
        loops = micro_inbound.loops(random.Random(SEED))
        loops[args.loop](args.number + micro_inbound.WARM_UP)
        return 0
    if args.callgrind is not None:
        names = args.callgrind or list(micro_inbound.loops(random.Random(SEED)))
        lines = ["| operation | instructions |", "|---|---:|"]
        for name, count in micro_inbound.callgrind(names, args.number).items():
            lines.append(f"| {name} | {count:,.0f} |")
            print(lines[-1], flush=True)
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "micro-callgrind-latest.md").write_text("\n".join(lines) + "\n")
        return 0
    repeat = args.repeat or (3 if args.quick else 7)
    number = 20_000 if args.quick else 100_000
    sizes = (10, 100, 1000, 10_000)
    rng = random.Random(SEED)
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {0})  # as the servers are in run.py
    frames = bench_frames(rng, number, repeat)
    chat = bench_chat(rng, number, repeat)
    inbound = micro_inbound.bench_inbound(rng, number // 4, repeat)
    hub = bench_hub(rng, repeat, sizes)
    floor = bench_send_floor()
    lines = [f"### Microbenchmarks (best of {repeat}, per operation)", ""]
    lines += ["| operation | ns |", "|---|---:|"]
    for name, seconds in {**frames, **chat, **inbound}.items():
        lines.append(f"| {name} | {seconds * 1e9:,.0f} |")
    lines += [
        "",
        "| Hub fan-out: `await hub.say()` | "
        + " | ".join(f"N={n:,}" for n in sizes)
        + " | per recipient |",
        "|---|" + "---:|" * (len(sizes) + 1),
    ]
    labels = {
        "fake": "fake members (send = list.append)",
        "real": "real Peer + TransportWriter (no flusher)",
    }
    for kind, result in hub.items():
        cells = " | ".join(f"{result['per_say'][n] * 1e6:,.1f} µs" for n in sizes)
        lines.append(f"| {labels[kind]} | {cells} | {result['per_recipient'] * 1e9:,.0f} ns |")
    lines += [
        "",
        f"Kernel floor: send(2) of one 236-byte frame to each of {floor['clients']:,} loopback "
        f"TCP sockets (reader on CPU 1): {floor['per_send_s'] * 1e6:.2f} µs per send, "
        f"{floor['sweep_s'] * 1e3:.2f} ms per sweep (median of 50, 10 ms apart).",
    ]
    text = "\n".join(lines)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"micro-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(
        json.dumps(
            {
                "seed": SEED,
                "repeat": repeat,
                "number": number,
                "frames_s": frames,
                "chat_s": chat,
                "inbound_s": inbound,
                "hub_s": hub,
                "send_floor": floor,
            },
            indent=1,
        )
    )
    (args.output / "micro-latest.md").write_text(text + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
