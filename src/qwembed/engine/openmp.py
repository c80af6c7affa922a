"""OpenMP worker threads a thread no longer needs, handed back.

Every thread that runs a multi-threaded torch operator (or one of our C kernels) becomes the master
of its own OpenMP thread pool, whose workers stay alive, parked, until the thread exits. GNU
OpenMP (the ``libgomp`` torch ships) counts every such worker in the process; once there are more
than the process has CPUs, each worker spins only ~100 times before sleeping, so every parallel
region afterwards starts by waking its workers from the kernel. In the server the model loads on
the main thread (its load-time checks on every core) and a lone window runs on one stream's
thread on every core: two pools on 2 CPUs, and each of a lone Qwen3-0.6B-shape query's ~400
parallel regions then took ~45 µs longer. Served lone queries took 65 ms where the same forward
took 42 ms in a fresh process (docs/benchmarks.md).

So the thread that adds a model to the served pool hands back the workers its load started
(``ModelPool``), and a stream hands back those of each window it ran on every core
(``Streams.every_core``). ``omp_pause_resource_all`` (OpenMP 5.0; libgomp, LLVM's and Intel's
runtimes) ends the calling thread's pool; the next multi-threaded region starts a new one
(~0.1 ms). Where the runtime lacks it, nothing happens.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable
from functools import cache

log = logging.getLogger("qwembed.openmp")

#: ``omp_pause_soft``: free the threads, keep what the runtime needs to start them again
OMP_PAUSE_SOFT = 1


@cache
def _pause() -> Callable[[int], int] | None:
    try:
        pause = ctypes.CDLL(None).omp_pause_resource_all  # the runtime torch loaded, globally
    except (AttributeError, OSError):
        log.debug("no omp_pause_resource_all in this process: OpenMP pools are left alone")
        return None
    pause.restype = ctypes.c_int
    pause.argtypes = [ctypes.c_int]
    return pause


def release_thread_pool() -> bool:
    """End the calling thread's OpenMP worker threads (it keeps running; a later multi-threaded
    region starts new ones). Whether the runtime did."""
    pause = _pause()
    return pause is not None and pause(OMP_PAUSE_SOFT) == 0
