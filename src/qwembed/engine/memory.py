"""Give freed heap memory back to the operating system.

Batches of varying shapes make the C allocator keep the high-water mark of activations (glibc keeps
freed arenas), so a server's resident memory creeps up to its largest batch ever and stays there.
``malloc_trim`` returns what is free; the worker calls it when idle and every few seconds under load.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def _load_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc.malloc_trim  # glibc only; musl has none
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _load_trim()


def release_free_memory() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
