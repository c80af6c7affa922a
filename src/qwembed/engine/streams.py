"""Batch streams: how many forward passes run at once, and with how many CPU threads each.

One forward pass spread over every core leaves cores idle whenever it runs serial work (Python
between operators, small operators), and any other thread that preempts one of its OpenMP threads
— the server's event loop, tokenisation — stalls all the others at the next barrier. Two passes
at once, each with half the cores, keep the cores busy: on 2 cores (all-MiniLM-L6-v2, mixed
bf16, batches of 128 BQ sentences) two single-threaded streams ran 1.33× a length-sorted corpus
and 1.21× server-like windows against one two-threaded stream, alternating (docs/benchmarks.md).
A GPU runs one stream: its kernels queue on one device anyway.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

#: forward passes at once on a CPU with at least two cores
CPU_STREAMS = 2


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Streams:
    """``count`` forward passes at once, each on ``threads`` intra-op threads (None: leave torch's
    setting alone, e.g. for a model that is not torch or not on a CPU)."""

    count: int = 1
    threads: int | None = None

    @classmethod
    def for_model(cls, model: object, count: int | None = None) -> Streams:
        """``count`` streams (default: ``CPU_STREAMS`` on a multi-core CPU, one on a GPU), sharing the
        intra-op threads torch would give one (``OMP_NUM_THREADS`` or every core)."""
        device = getattr(model, "device", None)
        on_gpu = getattr(device, "type", str(device)) == "cuda"
        if count is None:
            # a compiled forward stays on one thread: torch.compile does not promise thread safety
            single = on_gpu or usable_cores() < 2 or getattr(model, "compiled", False)
            count = 1 if single else CPU_STREAMS
        if count < 1:
            raise ValueError(f"streams must be at least 1, not {count}")
        if on_gpu or count == 1:
            return cls(count, None)
        return cls(count, max(1, torch.get_num_threads() // count))

    def enter(self) -> None:
        """Called at the start of each stream's thread: torch's thread count is per thread."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)


class StreamExecutor:
    """Runs a function over many batches, ``streams.count`` at a time, results in order."""

    def __init__(self, streams: Streams):
        self.streams = streams
        self._pool: ThreadPoolExecutor | None = None
        self._starting = threading.Lock()  # one Embedder may be called from several threads

    def map(self, function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        items = list(items)
        if self.streams.count == 1 or len(items) < 2:
            return map(function, items)
        return self._threads().map(function, items)

    def _threads(self) -> ThreadPoolExecutor:
        """The stream threads, started on first use (idle ones end with the interpreter)."""
        with self._starting:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.streams.count, thread_name_prefix="qwembed-stream", initializer=self.streams.enter
                )
            return self._pool
