#!/usr/bin/env python
"""Broadcast benchmark: wschat against a peer built on `websockets`, same load, same run.

    .venv/bin/python benchmarks/run.py            # full matrix: C=100,1000,5000, 3 runs
    .venv/bin/python benchmarks/run.py --quick    # smoke check: C=100,1000, 1 run
    make bench BENCH_ARGS="--clients 1000 --runs 5"

For each run, each C and each server: start the server pinned to CPU 0, fork the
load generator (several processes, pinned to CPU 1), connect C clients to one
room, wait until all are joined, then

- throughput: S senders push M messages (100 chars of text each), each with at
  most W of its own messages in flight; every client counts what it receives.
  deliveries/s = deliveries counted by all clients / (last receipt - first send);
  every missing delivery is reported;
- latency: a fixed delivery rate R (messages/s = R / C) for a few seconds, at
  increasing R until the server saturates; percentiles of receive - send time.

Writes results/bench-<time>.json (all raw figures), .md (the tables) and .png
(latency percentiles against delivery rate), and copies them to results/latest.*.
See README.md for how to read them.
"""

from __future__ import annotations

import argparse
import array
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from loadgen import LoadGen

RESULTS = servers.HERE / "results"
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
FULL_CLIENTS = (100, 1000, 5000)
QUICK_CLIENTS = (100, 1000)
RATES = (10_000, 25_000, 50_000, 100_000, 200_000, 400_000)
QUICK_RATES = (25_000, 100_000, 200_000)
TARGET_RATE = 100_000  # the latency target's delivery rate
TARGET_CLIENTS = 1000


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def percentiles(samples: array.array[int]) -> dict[str, float]:
    """Latency percentiles in milliseconds (nearest rank), with max and count."""
    if not samples:
        return {name: float("nan") for name, _ in PERCENTILES} | {"max": float("nan"), "n": 0}
    ordered = sorted(samples)
    n = len(ordered)
    result: dict[str, float] = {}
    for name, p in PERCENTILES:
        rank = max(0, min(n - 1, int(p / 100.0 * n + 0.5) - 1))
        result[name] = ordered[rank] / 1e6
    result["max"] = ordered[-1] / 1e6
    result["n"] = n
    return result


def cpu_snapshot(pids: list[int]) -> dict[Any, float]:
    snapshot: dict[Any, float] = {pid: servers.cpu_seconds(pid) for pid in pids}
    snapshot.update(servers.system_cpu())
    return snapshot


def foreign_cpu_pct(
    before: dict[Any, float], after: dict[Any, float], pids: list[int], seconds: float
) -> tuple[float, float]:
    """CPU % used by other processes (and steal %) while a phase ran; ideally ~0."""
    ours = sum(after[p] - before[p] for p in pids)
    other = (after["busy"] - before["busy"]) - ours
    return max(0.0, 100 * other / seconds), 100 * (after["steal"] - before["steal"]) / seconds


def throughput(
    gen: LoadGen, server: servers.ServerProcess, messages: int, window: int, timeout: float
) -> dict[str, Any]:
    clients = gen.clients
    ours = [server.pid, *gen.pids, os.getpid()]
    before = cpu_snapshot(ours)
    start_at = time.time_ns() + 200_000_000
    results = gen.call(
        "throughput",
        timeout + 30,
        messages=messages,
        window=window,
        start_at=start_at,
        timeout=timeout,
    )
    after = cpu_snapshot(ours)
    received = sum(r["received"] for r in results)
    first = min(r["first_send"] for r in results)
    last = max(r["last_receipt"] for r in results)
    seconds = max(1e-9, (last - first) / 1e9)
    server_cpu = after[server.pid] - before[server.pid]
    gen_cpu = sum(after[p] - before[p] for p in gen.pids)
    span = (time.time_ns() - start_at) / 1e9 + 0.2
    other, steal = foreign_cpu_pct(before, after, ours, span)
    return {
        "clients": clients,
        "messages": messages,
        "expected": messages * clients,
        "received": received,
        "missing": sum(r["missing"] for r in results),
        "extra": sum(r["extra"] for r in results),
        "incomplete_clients": sum(r["incomplete"] for r in results),
        "seq_gaps": sum(r["seq_gaps"] for r in results),
        "closed_clients": sum(r["closed"] for r in results),
        "close_codes": sorted({c for r in results for c in r["close_codes"]}),
        "sent": sum(r["sent"] for r in results),
        "seconds": seconds,
        "deliveries_per_s": received / seconds,
        "server_cpu_s": server_cpu,
        "server_cpu_pct": 100 * server_cpu / seconds,
        "server_us_per_delivery": 1e6 * server_cpu / max(1, received),
        "loadgen_cpu_s": gen_cpu,
        "loadgen_cpu_pct": 100 * gen_cpu / seconds,
        "other_cpu_pct": other,
        "steal_pct": steal,
    }


