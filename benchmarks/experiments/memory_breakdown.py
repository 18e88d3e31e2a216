#!/usr/bin/env python
"""EXPERIMENT: where an idle wschat connection's memory goes (tracemalloc + RSS).

    .venv/bin/python benchmarks/experiments/memory_breakdown.py [--connections 2000]

Starts wschat with tracemalloc on (``wschat_variants.py trace``), takes a baseline,
opens N idle connections, and prints the Python allocations that grew, by file
and by line, beside the RSS growth. RSS minus traced = memory Python's tracer
does not see (uvloop/libuv handles, C buffers, allocator slack).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import servers
from loadgen import LoadGen


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--server", default="wschat", help="wschat or wschat@REV")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help="wschat's --loop")
    args = parser.parse_args()
    servers.raise_nofile()
    out = servers.HERE / "results" / "tracemalloc.txt"
    os.environ["WSCHAT_TRACE_FILE"] = str(out)
    options = servers.Options(extra=("--loop", args.loop) if args.loop else ())
    logs = servers.HERE / "results" / "logs"
    server = servers.start(args.server + "+trace", 0, logs, options=options)
    gen = None
    try:
        time.sleep(1)
        os.kill(server.pid, signal.SIGUSR1)
        time.sleep(1)
        before = servers.rss_kib(server.pid)
        gen = LoadGen("127.0.0.1", server.port, args.connections, senders=1, procs=2, cpu=1)
        gen.connect(timeout=300)
        gen.join()
        time.sleep(2)
        after = servers.rss_kib(server.pid)
        out.unlink(missing_ok=True)
        os.kill(server.pid, signal.SIGUSR2)
        # comparing two snapshots of 12-frame tracebacks takes a while
        deadline = time.monotonic() + 120
        while not out.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(1)
    finally:
        if gen is not None:
            gen.stop()
        server.stop()
    n = args.connections
    text = out.read_text()
    traced = int(text.split("total ", 1)[1].split()[0])
    print(
        f"RSS growth {after - before} KiB for {n} connections = {(after - before) / n:.1f} KiB "
        f"each; traced by tracemalloc {traced / 1024 / n:.1f} KiB each (tracemalloc's own "
        "overhead inflates RSS here)"
    )
    tracebacks = False
    for line in text.splitlines():
        if line.startswith("=="):
            print(line)
            tracebacks = line.startswith("== by traceback")
            continue
        if tracebacks:
            size, count, where = line.split(" ", 2)
            print(f"{int(size) / n:9.0f} B/conn {int(count) / n:6.1f} objs/conn  {where}")
            continue
        size, count, where = line.split(" ", 2)
        print(f"{int(size) / n:9.0f} B/conn {int(count) / n:6.1f} objs/conn  {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
