"""Prometheus metrics of one server process, on a registry of its own.

The registry also carries the process (`process_*`: RSS, CPU, open fds) and platform
(`python_info`) collectors, and two info metrics: `streamscribe_build_info{version}` and,
once a model is loaded, `streamscribe_model_info{name,device,compute_type}`.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST as CONTENT_TYPE_LATEST,  # the Content-Type that render()'s body has
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def package_version() -> str:
    """The installed streamscribe version, or "unknown" when run from an uninstalled tree."""
    try:
        return importlib.metadata.version("streamscribe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class Metrics:
    def __init__(self, version: str | None = None) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Info("streamscribe_build", "The running streamscribe", registry=r)
        self.build_info.info({"version": version or package_version()})
        # A gauge, not an Info: it has no sample at all until a model is loaded.
        self.model_info = Gauge(
            "streamscribe_model_info",
            "1 for the loaded model and where it runs",
            ["name", "device", "compute_type"],
            registry=r,
        )
        self.sessions_active = Gauge(
            "streamscribe_sessions_active", "Open transcription sessions", registry=r
        )
        self.sessions_total = Counter("streamscribe_sessions", "Sessions accepted", registry=r)
        self.refused_total = Counter(
            "streamscribe_sessions_refused",
            "Sessions refused, by reason",
            ["reason"],
            registry=r,
        )
        self.closes_total = Counter(
            "streamscribe_session_closes", "Session ends by close code", ["code"], registry=r
        )
        self.audio_seconds_total = Counter(
            "streamscribe_audio_seconds", "Seconds of audio received", registry=r
        )
        self.queue_depth = Gauge(
            "streamscribe_queue_depth", "Transcription requests waiting", registry=r
        )
        self.queue_wait = Histogram(
            "streamscribe_queue_wait_seconds",
            "Time a request waited in the queue",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            "streamscribe_batch_size",
            "Requests per engine call",
            ["kind"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "streamscribe_inference_seconds",
            "Engine time per batch",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.result_latency = Histogram(
            "streamscribe_result_latency_seconds",
            "From the end of an utterance's audio (or interim request) to its result",
            ["kind"],
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.interims_dropped = Counter(
            "streamscribe_interims_dropped",
            "Interim results not sent because the client was not reading",
            registry=r,
        )
        self.errors_total = Counter(
            "streamscribe_errors", "Error messages sent, by code", ["code"], registry=r
        )
        self.hydration_bytes = Gauge(
            "streamscribe_hydration_bytes", "Model bytes hydrated from the bucket", registry=r
        )
        self.hydration_bytes_expected = Gauge(
            "streamscribe_hydration_bytes_expected", "Model bytes to hydrate", registry=r
        )
        self.ready = Gauge("streamscribe_ready", "1 when sessions are accepted", registry=r)

    def set_model_info(self, name: str, device: str, compute_type: str) -> None:
        """Publish the loaded model as streamscribe_model_info (replaces the previous one)."""
        self.model_info.clear()
        self.model_info.labels(name, device, compute_type).set(1)

    def observe_batch(self, size: int, seconds: float, kind: str, waits_s: Sequence[float]) -> None:
        """One engine call of `kind` (final, interim or file) and its requests' queue waits."""
        self.batch_size.labels(kind).observe(size)
        self.inference_seconds.labels(kind).observe(seconds)
        for wait in waits_s:
            self.queue_wait.labels(kind).observe(wait)

    def render(self, refresh: Callable[[], None] | None = None) -> bytes:
        if refresh is not None:
            refresh()
        return generate_latest(self.registry)
