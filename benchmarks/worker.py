"""One load-generator process's state: its clients, the layout of rooms and senders, the phases.

``loadgen.LoadGen`` drives workers over pipes; each command is a coroutine here. See
``loadgen.py`` for what the phases do.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import resource
import time
from dataclasses import dataclass, field
from typing import Any

from loadclient import COUNT, EVENT_OVERHEAD, IDLE, JOIN, LATENCY, MIN_COMPRESSED, Client
from wire import MESSAGE_SIZE, bench_text, mask_frame

ROOM = "bench"
MARKER_SENDERS = 4  # per room
LOWAT = 16384  # SO_RCVLOWAT while a throughput phase has much left to deliver
SAMPLES = 5  # unexpected frames kept for the report


@dataclass
class Worker:
    """One load-generator process: its clients and the state of the current phase."""

    wid: int
    procs: int
    host: str
    ports: list[int]
    clients_total: int
    senders_per_room: int
    room_size: int
    loop: asyncio.AbstractEventLoop
    offer_deflate: bool = False
    compress_out: bool = False
    lowat: int = LOWAT
    scan: Any = None
    clients: list[Client] = field(default_factory=list)
    mode: int = IDLE
    done: int = 0
    stray: int = 0  # frames that arrived between phases
    malformed: int = 0  # frames the checks could not read (bad deflate data, fragments)
    samples: list[str] = field(default_factory=list)
    mark: bytes = b"MARK 0 "
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))
    observed: array.array[int] = field(default_factory=lambda: array.array("q"))
    record_from: int = 0
    last_receipt: int = 0
    first_send: int = 0
    bytes_in: int = 0
    compressed: int = 0  # message frames that arrived compressed (RSV1)
    finished: asyncio.Event | None = None
    rbuf: bytearray = field(default_factory=lambda: bytearray(1 << 20))
    rview: memoryview = field(init=False)
    cache: dict[bytes, int] = field(default_factory=dict)  # compressed payload -> seq
    texts: dict[bytes, bytes] = field(default_factory=dict)  # compressed payload -> inflated
    # throughput senders
    window: int = 0
    size: int = MESSAGE_SIZE
    quota: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rview = memoryview(self.rbuf)
        self.senders = [i for i in range(self.clients_total) if self.is_sender(i)]

    # -- layout (the same in every worker) ----------------------------------

    def room_of(self, index: int) -> int:
        return index // self.room_size

    def room_name(self, room: int) -> str:
        return ROOM if self.room_size >= self.clients_total else f"r{room}"

    def members(self, room: int) -> int:
        return min(self.room_size, self.clients_total - room * self.room_size)

    def is_sender(self, index: int) -> bool:
        return index % self.room_size < self.senders_per_room

    def is_marker_sender(self, index: int) -> bool:
        return index % self.room_size < min(self.senders_per_room, MARKER_SENDERS)

    def markers_in_room(self, room: int) -> int:
        return min(self.senders_per_room, MARKER_SENDERS, self.members(room))

    def per_room(self, messages: int) -> dict[int, int]:
        """Messages each room receives when ``messages`` go round-robin over the senders."""
        counts: dict[int, int] = {}
        n = len(self.senders)
        for position, index in enumerate(self.senders):
            share = messages // n + (1 if position < messages % n else 0)
            room = self.room_of(index)
            counts[room] = counts.get(room, 0) + share
        return counts

    # -- progress -----------------------------------------------------------

    def client_done(self) -> None:
        self.done += 1
        if self.done >= len(self.clients):
            self.last_receipt = time.time_ns()
            if self.finished is not None:
                self.finished.set()

    def sample(self, text: bytes) -> None:
        if len(self.samples) < SAMPLES:
            self.samples.append(text[:200].decode("utf-8", "replace"))

    def unexpected(self, text: bytes) -> None:
        self.stray += 1
        self.sample(text)

    def sender_progress(self, client: Client) -> None:
        index = client.index
        quota = self.quota.get(index, 0)
        sent = self.sent.get(index, 0)
        while sent < quota and sent - client.acked < self.window:
            client.send_text(bench_text(time.time_ns(), sent, self.size))
            sent += 1
        self.sent[index] = sent

    # -- phases -------------------------------------------------------------

    def _begin(self, mode: int, messages: int) -> None:
        """Start a counting phase of ``messages`` in all: each client's seq range."""
        expected = self.per_room(messages)
        high: dict[int, int] = {}
        for client in self.clients:
            room = client.room_index
            high[room] = max(high.get(room, 0), client.high_seq())
        self.done = 0
        self.stray = self.malformed = self.bytes_in = self.compressed = 0
        self.samples = []
        self.cache.clear()
        self.texts.clear()
        self.last_receipt = 0
        self.finished = asyncio.Event()
        self.mode = mode
        for client in self.clients:
            client.reset()
            client.check.start(high[client.room_index], expected.get(client.room_index, 0))
            # a closed client receives nothing more: its deliveries count as missing
            if client.closed or client.check.expected == 0:
                client.done = True
                self.done += 1
            elif mode == COUNT and not client.sender:
                client.min_frame = (
                    MIN_COMPRESSED if client.deflate is not None else self.size + EVENT_OVERHEAD
                )
                if client.check.expected * client.min_frame > self.lowat:
                    client.set_lowat(self.lowat)
        if self.done >= len(self.clients):
            self.finished.set()

    def _finish(self, cpu0: float) -> dict[str, Any]:
        """Read what is left, end the phase, and report its checks."""
        for client in self.clients:
            client.set_lowat(1)
            for _ in range(64):
                if not client.readable():
                    break
        self.mode = IDLE
        checks = [c.check for c in self.clients]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "clients": len(self.clients),
            "expected": sum(c.expected for c in checks),
            "received": sum(c.unique for c in checks),
            "frames": sum(c.count for c in self.clients),
            "missing": sum(c.missing for c in checks),
            "duplicate": sum(c.duplicate for c in checks),
            "out_of_order": sum(c.out_of_order for c in checks),
            "unexpected": sum(c.unexpected for c in checks) + self.stray,
            "malformed": self.malformed,
            "incomplete": sum(1 for c in checks if c.missing),
            "samples": self.samples,
            "closed": sum(1 for c in self.clients if c.closed),
            "close_codes": sorted({c.close_code for c in self.clients if c.close_code}),
            "bytes_in": self.bytes_in,
            "compressed": self.compressed,
            "first_send": self.first_send,
            "last_receipt": self.last_receipt
            or (time.time_ns() if self.done < len(self.clients) else 0),
            "cpu": usage.ru_utime + usage.ru_stime - cpu0,
        }

    async def connect(self, indices: list[int], concurrency: int, timeout: float) -> dict[str, Any]:
        semaphore = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one(index: int) -> None:
            async with semaphore:
                for attempt in range(5):
                    client = Client(self, index)
                    try:
                        await client.open(timeout)
                    except (OSError, TimeoutError, ConnectionError) as exc:
                        if attempt == 4:
                            errors.append(f"client {index}: {exc!r}")
                            return
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    self.clients.append(client)
                    return

        await asyncio.gather(*(one(i) for i in indices))
        self.clients.sort(key=lambda c: c.index)
        negotiated = sorted({repr(c.deflate) for c in self.clients})
        return {
            "connected": len(self.clients),
            "errors": errors[:5],
            "failed": len(errors),
            "deflate": sum(1 for c in self.clients if c.deflate is not None),
            "negotiated": negotiated,
        }

    async def arm(self, round_: int) -> dict[str, Any]:
        """Count this round's markers from now on (before any worker sends one)."""
        self.mark = b'"message":"MARK %d ' % round_
        self.mode = JOIN
        for client in self.clients:
            client.reset()
        return {}

    async def join(self, round_: int, timeout: float) -> dict[str, Any]:
        """Send this round's markers; wait until every client saw its room's markers."""
        assert self.mode == JOIN and self.mark == b'"message":"MARK %d ' % round_
        for client in self.clients:
            if client.marker_sender:
                client.send_text(f"MARK {round_} " + "m" * 20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.marks >= c.markers_expected for c in self.clients):
                break
            await asyncio.sleep(0.01)
        self.mode = IDLE
        missing = [c for c in self.clients if c.marks < c.markers_expected]
        return {
            "joined": len(self.clients) - len(missing),
            "missing_closed": sum(1 for c in missing if c.closed),
            "missing_marks": sorted({f"{c.marks}/{c.markers_expected}" for c in missing})[:5],
            "missing_rooms": len({self.room_of(c.index) for c in missing}),
        }

    async def throughput(
        self, messages: int, window: int, start_at: int, timeout: float, size: int = MESSAGE_SIZE
    ) -> dict[str, Any]:
        n = len(self.senders)
        self.window = window
        self.size = size
        self.quota = {
            index: messages // n + (1 if position < messages % n else 0)
            for position, index in enumerate(self.senders)
        }
        self.sent = {}
        bench_text(0, 0, size)  # its word pool is made now, not while the clock runs
        self._begin(COUNT, messages)
        await _sleep_until(start_at)
        cpu0 = _cpu()
        self.first_send = time.time_ns()
        for client in self.clients:
            if client.sender:
                self.sender_progress(client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout)  # type: ignore[union-attr]
        report = self._finish(cpu0)
        report["sent"] = sum(self.sent.values())
        return report

    async def latency(
        self,
        msg_rate: float,
        total: int,
        start_at: int,
        warmup: float,
        timeout: float,
        grace: float = 0.0,
        size: int = MESSAGE_SIZE,
    ) -> dict[str, Any]:
        """Send ``total`` messages at ``msg_rate``/s (all workers together) from ``start_at``.

        After ``timeout`` the deliveries still missing are counted (``late``); then up to
        ``grace`` s more are given to tell a late delivery from a lost one.
        """
        self.latencies = array.array("q")
        self.observed = array.array("q")
        self.record_from = start_at + int(warmup * 1e9)
        bench_text(0, 0, size)  # its word pool is made now, not while the clock runs
        self._begin(LATENCY, total)
        senders = self.senders
        mine = {c.index: c for c in self.clients if c.sender}
        interval = 1e9 / msg_rate
        await _sleep_until(start_at)
        cpu0 = _cpu()
        self.first_send = time.time_ns()
        k = 0
        sent = 0
        late_max = 0
        n = len(senders)
        while k < total:
            now = time.time_ns()
            due = min(total, int((now - start_at) / interval) + 1)
            while k < due:
                client = mine.get(senders[k % n])
                if client is not None and not client.closed:
                    intended = start_at + int(k * interval)
                    late_max = max(late_max, now - intended)
                    client.send_text(bench_text(time.time_ns(), k, size))
                    sent += 1
                k += 1
            if k < total:
                next_at = start_at + int(k * interval)
                await asyncio.sleep(max(0.001, (next_at - time.time_ns()) / 1e9))
        finished = self.finished
        assert finished is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), timeout)
        late = sum(c.check.missing for c in self.clients)
        if late and grace > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), grace)
        last_receipt = self.last_receipt
        report = self._finish(cpu0)
        report["late"] = late  # still missing when the timeout passed
        report["last_receipt"] = last_receipt or report["last_receipt"]
        report["sent"] = sent
        report["send_late_max_ms"] = late_max / 1e6
        report["latencies"] = self.latencies.tobytes()
        report["observed"] = self.observed.tobytes()
        return report

    async def close(self) -> dict[str, Any]:
        for client in self.clients:
            client.write(mask_frame(b"\x03\xe8", 0x8))
        await asyncio.sleep(0.2)
        for client in self.clients:
            client.abort()
        return {}


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _sleep_until(when_ns: int) -> None:
    delay = (when_ns - time.time_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
