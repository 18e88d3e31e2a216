"""The scenarios ``run.py`` measures, each as sessions: one server process, one load generator.

- ``fanout``: C clients in one room. Throughput with S senders each keeping W messages in
  flight (two profiles: 4 x 16, and issue 14's 1 x 128), then latency at rising delivery
  rates until the server saturates.
- ``rooms``: 10,000 clients in rooms of 10, every client a sender; a rising message rate
  (messages in per second) until p99 end-to-end latency reaches 50 ms. The inbound path:
  parse, validate, rate limit, publish, history. On the memory hub and on a private
  redis-server for wschat.
- ``browser``: C clients offering permessage-deflate as Chromium does, inflating what
  they receive; throughput with 100-byte and 1-KB messages, bytes on the wire per
  delivery, RSS per connection idle and after traffic.

A server is a :class:`Config`: a name for the tables, a ``servers`` kind and its options.
Every phase reports its delivery checks; a phase with a missing (lost), duplicate or
out-of-order delivery, or an unexpected or malformed frame, is marked failed.
"""

from __future__ import annotations

import array
import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import servers
from loadgen import LoadGen, merge

LOADGEN_SATURATED = 90.0  # % of its one core: above it the row may measure the load generator
ROOMS_P99_MS = 50.0
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))


@dataclass(frozen=True)
class Config:
    """One server as a scenario runs it."""

    label: str
    kind: str
    options: servers.Options = field(default_factory=servers.Options)
    redis: bool = False  # start a private redis-server and pass it as --hub
    connect_concurrency: int = 100  # handshakes in flight per load-generator process


@dataclass
class Bench:
    """Settings shared by every session (from run.py's arguments)."""

    server_cpu: int | None = 0
    loadgen_cpu: int | None = 1
    procs: int = 2
    timeout: float = 180.0
    quiet_wait: float = 60.0
    interference: float = 25.0
    use_native: bool = True
    lowat: int = 16384
    log: Callable[..., None] = print


def log_dir() -> Any:
    return servers.HERE / "results" / "logs"


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


class Meter:
    """CPU of the server, the load generator, redis and everyone else over one phase."""

    def __init__(self, server_pid: int, gen: LoadGen, redis_pid: int | None = None) -> None:
        self.server_pid = server_pid
        self.gen = gen
        self.redis_pid = redis_pid
        self.ours = [server_pid, *gen.pids, os.getpid()] + ([redis_pid] if redis_pid else [])

    def snapshot(self) -> dict[Any, float]:
        snapshot: dict[Any, float] = {pid: servers.cpu_seconds(pid) for pid in self.ours}
        snapshot.update(servers.system_cpu())
        return snapshot

    def figures(
        self,
        before: dict[Any, float],
        after: dict[Any, float],
        seconds: float,
        gen_cpu: float | None = None,
    ) -> dict[str, Any]:
        """CPU figures over ``seconds``; ``gen_cpu``: the workers' own count for the phase."""
        span = max(1e-9, seconds)
        server = after[self.server_pid] - before[self.server_pid]
        gen = sum(after[p] - before[p] for p in self.gen.pids) if gen_cpu is None else gen_cpu
        ours = sum(after[p] - before[p] for p in self.ours)
        other = (after["busy"] - before["busy"]) - ours
        figures = {
            "server_cpu_s": server,
            "server_cpu_pct": 100 * server / span,
            "loadgen_cpu_s": gen,
            "loadgen_cpu_pct": 100 * gen / span,  # its processes share one core
            "other_cpu_pct": max(0.0, 100 * other / span),
            "steal_pct": 100 * (after["steal"] - before["steal"]) / span,
        }
        if self.redis_pid:
            redis = after[self.redis_pid] - before[self.redis_pid]
            figures["redis_cpu_s"] = redis
            figures["redis_cpu_pct"] = 100 * redis / span
        figures["loadgen_saturated"] = figures["loadgen_cpu_pct"] > LOADGEN_SATURATED
        return figures


def check(result: dict[str, Any], lost: int) -> str:
    """``ok``, or what failed: lost, duplicate, out-of-order, unexpected, malformed."""
    problems = [
        f"{value} {name}"
        for name, value in (
            ("lost", lost),
            ("duplicate", result["duplicate"]),
            ("out of order", result["out_of_order"]),
            ("unexpected", result["unexpected"]),
            ("malformed", result["malformed"]),
        )
        if value
    ]
    return "FAIL: " + ", ".join(problems) if problems else "ok"


def throughput(
    gen: LoadGen, meter: Meter, messages: int, window: int, size: int, timeout: float
) -> dict[str, Any]:
    before = meter.snapshot()
    start_at = time.time_ns() + 200_000_000
    result = merge(
        gen.call(
            "throughput",
            timeout + 30,
            messages=messages,
            window=window,
            start_at=start_at,
            timeout=timeout,
            size=size,
        )
    )
    after = meter.snapshot()
    seconds = max(1e-9, (result["last_receipt"] - result["first_send"]) / 1e9)
    span = (time.time_ns() - start_at) / 1e9 + 0.2
    # the workers count their own CPU from the first send: setting a phase up is not in it
    figures = meter.figures(before, after, seconds, result["cpu"])
    # other processes over the whole span, not only the delivery window
    figures["other_cpu_pct"] = meter.figures(before, after, span)["other_cpu_pct"]
    received = result["received"]
    return {
        **{k: v for k, v in result.items() if k not in ("cpu",)},
        "messages": messages,
        "window": window,
        "size": size,
        "seconds": seconds,
        "deliveries_per_s": received / seconds,
        "server_us_per_delivery": 1e6 * figures["server_cpu_s"] / max(1, received),
        "loadgen_us_per_delivery": 1e6 * figures["loadgen_cpu_s"] / max(1, received),
        "bytes_per_delivery": result["bytes_in"] / max(1, received),
        "compressed_share": result["compressed"] / max(1, result["frames"]),
        "check": check(result, result["missing"]),
        **figures,
    }


