"""The load generator: many raw WebSocket clients in a few processes, driven over pipes.

Why raw: the load generator must not be the bottleneck, so each client is a bare
non-blocking socket read by a uvloop reader callback. It does the opening
handshake itself, masks what it sends (RFC 6455 5.3, a fresh random key per
frame) and parses what it receives with the least work that still counts every
frame: server frames are unmasked, so a frame is a 2-10 byte header and a
payload slice.

Layout: :class:`LoadGen` (in the coordinating process, synchronous) forks
``procs`` workers, pinned to one CPU. Client ``i`` lives in worker ``i % procs``;
clients ``0..senders-1`` are the senders. Each command goes to every worker and
each answers once, so phases are lock-stepped by the coordinator:

``join``
    Every sender sends a ``MARK <round>`` message; a client is joined when it saw
    all of that round's markers. Repeated until every client is joined. After it
    nothing is in flight (per-connection delivery is in seq order).
``throughput``
    Each sender pushes its share of ``messages`` keeping at most ``window`` of its
    own messages unacknowledged (an ack is its own message coming back). Every
    client counts frames; the first and last payloads give the seq range, so a
    missing (or duplicated) delivery shows as ``count != expected`` or a seq gap.
``latency``
    Senders send on a fixed schedule (``msg_rate`` messages/s in all, round-robin
    over senders) for ``duration`` seconds, each message carrying its send time.
    A delivery's latency is the kernel's receive timestamp of the segment that
    completed it (SO_TIMESTAMPNS) minus that send time: both CLOCK_REALTIME
    (``time.time_ns()``), one clock for every process on the machine. The time
    the load generator got round to reading it is kept too (``observed``): the
    difference is the load generator's own delay, which is not the server's.

All times are ``time.time_ns()``. The coordinator reads CPU time from /proc.
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import hashlib
import os
import random
import resource
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

MESSAGE_SIZE = 100  # characters of chat text per message
RECEIVE_SIZE = 65536
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; stamps are CLOCK_REALTIME
_TIMESPEC = struct.Struct("@qq")
ROOM = "bench"
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# what a receiver does with each text frame
JOIN, COUNT, LATENCY, IDLE = range(4)


def mask_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final client frame: masked with a random 4-byte key, as RFC 6455 requires."""
    n = len(payload)
    first = 0x80 | opcode
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = struct.pack("!BBH", first, 0xFE, n)
    else:
        header = struct.pack("!BBQ", first, 0xFF, n)
    key = random.randbytes(4)
    if not n:
        return header + key
    keystream = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(keystream, "little")).to_bytes(
        n, "little"
    )
    return header + key + masked


def chat_frame(username: str, text: str) -> bytes:
    """A seed-format chat message (no ``type``: the client stays legacy, gets only messages)."""
    return mask_frame(b'{"username":"%s","message":"%s"}' % (username.encode(), text.encode()))


def bench_text(send_ns: int, k: int) -> str:
    """A benchmark message: send time first (19 digits), then padding to MESSAGE_SIZE."""
    head = f"{send_ns:019d}|{k:09d}|"
    return head + "x" * (MESSAGE_SIZE - len(head))


def _seq(payload: bytes | None) -> int | None:
    if payload is None:
        return None
    i = payload.find(b'"seq":')
    if i < 0:
        return None
    j = i + 6
    k = j
    while payload[k] in b"0123456789":
        k += 1
    return int(payload[j:k])