def latency_point(
    gen: LoadGen,
    server: servers.ServerProcess,
    rate: float,
    duration: float,
    warmup: float,
    drain: float,
) -> dict[str, Any]:
    clients = gen.clients
    msg_rate = rate / clients
    total = max(1, round(msg_rate * duration))
    ours = [server.pid, *gen.pids, os.getpid()]
    before = cpu_snapshot(ours)
    start_at = time.time_ns() + 200_000_000
    results = gen.call(
        "latency",
        duration + drain + 60,
        msg_rate=msg_rate,
        total=total,
        start_at=start_at,
        warmup=warmup,
        timeout=drain,
    )
    after = cpu_snapshot(ours)
    samples: array.array[int] = array.array("q")
    observed: array.array[int] = array.array("q")
    for r in results:
        samples.frombytes(r["latencies"])
        observed.frombytes(r["observed"])
    received = sum(r["received"] for r in results)
    last = max(r["last_receipt"] for r in results)
    scheduled_end = start_at + int(total / msg_rate * 1e9)
    elapsed = max(1e-9, (last - start_at) / 1e9)
    missing = sum(r["missing"] for r in results)
    tail = (last - scheduled_end) / 1e9
    other, steal = foreign_cpu_pct(before, after, ours, elapsed + 0.2)
    point = {
        "rate": rate,
        "clients": clients,
        "messages": total,
        "expected": total * clients,
        "received": received,
        "missing": missing,
        "achieved_per_s": received / elapsed,
        "tail_s": tail,
        "send_late_max_ms": max(r["send_late_max_ms"] for r in results),
        "server_cpu_pct": 100 * (after[server.pid] - before[server.pid]) / elapsed,
        "loadgen_cpu_pct": 100 * sum(after[p] - before[p] for p in gen.pids) / elapsed,
        "other_cpu_pct": other,
        "steal_pct": steal,
        **percentiles(samples),
        # the same deliveries timed when the load generator read them (its own delay included)
        "observed": percentiles(observed),
    }
    # Saturated: deliveries lost, or still arriving long after the last send.
    point["saturated"] = bool(missing or tail > 1.0 or point["p99"] > 1000.0)
    return point


