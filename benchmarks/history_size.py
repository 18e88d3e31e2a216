#!/usr/bin/env python
"""History replies on the wire: 100 chat messages, with and without ``--compression``.

    .venv/bin/python benchmarks/history_size.py                 # ~10 s, 5 histories
    .venv/bin/python benchmarks/history_size.py --histories 20 --server wschat@HEAD

Two real ``wschat serve`` processes (memory hub; the working tree's ``wschat/`` or a
revision's, started by ``servers.py``): one with the defaults, one with ``--compression``.
Each history is a room of its own: a few users publish 100 messages into it the way the
page does (a ``message`` with the page's ``<session>-<counter>`` id, each acknowledged
before the next), on both servers. Then a client that offers deflate exactly as Chromium
does (``permessage-deflate; client_max_window_bits``, ``wire.CHROMIUM_OFFER``) joins the
room and the ``history`` reply is counted as it came off the socket: the WebSocket
frame's header and payload (TCP/IP headers not counted). The ratio is the plain frame's
bytes over the compressed frame's.

Checks: the server without ``--compression`` declines the offer; the one with it accepts
it; each reply holds the room's 100 messages, in order, with their ids; the compressed
reply inflates to exactly the bytes a client without the offer gets from the same server.

The corpus (``history_corpus.txt``) was written for this benchmark: a team's day in a room,
131 distinct lines of 22 to 176 characters (median 53), plain English with a little
punctuation, a few emoji and accented words. No line repeats, so deflate finds only what
chat really repeats (the JSON keys, names, ids, times, common words). A history takes 100
of the lines and their senders (five usernames, some chattier than others) from a seeded
random generator: history ``n`` uses seed ``n``.

The server stamps each message as it is published, so all 100 carry nearly the same
time, which compresses better than a real room's spread of times. The script therefore
also deflates each reply again with its times spread over a working day (seeded gaps of
seconds to minutes) with the server's own compressor (``MessageDeflater`` at the window
the server uses, checked to give the server's bytes for the reply as sent), and reports
that ratio too.

Writes results/history-size-<time>.md (and results/history-size-latest.md). Exits 1 when
a check fails.
"""

from __future__ import annotations

import argparse
import base64
import json
import random
import shutil
import socket
import statistics
import struct
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from wire import CHROMIUM_OFFER, inflate_one, mask_frame

from wschat.protocol.deflate import DEFAULT_SERVER_MAX_WINDOW_BITS, MessageDeflater

HERE = servers.HERE
RESULTS = HERE / "results"
MESSAGES = 100  # wschat's --history-size default: a join's reply holds this many at most
TARGET = 3.0  # issue 9: "at least 3x smaller on the wire with compression"
WINDOWS = (9, 10, 12, 15)  # server windows compared offline (the server uses 12)
# The page's usernames are whatever people type; a few, some chattier than others.
USERS = (("maya", 5), ("tom", 4), ("priya", 3), ("jonas", 2), ("li.wei", 1))
_BASE36 = "0123456789abcdefghijklmnopqrstuvwxyz"

# One chat line per line of the file; see the module's docstring.
CORPUS = tuple((HERE / "history_corpus.txt").read_text(encoding="utf-8").splitlines())


@dataclass(frozen=True)
class Published:
    """One message as the page sent it."""

    username: str
    text: str
    message_id: str


def plan(seed: int) -> list[Published]:
    """History ``seed``'s 100 messages: lines, senders and the page's ids, seeded."""
    rng = random.Random(seed)
    lines = rng.sample(CORPUS, MESSAGES)
    names = [name for name, _ in USERS]
    weights = [weight for _, weight in USERS]
    # outbox.js: Math.random().toString(36).slice(2, 10) per page, then -1, -2, ...
    sessions = {name: "".join(rng.choice(_BASE36) for _ in range(8)) for name in names}
    counters = dict.fromkeys(names, 0)
    out = []
    for text in lines:
        name = rng.choices(names, weights)[0]
        counters[name] += 1
        out.append(Published(name, text, f"{sessions[name]}-{counters[name]}"))
    return out


@dataclass(frozen=True)
class Frame:
    """One server frame as read from the socket."""

    first: int  # FIN, RSV1-3 and the opcode
    header: int  # bytes of header before the payload
    payload: bytes

    @property
    def wire_bytes(self) -> int:
        return self.header + len(self.payload)

    @property
    def compressed(self) -> bool:
        return bool(self.first & 0x40)