class Client:
    """One WebSocket client: a non-blocking socket read from a uvloop reader callback.

    Not an ``asyncio.Protocol``: in latency mode each read is a ``recvmsg`` that
    also returns the kernel's receive timestamp (SO_TIMESTAMPNS), so the time a
    delivery reached this machine's socket is known even when the load
    generator itself is busy and reads it later.
    """

    def __init__(self, worker: Worker, index: int) -> None:
        self.w = worker
        self.index = index
        self.username = f"s{index}"
        self.tag = b'"username":"%s"' % self.username.encode()
        self.sender = index < worker.senders_total
        self.sock: socket.socket | None = None
        self.out = b""  # what the socket did not take yet
        self.handshake: bytes | None = b""  # None once open
        self.accept = b""
        self.opened: asyncio.Future[None] = worker.loop.create_future()
        self.buf = b""
        self.closed = False
        self.close_code: int | None = None
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.first: bytes | None = None
        self.last: bytes | None = None
        self.marks = 0  # markers of the current round seen
        self.acked = 0  # own messages seen back (senders)
        self.done = False

    # -- socket -------------------------------------------------------------

    async def open(self, timeout: float) -> None:
        w = self.w
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # before connect: the kernel then stamps every segment this socket receives
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock = sock
        try:
            await asyncio.wait_for(w.loop.sock_connect(sock, (w.host, w.port)), timeout)
        except BaseException:
            sock.close()
            self.closed = True
            raise
        w.loop.add_reader(sock.fileno(), self.readable)
        key = base64.b64encode(random.randbytes(16))
        self.accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
        self.write(
            b"GET /ws?room=%s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (ROOM.encode(), w.host.encode(), w.port, key)
        )
        try:
            await asyncio.wait_for(asyncio.shield(self.opened), timeout)
        except BaseException:
            self.abort()
            raise

    def readable(self) -> None:
        sock = self.sock
        assert sock is not None
        stamp = 0
        try:
            if self.w.mode == LATENCY:
                data, ancillary, _, _ = sock.recvmsg(RECEIVE_SIZE, 64)
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        seconds, nanoseconds = _TIMESPEC.unpack_from(value)
                        stamp = seconds * 1_000_000_000 + nanoseconds
            else:
                data = sock.recv(RECEIVE_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc)
            return
        if not data:
            self.lost(None)
            return
        self.data_received(data, stamp)

    def write(self, data: bytes) -> None:
        if self.closed or self.sock is None:
            return
        if self.out:
            self.out += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.lost(exc)
            return
        if sent < len(data):
            self.out = data[sent:]
            self.w.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        assert self.sock is not None
        try:
            sent = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.lost(exc)
            return
        self.out = self.out[sent:]
        if not self.out:
            self.w.loop.remove_writer(self.sock.fileno())

    def abort(self) -> None:
        if self.sock is not None and not self.closed:
            self.closed = True
            self.w.loop.remove_reader(self.sock.fileno())
            self.w.loop.remove_writer(self.sock.fileno())
            self.sock.close()

    def lost(self, exc: Exception | None) -> None:
        self.abort()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during handshake: {exc!r}"))
        elif not self.done:  # it will receive no more: stop waiting for it (counted missing)
            self.done = True
            self.w.done += 1
            self.w.check_done()

    # -- WebSocket ----------------------------------------------------------

    def data_received(self, data: bytes, stamp: int) -> None:
        if self.handshake is not None:
            data = self._handshake(data)
            if not data:
                return
        buf = self.buf + data if self.buf else data
        n = len(buf)
        pos = 0
        w = self.w
        mode = w.mode
        now = 0
        last_start = -1
        last_end = 0
        count = 0
        while n - pos >= 2:
            length = buf[pos + 1]  # server frames are unmasked: no mask bit, no key
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > n:
                break
            opcode = buf[pos] & 0x0F
            if opcode == 1:
                count += 1
                if mode == COUNT:
                    if self.first is None:
                        self.first = buf[start:end]
                    last_start, last_end = start, end
                    if self.sender and buf.find(self.tag, start, end) >= 0:
                        self.acked += 1
                elif mode == LATENCY:
                    i = buf.find(b'"message":"', start, end)
                    if i >= 0:
                        if not now:
                            now = time.time_ns()
                        sent = int(buf[i + 11 : i + 30])
                        if sent >= w.record_from:
                            w.latencies.append((stamp or now) - sent)
                            w.observed.append(now - sent)
                elif mode == JOIN:
                    if buf.find(w.mark, start, end) >= 0:
                        self.marks += 1
                else:
                    w.stray += 1
            elif opcode == 9:  # ping: answer with a masked pong
                self.write(mask_frame(bytes(buf[start:end]), 0xA))
            elif opcode == 8:
                self.close_code = (buf[start] << 8 | buf[start + 1]) if length >= 2 else 1005
                self.write(mask_frame(bytes(buf[start : start + 2]), 0x8))
                self.lost(None)
                return
            pos = end
        self.buf = buf[pos:] if pos < n else b""
        if count:
            self.count += count
            if mode == COUNT:
                if last_start >= 0:
                    self.last = buf[last_start:last_end]
                if self.sender:
                    w.sender_progress(self)
            if not self.done and self.count >= w.expected:
                self.done = True
                w.done += 1
                if w.done >= len(w.clients):
                    w.last_receipt = time.time_ns()
                    w.check_done()

    def _handshake(self, data: bytes) -> bytes:
        assert self.handshake is not None
        head = self.handshake + data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            self.handshake = head
            return b""
        self.handshake = None
        response = head[:end].lower()
        if not response.startswith(b"http/1.1 101") or self.accept.lower() not in response:
            if not self.opened.done():
                self.opened.set_exception(
                    ConnectionError(head[:end].split(b"\r\n", 1)[0].decode("latin-1"))
                )
            self.abort()
            return b""
        self.opened.set_result(None)
        return head[end + 4 :]

    def send_text(self, text: str) -> None:
        self.write(chat_frame(self.username, text))


