"""The load generator: many raw WebSocket clients in a few processes, driven over pipes.

Why raw: the load generator must not be the bottleneck, so each client is a bare
non-blocking socket (``loadclient.Client``) and in-order message frames are walked by a
small C scanner (``_scan.c``, built on first use; a pure-Python path does the same work
when no compiler is there).

Layout: :class:`LoadGen` (in the coordinating process, synchronous) forks ``procs``
workers, pinned to one CPU. Client ``i`` lives in worker ``i % procs`` and in room
``i // room_size`` (one room, ``bench``, unless ``room_size`` is smaller than the client
count: then rooms ``r0``, ``r1``, ...). The first ``senders`` members of each room send.
Each command goes to every worker and each answers once, so phases are lock-stepped:

``join``
    The first (up to 4) senders of each room send a ``MARK <round>`` message; a client
    is joined when it saw all of its room's markers of that round. Repeated until every
    client is joined. After it nothing is in flight (per-connection delivery is in seq
    order), and each client knows its room's last seq: the next phase's base.
``throughput``
    The senders push ``messages`` in all, each keeping at most ``window`` of its own
    messages unacknowledged (an ack is its own message coming back).
``latency``
    Senders send on a fixed schedule (``msg_rate`` messages/s in all, message ``k`` from
    sender ``k mod S``) for ``total`` messages, each carrying its send time. A
    delivery's latency is the kernel's receive timestamp of the segment that completed
    it (SO_TIMESTAMPNS) minus that send time: both CLOCK_REALTIME (``time.time_ns()``),
    one clock for every process on the machine. The time the load generator got round
    to reading it is kept too (``observed``).

In both phases every client checks its room's seqs ``base+1 .. base+expected``: each
exactly once and in order (``wire.SeqCheck``). Missing, duplicate and out-of-order
deliveries and unexpected frames are reported apart. All times are ``time.time_ns()``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import os
import random
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import native
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

    async def join(self, round_: int, timeout: float) -> dict[str, Any]:
        """Send this round's markers; wait until every client saw its room's markers."""
        self.mark = b'"message":"MARK %d ' % round_
        self.mode = JOIN
        for client in self.clients:
            client.reset()
            if client.marker_sender:
                client.send_text(f"MARK {round_} " + "m" * 20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.marks >= c.markers_expected for c in self.clients):
                break
            await asyncio.sleep(0.01)
        self.mode = IDLE
        return {"joined": sum(1 for c in self.clients if c.marks >= c.markers_expected)}

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


def raise_nofile() -> int:
    """Raise this process's open-file limit to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _worker_main(pipe: Connection, args: dict[str, Any]) -> None:
    cpu = args.get("cpu")
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
    raise_nofile()
    random.seed(args["seed"])
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    worker = Worker(
        wid=args["wid"],
        procs=args["procs"],
        host=args["host"],
        ports=args["ports"],
        clients_total=args["clients"],
        senders_per_room=args["senders"],
        room_size=args["room_size"],
        loop=loop,
        offer_deflate=args["offer_deflate"],
        compress_out=args["compress_out"],
        lowat=args["lowat"],
        scan=native.scanner() if args["native"] else None,
    )
    stop = loop.create_future()

    async def handle(command: str, kwargs: dict[str, Any]) -> None:
        try:
            if command == "stop":
                result: dict[str, Any] = await worker.close()
                if not stop.done():
                    stop.set_result(None)
            else:
                result = await getattr(worker, command)(**kwargs)
        except Exception as exc:  # report, don't hang the coordinator
            result = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            pipe.send(result)

    def reader() -> None:  # a thread: uvloop's add_reader would make the pipe non-blocking
        while True:
            try:
                command, kwargs = pipe.recv()
            except (EOFError, OSError):
                command, kwargs = "stop", {}
            loop.call_soon_threadsafe(lambda c=command, k=kwargs: loop.create_task(handle(c, k)))
            if command == "stop":
                return

    threading.Thread(target=reader, daemon=True).start()
    loop.run_until_complete(stop)
    loop.close()


