"""Garbage-collector settings for a process that holds many connections.

CPython's (3.11) cyclic collector stops the whole process while it runs, and
its pause grows with what it walks: a full collection walks every tracked
object, about 43 per open connection, so with 10,000 connections it takes
0.4-0.6 s on a 2-core machine (the rooms benchmark with ``wschat+gcstats``);
a middle collection walks what survived the young collections since the last
one, which after a burst of 10,000 joins was 120-220 ms. In those pauses no
message moves: the rooms benchmark's p99 passed 50 ms at 1,000 messages in per
second with the server's core 45 % busy.

:func:`tune_collector` bounds every automatic pause to a few milliseconds:

- the objects that exist once the server is up (modules, classes, the app)
  are frozen (:func:`gc.freeze`): no collection walks them again;
- the young generation is collected after :data:`YOUNG_THRESHOLD` net
  allocations (CPython: 700), so short-lived objects die before a collection
  sees them, and the middle one after :data:`MIDDLE_THRESHOLD` young
  collections (CPython: 10), so a burst of joins is walked in small steps;
- what survives a middle collection (connections, rooms, history; under load
  also whatever was in flight at that moment) is frozen too, instead of
  waiting in the oldest generation for a full collection. Freezing is O(1),
  and a frozen object is still freed by reference counting the moment
  nothing refers to it: wschat's own connection objects hold no reference
  cycles once closed (a test checks it, on every loop), so they go when they
  close. (On the stock asyncio loop the standard library's transport is a
  cycle of its own, a few objects per closed connection: those wait for the
  sweep. uvloop's are not.)

What a freeze cannot free is a reference cycle that became garbage after it
was frozen (an exception caught with its traceback, a parent and child that
refer to each other, in a hook's objects or a library's). So every
:data:`SWEEP_INTERVAL` seconds :func:`sweep_forever` unfreezes everything and
runs one full collection, the pause CPython's own heuristics would have taken
more often, then freezes again. ``wschat serve`` calls :func:`tune_collector`
once the server listens and runs :func:`sweep_forever`; a program that runs
:meth:`wschat.App.serve` itself may do the same.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
import time
from typing import Any

import anyio

logger = logging.getLogger("wschat.server")

YOUNG_THRESHOLD = 5_000
"""Net allocations between young-generation collections (CPython's default: 700)."""

MIDDLE_THRESHOLD = 2
"""Young collections between middle-generation collections (CPython's default: 10)."""

FULL_AFTER = 100
"""Middle collections before a full collection is considered (CPython's default: 10);
with the survivors frozen, a full collection walks little anyway."""

SWEEP_INTERVAL = 900.0
"""Seconds between the full sweeps that free cycles a freeze kept (on average)."""


def tune_collector() -> None:
    """Freeze what exists now, collect in small steps, freeze what lives long
    (see the module's docstring). Pair it with :func:`sweep_forever`: without
    the sweeps, a cycle that becomes garbage after a freeze is never freed.

    On Python 3.14 and later (an incremental collector, without the middle
    generation these settings are for) only the start-up heap is frozen.
    """
    gc.collect()  # what start-up left as garbage goes first, not into the frozen set
    gc.freeze()
    if sys.version_info >= (3, 14):
        return
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, FULL_AFTER)
    if _freeze_survivors not in gc.callbacks:
        gc.callbacks.append(_freeze_survivors)


def sweep() -> int:
    """Unfreeze everything, run a full collection, freeze again; the number of
    unreachable objects it found (cycles a freeze had kept)."""
    began = time.perf_counter()
    gc.unfreeze()
    try:
        found = gc.collect()
    finally:
        # (The hook freezes after the collection too; this covers a sweep
        # without tune_collector, and a collect that returned early.)
        gc.freeze()
    logger.info(
        "gc sweep: %d unreachable objects freed in %.0f ms (%d objects frozen)",
        found,
        (time.perf_counter() - began) * 1e3,
        gc.get_freeze_count(),
    )
    return found


async def sweep_forever(interval: float = SWEEP_INTERVAL) -> None:
    """:func:`sweep` about every ``interval`` seconds; runs until cancelled.

    Each wait is drawn from 0.75-1.25 times ``interval``, so that workers
    started together (``--workers``) do not all pause at the same moment.
    """
    while True:
        await anyio.sleep(interval * random.uniform(0.75, 1.25))
        try:
            sweep()
        except Exception:  # never the end of the server
            logger.exception("gc sweep failed")


def _freeze_survivors(phase: str, info: dict[str, Any]) -> None:
    # After a middle (or full) collection the younger generations are empty:
    # what is left survived at least two collections.
    if phase == "stop" and info["generation"] >= 1:
        gc.freeze()
