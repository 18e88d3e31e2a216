#!/usr/bin/env python
"""Memory per idle connection: server RSS before and after N idle WebSocket connections.

    .venv/bin/python benchmarks/memory.py                  # 10,000 connections, both servers
    .venv/bin/python benchmarks/memory.py --connections 2000 --servers wschat
    .venv/bin/python benchmarks/memory.py --servers wschat --loop asyncio   # not uvloop
    .venv/bin/python benchmarks/memory.py --servers wschat --hub redis://127.0.0.1:6390

The server starts pinned to CPU 0 and its RSS (VmRSS) is read while it idles
with no connection. The load generator (2 processes on CPU 1, 5,000 sockets
each) then opens N connections to one room and waits until every one is in the
room (one marker message seen by all). After a short settle the RSS is read
again: (after - before) / N is the cost of one idle connection, including
what one-time work the first connections trigger (so it errs high, not low).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from loadgen import LoadGen

TARGET_KIB = 10.0  # issue 14 item 5 (run.py reports the same target)


def measure(
    kind: str,
    connections: int = 10_000,
    server_cpu: int | None = 0,
    loadgen_cpu: int | None = 1,
    procs: int = 2,
    settle: float = 2.0,
    loop: str | None = None,
    hub_url: str | None = None,
) -> dict[str, Any]:
    """Open ``connections`` idle connections to a fresh ``kind`` server; return the RSS figures.

    ``loop``: wschat's ``--loop`` (None: its default, uvloop when installed);
    ``hub_url``: wschat's ``--hub`` (None: the memory hub).
    """
    servers.raise_nofile()
    options = servers.Options(hub_url=hub_url, extra=("--loop", loop) if loop else ())
    server = servers.start(kind, server_cpu, servers.HERE / "results" / "logs", options=options)
    gen: LoadGen | None = None
    try:
        time.sleep(settle)
        before = servers.rss_kib(server.pid)
        gen = LoadGen(
            "127.0.0.1", server.port, connections, senders=1, procs=procs, cpu=loadgen_cpu
        )
        started = time.monotonic()
        connected = gen.connect(timeout=300)
        connect_s = time.monotonic() - started
        gen.join(timeout=120)
        time.sleep(settle)
        after = servers.rss_kib(server.pid)
        return {
            "server": kind,
            "loop": loop or "default",
            "hub": hub_url or "memory://",
            "connections": connected,
            "connect_s": connect_s,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "kib_per_connection": (after - before) / connected,
        }
    finally:
        if gen is not None:
            gen.stop()
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--servers", nargs="+", default=list(servers.SERVERS), help="as for run.py")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), help="wschat's --loop")
    parser.add_argument("--hub", help="wschat's --hub (default: the memory hub)")
    args = parser.parse_args()
    limit = servers.raise_nofile()
    if limit < args.connections // args.procs + 100:
        print(f"open-file limit {limit} is too low for {args.connections} connections")
        return 2
    sources = {kind: servers.describe(kind) for kind in args.servers}
    results = [
        measure(
            kind,
            args.connections,
            procs=args.procs,
            **({"loop": args.loop, "hub_url": args.hub} if "wschat" in kind else {}),
        )
        for kind in args.servers
    ]
    print(f"| server | hub | RSS before | RSS with {args.connections:,} idle | per connection |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['server']} | {r.get('hub', '')} | {r['rss_before_kib'] / 1024:.1f} MiB | "
            f"{r['rss_after_kib'] / 1024:.1f} MiB | {r['kib_per_connection']:.1f} KiB |"
        )
    for r in results:
        if r["server"].startswith("wschat"):
            ok = r["kib_per_connection"] <= TARGET_KIB
            print(
                f"{r['server']}: {r['kib_per_connection']:.1f} KiB per idle connection "
                f"(target ≤ {TARGET_KIB:.0f} KiB): {'met' if ok else 'NOT met'}"
            )
    out = servers.HERE / "results"
    out.mkdir(exist_ok=True)
    path = out / f"memory-{time.strftime('%Y%m%d-%H%M%S')}.json"
    data = {"machine": servers.machine(), "sources": sources, "results": results}
    path.write_text(json.dumps(data, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