class LoadGen:
    """The coordinator's handle on the worker processes (synchronous).

    Args:
        host, port: The server; ``port`` may be a list (client ``i`` uses ``port[i % n]``).
        clients: How many WebSocket clients in all.
        senders: How many members of each room send (the first ones).
        procs: Worker processes.
        cpu: The CPU to pin workers to (None: no pinning).
        seed: Seed for masks and handshake keys.
        room_size: Members per room (default: all clients in one room, ``bench``).
        browser: Offer permessage-deflate as Chromium does, compress what is sent when it
            is accepted, inflate what arrives.
        lowat: SO_RCVLOWAT for receivers during throughput phases (1: off).
        use_native: Walk frames with the C scanner when it builds.
    """

    def __init__(
        self,
        host: str,
        port: int | list[int],
        clients: int,
        senders: int,
        procs: int = 2,
        cpu: int | None = 1,
        seed: int = 1,
        room_size: int | None = None,
        browser: bool = False,
        lowat: int = LOWAT,
        use_native: bool = True,
    ) -> None:
        self.clients = clients
        self.room_size = min(room_size or clients, clients)
        self.senders = min(senders, self.room_size)
        self.procs = max(1, min(procs, clients))
        self.scanner = native.status() if use_native else "python (native off)"
        self.extensions: dict[str, Any] = {}
        ports = port if isinstance(port, list) else [port]
        context = get_context("fork")
        self._pipes: list[Connection] = []
        self._processes = []
        self.pids: list[int] = []
        for wid in range(self.procs):
            parent, child = context.Pipe()
            args = {
                "wid": wid,
                "procs": self.procs,
                "host": host,
                "ports": ports,
                "clients": clients,
                "senders": self.senders,
                "room_size": self.room_size,
                "cpu": cpu,
                "seed": seed * 1000 + wid,
                "offer_deflate": browser,
                "compress_out": browser,
                "lowat": lowat,
                "native": use_native,
            }
            process = context.Process(target=_worker_main, args=(child, args), daemon=True)
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
            assert process.pid is not None
            self.pids.append(process.pid)

    def call(
        self,
        command: str,
        wait: float,
        per_worker: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Send ``command`` to every worker; return their answers (raise on error or timeout)."""
        for wid, pipe in enumerate(self._pipes):
            args = dict(kwargs)
            if per_worker is not None:
                args.update(per_worker[wid])
            pipe.send((command, args))
        results = []
        deadline = time.monotonic() + wait
        for wid, pipe in enumerate(self._pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"load generator worker {wid}: no answer to {command!r}")
            result = pipe.recv()
            if "error" in result:
                raise RuntimeError(f"load generator worker {wid}: {command}: {result['error']}")
            results.append(result)
        return results

    def connect(self, timeout: float = 120.0, concurrency: int = 100) -> int:
        shares = [
            {"indices": list(range(wid, self.clients, self.procs))} for wid in range(self.procs)
        ]
        results = self.call(
            "connect", timeout, per_worker=shares, concurrency=concurrency, timeout=30.0
        )
        failed = sum(r["failed"] for r in results)
        if failed:
            errors = [e for r in results for e in r["errors"]]
            raise ConnectionError(f"{failed} of {self.clients} clients failed to connect: {errors}")
        self.extensions = {
            "deflate_clients": sum(r["deflate"] for r in results),
            "negotiated": sorted({n for r in results for n in r["negotiated"]}),
        }
        return sum(r["connected"] for r in results)

    def join(self, timeout: float = 60.0) -> int:
        """Marker rounds until every client has seen its room's markers: all are in."""
        deadline = time.monotonic() + timeout
        round_ = 0
        joined = 0
        while time.monotonic() < deadline:
            round_ += 1
            results = self.call("join", timeout + 10, round_=round_, timeout=2.0)
            joined = sum(r["joined"] for r in results)
            if joined == self.clients:
                return round_
        raise TimeoutError(f"only {joined} of {self.clients} clients joined their rooms")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop", 10.0)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        for pipe in self._pipes:
            pipe.close()


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The workers' answers to one phase, added up (lists joined, times min/max)."""
    merged: dict[str, Any] = {}
    for r in results:
        for key, value in r.items():
            if key in ("latencies", "observed"):
                continue
            if key == "first_send":
                merged[key] = min(merged.get(key, value), value)
            elif key in ("last_receipt", "send_late_max_ms"):
                merged[key] = max(merged.get(key, value), value)
            elif key == "close_codes":
                merged[key] = sorted(set(merged.get(key, [])) | set(value))
            elif isinstance(value, list):
                merged[key] = merged.get(key, []) + value
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


if __name__ == "__main__":  # a quick manual check: python loadgen.py PORT CLIENTS
    port, count = int(sys.argv[1]), int(sys.argv[2])
    raise_nofile()
    gen = LoadGen("127.0.0.1", port, count, senders=4)
    try:
        print("connected", gen.connect(), gen.scanner)
        print("join rounds", gen.join())
        start = time.time_ns() + 100_000_000
        answers = gen.call("throughput", 60, messages=1000, window=16, start_at=start, timeout=30)
        print(merge(answers))
    finally:
        gen.stop()
