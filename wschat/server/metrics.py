"""Prometheus metrics of one server (``/metrics``), on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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


class Metrics:
    """The server's counters, gauges and histograms.

    Args:
        hub_statistics: The Hub's ``statistics`` method.
    """

    def __init__(self, hub_statistics: Callable[[], dict[str, int]]) -> None:
        self.registry = CollectorRegistry()
        self.connections_open = Gauge(
            "wschat_connections_open", "Open WebSocket connections", registry=self.registry
        )
        self.handshakes_rejected = Counter(
            "wschat_handshakes_rejected",
            "Refused HTTP/WebSocket handshakes by reason",
            ["reason"],
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
            "Clients closed with 1013 for a full outbox",
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "wschat_rate_limited_messages",
            "Messages dropped by the per-connection rate limit",
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
        self.registry.register(_HubCollector(hub_statistics))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
