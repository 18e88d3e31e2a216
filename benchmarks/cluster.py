#!/usr/bin/env python
"""Cross-node benchmark: N wschat nodes on one Redis and on a Redis Cluster, beside memory.

    .venv/bin/python benchmarks/cluster.py                 # 3 runs, 3 nodes
    .venv/bin/python benchmarks/cluster.py --runs 1 --clients 150

Deployments, all in the same run (the order rotates from run to run):

- ``memory``: one node on ``memory://``, the single-node reference;
- ``redis``: N nodes on one redis-server;
- ``cluster``: N nodes on a three-master Redis Cluster (``tests/redis_cluster.py``).

Scenarios: ``one-room`` (C clients spread round-robin over the nodes, one sender
per node) and ``many-rooms`` (rooms of K members, each room's members spread
over the nodes, one sender per room). Phases, per scenario:

- latency: a fixed publish rate for a few seconds; every delivery's latency is
  its receipt time minus the send time carried in the message, split into
  cross-node deliveries (sender on another node) and same-node ones;
- throughput: each sender keeps W of its own messages in flight (an ack is its
  message coming back) until it sent M; deliveries/s = deliveries / (last
  receipt - first send).

CPU per phase: the wschat nodes' (from /proc) and Redis's (``INFO cpu``, summed
over the masters), per published message and per delivery. Then, on Redis and
the Cluster: Redis CPU per published message with 1, 4 and 16 nodes subscribed
to the room (the fan-out part of a publish), and the presence heartbeat's cost
(Redis CPU per room visit). The machine may be shared: each
figure is the median of the runs (min-max beside it), and the CPU that other
processes used during each phase is recorded.

The clients (``cluster_clients.py``) are raw sockets (asyncio protocols, uvloop)
in this process. Writes ``results/cluster-<time>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import redis  # noqa: E402
import servers  # noqa: E402
from cluster_clients import Client, Clients, connect_all, settle, warm_up  # noqa: E402
from scenarios import percentiles  # noqa: E402
from wire import MESSAGE_SIZE  # noqa: E402

from tests.helpers import RedisProcess  # noqa: E402
from tests.redis_cluster import RedisClusterProcess  # noqa: E402

RESULTS = HERE / "results"
DEPLOYMENTS = ("memory", "redis", "cluster")


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# -- deployments and measurement --------------------------------------------------


@contextmanager
def deployment(kind: str, nodes: int, log_dir: Path) -> Iterator[dict[str, Any]]:
    """wschat nodes on ``kind``; yields their ports and pids and the Redis ports."""
    with ExitStack() as stack:
        redis_ports: list[int] = []
        if kind == "redis":
            process = stack.enter_context(RedisProcess())
            url, redis_ports = process.url, [process.port]
        elif kind == "cluster":
            cluster = RedisClusterProcess()
            stack.callback(cluster.stop)
            cluster.start()
            url, redis_ports = cluster.url, [node.port for node in cluster.nodes]
        else:
            url, nodes = "memory://", 1
        options = servers.Options(hub_url=url)
        procs = []
        for _ in range(nodes):
            # servers.start: the run's snapshot of wschat/, --rate 0, compression off,
            # per-address limits off (one load generator, one address), unpinned
            procs.append(servers.start("wschat", None, log_dir, options=options))
            stack.callback(procs[-1].stop)
        yield {
            "url": url,
            "ports": [proc.port for proc in procs],
            "pids": [proc.pid for proc in procs],
            "redis": redis_ports,
        }


def redis_cpu(ports: list[int]) -> float:
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as client:
            info = client.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


class Meter:
    """CPU seconds of the nodes, Redis and everything else, across one phase."""

    def __init__(self, setup: dict[str, Any]) -> None:
        self.setup = setup
        self.started = time.monotonic()
        self.nodes = sum(servers.cpu_seconds(pid) for pid in setup["pids"])
        self.redis = redis_cpu(setup["redis"])
        self.ours = servers.cpu_seconds(os.getpid())
        self.busy = servers.system_cpu()["busy"]

    def read(self) -> dict[str, float]:
        wall = time.monotonic() - self.started
        nodes = sum(servers.cpu_seconds(pid) for pid in self.setup["pids"]) - self.nodes
        redis_s = redis_cpu(self.setup["redis"]) - self.redis
        ours = servers.cpu_seconds(os.getpid()) - self.ours
        busy = servers.system_cpu()["busy"] - self.busy
        other = max(0.0, busy - nodes - redis_s - ours)
        return {
            "wall": wall,
            "nodes_cpu": nodes,
            "redis_cpu": redis_s,
            "other_cpu_pct": 100 * other / wall,
        }


def summarize(
    clients: Clients, published: int, meter: dict[str, float], first_send: int
) -> dict[str, Any]:
    span = max(1, clients.last_receipt - first_send) / 1e9
    return {
        "published": published,
        "deliveries": clients.deliveries,
        "deliveries_per_s": clients.deliveries / span,
        "latency_ms": percentiles(clients.latencies),
        "cross_node_ms": percentiles(clients.cross),
        "node_us_per_delivery": 1e6 * meter["nodes_cpu"] / max(1, clients.deliveries),
        "redis_us_per_publish": 1e6 * meter["redis_cpu"] / max(1, published),
        **meter,
    }


async def latency_phase(
    clients: Clients,
    senders: list[Client],
    rate: float,
    duration: float,
    setup: dict[str, Any],
    per_message: int,
) -> dict[str, Any]:
    clients.reset()
    meter = Meter(setup)
    first = time.time_ns()
    total = int(rate * duration)
    rotation = itertools.cycle(senders)
    start = time.monotonic()
    for k in range(total):
        delay = start + k / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next(rotation).say(k)
    await settle(clients, senders, total * per_message, timeout=10)
    return summarize(clients, total, meter.read(), first)


async def throughput_phase(
    clients: Clients,
    senders: list[Client],
    messages: int,
    window: int,
    setup: dict[str, Any],
    per_message: int,
) -> dict[str, Any]:
    clients.reset()
    meter = Meter(setup)
    first = time.time_ns()
    for sender in senders:
        sender.sent = sender.acked = 0
        sender.quota, sender.window = messages, window
        sender.pump()
    await settle(clients, senders, messages * len(senders) * per_message, timeout=60)
    for sender in senders:
        sender.quota = 0
    return summarize(clients, messages * len(senders), meter.read(), first)


async def scenario(name: str, setup: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    ports = setup["ports"]
    if name == "one-room":
        plan = [(i % len(ports), ports[i % len(ports)], "bench") for i in range(args.clients)]
        sender_ids = list(range(min(len(ports), 3))) if len(ports) > 1 else [0, 1, 2]
        per_message = args.clients
    else:
        rooms = args.clients // args.room_size
        plan = []
        for i in range(rooms * args.room_size):
            room, member = divmod(i, args.room_size)
            node = (room + member) % len(ports)
            plan.append((node, ports[node], f"room{room}"))
        sender_ids = [room * args.room_size for room in range(rooms)]
        per_message = args.room_size
    clients = Clients()
    rss0 = sum(servers.rss_kib(pid) for pid in setup["pids"])
    await connect_all(clients, plan)
    by_index = sorted(clients.all, key=lambda c: int(c.username[1:]))
    senders = [by_index[i] for i in sender_ids]
    for sender in senders:
        sender.sender = True
    await warm_up(clients, senders)
    rss1 = sum(servers.rss_kib(pid) for pid in setup["pids"])
    rate = args.rate if name == "one-room" else args.rooms_rate
    record = {
        "clients": len(clients.all),
        "senders": len(senders),
        "kib_per_connection": (rss1 - rss0) / len(clients.all),
        "latency": await latency_phase(clients, senders, rate, args.duration, setup, per_message),
    }
    await asyncio.sleep(0.3)
    messages = max(20, args.deliveries // (len(senders) * per_message))
    record["throughput"] = await throughput_phase(
        clients, senders, messages, args.window, setup, per_message
    )
    for client in clients.all:
        if client.transport is not None:
            client.transport.abort()
    return record


async def beat_cost(url: str, ports: list[int], rooms: int) -> float:
    """Redis CPU microseconds per presence heartbeat of one room (one node, one connection)."""
    import anyio

    from wschat.hub.redis import RedisBackend

    backend = RedisBackend(url)
    async with anyio.create_task_group() as group:
        await backend.start(lambda room, delivery: None, group)
        names = [f"beat{n}" for n in range(rooms)]
        for n, room in enumerate(names):
            await backend.presence_join(room, f"c{n}", "someone")
        before = redis_cpu(ports)
        for _ in range(3):
            await backend._presence.visit(names)  # what every heartbeat does
        spent = redis_cpu(ports) - before
        await backend.aclose()
        group.cancel_scope.cancel()
    return 1e6 * spent / (3 * rooms)


async def fanout_cost(url: str, ports: list[int], subscribers: int, messages: int) -> float:
    """Redis CPU microseconds per published message with ``subscribers`` nodes subscribed."""
    import anyio

    from wschat.hub import ChatMessage
    from wschat.hub.redis import RedisBackend

    received = [0]

    def count(room: str, delivery: Any) -> None:
        received[0] += 1

    backends = [RedisBackend(url) for _ in range(subscribers + 1)]
    async with anyio.create_task_group() as group:
        for backend in backends:
            await backend.start(count, group)
        for backend in backends[1:]:
            await backend.subscribe("fan")
        before = redis_cpu(ports)
        text = "x" * MESSAGE_SIZE
        for n in range(messages):
            await backends[0].publish(
                "fan", ChatMessage("u", text, "2026-01-01T00:00:00Z", f"m{n}")
            )
        with anyio.fail_after(30):
            while received[0] < messages * subscribers:
                await anyio.sleep(0.01)
        spent = redis_cpu(ports) - before
        for backend in backends:
            await backend.aclose()
        group.cancel_scope.cancel()
    return 1e6 * spent / messages


async def one_run(run: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    records = []
    kinds = list(DEPLOYMENTS[run % 3 :] + DEPLOYMENTS[: run % 3])
    for kind in kinds:
        nodes = 1 if kind == "memory" else args.nodes
        with deployment(kind, nodes, RESULTS / "logs") as setup:
            for name in ("one-room", "many-rooms"):
                servers.wait_quiet([*setup["pids"], os.getpid()], patience=10)
                record = {"run": run, "deployment": kind, "nodes": nodes, "scenario": name}
                record |= await scenario(name, setup, args)
                lat, tp = record["latency"], record["throughput"]
                log(
                    f"run {run + 1} {kind:8s} {name:10s} p50 {lat['latency_ms']['p50']:.2f} "
                    f"p99 {lat['latency_ms']['p99']:.2f} ms (cross p99 "
                    f"{lat['cross_node_ms']['p99']:.2f}), "
                    f"{tp['deliveries_per_s']:,.0f} deliveries/s, "
                    f"redis {tp['redis_us_per_publish']:.1f} us/publish, "
                    f"nodes {tp['node_us_per_delivery']:.1f} us/delivery"
                )
                records.append(record)
            if kind != "memory":
                records += [
                    {
                        "run": run,
                        "deployment": kind,
                        "scenario": "fanout",
                        "subscribers": subscribers,
                        "redis_us_per_publish": await fanout_cost(
                            setup["url"], setup["redis"], subscribers, 2000
                        ),
                    }
                    for subscribers in (1, 4, 16)
                ]
                records.append(
                    {
                        "run": run,
                        "deployment": kind,
                        "scenario": "beat",
                        "redis_us_per_room_beat": await beat_cost(
                            setup["url"], setup["redis"], args.beat_rooms
                        ),
                    }
                )
    return records


def median_range(values: list[float]) -> str:
    return f"{statistics.median(values):,.2f} ({min(values):,.2f}-{max(values):,.2f})"


def table(records: list[dict[str, Any]]) -> str:
    rows = [
        "| deployment | scenario | p50 ms | p99 ms | cross-node p99 ms | deliveries/s "
        "| node µs/delivery | Redis µs/publish | KiB/conn |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind in DEPLOYMENTS:
        for name in ("one-room", "many-rooms"):
            group = [r for r in records if r["deployment"] == kind and r["scenario"] == name]
            if not group:
                continue
            lat = [r["latency"] for r in group]
            tp = [r["throughput"] for r in group]
            cross = [x["cross_node_ms"]["p99"] for x in lat if x["cross_node_ms"]["n"]]
            redis_us = [x["redis_us_per_publish"] for x in tp]
            rows.append(
                f"| {kind} x{group[0]['nodes']} | {name} "
                f"| {median_range([x['latency_ms']['p50'] for x in lat])} "
                f"| {median_range([x['latency_ms']['p99'] for x in lat])} "
                f"| {median_range(cross) if cross else '-'} "
                f"| {median_range([x['deliveries_per_s'] for x in tp])} "
                f"| {median_range([x['node_us_per_delivery'] for x in tp])} "
                f"| {median_range(redis_us) if kind != 'memory' else '-'} "
                f"| {median_range([r['kib_per_connection'] for r in group])} |"
            )
    for kind in ("redis", "cluster"):
        for subscribers in (1, 4, 16):
            fan = [
                r["redis_us_per_publish"]
                for r in records
                if r["deployment"] == kind
                and r["scenario"] == "fanout"
                and r["subscribers"] == subscribers
            ]
            if fan:
                rows.append(
                    f"\nRedis µs per publish (with an id) to {subscribers} subscribed nodes "
                    f"({kind}): {median_range(fan)}"
                )
        beats = [
            r["redis_us_per_room_beat"]
            for r in records
            if r["deployment"] == kind and r["scenario"] == "beat"
        ]
        if beats:
            rows.append(
                f"\nRedis µs per presence heartbeat of a room ({kind}): {median_range(beats)}"
            )
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=3, help="wschat nodes on Redis")
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--room-size", type=int, default=10, help="members per room (many-rooms)")
    parser.add_argument("--rate", type=float, default=100, help="one-room messages/s (latency)")
    parser.add_argument(
        "--rooms-rate", type=float, default=300, help="many-rooms messages/s in all (latency)"
    )
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of latency phase")
    parser.add_argument("--deliveries", type=int, default=150_000, help="throughput phase size")
    parser.add_argument("--window", type=int, default=8, help="messages in flight per sender")
    parser.add_argument("--beat-rooms", type=int, default=2000)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers.raise_nofile()
    RESULTS.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    records: list[dict[str, Any]] = []
    source = servers.describe("wschat")  # what the nodes run: the tree as it is now
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    for run in range(args.runs):
        records += runner(one_run(run, args))
    result = {
        "machine": servers.machine(),
        "source": source,
        "args": vars(args),
        "records": records,
    }
    (RESULTS / f"cluster-{stamp}.json").write_text(json.dumps(result, indent=1))
    header = f"{json.dumps(result['machine'])}\n\nwschat: {json.dumps(source)}"
    text = f"# cluster benchmark {stamp}\n\n{header}\n\n{table(records)}\n"
    (RESULTS / f"cluster-{stamp}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