@dataclass
class Worker:
    """One load-generator process: its clients and the state of the current phase."""

    wid: int
    procs: int
    host: str
    port: int
    clients_total: int
    senders_total: int
    loop: asyncio.AbstractEventLoop
    clients: list[Client] = field(default_factory=list)
    mode: int = IDLE
    expected: int = 1 << 62
    done: int = 0
    stray: int = 0
    mark: bytes = b"MARK 0 "
    latencies: array.array[int] = field(default_factory=lambda: array.array("q"))
    observed: array.array[int] = field(default_factory=lambda: array.array("q"))
    record_from: int = 0
    last_receipt: int = 0
    first_send: int = 0
    finished: asyncio.Event | None = None
    # throughput senders
    window: int = 0
    quota: dict[int, int] = field(default_factory=dict)
    sent: dict[int, int] = field(default_factory=dict)

    def check_done(self) -> None:
        if self.finished is not None and self.done >= len(self.clients):
            self.finished.set()

    def sender_progress(self, client: Client) -> None:
        if self.mode != COUNT:
            return
        index = client.index
        quota = self.quota.get(index, 0)
        sent = self.sent.get(index, 0)
        while sent < quota and sent - client.acked < self.window:
            client.send_text(bench_text(time.time_ns(), sent))
            sent += 1
        self.sent[index] = sent

    # -- phases -------------------------------------------------------------

    def _begin(self, mode: int, expected: int) -> None:
        self.done = 0
        for client in self.clients:
            client.reset()
            if client.closed:  # receives nothing more: its deliveries count as missing
                client.done = True
                self.done += 1
        self.mode = mode
        self.expected = expected
        self.stray = 0
        self.last_receipt = 0
        self.finished = asyncio.Event()
        self.check_done()

    def _report(self, cpu0: float) -> dict[str, Any]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "clients": len(self.clients),
            "received": sum(c.count for c in self.clients),
            "incomplete": sum(1 for c in self.clients if c.count < self.expected),
            "missing": sum(max(0, self.expected - c.count) for c in self.clients),
            "extra": sum(max(0, c.count - self.expected) for c in self.clients) + self.stray,
            "closed": sum(1 for c in self.clients if c.closed),
            "close_codes": sorted({c.close_code for c in self.clients if c.close_code}),
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
        return {"connected": len(self.clients), "errors": errors[:5], "failed": len(errors)}

    async def join(self, round_: int, markers: int, timeout: float) -> dict[str, Any]:
        """Send this round's markers; wait until every client saw ``markers`` of them."""
        self.mark = b'"message":"MARK %d ' % round_
        self._begin(JOIN, 1 << 62)
        for client in self.clients:
            if client.sender:
                client.send_text(f"MARK {round_} " + "m" * 20)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.marks >= markers for c in self.clients):
                break
            await asyncio.sleep(0.01)
        self.mode = IDLE
        return {"joined": sum(1 for c in self.clients if c.marks >= markers)}

    async def throughput(
        self, messages: int, window: int, start_at: int, timeout: float
    ) -> dict[str, Any]:
        senders = self.senders_total
        self.window = window
        self.quota = {
            c.index: messages // senders + (1 if c.index < messages % senders else 0)
            for c in self.clients
            if c.sender
        }
        self.sent = {}
        self._begin(COUNT, messages)
        await _sleep_until(start_at)
        cpu0 = _cpu()
        self.first_send = time.time_ns()
        for client in self.clients:
            if client.sender:
                self.sender_progress(client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout)  # type: ignore[union-attr]
        report = self._report(cpu0)
        self.mode = IDLE
        report["seq_gaps"] = 0
        for c in self.clients:
            first, last = _seq(c.first), _seq(c.last)
            if first is not None and last is not None and last - first + 1 != c.count:
                report["seq_gaps"] += 1
        report["sent"] = sum(self.sent.values())
        return report

    async def latency(
        self, msg_rate: float, total: int, start_at: int, warmup: float, timeout: float
    ) -> dict[str, Any]:
        """Send ``total`` messages at ``msg_rate``/s (all workers together) from ``start_at``."""
        self.latencies = array.array("q")
        self.observed = array.array("q")
        self.record_from = start_at + int(warmup * 1e9)
        self._begin(LATENCY, total)
        senders = self.senders_total
        mine = {c.index: c for c in self.clients if c.sender}
        interval = 1e9 / msg_rate
        await _sleep_until(start_at)
        cpu0 = _cpu()
        self.first_send = time.time_ns()
        k = 0
        sent = 0
        late_max = 0
        while k < total:
            now = time.time_ns()
            due = min(total, int((now - start_at) / interval) + 1)
            while k < due:
                client = mine.get(k % senders)
                if client is not None and not client.closed:
                    intended = start_at + int(k * interval)
                    late_max = max(late_max, now - intended)
                    client.send_text(bench_text(time.time_ns(), k))
                    sent += 1
                k += 1
            if k < total:
                next_at = start_at + int(k * interval)
                await asyncio.sleep(max(0.001, (next_at - time.time_ns()) / 1e9))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout)  # type: ignore[union-attr]
        report = self._report(cpu0)
        self.mode = IDLE
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
        port=args["port"],
        clients_total=args["clients"],
        senders_total=args["senders"],
        loop=loop,
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
        host, port: The server.
        clients: How many WebSocket clients in all.
        senders: How many of them send (clients ``0..senders-1``).
        procs: Worker processes.
        cpu: The CPU to pin workers to (None: no pinning).
        seed: Seed for masks and handshake keys.
    """

    def __init__(
        self,
        host: str,
        port: int,
        clients: int,
        senders: int,
        procs: int = 2,
        cpu: int | None = 1,
        seed: int = 1,
    ) -> None:
        self.clients = clients
        self.senders = min(senders, clients)
        self.procs = max(1, min(procs, clients))
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
                "port": port,
                "clients": clients,
                "senders": self.senders,
                "cpu": cpu,
                "seed": seed * 1000 + wid,
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
        return sum(r["connected"] for r in results)

    def join(self, timeout: float = 60.0) -> int:
        """Marker rounds until every client has seen every sender's marker: all are in the room."""
        deadline = time.monotonic() + timeout
        round_ = 0
        while time.monotonic() < deadline:
            round_ += 1
            results = self.call(
                "join", timeout + 10, round_=round_, markers=self.senders, timeout=2.0
            )
            joined = sum(r["joined"] for r in results)
            if joined == self.clients:
                return round_
        raise TimeoutError(f"only {joined} of {self.clients} clients joined the room")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call("stop", 10.0)
        for process in self._processes:
            process.join(5)
            if process.is_alive():
                process.kill()
        for pipe in self._pipes:
            pipe.close()


if __name__ == "__main__":  # a quick manual check: python loadgen.py PORT CLIENTS
    port, count = int(sys.argv[1]), int(sys.argv[2])
    raise_nofile()
    gen = LoadGen("127.0.0.1", port, count, senders=4)
    try:
        print("connected", gen.connect())
        print("join rounds", gen.join())
        start = time.time_ns() + 100_000_000
        print(gen.call("throughput", 60, messages=1000, window=16, start_at=start, timeout=30))
    finally:
        gen.stop()
