"""Keepalive, write timeouts and close timeouts for every connection, from one task.

One task that looks at every connection a few times a second costs far less
than a pinger and a timer per connection (gorilla's chat runs a ticker per
connection). It sees only :class:`~.peer.Peer` objects and their
:class:`Timers`, a slice of them per tick, so that no tick stalls the event
loop; and each connection's ping clock starts at a random point of the
interval, so that connections opened together are not all pinged together.

- Keepalive: a ping every ``ping_interval``; a client silent (not even a pong)
  for ``pong_wait`` is closed with 1011.
- Write timeout: a client whose backlog made no progress (the kernel took no
  bytes) for ``write_timeout`` is dropped (gorilla's writeWait). A slow but
  steady reader is left to the byte limit.
- Close timeout: a client that has not answered our close frame within
  ``close_timeout`` stops being read (its socket's read side is shut down),
  and the pump drops it. Checked on every tick, from one queue in deadline
  order, so that no connection needs a timer of its own.
- The app's deadlines: a connection that owes its first-message ``auth``
  past the handshake timeout is closed with 4401, one whose token expired
  (and no fresh one came) with 4408.

A check that fails costs only its own connection.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    from .peer import Closings, Peer

logger = logging.getLogger("wschat.server")

# The connections are checked in this many slices per sweep, one slice a tick.
SLICES = 10


class Timers:
    """One connection's clocks: its keepalive, which the watchdog reads, and its close timeout.

    The read path sets :attr:`last_seen` on every read, the watchdog pings
    when :attr:`last_ping` is ``ping_interval`` old, and
    :meth:`~.peer.Peer.close` sets :attr:`closing_deadline`.

    Args:
        now: When the connection opened (the event loop's clock).
        ping_interval: Seconds between pings: the first comes at a random
            point of the first interval, so that clients that connected
            together (after a restart) are not all pinged in one tick.
    """

    __slots__ = ("closing_deadline", "last_ping", "last_seen")

    def __init__(self, now: float, ping_interval: float = 0.0) -> None:
        self.last_seen = now
        """When the client last sent anything (a pong included)."""
        self.last_ping = now - random.random() * ping_interval
        """When it was last pinged."""
        self.closing_deadline: float | None = None
        """When its close timeout ends, once the server started closing."""


class Watchdog:
    """Checks every open connection's keepalive and write progress.

    Args:
        peers: The live connections (read on every tick).
        ping_interval: Seconds between pings.
        pong_wait: Seconds of client silence before closing with 1011.
        write_timeout: Seconds without write progress before dropping a client.
        closings: The close timeouts to enforce (None: none).
    """

    def __init__(
        self,
        peers: Callable[[], Collection[Peer]],
        ping_interval: float,
        pong_wait: float,
        write_timeout: float,
        closings: Closings | None = None,
    ) -> None:
        self._peers = peers
        self._closings = closings
        self.ping_interval = ping_interval
        self.pong_wait = pong_wait
        self.write_timeout = write_timeout
        # Each connection is checked once a second with the defaults (20 s pings,
        # a 10 s write timeout): finer only costs CPU (at 10,000 connections a
        # check every 0.5 s was 5 % of a core).
        self.sweep = min(2.0, ping_interval, pong_wait, write_timeout) / 2
        """Seconds in which every connection is checked once."""
        self.tick = self.sweep / SLICES
        self._round: list[Peer] = []
        self._next = 0

    async def run(self) -> None:
        """Check a slice of the connections each tick; runs until cancelled."""
        while True:
            await anyio.sleep(self.tick)
            now = anyio.current_time()
            if self._closings:
                self._closings.expire(now, self._peers())
            self.check_slice(now)

    def check_slice(self, now: float) -> None:
        """Check the next 1/SLICES of the connections.

        A pass over 10,000 connections at once takes milliseconds, enough to
        show in every message's latency at that moment; in slices the same
        work is spread over the sweep.
        """
        if self._next >= len(self._round):
            self._round, self._next = list(self._peers()), 0
        count = -(-len(self._round) // SLICES)  # ceil
        batch = self._round[self._next : self._next + count]
        self._next += count
        self._check(batch, now)

    def _check(self, peers: list[Peer], now: float) -> None:
        wall = time.time()
        for peer in peers:
            if peer.writer.aborted:
                continue  # gone since the round began
            try:
                self.check(peer, now, wall)
            except Exception as exc:
                peer.abort(f"watchdog check failed: {exc!r}")

    def check(self, peer: Peer, now: float, wall: float) -> None:
        """Keepalive, the app's deadlines (token expiry) and write progress of one connection.

        Args:
            peer: The connection.
            now: The event loop's clock.
            wall: ``time.time()`` (token expiry is wall-clock time).
        """
        if peer.open and peer.app_session is not None:
            due = peer.app_session.overdue(wall)
            if due is not None:
                logger.info("= conn %s: %s", peer.conn_id, due.reason)
                peer.close(due.code, due.reason)
        if peer.open:
            timers = peer.timers
            if now - timers.last_seen >= self.pong_wait:
                logger.info("%% conn %s keepalive timeout", peer.conn_id)
                peer.close(1011, "keepalive timeout: no pong")
            elif now - timers.last_ping >= self.ping_interval:
                peer.conn.send_ping(int(time.time() * 1000).to_bytes(8, "big"))
                peer.flush()
                timers.last_ping = now
        if peer.writer.stalled_for(now) >= self.write_timeout:
            # The kernel took nothing for the whole write timeout: the client is
            # gone or not reading.
            peer.abort(f"write timeout: no progress for {self.write_timeout:g}s")
