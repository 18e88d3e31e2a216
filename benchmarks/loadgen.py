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

import asyncio
import contextlib
import os
import random
import resource
import sys
import threading
import time
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

import native
from worker import LOWAT, Worker


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
            # every worker counts the round's markers before any worker sends one: a marker
            # that arrived before its worker reset the round would be lost to the count
            self.call("arm", 10.0, round_=round_)
            results = self.call("join", timeout + 10, round_=round_, timeout=2.0)
            joined = sum(r["joined"] for r in results)
            if joined == self.clients:
                return round_
        closed = sum(r["missing_closed"] for r in results)
        marks = sorted({m for r in results for m in r["missing_marks"]})
        rooms = sum(r["missing_rooms"] for r in results)
        raise TimeoutError(
            f"only {joined} of {self.clients} clients joined their rooms after {round_} rounds"
            f" (of the rest: {closed} closed, in {rooms} rooms, markers seen {', '.join(marks)})"
        )

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
