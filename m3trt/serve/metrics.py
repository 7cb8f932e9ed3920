"""Prometheus metrics of the server (``GET /metrics``), in a registry of its own per app.

Labels are bounded: the endpoint is the route kind, never the raw path, and the model label is
one of the served names (anything else is ``-``), so hostile URLs cannot grow the registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Request counts, request latency and batch size histograms, queue depth."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "m3trt_requests",
            "HTTP requests by endpoint, model and status code.",
            ["endpoint", "model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "m3trt_request_latency_seconds",
            "Time from request start to response end.",
            ["endpoint", "model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "m3trt_batch_size",
            "Images per engine call (dynamic batching).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_latency = Histogram(
            "m3trt_batch_latency_seconds",
            "Engine time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue = Gauge(
            "m3trt_queue_images",
            "Images waiting for the engine.",
            ["model"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "m3trt_rejected",
            "Requests refused because the queue was full.",
            ["model"],
            registry=self.registry,
        )

    def observe_request(self, endpoint: str, model: str, code: int, seconds: float) -> None:
        self.requests.labels(endpoint, model, str(code)).inc()
        self.latency.labels(endpoint, model).observe(seconds)

    def observe_batch(self, model: str, rows: int, seconds: float) -> None:
        self.batch_size.labels(model).observe(rows)
        self.batch_latency.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
