#!/usr/bin/env python
"""EXPERIMENTS, not the shipped server: wschat with one change patched in, for measurement.

    python benchmarks/experiments/wschat_variants.py VARIANT serve --port N --rate 0 ...

run.py, memory.py and pyspy_profile.py start these as the server ``wschat+VARIANT``
(or ``wschat@REV+VARIANT``), from the same source snapshot as plain ``wschat``.

``duck``
    The fast write path (server-wide flusher writing straight into the transport,
    commit 92b9503) is chosen by ``_asyncio_transport(stream)``, which requires
    ``isinstance(transport, asyncio.WriteTransport)``. uvloop's TCPTransport is
    not a subclass of it, so under uvloop, which ``wschat serve`` uses when it is
    installed, every connection falls back to a writer task. This variant accepts
    any transport that has ``write``, ``is_closing``, ``get_write_buffer_size``
    and ``abort``: the proposed one-line fix, measured before anyone edits wschat/.

``batches``
    Counts what each flusher batch carried (frames written at once, frames queued,
    writes; on the Redis hub, commands per pipeline too) and prints the totals to
    the server's log every second: how well fan-outs batch under a load.

``gcstats``
    Times every garbage collection (gc.callbacks) and prints, every second, how many
    of each generation ran and the longest pause, and each pause over 5 ms with its
    time and generation: does the collector stall the loop?

``queued``
    The flusher never writes a frame at once (direct mode off for good): every
    fan-out queues, then one pass writes each connection. Is direct mode worth it
    for big rooms at low rates?

``trace``
    tracemalloc from start-up; SIGUSR1 takes a baseline snapshot, SIGUSR2 writes
    the allocations that grew since, by file and by line, to $WSCHAT_TRACE_FILE
    (see memory_breakdown.py).
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from typing import Any

from wschat import cli
from wschat.server import server as server_module

_TRANSPORT_METHODS = ("write", "is_closing", "get_write_buffer_size", "abort")


def _duck_transport(stream: Any) -> Any:
    transport = getattr(stream, "_transport", None)  # anyio's asyncio SocketStream only
    if transport is not None and all(hasattr(transport, m) for m in _TRANSPORT_METHODS):
        return transport
    return None


def _install_duck() -> None:
    if not hasattr(server_module, "_asyncio_transport"):
        raise SystemExit("variant 'duck' needs a wschat with the flusher (commit 92b9503 or later)")
    server_module._asyncio_transport = _duck_transport


def _install_tracing(path: str) -> None:
    tracemalloc.start(12)
    baseline: list[tracemalloc.Snapshot] = []

    def mark(_signum: int, _frame: object) -> None:
        baseline[:] = [tracemalloc.take_snapshot()]

    def dump(_signum: int, _frame: object) -> None:
        snapshot = tracemalloc.take_snapshot()
        lines = []
        for key in ("filename", "lineno"):
            stats = snapshot.compare_to(baseline[0], key)
            total = sum(s.size_diff for s in stats)
            lines.append(f"== by {key}: total {total} bytes traced")
            lines += [f"{s.size_diff} {s.count_diff} {s.traceback[0]}" for s in stats[:60]]
        lines.append("== by traceback (outermost first, 12 frames at most)")
        for stat in snapshot.compare_to(baseline[0], "traceback")[:25]:
            where = (f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in stat.traceback)
            frames = " -> ".join(where)
            lines.append(f"{stat.size_diff} {stat.count_diff} {frames}")
        partial = path + ".part"
        with open(partial, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(partial, path)  # whole or not at all: the reader polls for it

    signal.signal(signal.SIGUSR1, mark)
    signal.signal(signal.SIGUSR2, dump)


def _install_batch_counts() -> None:

    from wschat.server import flusher as flusher_module

    counts = {"batches": 0, "direct": 0, "queued": 0, "writes": 0}
    original = flusher_module.Flusher.flush

    def flush(self: Any) -> None:
        if self._dirty or self.written_at_once:
            counts["batches"] += 1
            counts["direct"] += len(self.written_at_once)
            counts["writes"] += len(self.written_at_once)
        original(self)

    from wschat.server import writer as writer_module

    write_now = writer_module.TransportWriter.write_now

    def counted_write_now(self: Any) -> int:
        if self._chunks:
            counts["queued"] += len(self._chunks)
            counts["writes"] += 1
        return write_now(self)

    writer_module.TransportWriter.write_now = counted_write_now  # type: ignore[method-assign]
    flusher_module.Flusher.flush = flush  # type: ignore[method-assign]

    from wschat.hub.redis import pipeline as pipeline_module

    send = pipeline_module.Pipelines._send

    async def counted_send(self: Any, shard: Any, batch: list[Any]) -> None:
        counts["pipelines"] = counts.get("pipelines", 0) + 1
        counts["commands"] = counts.get("commands", 0) + len(batch)
        await send(self, shard, batch)

    pipeline_module.Pipelines._send = counted_send  # type: ignore[method-assign]

    def line() -> str:
        c = dict(counts)
        frames = c["direct"] + c["queued"]
        return (
            f"batches: {c['batches']} batches, {frames} frames, {c['writes']} writes "
            f"({frames / max(c['writes'], 1):.2f} frames/write, "
            f"{c['direct'] / max(frames, 1):.0%} written at once)"
            + (
                f"; redis: {c['pipelines']} pipelines, {c['commands']} commands"
                f" ({c['commands'] / c['pipelines']:.1f} per pipeline)"
                if c.get("pipelines")
                else ""
            )
        )

    _print_every_second(line)


def _install_queued() -> None:
    from wschat.server import flusher as flusher_module

    class QueuedFlusher(flusher_module.Flusher):
        @property  # type: ignore[override]
        def direct(self) -> bool:
            return False

        @direct.setter
        def direct(self, value: bool) -> None:
            pass

    flusher_module.Flusher = QueuedFlusher  # type: ignore[misc]
    server_module.Flusher = QueuedFlusher  # type: ignore[attr-defined]


def _install_gc_stats() -> None:
    import gc
    import time

    started: list[float] = [0.0]
    runs = [0, 0, 0]
    longest = [0.0, 0.0, 0.0]
    total = [0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        generation = info["generation"]
        pause = time.perf_counter() - started[0]
        runs[generation] += 1
        longest[generation] = max(longest[generation], pause)
        total[0] += pause
        if generation == 2 or pause > 0.005:
            print(
                f"gc: {time.strftime('%H:%M:%S')} generation {generation} "
                f"{pause * 1e3:.1f} ms, {info['collected']} collected",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(timed)

    def census(_signum: int, _frame: object) -> None:
        # SIGUSR1: the objects each generation holds, and the commonest types.
        from collections import Counter

        sizes = [len(gc.get_objects(generation)) for generation in range(3)]
        kinds = Counter(type(o).__name__ for g in (1, 2) for o in gc.get_objects(g))
        print(
            f"gc: census {time.strftime('%H:%M:%S')} generations {sizes}; "
            f"frozen {gc.get_freeze_count()}; top {kinds.most_common(25)}",
            file=sys.stderr,
            flush=True,
        )

    def leaked(_signum: int, _frame: object) -> None:
        # SIGUSR2: unfreeze and collect everything: cyclic garbage a freeze kept.
        frozen = gc.get_freeze_count()
        from collections import Counter

        gc.unfreeze()
        gc.set_debug(gc.DEBUG_SAVEALL)
        began = time.perf_counter()
        found = gc.collect()
        took = (time.perf_counter() - began) * 1e3
        kinds = Counter(type(o).__name__ for o in gc.garbage)
        samples = [repr(o)[:150] for o in gc.garbage if not isinstance(o, (dict, tuple, list))]
        gc.garbage.clear()
        gc.set_debug(0)
        print(
            f"gc: leak check {time.strftime('%H:%M:%S')}: {frozen} were frozen, "
            f"{found} unreachable found in {took:.0f} ms: {kinds.most_common(20)} {samples[:12]}",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGUSR1, census)
    signal.signal(signal.SIGUSR2, leaked)

    _print_every_second(
        lambda: (
            f"gc: runs {runs} longest ms {[round(x * 1e3, 1) for x in longest]} "
            f"total ms {total[0] * 1e3:.0f}"
        )
    )


def _print_every_second(line: Any) -> None:
    """Print ``line()`` to stderr (the server's log) every second, from a thread."""
    import threading
    import time

    def report() -> None:
        while True:
            time.sleep(1)
            print(line(), file=sys.stderr, flush=True)

    threading.Thread(target=report, daemon=True).start()


def main() -> int:
    variant, argv = sys.argv[1], sys.argv[2:]
    if variant == "duck":
        _install_duck()
    elif variant == "batches":
        _install_batch_counts()
    elif variant == "gcstats":
        _install_gc_stats()
    elif variant == "queued":
        _install_queued()
    elif variant == "trace":
        _install_tracing(os.environ.get("WSCHAT_TRACE_FILE", "tracemalloc.txt"))
    else:
        raise SystemExit(f"unknown variant {variant!r}: duck, batches, gcstats, queued or trace")
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
