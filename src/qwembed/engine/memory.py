"""Give freed heap memory back to the operating system.

Batches of varying shapes make the C allocator keep the high-water mark of activations (glibc keeps
freed arenas), so a server's resident memory creeps up to its largest batch ever and stays there.
``malloc_trim`` returns what is free; the worker calls it when idle and every few seconds under load.
What is still allocated (``live_heap_bytes``) no trim can return: that is how the benchmarks and
tests tell a cache that grows (``backends/shape_caches.py``) from memory merely kept.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys


def _libc_function(name: str):
    """A glibc function (musl has neither of ours), or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


_MALLOC_TRIM = _libc_function("malloc_trim")


def release_free_memory() -> None:
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


#: glibc's ``struct mallinfo2``: ten ``size_t`` counters, in this order
_MALLINFO2_FIELDS = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS.split()]


_MALLINFO2 = _libc_function("mallinfo2")  # glibc ≥ 2.33
if _MALLINFO2 is not None:
    _MALLINFO2.restype = _MallInfo2


def live_heap_bytes() -> int | None:
    """Bytes the C allocator has handed out and not had back (glibc's ``mallinfo2().uordblks``):
    memory no ``malloc_trim`` can return, unlike resident memory; None without glibc ≥ 2.33."""
    return None if _MALLINFO2 is None else _MALLINFO2().uordblks
