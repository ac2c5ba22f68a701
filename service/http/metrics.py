"""Prometheus metrics of one app, in a registry of its own (several apps in one process never collide).

Names follow Prometheus conventions (`_seconds`, `_total`). Route labels are route templates,
never raw paths, so a scanner probing random URLs cannot blow up the label cardinality.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from service.batching import MicroBatcher
from service.model import Model

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every collector the service exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_duration = Histogram(
            "cxr_http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "cxr_http_requests_in_flight",
            "Requests being served now, probes and /metrics excluded (scale replicas on this).",
            registry=self.registry,
        )
        self.rejected = Counter(
            "cxr_rejected_requests_total",
            "Requests answered with an error, by stable error code.",
            ["code"],
            registry=self.registry,
        )
        self.inference_duration = Histogram(
            "cxr_inference_duration_seconds",
            "Duration of one ONNX Runtime call (one batch).",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "cxr_batch_size", "Requests served by one inference call.", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "cxr_queue_depth", "Requests waiting for inference.", registry=self.registry
        )
        self.native_stderr_lines = Counter(
            "cxr_native_stderr_lines",
            "Lines a C library (GDCM, a codec) wrote to stderr, relayed into the JSON log as warnings.",
            registry=self.registry,
        )
        self.ready = Gauge("cxr_ready", "1 when /ready says 200, else 0.", registry=self.registry)
        self.model = Info("cxr_model", "The served model and where it runs.", registry=self.registry)

    def watch(self, batcher: MicroBatcher, model: Model) -> None:
        """Follow a started service: batch sizes and durations, its queue, and its model's identity."""
        batcher.on_batch = self.observe_batch
        self.queue_depth.set_function(lambda: batcher.queue_depth)
        self.model.info(
            {
                "name": model.contract.model_name,
                "version": model.contract.model_version,
                "sha256": model.sha256,
                "preprocessing_id": model.contract.preprocessing_id,
                "execution_provider": model.execution_provider,
            }
        )

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration.observe(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float, error_code: str | None) -> None:
        self.request_duration.labels(method, route, str(status)).observe(seconds)
        if error_code is not None:
            self.rejected.labels(error_code).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
