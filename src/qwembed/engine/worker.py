"""The batching worker: a model's threads that merge queued requests into token-budget batches.

Requests put their tokenised inputs on a bounded queue and await a future. The worker drains the
queue in windows, in arrival order, and answers a request when all its inputs are done. Library
calls on a served model (the knowledge base's ingestion: ``submit(..., bulk=True)``) queue in a
lane of their own, taken when no request waits: a request that arrives during an ingestion of
1,395 chunks waits for the window running, not 13 s for the whole ingestion. A server's
request is admitted before it is tokenised (``admit``, then ``hold`` as its parts are tokenised),
so that one the queue cannot take is refused at once rather than after its tokenisation. On a CPU
it runs two windows at once, one per stream (``streams.py``), so that the event loop and the
tokeniser taking a core stalls one forward pass, not both halves of one. A request
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

A window taken while the other streams are idle, leaving nothing queued — a lone request, the
common case of a lightly loaded server — runs on every stream's threads, and the other streams
wait until it ends (beside it they would oversubscribe the cores). On one stream's share of 2
cores, a lone request of 32 texts took 1.5–1.9× as long (docs/benchmarks.md). It first waits a
moment for requests arriving with it and takes them in: a few clients' requests then run
together on every core, where before they ran on one stream's threads while the other stream
waited for a full batch (all-MiniLM-L6-v2, 2 clients × 32 texts: 3.6–4.0× → 5.1–5.7× the
throughput of sentence-transformers; 4 × 8: 2.6–2.8× → 3.6–4.0×). A window too small to gain
from every core (``Streams.every_core_tokens``) keeps one stream's threads; so do windows under
load, where a stream always finds work queued or another stream running.

Streams that find more than one window queued, but less than one each, share it equally (``_share``):
idle ones start at once, and one still running a full window takes its share as soon as it is
free. A full window there left the rest queued behind it, one core idle for a whole window:
all-MiniLM-L6-v2 under 6 clients × 32 texts ran 838–890 texts/s against ~1,000 at 4 or 8 clients,
and 946–1,030 with the queue shared; a burst of 8 × 32 instructed queries on the Qwen3-0.6B shape
ended with one stream alone until busy streams shared too (bench/bench_burst_end.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ..backends import TokenIds
from .batching import plan_batches
from .memory import release_free_memory
from .streams import Streams

#: hand freed memory back once a stream has had nothing to do for this long, and under continuous
#: load at most this often: each release makes the next batches fault their pages in again, and
#: releasing whenever the queue ran empty (every window under a closed loop of clients) cost a
#: second of kernel time per 4,000 texts and 0.81 → 0.63× the sorted corpus's throughput
MEMORY_RELEASE_IDLE_SECONDS = 0.25
MEMORY_RELEASE_BUSY_SECONDS = 5.0

#: a window that could run on every core first waits this share of its own expected time (at most
#: the maximum below) for more requests, and takes them in: requests arriving together from idle
#: (Qwen3-0.6B shape, 8 clients × 32 texts) were sometimes taken one alone, holding both cores
#: while the rest waited (0.69× the throughput). A lone request pays at most this share of its
#: time for the wait; a short window (all-MiniLM-L6-v2, 32 texts: ~35 ms) waits little and can
#: delay a burst little.
EVERY_CORE_WAIT_SHARE = 0.02
EVERY_CORE_WAIT_MAX_SECONDS = 0.005

#: a stream that finds between one and a window per stream queued while other streams run takes
#: an equal share of it, not a full window (``BatchWorker._share``); False for comparison
SHARE_WITH_BUSY_STREAMS = True

#: while another stream runs, an idle stream starts once this share of a full window is queued
#: (``_worth_starting``). Waiting for a whole window left its core idle for the round trip of the
#: requests it had just answered: under 8 clients × 32 texts over HTTP (all-MiniLM-L6-v2, AMX
#: Xeon) half a window served 3.35–3.67× sentence-transformers (median 3.48, six runs) against
#: 3.08–3.61× (median 3.37, nine runs) for a whole one; a quarter 3.27–3.30× (docs/benchmarks.md)
START_BESIDE_A_RUNNING_STREAM = 0.5

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
class _Window:
    """Inputs a stream takes to run, as (request, input index)."""

    entries: list[tuple[_Job, int]]
    #: taken with the other streams idle and nothing left queued: it runs on every core
    alone: bool = False
    #: a share of a queue divided among the streams (``BatchWorker._share``)
    share: bool = False


@dataclass(eq=False)
class Admission:
    """Queue room a worker holds for a request while it is tokenised (``BatchWorker.admit``): its
    inputs count against ``max_queue_items``, and its tokens so far (``BatchWorker.hold``) against
    ``max_queue_wait``, for every request that comes meanwhile."""

    items: int
    tokens: int = 0
    #: came with nothing queued or being tokenised: admitted whatever its size, like a lone request
    first: bool = False
    #: False once submitted, refused or given up; its room is then released
    open: bool = True


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


class _Queue:
    """Queued inputs in two lanes, each in arrival order: requests', then bulk work's (library
    calls). Requests go first, so a long library call delays them by a window at most; bulk work
    waits while requests keep the model busy, as background work should."""

    def __init__(self) -> None:
        self.requests: deque[tuple[_Job, int]] = deque()
        self.bulk: deque[tuple[_Job, int]] = deque()
        #: tokens in the bulk lane: work that a request does not wait for
        self.bulk_tokens = 0

    def __len__(self) -> int:
        return len(self.requests) + len(self.bulk)

    def __bool__(self) -> bool:
        return bool(self.requests or self.bulk)

    def add(self, job: _Job, bulk: bool, tokens: int) -> None:
        (self.bulk if bulk else self.requests).extend((job, i) for i in range(len(job.items)))
        if bulk:
            self.bulk_tokens += tokens

    def first(self) -> tuple[_Job, int]:
        return self.requests[0] if self.requests else self.bulk[0]

    def take_first(self) -> tuple[_Job, int]:
        if self.requests:
            return self.requests.popleft()
        job, index = self.bulk.popleft()
        self.bulk_tokens -= len(job.items[index])
        return job, index


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
        streams: Streams | None = None,
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
        self.streams = streams or Streams()
        self.observer = observer or _NullObserver()
        self._pending = _Queue()
        self._pending_tokens = 0
        self._running = 0  # streams inside a window
        self._alone = False  # a window runs on every core: the other streams wait for it
        self._gathering = False  # a stream waits for requests to take with its window
        self._handing_off = False  # a stream took its share of the queue: the next starts on the rest
        self._running_shares = 0  # streams inside a window that was a share
        self._cond = threading.Condition()
        self._results = threading.Lock()  # a request's inputs may finish in two streams at once
        self._stopping = False
        self._threads: list[threading.Thread] = []
        # Admission by time, not only by count: tokens accepted but not yet embedded, divided by
        # the measured tokens/s, estimates how long a new request would wait.
        self._backlog_tokens = 0
        self._recent: deque[tuple[int, float]] = deque(maxlen=32)  # (tokens, seconds) of recent batches
        # Requests admitted but still being tokenised (``admit``): their inputs, and tokens so far.
        self._reserved_items = 0
        self._reserved_tokens = 0

    # ---- lifecycle ----------------------------------------------------------------------
    def start(self) -> BatchWorker:
        """Start the threads; a stopped worker can be started again (an app's lifespan may repeat)."""
        with self._cond:
            if any(thread.is_alive() for thread in self._threads):
                return self
            self._stopping = False
            self._threads = [
                threading.Thread(target=self._loop, name=f"qwembed-worker-{self.name}-{i}", daemon=True)
                for i in range(self.streams.count)
            ]
            for thread in self._threads:
                thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @property
    def tokens_per_second(self) -> float | None:
        """Throughput over the recent batches, once they add up to a fair sample. Tiny batches (the
        warm-up, a lone short request) are latency-bound and would make the server look slow, so
        until enough tokens have been seen no time-based refusal happens."""
        tokens, seconds = self._measured()
        if tokens < self.min_rate_sample_tokens or seconds <= 0:
            return None
        return self.streams.count * tokens / seconds  # the streams' batches overlap in time

    def _measured(self) -> tuple[int, float]:
        """Tokens, and seconds in one stream's time, of the recent batches."""
        recent = list(self._recent)  # (a copy: the streams append as they finish)
        return sum(t for t, _ in recent), sum(s for _, s in recent)

    def estimated_wait(self, extra_tokens: int = 0, bulk: bool = False) -> float:
        """Seconds until ``extra_tokens`` more would be embedded, at the throughput measured so far,
        behind the work queued and the tokens of admitted requests still being tokenised (for a
        request, not the bulk work still queued, which it goes before)."""
        rate = self.tokens_per_second
        return 0.0 if rate is None else (self._tokens_ahead(bulk) + extra_tokens) / rate

    def _tokens_ahead(self, bulk: bool) -> int:
        """Tokens that new work of the lane would wait for: queued, running or being tokenised."""
        ahead = self._backlog_tokens + self._reserved_tokens
        return ahead if bulk else ahead - self._pending.bulk_tokens

    def _settle(self, tokens: int) -> None:
        with self._cond:
            self._backlog_tokens -= tokens

    # ---- submitting ---------------------------------------------------------------------
    def admit(self, items: int) -> Admission:
        """Hold queue room for a request of ``items`` inputs before it is tokenised, or refuse it at
        once (``OverloadedError``): when the queue, with the requests being tokenised, has no room
        for that many inputs, or already holds more than ``max_queue_wait`` of work. Tokenising a
        large request takes seconds, and refusing it only then let a burst of them tokenise side by
        side, each to be refused: 32 requests of 2,048 texts of ~360 tokens to a tiny Qwen3 on 2
        cores got their 429s 4.9-29.9 s after sending, the server's memory 3.6× its size at rest;
        admitted first, 0.5-2.6 s (reading the bodies) and 1.5×. ``hold`` counts its tokens as
        they come; ``submit`` queues it; ``release`` gives up."""
        with self._cond:
            self._check_admission(items, 0)
            admission = Admission(
                items, first=not self._tokens_ahead(bulk=False) and not self._reserved_items
            )
            self._reserved_items += items
            return admission

    def hold(self, admission: Admission, tokens: int) -> None:
        """Count ``tokens`` more of an admitted request's inputs, tokenised so far. Once the work
        queued and being tokenised would wait longer than ``max_queue_wait``, the request is
        refused (``OverloadedError``) and its room released, unless it came first (``Admission``):
        it then stops tokenising there, not at the end."""
        with self._cond:
            if not admission.open:
                raise OverloadedError(f"the request to {self.name!r} is no longer admitted")
            admission.tokens += tokens
            self._reserved_tokens += tokens
            if admission.first or self.max_queue_wait is None:
                return
            wait = self.estimated_wait()
            if wait > self.max_queue_wait:
                self._release(admission)
                raise self._busy(wait)

    def release(self, admission: Admission) -> None:
        """Give up an admitted request's room (its tokenisation failed, or its client left); a
        request already submitted or refused has none left, and this does nothing."""
        with self._cond:
            self._release(admission)

    @contextlib.contextmanager
    def admitted(self, items: int) -> Iterator[Admission]:
        """``admit``, and ``release`` at the end whatever happens (after ``submit``, a no-op)."""
        admission = self.admit(items)
        try:
            yield admission
        finally:
            self.release(admission)

    def _release(self, admission: Admission) -> None:
        if admission.open:
            admission.open = False
            self._reserved_items -= admission.items
            self._reserved_tokens -= admission.tokens

    def _check_admission(self, items: int, tokens: int, bulk: bool = False) -> None:
        """Refuse ``items`` inputs of ``tokens`` tokens that the queue cannot take: the lane's
        inputs ahead of them (a request's: other requests' only) past ``max_queue_items``, or their
        wait past ``max_queue_wait``. Work arriving at an empty queue is taken whatever its size.
        Called holding the lock."""
        if self._stopping:
            raise WorkerStoppedError("the server is shutting down")
        queued = len(self._pending) if bulk else len(self._pending.requests)
        waiting = queued + self._reserved_items
        if waiting + items > self.max_queue_items:
            raise OverloadedError(
                f"the queue of {self.name!r} is full ({waiting} input{'' if waiting == 1 else 's'} waiting); "
                "retry shortly"
            )
        wait = self.estimated_wait(tokens, bulk)
        if self._tokens_ahead(bulk) and self.max_queue_wait is not None and wait > self.max_queue_wait:
            raise self._busy(wait)

    def _busy(self, wait: float) -> OverloadedError:
        return OverloadedError(
            f"{self.name!r} is busy: about {wait:.1f} s of work is queued (limit "
            f"{self.max_queue_wait:g} s); retry shortly",
            retry_after=wait,
        )

    def submit(
        self, items: Sequence[TokenIds], admission: Admission | None = None, *, bulk: bool = False
    ) -> Future:
        """Queue one request's inputs; the future resolves to a ``(len(items), …)`` array. With an
        ``admission`` (``admit``) the request was admitted already: its room becomes its queue
        entries, and it is not refused now. ``bulk``: library work, queued behind every request
        (``_Queue``)."""
        job = _Job(list(items))
        tokens = sum(map(len, job.items))
        with self._cond:
            if admission is not None:
                if not admission.open:
                    raise OverloadedError(f"the request to {self.name!r} is no longer admitted")
                self._release(admission)
            if not job.items:
                job.future.set_result(np.zeros((0, 0), dtype=np.float32))
                return job.future
            if admission is None:
                self._check_admission(len(job.items), tokens, bulk)
            elif self._stopping:
                raise WorkerStoppedError("the server is shutting down")
            self._backlog_tokens += tokens
            self._pending_tokens += tokens
            self._pending.add(job, bulk, tokens)
            # every stream: an idle one may start, and one gathering a window takes it in
            self._cond.notify_all()
        return job.future

    async def run(self, items: Sequence[TokenIds], admission: Admission | None = None) -> np.ndarray:
        """Submit and await; cancelling the awaiting task drops the request's queued inputs."""
        future = self.submit(items, admission)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()
            raise

    def run_sync(self, items: Sequence[TokenIds], *, bulk: bool = False) -> np.ndarray:
        return self.submit(items, bulk=bulk).result()

    # ---- the worker thread ----------------------------------------------------------------
    def _take_window(self, idle_timeout: float | None = None) -> _Window | None:
        """The next window; None once stopping and drained, an empty one after ``idle_timeout``
        seconds with nothing to start (or when everything taken had been cancelled)."""
        with self._cond:
            if not self._cond.wait_for(self._worth_starting, idle_timeout):
                return _Window([])
            if not self._pending:
                return None  # stopping and drained
            self._running += 1
            self._handing_off = False
            if self._has_the_cores(self._pending_tokens) and not self._queue_fills(1):
                self._gather()
            max_tokens, max_items, share = self._share()
            window, tokens = self._fill(max_tokens, max_items)
            if not window:  # (every input taken had been cancelled, so the queue is empty too)
                self._running -= 1
                return _Window([])
            self._running_shares += share
            self._alone = self._has_the_cores(tokens) and not self._pending
            if self._pending:
                self._cond.notify()  # more waits: another stream may start on it
            return _Window(window, self._alone, share)

    def _fill(self, max_tokens: int, max_items: int) -> tuple[list[tuple[_Job, int]], int]:
        """A window of queued inputs, in arrival order, up to ``max_tokens`` and ``max_items`` (the
        cut as ``_window_full`` says); returns it and its tokens. Called holding the lock."""
        window: list[tuple[_Job, int]] = []
        tokens = 0
        while self._pending and len(window) < max_items:
            job, index = self._pending.first()
            length = len(job.items[index])
            if window and self._window_full(tokens, length, max_tokens, starts_request=index == 0):
                break
            self._pending.take_first()
            self._pending_tokens -= length
            if job.done:  # cancelled (client gone) or already failed
                self._backlog_tokens -= length
            else:
                window.append((job, index))
                tokens += length
        return window, tokens

    def _gather(self) -> None:
        """Before a window that could run alone on every core is taken, wait a moment for requests
        arriving with it, until the queue fills a window or the moment has passed; the other
        streams do not start meanwhile, so that ``_share`` then divides what came.

        A burst's requests arrive over a few milliseconds: one taken alone would hold every core
        while the rest wait. Two clients' requests that meet here used to run on one stream's
        threads each, one behind the other while the second stream waited for a full batch; in one
        window they run on every core together."""
        deadline = time.monotonic() + self._gathering_wait(self._pending_tokens)
        self._gathering = True
        try:
            while not self._stopping and not self._queue_fills(1):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)  # a submit wakes it
        finally:
            self._gathering = False

    def _share(self) -> tuple[int, int, bool]:
        """How many tokens and inputs the window being taken may hold, and whether it is a share: a
        full window, unless the queue holds more than one window but less than one for each stream
        that will take from it. Then each takes an equal share, and the next starts on the rest as
        soon as it is free (``_handing_off``) though it is not a full batch.

        Idle streams share so: a full window there left the rest queued behind it, since a stream
        started beside a running one only on a full batch, and one core idled for a whole window
        (6 clients × 32 texts, all-MiniLM-L6-v2, 128-input windows: 0.85× the speed of 4 or 8
        clients). With ``SHARE_WITH_BUSY_STREAMS``, so do streams still running a full window,
        which take theirs when they finish: at a burst's end, a stream that took a full window left
        a short one to the stream finishing next, which then idled while the full one ran (8
        clients × 32 instructed queries, Qwen3-0.6B shape, docs/benchmarks.md). Called holding the
        lock, this stream counted as running."""
        if SHARE_WITH_BUSY_STREAMS:
            takers = self.streams.count - self._running_shares  # (those holding a share have had it)
        else:
            takers = self.streams.count - self._running + 1  # the idle streams and this one
        if takers < 2 or not self._queue_exceeds_a_window() or self._queue_fills(takers):
            return self.window_tokens, self.window_items, False
        self._handing_off = True
        return math.ceil(self._pending_tokens / takers), math.ceil(len(self._pending) / takers), True

    def _queue_fills(self, windows: float) -> bool:
        """Whether the queue holds at least ``windows`` full windows."""
        return (
            self._pending_tokens >= windows * self.window_tokens
            or len(self._pending) >= windows * self.window_items
        )

    def _queue_exceeds_a_window(self) -> bool:
        return self._pending_tokens > self.window_tokens or len(self._pending) > self.window_items

    def _has_the_cores(self, tokens: int) -> bool:
        """Whether a window of ``tokens`` being taken would have the cores to itself and gain from
        every one: several streams, the others idle, and enough work (``every_core_tokens``)."""
        return (
            self.streams.count > 1
            and self._running == 1
            and self.streams.every_core_tokens is not None
            and tokens >= self.streams.every_core_tokens
        )

    def _gathering_wait(self, tokens: int) -> float:
        """How long a window that could run alone waits for more requests first: a share of its own
        expected time, so that a lone request pays at most that share for the wait.

        Any batches measured will do for the estimate, even too few for admission by time
        (``tokens_per_second``): the warm-up's one short text makes the model look slow, which errs
        toward the longer wait, and the maximum caps it. Before any, the maximum: a fresh server's
        first burst is gathered too."""
        seen, seconds = self._measured()
        if not seen or seconds <= 0:
            return EVERY_CORE_WAIT_MAX_SECONDS
        expected = tokens * seconds / seen  # (the seconds are one stream's time)
        return min(EVERY_CORE_WAIT_MAX_SECONDS, EVERY_CORE_WAIT_SHARE * expected)

    def _worth_starting(self) -> bool:
        """A stream starts a window when the cores would otherwise idle (no other stream is running),
        when ``START_BESIDE_A_RUNNING_STREAM`` of a full batch is waiting, or on its share of a
        queue another stream divided. Starting on whatever just arrived while another stream runs
        cut a closed loop of 8 clients × 32 texts into batches of 32–96 rows, each costing more per
        text (then also a compilation each: ``shape_caches.py``), and ran 0.76× the sorted corpus;
        waiting for a whole batch left this stream's core idle while the requests came back."""
        if not self._pending:
            return self._stopping
        if self._alone or self._gathering:
            return False  # a window runs on every core, or is being gathered; both notify
        return (
            self._running == 0
            or self._handing_off
            or self._queue_fills(START_BESIDE_A_RUNNING_STREAM)
            or self._stopping
        )

    def _window_full(self, tokens: int, next_length: int, max_tokens: int, *, starts_request: bool) -> bool:
        if not self.padded_batches:
            return tokens + next_length > max_tokens  # one full batch, wherever it cuts
        return starts_request and tokens >= max_tokens  # whole requests, about one budget

    def _loop(self) -> None:
        self.streams.enter()
        last_release, dirty = time.monotonic(), False
        while True:
            if dirty and time.monotonic() - last_release > MEMORY_RELEASE_BUSY_SECONDS:
                release_free_memory()  # busy for a while
                last_release, dirty = time.monotonic(), False
            window = self._take_window(MEMORY_RELEASE_IDLE_SECONDS if dirty else None)
            if window is None:
                return
            if not window.entries:  # idle since the last batch: give its memory back
                # (also after a window of cancelled inputs only: rare, and harmless)
                release_free_memory()
                last_release, dirty = time.monotonic(), False
                continue
            try:
                if window.alone:
                    with self.streams.every_core():
                        self._process(window.entries, self.streams.count)
                else:
                    self._process(window.entries)
            finally:
                with self._cond:
                    self._running -= 1
                    self._running_shares -= window.share
                    self._alone = False
                    self._cond.notify()  # a stream waiting for a full batch may start now
            dirty = True

    def _process(self, window: list[tuple[_Job, int]], cores_share: int = 1) -> None:
        """Run a window's batches. ``cores_share``: how many streams' share of the cores it runs on."""
        now = time.perf_counter()
        starting = []
        with self._results:  # a request split over two windows starts once
            for job, _ in window:
                if not job.started:
                    job.started = True
                    starting.append(job)
        for job in starting:
            self.observer.queue_wait(now - job.submitted)
        lengths = [len(job.items[index]) for job, index in window]
        plan = plan_batches(lengths, self.max_batch_tokens, self.max_batch_size, padded=self.padded_batches)
        for batch in plan:
            self._run([window[i] for i in batch], cores_share=cores_share)

    def _run(self, entries: list[tuple[_Job, int]], retry: bool = True, cores_share: int = 1) -> None:
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
            self._handle_failure(live, error, retry, cores_share)
            return
        seconds = time.perf_counter() - started
        # in one stream's time: ``tokens_per_second`` counts every stream as running at this rate
        self._recent.append((tokens, seconds * cores_share))
        self._settle(tokens)
        # what the forward computed: rows × longest when padded, the real tokens when padding-free
        computed = len(inputs) * max(map(len, inputs)) if self.padded_batches else tokens
        self.observer.batch_done(len(inputs), tokens, computed, seconds)
        for (job, index), vector in zip(live, vectors, strict=True):
            self._deliver(job, index, vector)

    def _handle_failure(
        self, entries: list[tuple[_Job, int]], error: Exception, retry: bool, cores_share: int
    ) -> None:
        jobs = {id(job): job for job, _ in entries}
        if retry and len(jobs) > 1:
            log.warning("batch of %d inputs failed (%s); retrying request by request", len(entries), error)
            for key in jobs:
                self._run([entry for entry in entries if id(entry[0]) == key], False, cores_share)
            return
        log.error("inference failed for %d input(s): %r", len(entries), error)
        self._settle(sum(len(job.items[index]) for job, index in entries))
        with self._results:
            for job in jobs.values():
                with contextlib.suppress(InvalidStateError):  # cancelled meanwhile: nobody waits
                    job.future.set_exception(error)

    def _deliver(self, job: _Job, index: int, vector: np.ndarray) -> None:
        with self._results:
            if job.done:
                return
            job.results[index] = vector
            job.remaining -= 1
            if job.remaining:
                return
            # a cancelled future (client gone) refuses its result; nobody is waiting for it
            with contextlib.suppress(InvalidStateError):
                job.future.set_result(np.stack(job.results))  # type: ignore[arg-type]
