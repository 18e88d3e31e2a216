"""One session of each scenario (``scenarios.py``): what runs, in which order, its record."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from scenarios import (
    ROOMS_P99_MS,
    Bench,
    Config,
    Session,
    latency_point,
    throughput,
)


@dataclass(frozen=True)
class Profile:
    """A throughput profile of the fan-out: S senders, each with W messages in flight."""

    name: str
    senders: int
    window: int


FANOUT_PROFILES = (Profile("4x16", 4, 16), Profile("1x128", 1, 128))


def _error(record: dict[str, Any], label: str, exc: Exception, bench: Bench) -> None:
    record["error"] = f"{type(exc).__name__}: {exc}"
    bench.log(f"  {label}: ERROR {record['error']}")


def fanout(
    config: Config,
    clients: int,
    run: int,
    bench: Bench,
    deliveries: int,
    rates: list[float],
    duration: float,
    warmup: float,
    drain: float,
) -> dict[str, Any]:
    """One room of ``clients``: each throughput profile, then the latency sweep."""
    record: dict[str, Any] = {"scenario": "fanout", "server": config.label, "clients": clients}
    record["run"] = run
    messages = max(200, deliveries // clients)
    timeout = min(bench.timeout, 30 + messages * clients / 10_000)
    name = f"{config.label:14s} C={clients:<5d} run {run + 1}"
    try:
        record["throughput"] = {}
        for profile in FANOUT_PROFILES:
            # each profile has its own senders: a load generator per profile
            with Session(config, bench, clients, senders=profile.senders, seed=run + 1) as s:
                tp = s.measured(throughput, messages, profile.window, 100, timeout)
                record["throughput"][profile.name] = tp
                record.update({k: v for k, v in s.record.items() if k not in record})
                bench.log(
                    f"  {name} {profile.name}: {tp['deliveries_per_s']:>10,.0f} deliveries/s, "
                    f"server CPU {tp['server_cpu_pct']:.0f}%, loadgen CPU "
                    f"{tp['loadgen_cpu_pct']:.0f}%, {tp['check']}"
                )
                if profile is not FANOUT_PROFILES[0] or not rates:
                    continue
                record["latency"] = []
                for rate in rates:
                    time.sleep(0.3)
                    point = s.measured(
                        latency_point, rate / clients, duration, warmup, drain, drain * 2
                    )
                    record["latency"].append(point)
                    bench.log(
                        f"  {name} {rate:>8,.0f}/s: p50 {point['p50']:.2f} p99 "
                        f"{point['p99']:.2f} max {point['max']:.2f} ms, loadgen CPU "
                        f"{point['loadgen_cpu_pct']:.0f}%, {point['check']}"
                        + (" SATURATED" if point["saturated"] else "")
                    )
                    if point["saturated"]:
                        break  # a backlog would spill into the next point: stop this sweep
    except Exception as exc:
        _error(record, name, exc, bench)
    return record


def rooms(
    config: Config,
    run: int,
    bench: Bench,
    clients: int,
    room_size: int,
    rates: list[float],
    refine: int,
    duration: float,
    warmup: float,
) -> dict[str, Any]:
    """Rooms of ``room_size``, everyone sending: the highest msgs-in/s with p99 < 50 ms."""
    record: dict[str, Any] = {"scenario": "rooms", "server": config.label, "clients": clients}
    record.update(run=run, room_size=room_size, points=[])
    name = f"{config.label:14s} rooms run {run + 1}"
    try:
        with Session(
            config, bench, clients, senders=room_size, room_size=room_size, seed=run + 1
        ) as s:
            record.update(s.record)
            record["rss_kib_per_connection_idle"] = s.rss_per_connection("idle")

            def point(rate: float) -> bool:
                p = s.measured(latency_point, rate, duration, warmup, 10.0, 20.0)
                p["ok"] = bool(
                    not p["saturated"] and p["p99"] < ROOMS_P99_MS and p["check"] == "ok"
                )
                record["points"].append(p)
                bench.log(
                    f"  {name} {rate:>7,.0f} msgs/s in: p50 {p['p50']:.2f} p99 {p['p99']:.2f} "
                    f"ms, server CPU {p['server_cpu_pct']:.0f}% "
                    f"({p['server_us_per_message']:.0f} µs/msg), loadgen CPU "
                    f"{p['loadgen_cpu_pct']:.0f}%, {p['check']}" + ("" if p["ok"] else " OVER")
                )
                return bool(p["ok"])

            good, bad = 0.0, 0.0
            for rate in rates:
                if not point(rate):
                    bad = rate
                    break
                good = rate
            for _ in range(refine if bad and good else 0):
                middle = round((good + bad) / 2, -1)
                if middle in (good, bad):
                    break
                if point(middle):
                    good = middle
                else:
                    bad = middle
            record["max_ok_rate"] = good
            record["first_over_rate"] = bad or None
            record["rss_kib_per_connection_after"] = s.rss_per_connection("after")
    except Exception as exc:
        _error(record, name, exc, bench)
    return record


def browser(
    config: Config,
    clients: int,
    run: int,
    bench: Bench,
    deliveries: int,
    sizes: list[int],
) -> dict[str, Any]:
    """Clients offering deflate as Chromium does: throughput, bytes and RSS per size."""
    record: dict[str, Any] = {"scenario": "browser", "server": config.label, "clients": clients}
    record.update(run=run, sizes={})
    messages = max(100, deliveries // clients)
    name = f"{config.label:22s} C={clients:<5d} run {run + 1}"
    try:
        with Session(config, bench, clients, senders=4, browser=True, seed=run + 1) as s:
            record.update(s.record)
            record["rss_kib_per_connection_idle"] = s.rss_per_connection("idle")
            for size in sizes:
                tp = s.measured(throughput, messages, 16, size, bench.timeout)
                tp["rss_kib_per_connection_after"] = s.rss_per_connection(f"after_{size}")
                record["sizes"][str(size)] = tp
                bench.log(
                    f"  {name} {size:>5d} B: {tp['deliveries_per_s']:>9,.0f} deliveries/s, "
                    f"{tp['server_us_per_delivery']:.2f} µs/delivery, "
                    f"{tp['bytes_per_delivery']:.0f} B/delivery, "
                    f"{100 * tp['compressed_share']:.0f}% compressed, RSS "
                    f"{tp['rss_kib_per_connection_after']:.1f} KiB/conn, loadgen CPU "
                    f"{tp['loadgen_cpu_pct']:.0f}%, {tp['check']}"
                )
    except Exception as exc:
        _error(record, name, exc, bench)
    return record
