#!/usr/bin/env python
"""Benchmarks: wschat against picows and websockets peers, same load, same run.

    .venv/bin/python benchmarks/run.py                 # everything (see README.md for how long)
    .venv/bin/python benchmarks/run.py --quick         # smoke check, a couple of minutes
    .venv/bin/python benchmarks/run.py --scenarios rooms --servers wschat picows

Scenarios (``scenarios.py`` says what each measures): ``fanout`` (one room of C: throughput
in two sender profiles, then latency at rising rates), ``rooms`` (10,000 clients in rooms of
10, all sending: the highest messages-in rate with p99 < 50 ms, memory and Redis hubs),
``browser`` (clients offering deflate as Chromium does: 100-byte and 1-KB messages), and
``memory`` (RSS per idle connection). Every server is started pinned to CPU 0, the load
generator's processes to CPU 1.

Writes results/bench-<time>.json (every raw figure), .md (the tables) and .png (latency
against delivery rate), and copies them to results/latest.*. Exits 1 when a delivery check
failed or a session errored.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report
import servers
import suites
from scenarios import Bench, Config

RESULTS = servers.HERE / "results"
SCENARIOS = ("fanout", "rooms", "browser", "memory")
FULL_CLIENTS = (100, 1000, 5000)
QUICK_CLIENTS = (100, 1000)
RATES = (10_000, 25_000, 50_000, 100_000, 150_000, 200_000, 400_000)
QUICK_RATES = (100_000,)
ROOM_RATES = (500, 1_000, 2_000, 4_000, 8_000, 16_000, 32_000)  # messages in per second
QUICK_ROOM_RATES = (500, 2_000)


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


def configs(kinds: list[str], scenario: str) -> list[Config]:
    """The servers a scenario runs: the kinds asked for, with the scenario's variants."""
    out = []
    for kind in kinds:
        spec, _ = servers.parse_kind(kind)
        if scenario == "rooms":
            # a rate limit that never binds, so its cost is in the inbound path
            out.append(Config(kind, kind, servers.Options(rate=100.0)))
            if spec is not None:
                out.append(Config(f"{kind} redis", kind, servers.Options(rate=100.0), redis=True))
        elif scenario == "browser":
            if spec is not None:
                out.append(Config(f"{kind} no compression", kind))
                out.append(Config(f"{kind} compression", kind, servers.Options(compression=True)))
            elif kind == "websockets":
                out.append(Config("websockets deflate", kind, servers.Options(compression=True)))
            else:
                out.append(Config(f"{kind} (no deflate)", kind))
        else:
            out.append(Config(kind, kind))
            if spec is not None:
                out.append(Config(f"{kind} redis", kind, redis=True))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="smaller everything, 1 run: a smoke check")
    add("--scenarios", nargs="+", choices=SCENARIOS, help="default: all")
    add(
        "--servers",
        nargs="+",
        default=list(servers.SERVERS),
        help="wschat (a snapshot of the working tree), picows, websockets (the peers), "
        "wschat@REV (a git revision), wschat+VARIANT (an experiment, see README)",
    )
    add("--clients", type=int, nargs="+", help="fan-out room sizes (default 100 1000 5000)")
    add("--runs", type=int, help="runs of fanout and browser (default 3; --quick 1)")
    add("--deliveries", type=int, help="fan-out throughput deliveries (default 2 M; quick 200k)")
    add("--rates", type=float, nargs="*", help="fan-out latency delivery rates /s")
    add("--duration", type=float, default=3.0, help="s per fan-out latency point")
    add("--warmup", type=float, default=0.5, help="s of each latency point not recorded")
    add("--drain", type=float, default=10.0, help="s to wait for stragglers")
    add("--no-latency", action="store_true")
    add("--redis-clients", type=int, nargs="*", default=[1000], help="fan-out C for wschat redis")
    add("--room-clients", type=int, help="rooms: clients (default 10,000; --quick 2,000)")
    add("--room-size", type=int, default=10)
    add("--room-rates", type=float, nargs="+", help="rooms: messages in /s to try, rising")
    add("--room-duration", type=float, help="rooms: s per rate (default 10; --quick 3)")
    add("--room-refine", type=int, help="rooms: bisection steps after the first miss (2; quick 0)")
    add("--browser-clients", type=int, help="browser: clients (default 1,000; --quick 200)")
    add("--browser-deliveries", type=int, help="per size (default 500k; --quick 50k)")
    add("--sizes", type=int, nargs="+", default=[100, 1000], help="browser: message sizes")
    add("--memory-connections", type=int, default=10_000)
    add("--procs", type=int, default=2, help="load generator processes")
    add("--server-cpu", type=int, default=0)
    add("--loadgen-cpu", type=int, default=1)
    add("--timeout", type=float, default=180.0, help="bound on each phase, s")
    add("--python-scanner", action="store_true", help="no C fast path in the load generator")
    add("--lowat", type=int, default=16384, help="SO_RCVLOWAT for throughput (1: off)")
    add(
        "--interference",
        type=float,
        default=25.0,
        help="repeat a phase (not with --quick) and list it above this foreign CPU %%",
    )
    add("--quiet-wait", type=float, help="s to wait for a quiet machine per phase (60; quick 2)")
    add("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for kind in args.servers:
        try:
            servers.parse_kind(kind)
        except ValueError as exc:
            parser.error(str(exc))
    quick = args.quick
    args.quiet_wait = args.quiet_wait if args.quiet_wait is not None else (2.0 if quick else 60.0)
    args.scenarios = args.scenarios or [s for s in SCENARIOS if not (quick and s == "memory")]
    args.clients = args.clients or list(QUICK_CLIENTS if quick else FULL_CLIENTS)
    args.runs = args.runs or (1 if quick else 3)
    args.deliveries = args.deliveries or (200_000 if quick else 2_000_000)
    if args.rates is None:
        args.rates = list(QUICK_RATES if quick else RATES)
    if args.no_latency:
        args.rates = []
    args.room_clients = args.room_clients or (2_000 if quick else 10_000)
    args.room_rates = args.room_rates or list(QUICK_ROOM_RATES if quick else ROOM_RATES)
    args.room_duration = args.room_duration or (3.0 if quick else 10.0)
    args.room_refine = (0 if quick else 2) if args.room_refine is None else args.room_refine
    args.browser_clients = args.browser_clients or (200 if quick else 1_000)
    args.browser_deliveries = args.browser_deliveries or (50_000 if quick else 500_000)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit = servers.raise_nofile()
    needed = max([*args.clients, args.room_clients, args.memory_connections]) + 100
    if limit < needed:
        log(f"open-file limit {limit} < {needed}: raise the hard limit (ulimit -Hn)")
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    env = servers.machine()
    kinds = list(args.servers)
    sources = {kind: servers.describe(kind) for kind in kinds}  # snapshots taken now
    bench = Bench(
        server_cpu=args.server_cpu,
        loadgen_cpu=args.loadgen_cpu,
        procs=args.procs,
        timeout=args.timeout,
        quiet_wait=args.quiet_wait,
        interference=float("inf") if args.quick else args.interference,
        use_native=not args.python_scanner,
        lowat=args.lowat,
        log=log,
    )
    import native

    scanner = "python (--python-scanner)" if args.python_scanner else native.status()
    log(
        f"machine: {env['cpu_model']}, {env['cpus']} CPUs, Linux {env['kernel']}; scanner {scanner}"
    )
    flags = {}
    for kind, info in sources.items():
        if "revision" in info:
            src = Path(info["path"])
            flags[kind] = {
                "off": servers.compression_flags(src, False),
                "on": servers.compression_flags(src, True),
            }
            log(
                f"{kind}: wschat {info['revision']} (local changes: "
                f"{info.get('local_changes', 'n/a')}), sha256 {info['sha256']}; compression "
                f"flags off {flags[kind]['off']} on {flags[kind]['on']}"
            )
    sessions: list[dict[str, Any]] = []
    started = time.monotonic()
    if "fanout" in args.scenarios:
        for run in range(args.runs):
            for c in args.clients:
                for config in configs(kinds, "fanout"):
                    # the Redis hub at one node: throughput only, at the C of its target
                    redis = config.redis
                    if redis and c not in args.redis_clients:
                        continue
                    log(f"fanout run {run + 1}/{args.runs}: {config.label}, C={c}")
                    sessions.append(
                        suites.fanout(
                            config, c, run, bench, args.deliveries, [] if redis else args.rates,
                            args.duration, args.warmup, args.drain,
                        )
                    )  # fmt: skip
    if "rooms" in args.scenarios:
        for config in configs(kinds, "rooms"):
            log(f"rooms: {config.label}, {args.room_clients:,} clients")
            sessions.append(
                suites.rooms(
                    config, 0, bench, args.room_clients, args.room_size, args.room_rates,
                    args.room_refine, args.room_duration, min(2.0, args.room_duration / 3),
                )
            )  # fmt: skip
    if "browser" in args.scenarios:
        for run in range(args.runs):
            for config in configs(kinds, "browser"):
                log(f"browser run {run + 1}/{args.runs}: {config.label}")
                sessions.append(
                    suites.browser(
                        config, args.browser_clients, run, bench, args.browser_deliveries,
                        args.sizes,
                    )
                )  # fmt: skip
    memory_results: list[dict[str, Any]] = []
    if "memory" in args.scenarios:
        import memory

        for kind in [k for k in kinds if "+" not in k]:
            log(f"memory: {kind}, {args.memory_connections:,} idle connections")
            memory_results.append(
                memory.measure(kind, args.memory_connections, args.server_cpu, args.loadgen_cpu)
            )
    elapsed = time.monotonic() - started
    text = render(args, env, sources, flags, scanner, sessions, memory_results, elapsed)
    base = args.output / f"bench-{stamp}"
    data = {
        "machine": env,
        "sources": sources,
        "compression_flags": flags,
        "scanner": scanner,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "elapsed_s": elapsed,
        "memory": memory_results,
        "sessions": sessions,
    }
    base.with_suffix(".json").write_text(json.dumps(data, indent=1, default=str))
    base.with_suffix(".md").write_text(text + "\n")
    outputs = [base.with_suffix(".json"), base.with_suffix(".md")]
    labels = [c.label for c in configs(kinds, "fanout")]
    if report.plot(sessions, labels, args.clients, base.with_suffix(".png")):
        outputs.append(base.with_suffix(".png"))
    for path in outputs:
        shutil.copyfile(path, args.output / f"latest{path.suffix}")
    print(text)
    log("wrote " + ", ".join(str(p) for p in outputs) + f" (and latest.*), {elapsed:.0f} s")
    return 1 if report.failures(sessions) else 0


def render(
    args: argparse.Namespace,
    env: dict[str, Any],
    sources: dict[str, dict[str, str]],
    flags: dict[str, dict[str, list[str]]],
    scanner: str,
    sessions: list[dict[str, Any]],
    memory_results: list[dict[str, Any]],
    elapsed: float,
) -> str:
    kinds = list(args.servers)
    packages = env["packages"]
    code = "; ".join(
        f"{kind} = wschat {info['revision']}"
        + (" with local changes" if info.get("local_changes") == "yes" else "")
        + f" (sha256 {info['sha256']}; compression flags: off "
        f"{' '.join(flags[kind]['off']) or '(none)'}, on "
        f"{' '.join(flags[kind]['on']) or '(none: negotiates when offered)'})"
        for kind, info in sources.items()
        if "revision" in info
    )
    parts = [
        f"Machine: {env['cpu_model']}, {env['cpus']} CPUs, Linux {env['kernel']}, Python "
        f"{env['python']}, redis-server {env.get('redis_server') or '-'}; "
        + ", ".join(f"{k} {v}" for k, v in packages.items() if k != "wschat"),
        "",
        f"Code measured: {code or '-'}. Harness: benchmarks at {env['commit']}; server pinned "
        f"to CPU {args.server_cpu}, load generator ({args.procs} processes, frame scanner "
        f"{scanner}) on CPU {args.loadgen_cpu}. Run took {elapsed / 60:.1f} min.",
        "",
    ]
    if "fanout" in args.scenarios:
        parts += [
            report.fanout_tables(
                sessions, [c.label for c in configs(kinds, "fanout")], args.clients
            ),
            "",
        ]
    if "rooms" in args.scenarios:
        parts += [report.rooms_tables(sessions, [c.label for c in configs(kinds, "rooms")]), ""]
    if "browser" in args.scenarios:
        labels = [c.label for c in configs(kinds, "browser")]
        parts += [report.browser_tables(sessions, labels), ""]
    if memory_results:
        parts += [report.memory_table(memory_results), ""]
    parts += [report.targets(sessions, memory_results), ""]
    noisy = [
        f"- {s['scenario']} {s['server']} C={s['clients']:,} run {s['run'] + 1}: "
        f"{p['other_cpu_pct']:.0f} % CPU used by other processes"
        for s in sessions
        for p in [
            *s.get("throughput", {}).values(),
            *s.get("sizes", {}).values(),
            *s.get("latency", []),
            *s.get("points", []),
        ]
        if p.get("other_cpu_pct", 0.0) > args.interference
    ]
    if noisy:
        parts += [f"### Interference (other processes above {args.interference:.0f} % CPU)", ""]
        parts += [*noisy, ""]
    failed = report.failures(sessions)
    parts += ["### Delivery checks and errors", ""]
    parts += [f"- {f}" for f in failed] if failed else ["- none failed: nothing lost, "
              "duplicated or reordered, no unexpected frame"]  # fmt: skip
    return "\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
