"""Medians over runs and the markdown tables ``run.py`` prints (and a latency plot)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from scenarios import LOADGEN_SATURATED, ROOMS_P99_MS
from servers import PEERS
from suites import FANOUT_PROFILES

SAT = "†"  # the load generator was above LOADGEN_SATURATED % of its core


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rate(value: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value / 1000:,.0f}k" if value >= 10_000 else f"{value:,.0f}"


def _gen(phases: list[dict[str, Any]]) -> str:
    """Median load-generator CPU %, marked when any of the runs was above the mark."""
    value = _median([p["loadgen_cpu_pct"] for p in phases])
    return f"{value:.0f}{SAT if any(p['loadgen_saturated'] for p in phases) else ''}"


def _checks(phases: list[dict[str, Any]]) -> str:
    failed = [p["check"] for p in phases if p["check"] != "ok"]
    return "ok" if not failed else "**" + "; ".join(sorted(set(failed))) + "**"


def failures(sessions: list[dict[str, Any]]) -> list[str]:
    """Every failed delivery check and error, for the report and the exit code."""
    found = []
    for s in sessions:
        name = f"{s['scenario']} {s['server']} C={s['clients']:,} run {s['run'] + 1}"
        if "error" in s:
            found.append(f"{name}: {s['error']}")
        phases = [(f"throughput {k}", v) for k, v in s.get("throughput", {}).items()]
        phases += [(f"{k} B", v) for k, v in s.get("sizes", {}).items()]
        phases += [(f"{p['rate']:,.0f}/s", p) for p in s.get("latency", [])]
        phases += [(f"{p['msg_rate']:,.0f} msgs/s", p) for p in s.get("points", [])]
        for phase, p in phases:
            if p["check"] != "ok":
                found.append(f"{name} {phase}: {p['check']}; samples {p.get('samples', [])[:2]}")
    return found


def fanout_tables(sessions: list[dict[str, Any]], labels: list[str], clients: list[int]) -> str:
    mine = [s for s in sessions if s["scenario"] == "fanout"]
    lines = []
    for profile in FANOUT_PROFILES:
        lines += [
            f"### Fan-out throughput, {profile.senders} sender(s) x window {profile.window}, "
            "100-character messages: deliveries/s (median, min-max)",
            "",
            "| C | " + " | ".join(labels) + " | wschat ÷ each peer | server µs/delivery | "
            "server CPU % | loadgen CPU % | other CPU % (max) | checks |",
            "|---:|" + "---:|" * len(labels) + "---:|---:|---:|---:|---:|---|",
        ]
        for c in clients:
            cells, us, cpu, gen, other, checks, medians = [], [], [], [], [], [], {}
            for label in labels:
                tps = [
                    s["throughput"][profile.name]
                    for s in mine
                    if s["server"] == label
                    and s["clients"] == c
                    and profile.name in s.get("throughput", {})
                ]
                if not tps:
                    cells.append("-")
                    continue
                rates = [t["deliveries_per_s"] for t in tps]
                medians[label] = _median(rates)
                cells.append(f"{medians[label]:,.0f} ({_rate(min(rates))}-{_rate(max(rates))})")
                us.append(f"{_median([t['server_us_per_delivery'] for t in tps]):.2f}")
                cpu.append(f"{_median([t['server_cpu_pct'] for t in tps]):.0f}")
                gen.append(_gen(tps))
                other.append(f"{max(t['other_cpu_pct'] for t in tps):.0f}")
                checks.append(_checks(tps))
            if not medians:
                continue
            base = medians.get("wschat")
            ratio = " / ".join(
                f"{base / v:.1f}x ({k})" for k, v in medians.items() if k in PEERS and base and v
            )
            lines.append(
                f"| {c:,} | "
                + " | ".join(cells)
                + f" | {ratio or '-'} | {' / '.join(us)} | {' / '.join(cpu)} | {' / '.join(gen)}"
                f" | {' / '.join(other)} | {' / '.join(checks)} |"
            )
        lines.append("")
    lines += [
        "### Fan-out latency: receive - send, ms (median over runs)",
        "",
        "| C | deliveries/s | server | p50 | p90 | p99 (min-max) | p99.9 | max | p99 as read¹ | "
        "server CPU % | loadgen CPU % | checks |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in clients:
        rates = sorted({p["rate"] for s in mine if s["clients"] == c for p in s.get("latency", [])})
        for rate in rates:
            for label in labels:
                ps = [
                    p
                    for s in mine
                    if s["server"] == label and s["clients"] == c
                    for p in s.get("latency", [])
                    if p["rate"] == rate
                ]
                if not ps:
                    swept = [s for s in mine if s["server"] == label and s["clients"] == c]
                    if any(s.get("latency") for s in swept):
                        lines.append(
                            f"| {c:,} | {_rate(rate)} | {label} | saturated below |" + " |" * 8
                        )
                    continue
                flag = " (saturated)" if any(p["saturated"] for p in ps) else ""
                p99 = [p["p99"] for p in ps]
                lines.append(
                    f"| {c:,} | {_rate(rate)} | {label}{flag} | "
                    f"{_median([p['p50'] for p in ps]):.2f} | "
                    f"{_median([p['p90'] for p in ps]):.2f} | "
                    f"{_median(p99):.2f} ({min(p99):.2f}-{max(p99):.2f}) | "
                    f"{_median([p['p99.9'] for p in ps]):.2f} | "
                    f"{_median([p['max'] for p in ps]):.2f} | "
                    f"{_median([p['observed']['p99'] for p in ps]):.2f} | "
                    f"{_median([p['server_cpu_pct'] for p in ps]):.0f} | "
                    f"{_gen(ps)} | {_checks(ps)} |"
                )
    lines += [
        "",
        "¹ The same deliveries timed when the load generator read them (its own queueing "
        "included); latency is the kernel's receive timestamp (SO_TIMESTAMPNS) minus the send "
        f"time. {SAT}: the load generator was above {LOADGEN_SATURATED:.0f} % of its core.",
    ]
    return "\n".join(lines)


def rooms_tables(sessions: list[dict[str, Any]], labels: list[str]) -> str:
    mine = [s for s in sessions if s["scenario"] == "rooms"]
    if not mine:
        return ""
    first = mine[0]
    lines = [
        f"### Rooms: {first['clients']:,} clients in rooms of {first['room_size']}, every "
        f"client sending; highest messages in/s with p99 < {ROOMS_P99_MS:.0f} ms",
        "",
        "| server | max msgs in/s (first over) | deliveries/s there | p50 / p99 ms there | "
        "server CPU % there | server µs per message in (at the lowest rate / there) | "
        "redis CPU % there | loadgen CPU % (max) | RSS KiB/conn idle / after | checks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label in labels:
        runs = [s for s in mine if s["server"] == label]
        if not runs:
            continue
        s = runs[0]
        points = s.get("points", [])
        if not points:
            lines.append(f"| {label} | error: {s.get('error', '?')} |" + " |" * 8)
            continue
        good = [p for p in points if p["ok"]]
        there = max(good, key=lambda p: p["msg_rate"]) if good else None
        low = min(points, key=lambda p: p["msg_rate"])
        over = s.get("first_over_rate")
        redis = f"{there['redis_cpu_pct']:.0f}" if there and "redis_cpu_pct" in there else "-"
        lines.append(
            f"| {label} | {_rate(s.get('max_ok_rate', 0))} ({_rate(over) if over else 'none'}) | "
            + (
                f"{there['achieved_per_s']:,.0f} | {there['p50']:.1f} / {there['p99']:.1f} | "
                f"{there['server_cpu_pct']:.0f} | {low['server_us_per_message']:.0f} / "
                f"{there['server_us_per_message']:.0f} | {redis} | "
                if there
                else f"- | - | - | {low['server_us_per_message']:.0f} / - | - | "
            )
            + f"{max(p['loadgen_cpu_pct'] for p in points):.0f}"
            + (SAT if any(p["loadgen_saturated"] for p in points) else "")
            + f" | {s.get('rss_kib_per_connection_idle', 0):.1f} / "
            f"{s.get('rss_kib_per_connection_after', 0):.1f} | {_checks(points)} |"
        )
    lines += [
        "",
        "Every rate tried, per server (msgs in/s: p99 ms, server µs per message in):",
        "",
    ]
    for label in labels:
        for s in (s for s in mine if s["server"] == label):
            tried = ", ".join(
                f"{_rate(p['msg_rate'])}: {p['p99']:.1f} ms, {p['server_us_per_message']:.0f} µs"
                + ("" if p["ok"] else " (over)")
                for p in sorted(s.get("points", []), key=lambda p: p["msg_rate"])
            )
            lines.append(f"- {label}: {tried}")
    return "\n".join(lines)


def browser_tables(sessions: list[dict[str, Any]], labels: list[str]) -> str:
    mine = [s for s in sessions if s["scenario"] == "browser"]
    if not mine:
        return ""
    lines = [
        f"### Browser profile: {mine[0]['clients']:,} clients offering "
        "`permessage-deflate; client_max_window_bits`, 4 senders x window 16 (median)",
        "",
        "| size | server | negotiated | deliveries/s | server µs/delivery | bytes/delivery | "
        "compressed frames | RSS KiB/conn idle | RSS KiB/conn after | loadgen CPU % | checks |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    sizes = sorted({int(k) for s in mine for k in s.get("sizes", {})})
    for size in sizes:
        for label in labels:
            runs = [s for s in mine if s["server"] == label and str(size) in s.get("sizes", {})]
            if not runs:
                continue
            tps = [s["sizes"][str(size)] for s in runs]
            negotiated = runs[0].get("extensions", {}).get("negotiated", ["?"])
            lines.append(
                f"| {size:,} | {label} | {_negotiated(negotiated)} | "
                f"{_median([t['deliveries_per_s'] for t in tps]):,.0f} | "
                f"{_median([t['server_us_per_delivery'] for t in tps]):.2f} | "
                f"{_median([t['bytes_per_delivery'] for t in tps]):.0f} | "
                f"{100 * _median([t['compressed_share'] for t in tps]):.0f} % | "
                f"{_median([s['rss_kib_per_connection_idle'] for s in runs]):.1f} | "
                f"{_median([t['rss_kib_per_connection_after'] for t in tps]):.1f} | "
                f"{_gen(tps)} | {_checks(tps)} |"
            )
    lines += [
        "",
        "bytes/delivery: WebSocket frames (headers included) received per delivery. "
        "RSS after: after that size's traffic, over the server's RSS before any connection.",
    ]
    return "\n".join(lines)


def _negotiated(reprs: list[str]) -> str:
    if reprs == ["None"]:
        return "none"
    out = []
    for text in reprs:
        if text == "None":
            out.append("none (some)")
            continue
        shared = "server_no_context_takeover=True" in text
        bits = text.split("server_max_window_bits=")[1].split(",")[0]
        out.append(f"deflate, {'no context takeover' if shared else 'context takeover'}, 2^{bits}")
    return "; ".join(out)


def memory_table(results: list[dict[str, Any]]) -> str:
    if not results:
        return ""
    lines = [
        f"### Memory: RSS per idle connection ({results[0]['connections']:,} connections)",
        "",
        "| server | RSS before | RSS after | per connection |",
        "|---|---:|---:|---:|",
    ]
    for m in results:
        lines.append(
            f"| {m['server']} | {m['rss_before_kib'] / 1024:.1f} MiB | "
            f"{m['rss_after_kib'] / 1024:.1f} MiB | {m['kib_per_connection']:.1f} KiB |"
        )
    return "\n".join(lines)


def plot(sessions: list[dict[str, Any]], labels: list[str], clients: list[int], path: Path) -> bool:
    """Latency percentiles against delivery rate, one panel per C; False if nothing to plot."""
    mine = [s for s in sessions if s["scenario"] == "fanout" and s.get("latency")]
    if not mine:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(clients), figsize=(5.5 * len(clients), 4.5), squeeze=False)
    colors = {"wschat": "tab:blue", "picows": "tab:green", "websockets": "tab:red"}
    for ax, c in zip(axes[0], clients, strict=True):
        for label in labels:
            by_rate: dict[float, list[dict[str, Any]]] = {}
            for s in mine:
                if s["server"] == label and s["clients"] == c:
                    for p in s["latency"]:
                        by_rate.setdefault(p["rate"], []).append(p)
            if not by_rate:
                continue
            rates = sorted(by_rate)
            for name, style in (("p50", ":"), ("p99", "-"), ("p99.9", "--")):
                ax.plot(
                    rates,
                    [_median([p[name] for p in by_rate[r]]) for r in rates],
                    style,
                    marker="o",
                    markersize=3,
                    color=colors.get(label),
                    label=f"{label} {name}",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"C = {c:,} clients in one room")
        ax.set_xlabel("delivery rate (deliveries/s)")
        ax.set_ylabel("latency, receive - send (ms)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Broadcast latency percentiles against delivery rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _tp(sessions: list[dict[str, Any]], label: str, c: int, profile: str) -> float:
    return _median(
        [
            s["throughput"][profile]["deliveries_per_s"]
            for s in sessions
            if s["scenario"] == "fanout"
            and s["server"] == label
            and s["clients"] == c
            and profile in s.get("throughput", {})
        ]
    )


def _p99(sessions: list[dict[str, Any]], label: str, c: int, rate: float) -> float:
    return _median(
        [
            p["p99"]
            for s in sessions
            if s["scenario"] == "fanout" and s["server"] == label and s["clients"] == c
            for p in s.get("latency", [])
            if p["rate"] == rate and not p["saturated"]
        ]
    )


def _browser(sessions: list[dict[str, Any]], label: str, size: int, key: str) -> float:
    return _median(
        [
            s["sizes"][str(size)][key]
            for s in sessions
            if s["scenario"] == "browser" and s["server"] == label and str(size) in s["sizes"]
        ]
    )


def targets(sessions: list[dict[str, Any]], memory: list[dict[str, Any]]) -> str:
    """Issue 14's and issue 9's targets, as ratios from this run (skipped when not measured)."""
    rows: list[tuple[str, float, str, bool]] = []

    def add(name: str, value: float, shown: str, met: bool) -> None:
        if value == value:  # not nan: measured
            rows.append((name, value, shown, met))

    for profile in FANOUT_PROFILES:
        r = _tp(sessions, "wschat", 100, profile.name) / _tp(sessions, "picows", 100, profile.name)
        add(f"C = 100 throughput ({profile.name}) ≥ 5x picows", r, f"{r:.1f}x", r >= 5)
    for rate in (50_000, 150_000):
        w, p = _p99(sessions, "wschat", 5000, rate), _p99(sessions, "picows", 5000, rate)
        add(f"C = 5,000 p99 at {_rate(rate)}/s ≤ picows'", w / p, f"{w:.1f} vs {p:.1f} ms", w <= p)
    for m in memory:
        if m["server"] == "wschat":
            kib = m["kib_per_connection"]
            add("≤ 10 KiB RSS per idle connection", kib, f"{kib:.1f} KiB", kib <= 10)
    r = _tp(sessions, "wschat redis", 1000, "4x16") / _tp(sessions, "wschat", 1000, "4x16")
    add("Redis hub ≥ 0.8x the memory hub at C = 1,000", r, f"{r:.2f}x", r >= 0.8)
    on, off = "wschat compression", "wschat no compression"
    for size in (100, 1000):
        r = _browser(sessions, on, size, "rss_kib_per_connection_after") / _browser(
            sessions, off, size, "rss_kib_per_connection_after"
        )
        add(f"compression: RSS after traffic ({size} B) ≤ 1.3x", r, f"{r:.2f}x", r <= 1.3)
        d = _browser(sessions, on, size, "deliveries_per_s")
        r = d / _browser(sessions, off, size, "deliveries_per_s")
        add(f"compression: deliveries/s ({size} B) ≥ 0.7x uncompressed", r, f"{r:.2f}x", r >= 0.7)
        r = d / _browser(sessions, "websockets deflate", size, "deliveries_per_s")
        add(f"compression: deliveries/s ({size} B) ≥ 5x websockets deflate", r, f"{r:.1f}x", r >= 5)
    lost = len(failures(sessions))
    rows.append(("nothing lost, duplicated or reordered", lost, f"{lost} failed", lost == 0))
    lines = ["### Targets (ratios from this run)", "", "| target | this run | |", "|---|---:|---|"]
    lines += [f"| {n} | {shown} | {'met' if met else '**not met**'} |" for n, _, shown, met in rows]
    return "\n".join(lines)
