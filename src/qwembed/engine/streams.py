"""Batch streams: how many forward passes run at once, and with how many CPU threads each.

One forward pass spread over every core leaves cores idle whenever it runs serial work (Python
between operators, small operators), and any other thread that preempts one of its OpenMP threads
— the server's event loop, tokenisation — stalls all the others at the next barrier. Two passes
at once, each with half the cores, keep the cores busy: on 2 cores (all-MiniLM-L6-v2, mixed
bf16, batches of 128 BQ sentences) two single-threaded streams ran 1.33× a length-sorted corpus
and 1.21× server-like windows against one two-threaded stream, alternating (docs/benchmarks.md).
A GPU runs one stream: its kernels queue on one device anyway.

Two streams pay only where both have work. A batch that runs alone — a lone request to a quiet
server — takes every stream's threads (``Streams.every_core``; the worker decides when), and a
few batches embedded in one call are cut so that the streams finish together
(``batching.plan_batches(streams=)``).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from .openmp import release_thread_pool

T = TypeVar("T")
R = TypeVar("R")

#: forward passes at once on a CPU with at least two cores
CPU_STREAMS = 2

#: a window that runs alone takes every stream's threads only with at least this much work in its
#: Linear layers: below it, waking the other threads cost more than they gave (all-MiniLM-L6-v2 on
#: 2 cores: one or two short texts ran 0.87-0.90x as fast on both threads, three broke even, 8
#: ran 1.26x; a Qwen3-0.6B-shaped model's single 10-token text already ran 1.12x)
EVERY_CORE_MIN_FLOPS = 1e9


def linear_weights(module: torch.nn.Module) -> int:
    """Weights of every ``nn.Linear`` in ``module``: 2 FLOPs each per token is its matmul work."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def linear_flops_per_token(model: object) -> int:
    """FLOPs per token in the Linear layers of a model's torch module (``.model``), or 0 when it
    has none: what sets how much a batch's work grows with its tokens."""
    module = getattr(model, "model", None)
    return 2 * linear_weights(module) if isinstance(module, torch.nn.Module) else 0


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Streams:
    """``count`` forward passes at once, each on ``threads`` intra-op threads (None: leave torch's
    setting alone, e.g. for a model that is not torch or not on a CPU). A window of at least
    ``every_core_tokens`` that runs alone may take every stream's threads (``every_core``); None:
    never (a model with no torch Linear layers, whose threads these are not)."""

    count: int = 1
    threads: int | None = None
    every_core_tokens: int | None = None

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
        flops = linear_flops_per_token(model)
        every_core_tokens = math.ceil(EVERY_CORE_MIN_FLOPS / flops) if flops else None
        return cls(count, max(1, torch.get_num_threads() // count), every_core_tokens)

    def enter(self) -> None:
        """Called at the start of each stream's thread: torch's thread count is per thread."""
        if self.threads is not None:
            torch.set_num_threads(self.threads)

    @contextlib.contextmanager
    def every_core(self) -> Iterator[None]:
        """The calling stream on every stream's threads for a while: for work that runs alone, while
        the other streams wait (running beside them, it would oversubscribe the cores)."""
        if self.threads is None:
            yield
            return
        torch.set_num_threads(self.threads * self.count)
        try:
            yield
        finally:
            torch.set_num_threads(self.threads)
            # hand back the workers every core took (openmp.py): kept, they would count against
            # the CPUs in every parallel region after, of every stream; with one thread a stream
            # needs none, with more its next region starts its own few again (~0.1 ms)
            release_thread_pool()


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
