"""Prometheus metrics of the hub, served at ``GET /metrics``.

One registry per :class:`HubMetrics`, so tests and several hubs in one
process do not share counters.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class HubMetrics:
    """The counters, gauges and histograms the hub keeps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.uploads = Counter(
            "farmeye_hub_uploads", "Uploads by outcome.", ["outcome"], registry=r
        )
        self.upload_bytes = Counter(
            "farmeye_hub_upload_bytes", "Bytes of accepted photos.", registry=r
        )
        self.frame_errors = Counter(
            "farmeye_hub_frame_errors",
            "Error frames sent to devices, by code.",
            ["code"],
            registry=r,
        )
        self.ack_seconds = Histogram(
            "farmeye_hub_ack_seconds",
            "Time from a full upload frame to its ack.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.triage_seconds = Histogram(
            "farmeye_hub_triage_seconds",
            "Time from a full upload frame to its triage verdict.",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.commit_batch = Histogram(
            "farmeye_hub_commit_batch_captures",
            "Captures written per group commit.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        self.devices_connected = Gauge(
            "farmeye_hub_devices_connected", "Authenticated device links.", registry=r
        )
        self.connections = Gauge(
            "farmeye_hub_connections", "Open TCP connections on ingest.", registry=r
        )
        self.stream_clients = Gauge(
            "farmeye_hub_stream_clients", "Open WebSocket event streams.", registry=r
        )
        self.events_relayed = Counter(
            "farmeye_hub_events_relayed", "Events heard on Redis.", registry=r
        )
        self.dispatched = Counter(
            "farmeye_hub_dispatched",
            "Analysis tasks sent, by path.",
            ["path"],
            registry=r,
        )
        self.dispatch_deferred = Counter(
            "farmeye_hub_dispatch_deferred",
            "Captures left pending for later dispatch, by reason.",
            ["reason"],
            registry=r,
        )
        self.alerts = Counter(
            "farmeye_hub_alerts", "Alerts raised, by label.", ["label"], registry=r
        )
        self.disk_free_bytes = Gauge(
            "farmeye_hub_disk_free_bytes",
            "Bytes free on the disk of the photo store.",
            registry=r,
        )
        self.photos_deleted = Counter(
            "farmeye_hub_photos_deleted",
            "Photos deleted by retention.",
            registry=r,
        )

    def render(self) -> bytes:
        """The text exposition format of every metric."""
        return generate_latest(self.registry)