def latency_point(
    gen: LoadGen,
    meter: Meter,
    msg_rate: float,
    duration: float,
    warmup: float,
    drain: float,
    grace: float,
    size: int = 100,
) -> dict[str, Any]:
    """Messages at ``msg_rate``/s for ``duration`` s; latency of every delivery."""
    total = max(1, round(msg_rate * duration))
    before = meter.snapshot()
    start_at = time.time_ns() + 200_000_000
    answers = gen.call(
        "latency",
        duration + drain + grace + 60,
        msg_rate=msg_rate,
        total=total,
        start_at=start_at,
        warmup=warmup,
        timeout=drain,
        grace=grace,
        size=size,
    )
    after = meter.snapshot()
    samples: array.array[int] = array.array("q")
    observed: array.array[int] = array.array("q")
    for answer in answers:
        samples.frombytes(answer["latencies"])
        observed.frombytes(answer["observed"])
    result = merge(answers)
    scheduled_end = start_at + int(total / msg_rate * 1e9)
    elapsed = max(1e-9, (result["last_receipt"] - start_at) / 1e9)
    tail = (result["last_receipt"] - scheduled_end) / 1e9
    point = {
        **{k: v for k, v in result.items() if k not in ("cpu",)},
        "msg_rate": msg_rate,
        # deliveries/s scheduled (whole: run.py's rates are, and rows group by it)
        "rate": round(msg_rate * result["expected"] / max(1, total)),
        "messages": total,
        "achieved_per_s": result["received"] / elapsed,
        "tail_s": tail,
        **meter.figures(before, after, elapsed, result["cpu"]),
        **percentiles(samples),
        # the same deliveries timed when the load generator read them (its own delay included)
        "observed": percentiles(observed),
    }
    point["server_us_per_message"] = 1e6 * point["server_cpu_s"] / max(1, result["sent"])
    # Saturated: deliveries late past the drain, still arriving long after the last send.
    point["saturated"] = bool(result["late"] or tail > 1.0 or point["p99"] > 1000.0)
    point["check"] = check(result, result["missing"])
    return point


class Session:
    """A server (and redis) plus a connected, joined load generator; ``with`` stops both."""

    def __init__(self, config: Config, bench: Bench, clients: int, **loadgen: Any) -> None:
        self.config = config
        self.redis = servers.start_redis(bench.loadgen_cpu, log_dir()) if config.redis else None
        options = config.options
        if self.redis is not None:
            options = dataclasses.replace(options, hub_url=self.redis.url)
        self.gen: LoadGen | None = None
        try:
            self.server = servers.start(config.kind, bench.server_cpu, log_dir(), options=options)
        except BaseException:
            if self.redis is not None:
                self.redis.stop()
            raise
        try:
            self.record: dict[str, Any] = {
                "server": config.label,
                "kind": config.kind,
                "argv": self.server.argv[1:],
                "clients": clients,
                "rss_kib_before": servers.rss_kib(self.server.pid),
            }
            self.gen = LoadGen(
                "127.0.0.1",
                self.server.port,
                clients,
                procs=bench.procs,
                cpu=bench.loadgen_cpu,
                use_native=bench.use_native,
                lowat=bench.lowat,
                **loadgen,
            )
            started = time.monotonic()
            self.gen.connect(timeout=bench.timeout, concurrency=config.connect_concurrency)
            self.record["connect_s"] = time.monotonic() - started
            # a join takes one or two rounds of 2 s at most: longer means the server lost them
            self.record["join_rounds"] = self.gen.join(timeout=min(30.0, bench.timeout))
            self.record["rss_kib_joined"] = servers.rss_kib(self.server.pid)
            self.record["extensions"] = self.gen.extensions
            self.record["scanner"] = self.gen.scanner
            self.meter = Meter(
                self.server.pid, self.gen, self.redis.pid if self.redis is not None else None
            )
            self.bench = bench
        except BaseException:
            self.close()
            raise

    def rss_per_connection(self, key: str) -> float:
        """KiB of server RSS per connection now, over the RSS before any connection."""
        rss = servers.rss_kib(self.server.pid)
        self.record[f"rss_kib_{key}"] = rss
        return (rss - self.record["rss_kib_before"]) / max(1, self.record["clients"])

    def measured(self, phase: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """Run a phase when the machine is quiet; once more if something else ran."""
        assert self.gen is not None
        ours = self.meter.ours
        result: dict[str, Any] = {}
        for attempt in range(2):
            quiet = servers.wait_quiet(ours, patience=self.bench.quiet_wait)
            result = phase(self.gen, self.meter, *args)
            result["quiet_before_pct"] = quiet
            result["attempt"] = attempt + 1
            if result["other_cpu_pct"] <= self.bench.interference:
                break
            self.bench.log(
                f"  (other processes used {result['other_cpu_pct']:.0f}% CPU: repeating)"
            )
        return result

    def close(self) -> None:
        if self.gen is not None:
            self.gen.stop()
        self.server.stop()
        if self.redis is not None:
            self.redis.stop()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
