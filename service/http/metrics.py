"""Prometheus metrics of one app, in a registry of its own (several apps in one process never collide).

Names follow Prometheus conventions (`_seconds`, `_total`). Route labels are route templates,
never raw paths, so a scanner probing random URLs cannot blow up the label cardinality.

Under `python -m service --workers N` prometheus_client runs in multiprocess mode (the parent sets
PROMETHEUS_MULTIPROC_DIR): every worker writes its values to that folder and /metrics, whichever
worker answers, adds them up. That mode has no function gauges and no Info metric, so the
readiness and queue gauges are sampled on every request and every scrape, and the model's identity
is a gauge with labels (`cxr_model_info`, value 1). Under `CXR_INFERENCE=shared` the inference
process writes the batch, inference and queue metrics to the same folder, and the frontends the
HTTP ones; the supervisor marks a dead process's live gauges dead (`mark_process_dead`).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from service.batching import MicroBatcher
from service.model import Model, ModelFacts

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every collector the service exports."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        self.is_ready: Callable[[], bool] = lambda: False
        self.queued: Callable[[], int] = lambda: 0
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
            multiprocess_mode="livesum",
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
            "cxr_queue_depth", "Requests waiting for inference.", registry=self.registry, multiprocess_mode="livesum"
        )
        self.ready = Gauge(
            "cxr_ready", "1 when /ready says 200, else 0 (with several workers: how many are ready).",
            registry=self.registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.model = Gauge(
            "cxr_model_info",
            "The served model and where it runs (value 1).",
            ["name", "version", "sha256", "preprocessing_id", "execution_provider"],
            registry=self.registry,
            multiprocess_mode="max",
        )
        self.native_stderr_lines = Counter(
            "cxr_native_stderr_lines",
            "Lines a C library (GDCM, a codec) wrote to stderr, relayed into the JSON log as warnings.",
            registry=self.registry,
        )

    def watch(self, batcher: MicroBatcher, model: Model | ModelFacts) -> None:
        """Follow a started service: batch sizes and durations, its queue, and its model's identity."""
        batcher.on_batch = self.observe_batch
        self.queued = lambda: batcher.queue_depth
        self.identify(model)

    def identify(self, model: Model | ModelFacts) -> None:
        """Name the served model (a frontend of the shared inference process has only this of the model)."""
        contract = model.contract
        self.model.labels(
            contract.model_name, contract.model_version, model.sha256, contract.preprocessing_id, model.execution_provider
        ).set(1)

    def sample(self) -> None:
        """Read the readiness and queue gauges now (multiprocess mode has no gauges that read themselves)."""
        self.ready.set(float(self.is_ready()))
        self.queue_depth.set(self.queued())

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration.observe(seconds)

    def observe_request(self, method: str, route: str, status: int, seconds: float, error_code: str | None) -> None:
        self.request_duration.labels(method, route, str(status)).observe(seconds)
        self.sample()
        if error_code is not None:
            self.rejected.labels(error_code).inc()

    def render(self) -> bytes:
        """The exposition text: this app's registry, or every worker's values added up."""
        self.sample()
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged)
