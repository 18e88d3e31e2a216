#!/usr/bin/env python
"""Profile the wschat server under broadcast load with py-spy; break the cost down per delivery.

    .venv/bin/python benchmarks/pyspy_profile.py                       # throughput, C=1000
    .venv/bin/python benchmarks/pyspy_profile.py --mode latency --rate 25000 --clients 100
    .venv/bin/python benchmarks/pyspy_profile.py --mode rooms --clients 2000 --rate 2000
    .venv/bin/python benchmarks/pyspy_profile.py --analyze results/profile-throughput-1000.txt

The server runs pinned to CPU 0 as in run.py; the load generator and py-spy share
CPU 1. py-spy samples without pausing the server (``--nonblocking``) at 250 Hz,
first in ``raw`` format (collapsed stacks, analysed here), then, with ``--svg``,
again as a flame graph. While it samples, the load repeats back to back
(throughput phases, or a fixed-rate latency phase). ``--mode rooms`` is the
rooms benchmark's workload (rooms of ``--room-size``, every client a sender,
``--rate`` messages in per second): nearly all its cost is per message, so the
table gives µs per message too.

The analysis attributes every sample to one component of the delivery path
(first matching rule, see COMPONENTS) and converts shares to microseconds per
delivery with the server's measured CPU time and the deliveries counted by the
clients during the same window. Needs root (or ptrace permission).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from loadgen import LoadGen

RESULTS = servers.HERE / "results"

# (component, substrings that identify it in a frame "function (file)"), checked
# from the innermost frame outwards for each rule in order: the first rule with
# a match anywhere in the stack wins. Order = specificity.
COMPONENTS: list[tuple[str, tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client",)),
    # flusher path (92b9503+): one transport.write per dirty connection per batch
    (
        "flush: Writer.take (join queued frames)",
        ("take (wschat/server/writer.py", "take (wschat/server/backlog.py"),
    ),
    (
        "flush: transport.write (uvloop -> send(2), kernel loopback)",
        ("write_now (wschat/server/writer.py",),
    ),
    ("flush: Flusher loop", ("wschat/server/flusher.py",)),
    # writer-task path (974a021, and TLS/trio now)
    ("writer: write-timeout scope (anyio fail_after/CancelScope)", ("fail_after", "CancelScope")),
    ("writer: stream.send (anyio SocketStream -> transport.write)", ("send (anyio", "_sockets")),
    (
        "writer: TaskWriter.run own code",
        ("run (wschat/server/writer.py", "_send (wschat/server/writer.py"),
    ),
    # fan-out
    # In direct mode (a batch's first frame goes to the transport at once) this
    # includes uvloop's transport.write -> send(2): py-spy sees no frame in C.
    (
        "fan-out: Writer.put (direct mode: + transport.write, send(2))",
        (
            "put (wschat/server/writer.py",
            "_queued (wschat/server/writer.py",
            "wschat/server/backlog.py",
            "set (anyio",
        ),
    ),
    ("fan-out: PreparedMessage.frame", ("frame (wschat/hub/hub.py",)),
    ("fan-out: Peer.send", ("send (wschat/server/peer.py",)),
    ("fan-out: Hub._deliver loop", ("_deliver (wschat/hub/hub.py",)),
    # once per message (inbound: issue 14 item 3), innermost first
    ("publish: format_time", ("format_time",)),
    (
        "publish: JSON encode (message_event)",
        ("message_event", "message_payload", "wschat/chat/events.py"),
    ),
    ("publish: MemoryBackend.publish (seq, history, dedup)", ("publish (wschat/hub/memory.py",)),
    ("publish: Hub.say", ("say (wschat/hub/hub.py",)),
    ("chat: username (RFC 8266, memo)", ("wschat/chat/names.py", "precis_i18n", "UsernameMemo")),
    (
        "chat: parse (msgspec decode, validation)",
        ("parse_frame", "wschat/chat/schema.py", "wschat/chat/frames.py"),
    ),
    ("chat: ChatSession.apply", ("wschat/chat/session.py", "replace (data")),
    ("app: AppSession, hooks, permissions", ("wschat/app/",)),
    ("dispatch: rate limits", ("wschat/server/ratelimit.py",)),
    ("dispatch: ChatDispatch.on_text own", ("wschat/server/dispatch.py",)),
    ("reader: frame decode (ServerConnection, wsproto)", ("wsproto", "wschat/protocol/")),
    ("reader: receive + _read_loop + _on_event", ("_read_loop", "receive (wschat", "_on_")),
    ("keepalive / watchdog", ("wschat/server/watchdog.py",)),
    ("event loop, task switches (asyncio/uvloop/anyio)", ("asyncio", "uvloop", "anyio")),
]


def classify(stack: list[str]) -> str:
    for name, needles in COMPONENTS:
        for frame in reversed(stack):
            if any(n in frame for n in needles):
                return name
    return "other"


def load_raw(path: Path) -> Counter[tuple[str, ...]]:
    stacks: Counter[tuple[str, ...]] = Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        frames, _, count = line.rpartition(" ")
        stacks[tuple(frames.split(";"))] += int(count)
    return stacks


def analyze(
    path: Path,
    cpu_s: float | None = None,
    deliveries: int | None = None,
    top: int = 25,
    messages: int | None = None,
) -> str:
    stacks = load_raw(path)
    total = sum(stacks.values())
    by_component: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for stack, count in stacks.items():
        by_component[classify(list(stack))] += count
        leaf[stack[-1]] += count
    per = cpu_s / deliveries * 1e6 if cpu_s and deliveries else None
    per_message = cpu_s / messages * 1e6 if cpu_s and messages else None
    lines = [
        f"{total} samples"
        + (f"; server {per:.3f} µs CPU per delivery" if per else "")
        + (f", {per_message:.2f} µs per message in" if per_message else ""),
        "",
        "| component | share | µs/delivery |" + (" µs/message |" if per_message else ""),
        "|---|---:|---:|" + ("---:|" if per_message else ""),
    ]
    for name, count in by_component.most_common():
        share = count / total
        row = f"| {name} | {100 * share:.1f}% | " + (f"{share * per:.3f} |" if per else " |")
        if per_message:
            row += f" {share * per_message:.2f} |"
        lines.append(row)
    lines += ["", f"Top {top} functions by self time:", "", "| function | self |", "|---|---:|"]
    for frame, count in leaf.most_common(top):
        lines.append(f"| `{frame}` | {100 * count / total:.1f}% |")
    return "\n".join(lines)


def _pyspy() -> str:
    local = Path(sys.executable).parent / "py-spy"
    found = str(local) if local.exists() else shutil.which("py-spy")
    if not found:
        raise SystemExit("py-spy not found: pip install -e '.[bench]'")
    return found


def record(
    pid: int, seconds: float, output: Path, fmt: str, rate: int, cpu: int | None
) -> subprocess.Popen[bytes]:
    cmd = [
        _pyspy(),
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(rate),
        "--nonblocking",
        "--format",
        fmt,
        "--output",
        str(output),
    ]
    if fmt == "raw":
        cmd.append("--nolineno")
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def load_while(
    spy: subprocess.Popen[bytes], gen: LoadGen, pid: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Repeat the load until py-spy is done; return server CPU and deliveries meanwhile."""
    cpu0 = servers.cpu_seconds(pid)
    started = time.monotonic()
    deliveries = 0
    missing = 0
    sent = 0
    while spy.poll() is None:
        start_at = time.time_ns() + 50_000_000
        if args.mode == "throughput":
            results = gen.call(
                "throughput",
                200,
                messages=args.messages,
                window=args.window,
                start_at=start_at,
                timeout=120,
            )
        else:
            # rooms: --rate is messages in per second; latency: deliveries per second
            # in one room of every client, so messages are rate / clients.
            msg_rate = args.rate if args.mode == "rooms" else args.rate / gen.clients
            results = gen.call(
                "latency",
                200,
                msg_rate=msg_rate,
                total=int(msg_rate * 2),
                start_at=start_at,
                warmup=0.0,
                timeout=10,
            )
        deliveries += sum(r["received"] for r in results)
        missing += sum(r["missing"] for r in results)
        sent += sum(r.get("sent", 0) for r in results)
    return {
        "messages_in": sent,  # (not "messages": that is the throughput phase flag)
        "cpu_s": servers.cpu_seconds(pid) - cpu0,
        "deliveries": deliveries,
        "missing": missing,
        "seconds": time.monotonic() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("throughput", "latency", "rooms"), default="throughput")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=1000, help="per throughput phase")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--room-size", type=int, default=10, help="rooms mode: clients per room")
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rate", type=float, default=25_000, help="latency mode: deliveries/s")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--sample-rate", type=int, default=250)
    parser.add_argument("--svg", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--analyze", type=Path, help="only analyse an existing raw profile")
    parser.add_argument("--server", default="wschat", help="wschat, wschat@REV, wschat+duck")
    parser.add_argument(
        "--redis", action="store_true", help="the Redis hub (a private redis-server on CPU 1)"
    )
    args = parser.parse_args()
    if args.analyze:
        sidecar = args.analyze.with_suffix(".json")
        figures = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        print(
            analyze(
                args.analyze,
                figures.get("cpu_s"),
                figures.get("deliveries"),
                messages=figures.get("messages_in"),
            )
        )
        return 0
    servers.raise_nofile()
    RESULTS.mkdir(exist_ok=True)
    source = servers.describe(args.server)
    tag = args.server.replace("@", "-").replace("+", "-")
    name = f"profile-{tag}{'-redis' if args.redis else ''}-{args.mode}-{args.clients}"
    redis = servers.start_redis(1, RESULTS / "logs") if args.redis else None
    options = servers.Options(hub_url=redis.url if redis is not None else None)
    server = servers.start(args.server, 0, RESULTS / "logs", options=options)
    gen: LoadGen | None = None
    try:
        rooms = args.mode == "rooms"
        gen = LoadGen(
            "127.0.0.1",
            server.port,
            args.clients,
            senders=args.room_size if rooms else args.senders,
            procs=2,
            cpu=1,
            room_size=args.room_size if rooms else None,
        )
        gen.connect()
        gen.join()
        raw = RESULTS / f"{name}.txt"
        spy = record(server.pid, args.seconds, raw, "raw", args.sample_rate, 1)
        measured = load_while(spy, gen, server.pid, args)
        if spy.returncode:
            raise SystemExit(f"py-spy failed: {spy.stderr.read().decode() if spy.stderr else ''}")
        if args.svg:
            svg = RESULTS / f"{name}.svg"
            spy = record(server.pid, args.seconds, svg, "flamegraph", args.sample_rate, 1)
            load_while(spy, gen, server.pid, args)
    finally:
        if gen is not None:
            gen.stop()
        server.stop()
        if redis is not None:
            redis.stop()
    report = analyze(
        raw,
        measured["cpu_s"],
        measured["deliveries"],
        messages=measured["messages_in"] if args.mode == "rooms" else None,
    )
    header = (
        f"{args.server} (wschat {source.get('revision')}, sha256 {source.get('sha256')}) "
        f"under {args.mode} load, C={args.clients}"
        + (f", {args.rate:,.0f} deliveries/s" if args.mode == "latency" else "")
        + (
            f" in rooms of {args.room_size}, {args.rate:,.0f} messages in/s"
            if args.mode == "rooms"
            else ""
        )
        + f": {measured['deliveries']:,} deliveries in {measured['seconds']:.1f} s "
        f"({measured['deliveries'] / measured['seconds']:,.0f}/s while sampled), server CPU "
        f"{measured['cpu_s']:.2f} s, missing {measured['missing']}"
    )
    text = header + "\n\n" + report
    (RESULTS / f"{name}.md").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(json.dumps(measured | vars(args), default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