class WireClient:
    """A blocking WebSocket client that keeps each server frame's bytes as they came."""

    def __init__(self, port: int, room: str, offer: bytes | None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(random.randbytes(16))
        extensions = b"Sec-WebSocket-Extensions: %s\r\n" % offer if offer else b""
        self.sock.sendall(
            b"GET /ws?room=%s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"Origin: http://127.0.0.1:%d\r\n%s\r\n" % (room.encode(), port, key, port, extensions)
        )
        self.buffer = b""
        head = self._read_until(b"\r\n\r\n").decode("latin-1")
        if not head.startswith("HTTP/1.1 101"):
            raise ConnectionError(head.split("\r\n", 1)[0])
        self.extensions: str | None = None
        """The server's Sec-WebSocket-Extensions answer (None: no extension)."""
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "sec-websocket-extensions":
                self.extensions = value.strip()

    def send_json(self, event: dict[str, Any]) -> None:
        self.sock.sendall(mask_frame(json.dumps(event, ensure_ascii=False).encode()))

    def next_text(self, kind: str) -> tuple[Frame, dict[str, Any]]:
        """The next text frame whose event is of type ``kind`` (others skipped)."""
        while True:
            frame = self._frame()
            if frame.first & 0x0F != 0x1:
                continue  # a ping: the server's keepalive is far slower than this run
            if not frame.first & 0x80:
                raise ValueError("a fragmented text frame: wschat sends whole messages")
            text = inflate_one(frame.payload) if frame.compressed else frame.payload
            event: dict[str, Any] = json.loads(text)
            if event.get("type") == kind:
                return frame, event
            if event.get("type") == "error":
                raise RuntimeError(f"the server refused: {event}")

    def close(self) -> None:
        self.sock.close()

    def _frame(self) -> Frame:
        first, second = self._read(2)
        length, header = second & 0x7F, 2
        if length == 126:
            (length,), header = struct.unpack("!H", self._read(2)), 4
        elif length == 127:
            (length,), header = struct.unpack("!Q", self._read(8)), 10
        return Frame(first, header, self._read(length))

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._receive()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _receive(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        self.buffer += chunk


def publish(port: int, room: str, messages: list[Published]) -> None:
    """Send ``messages`` into ``room`` as the page does, each acknowledged before the next."""
    clients: dict[str, WireClient] = {}
    try:
        for published in messages:
            client = clients.get(published.username)
            if client is None:
                client = clients[published.username] = WireClient(port, room, None)
                client.send_json({"type": "join", "room": room, "username": published.username})
                client.next_text("presence")
            client.send_json(
                {
                    "type": "message",
                    "room": room,
                    "message": published.text,
                    "id": published.message_id,
                }
            )
            while client.next_text("ack")[1]["id"] != published.message_id:
                pass
    finally:
        for client in clients.values():
            client.close()


def history_reply(port: int, room: str, offer: bytes | None) -> tuple[str | None, Frame, bytes]:
    """Join ``room`` as the page does: the answer to ``offer``, the reply frame, its JSON."""
    client = WireClient(port, room, offer)
    try:
        client.send_json({"type": "join", "room": room, "username": "reader"})
        frame, _ = client.next_text("history")
        text = inflate_one(frame.payload) if frame.compressed else frame.payload
        return client.extensions, frame, text
    finally:
        client.close()


def check_reply(text: bytes, messages: list[Published]) -> list[str]:
    """What is wrong with a history reply of ``messages`` (nothing: an empty list)."""
    event = json.loads(text)
    got = [(m["username"], m["message"], m.get("id")) for m in event["messages"]]
    want = [(m.username, m.text, m.message_id) for m in messages]
    return [] if got == want else [f"history of {event['room']} is not what was published"]


def spread_times(text: bytes, seed: int) -> bytes:
    """The same reply with its messages' times spread over a working day, seeded."""
    event = json.loads(text)
    rng = random.Random(seed)
    moment = datetime(2026, 12, 4, 8, 30, tzinfo=UTC)
    stored = []
    for message in event.pop("messages"):
        moment += timedelta(seconds=rng.choice((2, 5, 20, 45, 90, 300, 900)) + rng.random())
        message["time"] = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        stored.append(json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode())
    head = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    return head[:-1] + b',"messages":[' + b",".join(stored) + b"]}"


def header_bytes(payload_length: int) -> int:
    """RFC 6455 5.2: an unmasked server frame's header for a payload this long."""
    return 2 if payload_length < 126 else 4 if payload_length < 65536 else 10


@dataclass
class Result:
    """One history's figures, in bytes."""

    seed: int
    answer: str | None  # the --compression server's answer to Chromium's offer
    plain_wire: int  # the reply frame from the server without --compression
    compressed_wire: int  # from the server with --compression, to Chromium's offer
    json_bytes: int  # the reply's JSON, inflated
    spread_plain: int  # the reply with its times spread, as a plain frame
    spread_by_window: dict[int, int]  # ... and compressed at each of WINDOWS

    @property
    def ratio(self) -> float:
        return self.plain_wire / self.compressed_wire

    @property
    def spread_compressed(self) -> int:
        return self.spread_by_window[DEFAULT_SERVER_MAX_WINDOW_BITS]

    @property
    def spread_ratio(self) -> float:
        return self.spread_ratio_at(DEFAULT_SERVER_MAX_WINDOW_BITS)

    def spread_ratio_at(self, bits: int) -> float:
        return self.spread_plain / self.spread_by_window[bits]


def measure(plain_port: int, deflate_port: int, seed: int, problems: list[str]) -> Result:
    """History ``seed`` on both servers; appends what failed a check to ``problems``."""
    room = f"history-{seed}"
    messages = plan(seed)
    publish(plain_port, room, messages)
    publish(deflate_port, room, messages)
    declined, plain, plain_text = history_reply(plain_port, room, CHROMIUM_OFFER)
    accepted, packed, packed_text = history_reply(deflate_port, room, CHROMIUM_OFFER)
    _, _, unoffered_text = history_reply(deflate_port, room, None)
    problems += check_reply(plain_text, messages) + check_reply(packed_text, messages)
    if declined is not None or plain.compressed:
        problems.append(f"the server without --compression answered {declined!r}")
    if accepted is None or not packed.compressed:
        problems.append(f"the server with --compression answered {accepted!r}, sent it plain")
    if packed_text != unoffered_text:
        problems.append(f"{room}: the compressed reply does not inflate to the plain one")
    # The server compresses every message alone at its window (12 bits unless the client
    # asks for less; Chromium does not): the same compressor gives the same bytes.
    deflater = MessageDeflater(DEFAULT_SERVER_MAX_WINDOW_BITS, 0)
    if deflater.compress(packed_text) != packed.payload:
        problems.append(f"{room}: MessageDeflater does not reproduce the server's bytes")
    spread = spread_times(packed_text, seed)
    by_window = {bits: len(MessageDeflater(bits, 0).compress(spread)) for bits in WINDOWS}
    return Result(
        seed=seed,
        answer=accepted,
        plain_wire=plain.wire_bytes,
        compressed_wire=packed.wire_bytes,
        json_bytes=len(packed_text),
        spread_plain=header_bytes(len(spread)) + len(spread),
        spread_by_window={bits: header_bytes(n) + n for bits, n in by_window.items()},
    )


def report(results: list[Result], source: dict[str, str], seconds: float) -> str:
    ratios = [r.ratio for r in results]
    spread = [r.spread_ratio for r in results]
    median = statistics.median(ratios)
    changes = (
        f" (local changes in wschat/: {source['local_changes']})"
        if "local_changes" in source
        else ""
    )
    lines = [
        "# History replies on the wire (benchmarks/history_size.py)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, wschat {source.get('revision', '?')}{changes}, "
        f"{len(results)} histories of {MESSAGES} messages, {seconds:.1f} s. Chromium's offer "
        f"`{CHROMIUM_OFFER.decode()}`; `--compression` answered `{results[0].answer}`, "
        "the default server no extension.",
        "",
        "| history (seed) | JSON | plain frame | compressed frame | smaller by | "
        "times spread: plain | compressed | smaller by |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {r.json_bytes:,} B | {r.plain_wire:,} B | {r.compressed_wire:,} B | "
            f"{r.ratio:.2f}x | {r.spread_plain:,} B | {r.spread_compressed:,} B | "
            f"{r.spread_ratio:.2f}x |"
        )
    verdict = "met" if min(ratios) >= TARGET and min(spread) >= TARGET else "**not met**"
    lines += [
        "",
        f"Median {median:.2f}x smaller with `--compression` (range {min(ratios):.2f} to "
        f"{max(ratios):.2f}x); with the times spread over a day {statistics.median(spread):.2f}x "
        f"({min(spread):.2f} to {max(spread):.2f}x). Target ≥ {TARGET:g}x: {verdict}.",
        "",
        "The spread replies at other server windows (offline, `MessageDeflater`; medians): "
        + ", ".join(
            f"{bits} bits {statistics.median(r.spread_ratio_at(bits) for r in results):.2f}x"
            for bits in WINDOWS
        )
        + ".",
        "",
        "Frame bytes are the WebSocket header and payload of the `history` reply as read "
        "from the socket (TCP/IP headers not counted); JSON is the reply inflated.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--histories", type=int, default=5, help="rooms, seeds 1..N")
    parser.add_argument(
        "--server", default="wschat", help="wschat (the working tree) or wschat@REV (a revision)"
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started = time.monotonic()
    source = servers.describe(args.server)  # the working tree's snapshot is taken now
    log_dir = args.output / "logs"
    # no rate limits: 100 messages go in as fast as they are acknowledged
    limits = ("--user-rate", "0")
    plain = servers.start(args.server, None, log_dir, options=servers.Options(extra=limits))
    try:
        deflate = servers.start(
            args.server, None, log_dir, options=servers.Options(compression=True, extra=limits)
        )
        try:
            problems: list[str] = []
            results = [
                measure(plain.port, deflate.port, seed, problems)
                for seed in range(1, args.histories + 1)
            ]
        finally:
            deflate.stop()
    finally:
        plain.stop()
    text = report(results, source, time.monotonic() - started)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"history-size-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(text)
    shutil.copyfile(path, args.output / "history-size-latest.md")
    print(f"written: {path}", file=sys.stderr)
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
