"""Prometheus metrics of one server (``/metrics``), on a registry of its own.

With ``--workers N``, each worker is a process with its own counters, and a
scrape reaches whichever worker the kernel hands the connection to. So the
workers share their metrics through prometheus-client's multiprocess mode:
``wschat serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory
before it starts them, every worker writes its values there (a memory-mapped
file per process), and the worker that answers a scrape reads and sums them
all. That mode has no custom collectors, so the Hub's counters, read at scrape
time by :class:`_HubCollector` in a single process, are copied into ordinary
metrics by :meth:`Metrics.sync` instead (``wschat serve`` calls it every
second; the answering worker also calls it on scrape). A single process keeps
the in-memory registry and the collector: no file writes on its hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The codes of IANA's WebSocket Close Code Number Registry in the 1000-2999 range
# (RFC 6455 7.4.1; 1012-1014 added later; 1004 is reserved), and the 4xxx codes
# wschat itself sends (4401: authentication failed, 4403: forbidden, 4408: token
# expired). Each
# has its own label value.
REGISTERED_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1005, 1006, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 1015}
)
WSCHAT_CLOSE_CODES = frozenset({4401, 4403, 4408})


def close_code_label(code: int) -> str:
    """The ``code`` label value for a close code: bounded, whatever the peer sends.

    A peer chooses its close code: one series per number would let one client
    create thousands of time series. Registered codes and wschat's own keep their
    number; other codes of libraries and frameworks (3000-3999) count as
    ``3xxx``, other application codes (4000-4999) as ``4xxx``, anything else as
    ``other``.
    """
    if code in REGISTERED_CLOSE_CODES or code in WSCHAT_CLOSE_CODES:
        return str(code)
    if 3000 <= code <= 3999:
        return "3xxx"
    if 4000 <= code <= 4999:
        return "4xxx"
    return "other"


class _HubCollector(Collector):
    """Reads the Hub's plain counters at scrape time: no per-recipient metric cost."""

    def __init__(self, statistics: Callable[[], dict[str, int]]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._statistics()
        yield CounterMetricFamily(
            "wschat_messages_out",
            "Room events handed to local members' outboxes",
            value=stats["deliveries"],
        )
        yield CounterMetricFamily(
            "wschat_broadcasts", "Room events fanned out on this node", value=stats["broadcasts"]
        )
        yield GaugeMetricFamily(
            "wschat_rooms", "Rooms with members on this node", value=stats["rooms"]
        )


def shared_between_processes() -> bool:
    """True when prometheus-client runs in multiprocess mode (``--workers N``).

    prometheus-client decides when it is first imported, from
    ``PROMETHEUS_MULTIPROC_DIR``; this asks it what it decided.
    """
    return prometheus_values.ValueClass is not prometheus_values.MutexValue


class Metrics:
    """The server's counters, gauges and histograms.

    Args:
        hub_statistics: The Hub's ``statistics`` method.
    """

    def __init__(self, hub_statistics: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.shared = shared_between_processes()
        """True when the workers' metrics are combined (see the module docstring)."""
        self._hub_statistics = hub_statistics
        self.connections_open = Gauge(
            "wschat_connections_open",
            "Open WebSocket connections",
            registry=self.registry,
            multiprocess_mode="livesum",  # of the workers alive
        )
        self.handshakes_rejected = Counter(
            "wschat_handshakes_rejected",
            "Refused HTTP/WebSocket handshakes by reason",
            ["reason"],
            registry=self.registry,
        )
        self.handshake_probes = Counter(
            "wschat_handshake_probes",
            "Pages' probes of a failed handshake (X-Wschat-Probe-Origin), by the status answered",
            ["status"],
            registry=self.registry,
        )
        self.messages_in = Counter(
            "wschat_messages_in", "WebSocket messages received", registry=self.registry
        )
        self.bytes_out = Counter(
            "wschat_bytes_out", "Bytes written to WebSocket clients", registry=self.registry
        )
        self.slow_consumer_closes = Counter(
            "wschat_slow_consumer_closes",
            "Clients closed with 1013: more bytes queued for them than --outbox-limit",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "wschat_rate_limited_messages",
            "Messages dropped by the per-connection rate limit",
            registry=self.registry,
        )
        self.address_rate_limited = Counter(
            "wschat_address_rate_limited_messages",
            "Messages dropped by the per-client-address rate limit",
            registry=self.registry,
        )
        self.close_codes = Counter(
            "wschat_close_codes",
            "Closed WebSocket connections by close code",
            ["code"],
            registry=self.registry,
        )
        self.fanout_seconds = Histogram(
            "wschat_broadcast_fanout_seconds",
            "Time to hand one room event to every local member",
            buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5),
            registry=self.registry,
        )
        if self.shared:
            self._hub_counters = (
                Counter(
                    "wschat_messages_out",
                    "Room events handed to local members' outboxes",
                    registry=self.registry,
                ),
                Counter(
                    "wschat_broadcasts",
                    "Room events fanned out on this node",
                    registry=self.registry,
                ),
            )
            self._hub_rooms = Gauge(
                "wschat_rooms",
                "Rooms with members on this node (summed over workers)",
                registry=self.registry,
                multiprocess_mode="livesum",
            )
            self._synced = {"deliveries": 0, "broadcasts": 0}
        else:
            self.registry.register(_HubCollector(hub_statistics))

    def count_close(self, code: int) -> None:
        """Count one closed connection under its (bucketed) close code."""
        self.close_codes.labels(close_code_label(code)).inc()

    def sync(self) -> None:
        """Copy the Hub's counters into the shared metrics (a no-op in one process)."""
        if not self.shared:
            return
        stats = self._hub_statistics()
        for counter, key in zip(self._hub_counters, ("deliveries", "broadcasts"), strict=True):
            delta = stats[key] - self._synced[key]
            if delta > 0:
                counter.inc(delta)
                self._synced[key] = stats[key]
        self._hub_rooms.set(stats["rooms"])

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (every worker's, when shared)."""
        if not self.shared:
            return generate_latest(self.registry)
        self.sync()
        combined = CollectorRegistry()
        MultiProcessCollector(combined)  # type: ignore[no-untyped-call, unused-ignore]
        return generate_latest(combined)
