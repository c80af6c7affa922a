"""Prometheus metrics, one registry per app so several apps (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # the process's resident memory, CPU seconds and open files (process_*), as Prometheus'
        # default registry has them: memory is what to watch (docs/reliability.md)
        ProcessCollector(registry=r)
        self.requests = Counter(
            "qwembed_requests", "HTTP requests by route and status", ["route", "status"], registry=r
        )
        self.errors = Counter("qwembed_errors", "Error responses by code", ["code"], registry=r)
        self.request_seconds = Histogram(
            "qwembed_request_seconds",
            "Whole request latency",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_seconds = Histogram(
            "qwembed_queue_seconds",
            "Time from queueing to the first batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "qwembed_inference_seconds",
            "Forward pass time per batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "qwembed_batch_size", "Inputs per batch", ["model"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "qwembed_batch_tokens", "Real tokens per batch", ["model"], buckets=_TOKEN_BUCKETS, registry=r
        )
        self.padded_tokens = Counter(
            "qwembed_padded_tokens", "Tokens computed including padding", ["model"], registry=r
        )
        self.input_tokens = Counter("qwembed_input_tokens", "Real tokens embedded", ["model"], registry=r)
        self.queue_depth = Gauge("qwembed_queue_depth", "Inputs waiting for a batch", ["model"], registry=r)

    def observer(self, model: str) -> _WorkerObserver:
        return _WorkerObserver(self, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _WorkerObserver:
    """Adapts the engine's BatchObserver callbacks to this model's labelled metrics."""

    def __init__(self, metrics: Metrics, model: str):
        self._queue = metrics.queue_seconds.labels(model)
        self._inference = metrics.inference_seconds.labels(model)
        self._size = metrics.batch_size.labels(model)
        self._tokens = metrics.batch_tokens.labels(model)
        self._padded = metrics.padded_tokens.labels(model)
        self._input = metrics.input_tokens.labels(model)

    def batch_done(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        self._size.observe(rows)
        self._tokens.observe(tokens)
        self._input.inc(tokens)
        self._padded.inc(padded_tokens)
        self._inference.observe(seconds)

    def queue_wait(self, seconds: float) -> None:
        self._queue.observe(seconds)
