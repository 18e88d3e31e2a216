#!/usr/bin/env python
"""Check the checker: the load generator against a broadcast server that misdelivers on purpose.

    .venv/bin/python benchmarks/selfcheck.py      # ~15 s; exit 1 if a count is wrong

The server (below, on ``websockets``) is the peer's broadcast with faults for one member,
the "victim" (the last client): by the message's seq, it drops some deliveries, sends some
twice, and holds some back until after the next message. Markers are never touched. The
load generator must report exactly those counts as missing, duplicate and out-of-order,
nothing for the other members, and the same with the C scanner and with the Python path,
in a throughput phase and in a latency phase; a phase with faults must read FAIL.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import servers
from loadgen import LoadGen, merge
from scenarios import check

CLIENTS = 20
MESSAGES = 600
PERIOD = 50  # faults by seq % PERIOD
DROP, DUPLICATE, HOLD = 7, 21, 33


def _fault(seq: int) -> str | None:
    return {DROP: "drop", DUPLICATE: "duplicate", HOLD: "hold"}.get(seq % PERIOD)


def expected_faults(first: int, last: int) -> dict[str, int]:
    """What the victim's check must report for the phase's seqs ``first..last``."""
    faults = [_fault(seq) for seq in range(first, last + 1)]
    held_last = faults[-1] == "hold"  # never released: no later message
    return {
        "missing": faults.count("drop") + held_last,
        "duplicate": faults.count("duplicate"),
        "out_of_order": faults.count("hold") - held_last,
    }


def serve_faulty(port: int, ready: threading.Event) -> None:
    from websockets.asyncio.server import serve

    members: list[Any] = []
    seq = 0
    held: list[str] = []

    async def handler(ws: Any) -> None:
        nonlocal seq
        members.append(ws)
        async for text in ws:
            obj = json.loads(text)
            seq += 1
            event = json.dumps(
                {"type": "message", "room": "bench", "seq": seq, "epoch": "e"}
                | {"username": obj["username"], "message": obj["message"], "time": "t"},
                separators=(",", ":"),
            )
            # one receiver, never the sender (whose window waits for its own messages)
            victim = None
            if len(members) == CLIENTS:
                victim = members[-1] if members[-1] is not ws else members[-2]
            for member in members:
                fault = None if obj["message"].startswith("MARK") else _fault(seq)
                if member is not victim or fault is None:
                    await member.send(event)
                elif fault == "duplicate":
                    await member.send(event)
                    await member.send(event)
                elif fault == "hold":
                    held.append(event)
                    continue
                if member is victim and held and fault != "hold":
                    for late in held:
                        await member.send(late)
                    held.clear()

    async def main() -> None:
        async with serve(handler, "127.0.0.1", port, compression=None):
            ready.set()
            await asyncio.Future()

    asyncio.run(main())


def run(use_native: bool, port: int) -> list[str]:
    problems = []
    gen = LoadGen("127.0.0.1", port, CLIENTS, senders=1, cpu=None, use_native=use_native)
    try:
        gen.connect()
        _BASE["seq"] = gen.join()  # one marker per round: the join took seqs 1..rounds
        for phase in ("throughput", "latency"):
            start_at = time.time_ns() + 100_000_000
            if phase == "throughput":
                answers = gen.call(
                    phase, 60, messages=MESSAGES, window=8, start_at=start_at, timeout=5
                )
            else:
                answers = gen.call(
                    phase, 60, msg_rate=1000, total=MESSAGES, start_at=start_at, warmup=0,
                    timeout=3, grace=0,
                )  # fmt: skip
            result = merge(answers)
            problems += _compare(phase, use_native, result)
    finally:
        gen.stop()
    return problems


_BASE: dict[str, int] = {}


def _compare(phase: str, use_native: bool, result: dict[str, Any]) -> list[str]:
    base = _BASE["seq"]
    want = expected_faults(base + 1, base + MESSAGES)
    _BASE["seq"] = base + MESSAGES
    name = f"{phase} ({'C scanner' if use_native else 'Python path'})"
    got = {k: result[k] for k in want}
    problems = [f"{name}: got {got}, want {want}"] if got != want else []
    if result["unexpected"] or result["malformed"]:
        problems.append(
            f"{name}: unexpected {result['unexpected']}, malformed {result['malformed']}"
        )
    if result["incomplete"] != (1 if want["missing"] else 0):
        problems.append(f"{name}: {result['incomplete']} clients incomplete")
    verdict = check(result, result["missing"])
    if not verdict.startswith("FAIL"):
        problems.append(f"{name}: faults read as {verdict!r}")
    print(f"{name}: {got} -> {verdict}")
    return problems


def main() -> int:
    servers.raise_nofile()
    problems = []
    for use_native in (True, False):
        port = servers.free_port()
        ready = threading.Event()
        threading.Thread(target=serve_faulty, args=(port, ready), daemon=True).start()
        ready.wait(10)
        problems += run(use_native, port)
    for p in problems:
        print("FAIL", p)
    print("selfcheck:", "ok" if not problems else f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
