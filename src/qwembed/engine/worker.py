"""The batching worker: one thread per model that merges queued requests into token-budget batches.

Requests put their tokenised inputs on a bounded queue and await a future. The worker drains the
queue in windows, in arrival order, and answers a request when all its inputs are done; a request
whose client went away is cancelled and its inputs are skipped. A batch that raises is split by
request and retried once, so one poisonous input fails only its own request.

How a window is cut depends on whether the model pays for padding:

* A padding-free model (``padded_batches=False``, the packed BERT and Qwen3 forwards) costs the
  same whatever the lengths in a batch, so a window is exactly one full batch — up to the token
  budget and ``max_batch_size`` inputs — and may end inside a request, whose remaining inputs
  lead the next window. Under 8 clients posting 32 short texts, cutting only between requests
  left a 32-input tail batch after most full ones (47 batches for 4,000 texts instead of 32) and
  ran 15–35 % slower (docs/benchmarks.md).
* A padded model pays ``rows × longest``: a window takes whole requests, about one token budget,
  sorted by length and cut into batches, so short inputs do not pay for long ones' padding.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..backends import TokenIds
from .batching import plan_batches
from .memory import release_free_memory

#: under continuous load, hand freed memory back at most this often (it costs a few milliseconds)
MEMORY_RELEASE_BUSY_SECONDS = 5.0

log = logging.getLogger("qwembed.worker")

RunBatch = Callable[[Sequence[TokenIds]], np.ndarray]


class OverloadedError(RuntimeError):
    """The queue is full: the caller should answer 429 and let the client retry."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after


class WorkerStoppedError(RuntimeError):
    """The worker is shutting down and takes no new work."""


