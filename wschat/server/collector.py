"""Garbage-collector settings for a process that holds many connections.

CPython's cyclic collector stops the whole process for a full collection, and
a full collection walks every tracked object: with 10,000 connections that is
over half a million objects, measured at 0.25-0.6 s per collection on a
2-core machine (the rooms benchmark with ``wschat+gcstats``), during which no
message moves. With the default thresholds a server whose connections each
read now and then promotes every pending read's objects into the oldest
generation, and it runs one such collection every half minute or so.

:func:`tune_collector` does what long-running Python servers commonly do:

- the objects that exist once the server is up (modules, classes, the app)
  are frozen (:func:`gc.freeze`): no collection walks them again;
- the young generation is collected after :data:`YOUNG_THRESHOLD` net
  allocations instead of 700, so short-lived objects die before a collection
  sees them and few are promoted;
- a full collection waits for :data:`FULL_AFTER` collections of the middle
  generation instead of 10 (CPython still also waits for the long-lived
  objects to have grown by a quarter).

wschat's own connections hold no reference cycles once closed (a test checks
it), so they are freed at once by reference counting and the rarer full
collections cost memory only for cycles other code makes. ``wschat serve``
calls it once the server listens; a program that runs :meth:`wschat.App.serve`
itself may call it too.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 20_000
"""Net allocations between young-generation collections (CPython's default: 700)."""

MIDDLE_THRESHOLD = 10
"""Young collections between middle-generation collections (the default)."""

FULL_AFTER = 100
"""Middle collections before a full collection is considered (CPython's default: 10)."""


def tune_collector() -> None:
    """Freeze what exists now and space out collections (see the module's docstring)."""
    gc.collect()  # what start-up left as garbage goes first, not into the frozen set
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, FULL_AFTER)