def session(kind: str, clients: int, run: int, args: argparse.Namespace) -> dict[str, Any]:
    """One server process, one load generator: connect, join, throughput, latency sweep."""
    messages = args.messages or max(args.min_messages, args.deliveries // clients)
    record: dict[str, Any] = {"server": kind, "clients": clients, "run": run}
    server = servers.start(kind, args.server_cpu, RESULTS / "logs")
    gen: LoadGen | None = None
    try:
        rss0 = servers.rss_kib(server.pid)
        gen = LoadGen(
            "127.0.0.1",
            server.port,
            clients,
            senders=args.senders,
            procs=args.procs,
            cpu=args.loadgen_cpu,
            seed=run + 1,
        )
        started = time.monotonic()
        gen.connect(timeout=args.timeout)
        record["connect_s"] = time.monotonic() - started
        record["join_rounds"] = gen.join(timeout=args.timeout)
        record["rss_kib_before"] = rss0
        record["rss_kib_joined"] = servers.rss_kib(server.pid)
        timeout = min(args.timeout, 30 + messages * clients / 10_000)
        ours = [server.pid, *gen.pids, os.getpid()]

        def measured(phase: Any, *phase_args: Any) -> dict[str, Any]:
            """Run a phase when the machine is quiet; once more if something else ran."""
            result: dict[str, Any] = {}
            for attempt in range(2):
                quiet = servers.wait_quiet(ours, patience=args.quiet_wait)
                result = phase(*phase_args)
                result["quiet_before_pct"] = quiet
                result["attempt"] = attempt + 1
                if result["other_cpu_pct"] <= args.interference:
                    break
                log(f"  (other processes used {result['other_cpu_pct']:.0f}% CPU: repeating)")
            return result

        tp = measured(throughput, gen, server, messages, args.window, timeout)
        record["throughput"] = tp
        log(
            f"  {kind:10s} C={clients:<5d} run {run + 1}: {tp['deliveries_per_s']:>10,.0f} "
            f"deliveries/s, missing {tp['missing']}, server CPU {tp['server_cpu_pct']:.0f}%, "
            f"loadgen CPU {tp['loadgen_cpu_pct']:.0f}%"
        )
        record["latency"] = []
        for rate in args.rates:
            time.sleep(0.3)
            point = measured(
                latency_point, gen, server, rate, args.duration, args.warmup, args.drain
            )
            record["latency"].append(point)
            log(
                f"  {kind:10s} C={clients:<5d} run {run + 1}: {rate:>8,.0f}/s -> "
                f"p50 {point['p50']:.2f} p99 {point['p99']:.2f} p99.9 {point['p99.9']:.2f} "
                f"max {point['max']:.2f} ms, missing {point['missing']}"
                + (" SATURATED" if point["saturated"] else "")
            )
            if point["saturated"]:
                break  # a backlog would spill into the next point: stop this sweep
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
        log(f"  {kind} C={clients} run {run + 1}: ERROR {record['error']}")
    finally:
        if gen is not None:
            gen.stop()
        server.stop()
    return record


# -- summary ----------------------------------------------------------------


def _median_range(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def summarize(
    sessions: list[dict[str, Any]], kinds: list[str], clients: list[int]
) -> dict[str, Any]:
    summary: dict[str, Any] = {"throughput": {}, "latency": {}}
    for c in clients:
        for kind in kinds:
            mine = [s for s in sessions if s["server"] == kind and s["clients"] == c]
            tps = [s["throughput"] for s in mine if "throughput" in s]
            key = f"{kind}/{c}"
            if tps:
                middle, low, high = _median_range([t["deliveries_per_s"] for t in tps])
                summary["throughput"][key] = {
                    "runs": len(tps),
                    "median": middle,
                    "min": low,
                    "max": high,
                    "missing": sum(t["missing"] for t in tps),
                    "seq_gaps": sum(t["seq_gaps"] for t in tps),
                    "server_cpu_pct": statistics.median(t["server_cpu_pct"] for t in tps),
                    "loadgen_cpu_pct": statistics.median(t["loadgen_cpu_pct"] for t in tps),
                    "other_cpu_pct_max": max(t.get("other_cpu_pct", 0.0) for t in tps),
                    "server_us_per_delivery": statistics.median(
                        t["server_us_per_delivery"] for t in tps
                    ),
                }
            errors = [s["error"] for s in mine if "error" in s]
            if errors:
                summary.setdefault("errors", {})[key] = errors
            points: dict[float, list[dict[str, Any]]] = {}
            for s in mine:
                for p in s.get("latency", []):
                    points.setdefault(p["rate"], []).append(p)
            rows = []
            for rate in sorted(points):
                ps = points[rate]
                row: dict[str, Any] = {"rate": rate, "runs": len(ps)}
                for name in ("p50", "p90", "p99", "p99.9", "max"):
                    row[name] = statistics.median(p[name] for p in ps)
                row["p99_read"] = statistics.median(p["observed"]["p99"] for p in ps)
                row["p99_min"] = min(p["p99"] for p in ps)
                row["p99_max"] = max(p["p99"] for p in ps)
                row["missing"] = sum(p["missing"] for p in ps)
                row["saturated"] = sum(1 for p in ps if p["saturated"])
                row["server_cpu_pct"] = statistics.median(p["server_cpu_pct"] for p in ps)
                row["loadgen_cpu_pct"] = statistics.median(p["loadgen_cpu_pct"] for p in ps)
                row["other_cpu_pct_max"] = max(p.get("other_cpu_pct", 0.0) for p in ps)
                rows.append(row)
            summary["latency"][key] = rows
    return summary


def _fmt_rate(value: float) -> str:
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value:,.0f}"


def tables(summary: dict[str, Any], kinds: list[str], clients: list[int], runs: int) -> str:
    lines = [
        f"### Throughput: deliveries/s (median of {runs} run{'s' * (runs > 1)}, min-max)",
        "",
        "| C | " + " | ".join(kinds) + " | wschat ÷ peer | server CPU µs/delivery | "
        "server CPU % | loadgen CPU % | other CPU % (max) | missing deliveries |",
        "|---:|" + "---:|" * len(kinds) + "---:|---:|---:|---:|---:|---:|",
    ]
    tp = summary["throughput"]
    first = next((k for k in kinds if k.startswith("wschat")), None)
    for c in clients:
        cells = []
        for kind in kinds:
            t = tp.get(f"{kind}/{c}")
            cells.append(
                f"{t['median']:,.0f} ({_fmt_rate(t['min'])}-{_fmt_rate(t['max'])})" if t else "-"
            )
        w, p = tp.get(f"{first}/{c}"), tp.get(f"websockets/{c}")
        ratio = f"{w['median'] / p['median']:.1f}x" if w and p else "-"
        # the per-server columns list the servers in the order of the columns before them
        each = [x for x in (tp.get(f"{kind}/{c}") for kind in kinds) if x]
        us = " / ".join(f"{x['server_us_per_delivery']:.2f}" for x in each)
        cpu = " / ".join(f"{x['server_cpu_pct']:.0f}" for x in each)
        gen = " / ".join(f"{x['loadgen_cpu_pct']:.0f}" for x in each)
        other = " / ".join(f"{x['other_cpu_pct_max']:.0f}" for x in each)
        missing = " / ".join(str(x["missing"] + x["seq_gaps"]) for x in each)
        lines.append(
            f"| {c:,} | "
            + " | ".join(cells)
            + f" | {ratio} | {us} | {cpu} | {gen} | {other} | {missing} |"
        )
    lines += [
        "",
        f"### Latency: receive - send, ms (median of {runs} run{'s' * (runs > 1)})",
        "",
        "| C | deliveries/s | server | p50 | p90 | p99 (min-max) | p99.9 | max | "
        "p99 as read¹ | server CPU % | loadgen CPU % | missing |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in clients:
        rates = sorted(
            {row["rate"] for kind in kinds for row in summary["latency"].get(f"{kind}/{c}", [])}
        )
        for rate in rates:
            for kind in kinds:
                row = next(
                    (r for r in summary["latency"].get(f"{kind}/{c}", []) if r["rate"] == rate),
                    None,
                )
                if row is None:
                    lines.append(
                        f"| {c:,} | {_fmt_rate(rate)} | {kind} | saturated below this rate "
                        "| | | | | | | | |"
                    )
                    continue
                flag = " (saturated)" if row["saturated"] else ""
                lines.append(
                    f"| {c:,} | {_fmt_rate(rate)} | {kind}{flag} | {row['p50']:.2f} | "
                    f"{row['p90']:.2f} | {row['p99']:.2f} ({row['p99_min']:.2f}-"
                    f"{row['p99_max']:.2f}) | {row['p99.9']:.2f} | {row['max']:.2f} | "
                    f"{row['p99_read']:.2f} | {row['server_cpu_pct']:.0f} | "
                    f"{row['loadgen_cpu_pct']:.0f} | {row['missing']} |"
                )
    lines += [
        "",
        "Latency is the kernel's receive timestamp (SO_TIMESTAMPNS) minus the send time. "
        "¹ The same deliveries timed when the load generator read them: the difference is the "
        "load generator's own queueing.",
    ]
    return "\n".join(lines)


def interference(sessions: list[dict[str, Any]], threshold: float = 25.0) -> str:
    """Phases during which something else used the CPUs: their figures may be skewed."""
    hits = []
    for s in sessions:
        phases = [("throughput", s["throughput"])] if "throughput" in s else []
        phases += [(f"latency {p['rate']:,.0f}/s", p) for p in s.get("latency", [])]
        for name, phase in phases:
            if phase.get("other_cpu_pct", 0.0) > threshold:
                hits.append(
                    f"{s['server']} C={s['clients']:,} run {s['run'] + 1} {name}: "
                    f"{phase['other_cpu_pct']:.0f}% CPU used by other processes"
                )
    if not hits:
        return ""
    return "\n".join(
        [f"### Interference (other processes above {threshold:.0f}% CPU during a phase)", ""]
        + [f"- {h}" for h in hits]
    )


def targets(summary: dict[str, Any]) -> str:
    lines = ["### Targets", ""]
    tp = summary["throughput"]
    w, p = tp.get(f"wschat/{TARGET_CLIENTS}"), tp.get(f"websockets/{TARGET_CLIENTS}")
    if w and p:
        ratio = w["median"] / p["median"]
        lines.append(
            f"- throughput at C={TARGET_CLIENTS:,}: {ratio:.1f}x the peer (target ≥ 5x): "
            + ("met" if ratio >= 5 else "**not met**")
        )
    lat = summary["latency"]

    def at(kind: str) -> dict[str, Any] | None:
        return next(
            (r for r in lat.get(f"{kind}/{TARGET_CLIENTS}", []) if r["rate"] == TARGET_RATE), None
        )

    lw, lp = at("wschat"), at("websockets")
    if lw:
        if lp and not lp["saturated"]:
            ratio = lw["p99"] / lp["p99"]
            lines.append(
                f"- p99 at {TARGET_RATE:,} deliveries/s, C={TARGET_CLIENTS:,}: "
                f"{lw['p99']:.2f} ms vs the peer's {lp['p99']:.2f} ms = {ratio:.2f}x "
                "(target ≤ 0.5x): " + ("met" if ratio <= 0.5 else "**not met**")
            )
        else:
            lines.append(
                f"- p99 at {TARGET_RATE:,} deliveries/s, C={TARGET_CLIENTS:,}: "
                f"{lw['p99']:.2f} ms; the peer saturates at or below this rate (target met)"
                if not lw["saturated"]
                else "- wschat saturates at the latency target's rate (**not met**)"
            )
    missing = sum(t["missing"] + t["seq_gaps"] for t in tp.values())
    lines.append(
        f"- missing deliveries in all throughput runs: {missing} (target 0): "
        + ("met" if missing == 0 else "**not met**")
    )
    return "\n".join(lines)


def plot(summary: dict[str, Any], kinds: list[str], clients: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(clients), figsize=(5.5 * len(clients), 4.5), squeeze=False)
    colors = {"wschat": "tab:blue", "websockets": "tab:red"}
    styles = {"p50": ":", "p99": "-", "p99.9": "--"}
    for ax, c in zip(axes[0], clients, strict=True):
        for kind in kinds:
            rows = summary["latency"].get(f"{kind}/{c}", [])
            if not rows:
                continue
            rates = [r["rate"] for r in rows]
            for name, style in styles.items():
                ax.plot(
                    rates,
                    [r[name] for r in rows],
                    style,
                    marker="o",
                    markersize=3,
                    color=colors.get(kind),
                    label=f"{kind} {name}",
                )
            sat = [r for r in rows if r["saturated"]]
            if sat:
                ax.scatter(
                    [r["rate"] for r in sat],
                    [r["p99"] for r in sat],
                    marker="x",
                    s=60,
                    color=colors.get(kind),
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"C = {c:,} clients in one room")
        ax.set_xlabel("delivery rate (deliveries/s)")
        ax.set_ylabel("latency, receive - send (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Broadcast latency percentiles against delivery rate (x: saturated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="C=100,1000, 1 run: a smoke check")
    parser.add_argument("--clients", type=int, nargs="+", help="room sizes (default 100 1000 5000)")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3; --quick: 1)")
    parser.add_argument(
        "--servers",
        nargs="+",
        default=list(servers.SERVERS),
        help="servers to compare: wschat (a snapshot of the working tree), websockets (the "
        "peer), wschat@REV (a git revision), wschat+duck (an experiment, see README)",
    )
    parser.add_argument(
        "--messages", type=int, help="throughput messages per run (default: --deliveries / C)"
    )
    parser.add_argument(
        "--deliveries",
        type=int,
        help="throughput deliveries per run (default 2,000,000; --quick 500,000)",
    )
    parser.add_argument("--min-messages", type=int, default=200)
    parser.add_argument("--senders", type=int, default=4, help="sending clients (S)")
    parser.add_argument("--window", type=int, default=16, help="in-flight messages per sender")
    parser.add_argument("--rates", type=float, nargs="*", help="latency delivery rates /s")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per latency point")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds not recorded")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for stragglers")
    parser.add_argument("--procs", type=int, default=2, help="load generator processes")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--loadgen-cpu", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=180.0, help="bound on each phase, s")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument(
        "--interference",
        type=float,
        default=25.0,
        help="repeat a phase (once) when other processes used more CPU %% than this",
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=60.0, help="s to wait for a quiet machine per phase"
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure RSS per idle connection (default: on unless --quick)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for kind in args.servers:
        try:
            servers.parse_kind(kind)
        except ValueError as exc:
            parser.error(str(exc))
    args.clients = args.clients or list(QUICK_CLIENTS if args.quick else FULL_CLIENTS)
    args.runs = args.runs or (1 if args.quick else 3)
    args.deliveries = args.deliveries or (500_000 if args.quick else 2_000_000)
    if args.rates is None:
        args.rates = list(QUICK_RATES if args.quick else RATES)
    if args.no_latency:
        args.rates = []
    if args.memory is None:
        args.memory = not args.quick
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = servers.raise_nofile()
    needed = max(args.clients) + 100
    if limit < needed:
        log(f"open-file limit {limit} < {needed}: raise the hard limit (ulimit -Hn)")
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = servers.machine()
    log(
        f"machine: {env['cpu_model']}, {env['cpus']} CPUs; server on CPU {args.server_cpu}, "
        f"load generator ({args.procs} processes) on CPU {args.loadgen_cpu}"
    )
    kinds = list(args.servers)
    sources = {kind: servers.describe(kind) for kind in kinds}  # snapshots taken now
    for kind, info in sources.items():
        if "revision" in info:
            log(
                f"{kind}: wschat {info['revision']} (local changes: "
                f"{info.get('local_changes', 'n/a')}), files sha256 {info['sha256']}"
            )
    sessions: list[dict[str, Any]] = []
    started = time.monotonic()
    for run in range(args.runs):
        for c in args.clients:
            for kind in kinds:
                log(f"run {run + 1}/{args.runs}: {kind}, C={c}")
                sessions.append(session(kind, c, run, args))
    summary = summarize(sessions, kinds, args.clients)
    memory_results: list[dict[str, Any]] = []
    if args.memory:
        import memory

        for kind in [k for k in kinds if "+" not in k]:
            log(f"memory: {kind}, 10,000 idle connections")
            memory_results.append(memory.measure(kind, 10_000, args.server_cpu, args.loadgen_cpu))
    packages: dict[str, str] = env["packages"]  # type: ignore[assignment]
    report = [
        f"Machine: {env['cpu_model']}, {env['cpus']} CPUs (server pinned to CPU "
        f"{args.server_cpu}, load generator: {args.procs} processes on CPU {args.loadgen_cpu}); "
        f"Python {env['python']}, "
        + ", ".join(f"{k} {v}" for k, v in packages.items() if k != "wschat"),
        "",
        "Code measured: "
        + "; ".join(
            f"{kind} = wschat {info['revision']}"
            + (" with local changes" if info.get("local_changes") == "yes" else "")
            + f" (sha256 {info['sha256']})"
            for kind, info in sources.items()
            if "revision" in info
        )
        + ".",
        "",
        tables(summary, kinds, args.clients, args.runs),
    ]
    if memory_results:
        report += ["", "### Memory: RSS per idle connection (10,000 connections)", ""]
        report += ["| server | RSS before | RSS after | per connection |", "|---|---:|---:|---:|"]
        for m in memory_results:
            report.append(
                f"| {m['server']} | {m['rss_before_kib'] / 1024:.1f} MiB | "
                f"{m['rss_after_kib'] / 1024:.1f} MiB | {m['kib_per_connection']:.1f} KiB |"
            )
    report += ["", targets(summary)]
    noisy = interference(sessions, args.interference)
    if noisy:
        report += ["", noisy]
    if "errors" in summary:
        report += ["", "### Errors", ""]
        report += [f"- {k}: {e}" for k, v in summary["errors"].items() for e in v]
    text = "\n".join(report)
    base = args.output / f"bench-{stamp}"
    data = {
        "machine": env,
        "sources": sources,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": time.monotonic() - started,
        "summary": summary,
        "memory": memory_results,
        "sessions": sessions,
    }
    base.with_suffix(".json").write_text(json.dumps(data, indent=1))
    base.with_suffix(".md").write_text(text + "\n")
    outputs = [base.with_suffix(".json"), base.with_suffix(".md")]
    if any(summary["latency"].values()):
        plot(summary, kinds, args.clients, base.with_suffix(".png"))
        outputs.append(base.with_suffix(".png"))
    for path in outputs:
        shutil.copyfile(path, args.output / f"latest{path.suffix}")
    print(text)
    log(
        "wrote " + ", ".join(str(p) for p in outputs) + f" (and latest.*), "
        f"{time.monotonic() - started:.0f} s"
    )
    failed = any("error" in s for s in sessions)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