class BatchObserver(Protocol):
    """Receives what the worker does, e.g. to export Prometheus metrics (kept out of the engine)."""

    def batch_done(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...


class _NullObserver:
    def batch_done(self, rows: int, tokens: int, padded_tokens: int, seconds: float) -> None:
        pass

    def queue_wait(self, seconds: float) -> None:
        pass


@dataclass
class _Job:
    """One request's inputs and where their results go."""

    items: list[TokenIds]
    future: Future = field(default_factory=Future)
    submitted: float = field(default_factory=time.perf_counter)
    results: list[np.ndarray | None] = field(init=False)
    remaining: int = field(init=False)
    started: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.remaining = len(self.items)

    @property
    def done(self) -> bool:
        return self.future.done()


class BatchWorker:
    def __init__(
        self,
        run_batch: RunBatch,
        *,
        name: str = "model",
        max_batch_tokens: int = 16384,
        max_batch_size: int = 128,
        max_queue_items: int = 16384,
        max_queue_wait: float | None = None,
        min_rate_sample_tokens: int = 2048,
        window_items: int | None = None,
        window_tokens: int | None = None,
        padded_batches: bool = True,
        observer: BatchObserver | None = None,
    ):
        self._run_batch = run_batch
        self.name = name
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_queue_items = max_queue_items
        self.max_queue_wait = max_queue_wait
        self.min_rate_sample_tokens = min_rate_sample_tokens
        # a padding-free model's window is one batch; a padded one sorts a few batches' worth
        self.window_items = window_items or (max_batch_size * 8 if padded_batches else max_batch_size)
        self.window_tokens = window_tokens or max_batch_tokens
        self.padded_batches = padded_batches
        self.observer = observer or _NullObserver()
        self._pending: deque[tuple[_Job, int]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        # Admission by time, not only by count: tokens accepted but not yet embedded, divided by
        # the measured tokens/s, estimates how long a new request would wait.
        self._backlog_tokens = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=32)  # (tokens, seconds) of recent batches

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> BatchWorker:
        """Start the thread; a stopped worker can be started again (an app's lifespan may repeat)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return self
            self._stopping = False
            self._thread = threading.Thread(
                target=self._loop, name=f"qwembed-worker-{self.name}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def tokens_per_second(self) -> float | None:
        """Throughput over the recent batches, once they add up to a fair sample. Tiny batches (the
        warm-up, a lone short request) are latency-bound and would make the server look slow, so
        until enough tokens have been seen no time-based refusal happens."""
        tokens = sum(t for t, _ in self._recent)
        seconds = sum(s for _, s in self._recent)
        if tokens < self.min_rate_sample_tokens or seconds <= 0:
            return None
        return tokens / seconds

    def estimated_wait(self, extra_tokens: int = 0) -> float:
        """Seconds until ``extra_tokens`` more would be embedded, at the throughput measured so far."""
        rate = self.tokens_per_second
        return 0.0 if rate is None else (self._backlog_tokens + extra_tokens) / rate

    def _settle(self, tokens: int) -> None:
        with self._cond:
            self._backlog_tokens -= tokens

    # ---- submitting ---------------------------------------------------------------------
    def submit(self, items: Sequence[TokenIds]) -> Future:
        """Queue one request's inputs; the future resolves to a ``(len(items), …)`` array."""
        job = _Job(list(items))
        if not job.items:
            job.future.set_result(np.zeros((0, 0), dtype=np.float32))
            return job.future
        with self._cond:
            if self._stopping:
                raise WorkerStoppedError("the server is shutting down")
            if len(self._pending) + len(job.items) > self.max_queue_items:
                raise OverloadedError(
                    f"the queue of {self.name!r} is full ({len(self._pending)} inputs waiting); retry shortly"
                )
            tokens = sum(map(len, job.items))
            wait = self.estimated_wait(tokens)
            if self._backlog_tokens and self.max_queue_wait is not None and wait > self.max_queue_wait:
                raise OverloadedError(
                    f"{self.name!r} is busy: about {wait:.1f} s of work is queued (limit "
                    f"{self.max_queue_wait:g} s); retry shortly",
                    retry_after=wait,
                )
            self._backlog_tokens += tokens
            self._pending.extend((job, i) for i in range(len(job.items)))
            self._cond.notify()
        return job.future

    async def run(self, items: Sequence[TokenIds]) -> np.ndarray:
        """Submit and await; cancelling the awaiting task drops the request's queued inputs."""
        future = self.submit(items)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def run_sync(self, items: Sequence[TokenIds]) -> np.ndarray:
        return self.submit(items).result()

    # ---- the worker thread ----------------------------------------------------------------
    def _take_window(self) -> list[tuple[_Job, int]] | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if not self._pending:
                return None  # stopping and drained
            window, tokens = [], 0
            while self._pending and len(window) < self.window_items:
                job, index = self._pending[0]
                length = len(job.items[index])
                if window and self._window_full(tokens, length, starts_request=index == 0):
                    break
                self._pending.popleft()
                if job.done:  # cancelled (client gone) or already failed
                    self._backlog_tokens -= length
                else:
                    window.append((job, index))
                    tokens += length
            return window

    def _window_full(self, tokens: int, next_length: int, *, starts_request: bool) -> bool:
        if not self.padded_batches:
            return tokens + next_length > self.window_tokens  # one full batch, wherever it cuts
        return starts_request and tokens >= self.window_tokens  # whole requests, about one budget

    def _loop(self) -> None:
        last_release, dirty = time.monotonic(), False
        while True:
            # about to go idle after work, or busy for a while: give freed memory back
            if dirty and (not self._pending or time.monotonic() - last_release > MEMORY_RELEASE_BUSY_SECONDS):
                release_free_memory()
                last_release, dirty = time.monotonic(), False
            window = self._take_window()
            if window is None:
                return
            self._process(window)
            dirty = True

    def _process(self, window: list[tuple[_Job, int]]) -> None:
        now = time.perf_counter()
        for job, _ in window:
            if not job.started:
                job.started = True
                self.observer.queue_wait(now - job.submitted)
        lengths = [len(job.items[index]) for job, index in window]
        plan = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size, padded=self.padded_batches)
        for batch in plan:
            self._run([window[i] for i in batch])

    def _run(self, entries: list[tuple[_Job, int]], retry: bool = True) -> None:
        live = [(job, index) for job, index in entries if not job.done]
        self._settle(sum(len(job.items[index]) for job, index in entries if job.done))
        if not live:
            return
        inputs = [job.items[index] for job, index in live]
        tokens = sum(map(len, inputs))
        started = time.perf_counter()
        try:
            vectors = self._run_batch(inputs)
        except Exception as error:
            self._handle_failure(live, error, retry)
            return
        seconds = time.perf_counter() - started
        self._recent.append((tokens, seconds))
        self._settle(tokens)
        longest = max(len(ids) for ids in inputs)
        self.observer.batch_done(len(inputs), tokens, longest * len(inputs), seconds)
        for (job, index), vector in zip(live, vectors, strict=True):
            self._deliver(job, index, vector)

    def _handle_failure(self, entries: list[tuple[_Job, int]], error: Exception, retry: bool) -> None:
        jobs = {id(job): job for job, _ in entries}
        if retry and len(jobs) > 1:
            log.warning("batch of %d inputs failed (%s); retrying request by request", len(entries), error)
            for key in jobs:
                self._run([entry for entry in entries if id(entry[0]) == key], retry=False)
            return
        log.error("inference failed for %d input(s): %r", len(entries), error)
        self._settle(sum(len(job.items[index]) for job, index in entries))
        for job in jobs.values():
            if not job.done:
                job.future.set_exception(error)

    @staticmethod
    def _deliver(job: _Job, index: int, vector: np.ndarray) -> None:
        if job.done:
            return
        job.results[index] = vector
        job.remaining -= 1
        if job.remaining == 0:
            job.future.set_result(np.stack(job.results))  # type: ignore[arg-type]
