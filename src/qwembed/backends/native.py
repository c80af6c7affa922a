"""Our few C kernels: built at first use, cached, loaded with ctypes, on torch's OpenMP threads.

Where PyTorch has no fast CPU path for a step that dominates a profile (``cpu_attention.c``,
``residual_norm.c``), the step is a small C file next to its Python module. It is compiled at
first use with the system's C compiler — as Inductor builds its CPU kernels — into
``$XDG_CACHE_HOME/qwembed/kernels`` (or the temp dir when that is not writable), under a name
keyed by a hash of the source, the flags and the compiler's version, so a changed kernel or
compiler builds again and concurrent builds land by atomic rename. ctypes releases the GIL during
each call. Each library links the ``libgomp`` torch has loaded already, so its ``#pragma omp``
loops run on torch's own intra-op threads; :func:`shares_torchs_threads` checks that at load.
Each kernel's module checks its results against PyTorch's before it serves and keeps PyTorch's
path, saying why, whenever anything here fails.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Generic, TypeVar

import torch

K = TypeVar("K")

#: flags every kernel is built with: optimised, position-independent, AVX-512 with bf16
#: conversions, OpenMP; a kernel adds its own (``-mamx-tile`` …)
BASE_FLAGS = (
    "-O3", "-fPIC", "-shared", "-fopenmp", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
    "-mavx512bf16",
)  # fmt: skip

#: the CPU flags (``/proc/cpuinfo``) a kernel built with :data:`BASE_FLAGS` needs
BASE_CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qwembed" / "kernels"


def compiler() -> str | None:
    """``$CC``, else ``cc``, ``gcc`` or ``clang`` on the PATH."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc") or shutil.which("clang")


def unsupported_machine(required_flags: Iterable[str]) -> str | None:
    """Why this machine cannot run a kernel that needs these CPU flags, or None."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"not an x86-64 Linux machine ({platform.system()} {platform.machine()})"
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    missing = [flag for flag in required_flags if f" {flag}" not in flags]
    return f"this CPU lacks {', '.join(missing)}" if missing else None


def build(source: Path, flags: tuple[str, ...], compiler: str, directory: Path) -> Path:
    """The shared library of ``source`` built with ``flags`` by ``compiler`` in ``directory``,
    compiled once per cache key."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + version.encode()).hexdigest()[:16]
    target = directory / f"{source.stem}-{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        partial = Path(scratch) / target.name
        result = subprocess.run(
            [compiler, *flags, "-o", str(partial), str(source)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    return target


def build_cached(source: Path, flags: tuple[str, ...], compiler: str) -> Path:
    """:func:`build` in the user's cache, or in the temp dir where the cache is not writable."""
    try:
        return build(source, flags, compiler, cache_dir())
    except OSError:
        return build(source, flags, compiler, Path(tempfile.gettempdir()) / "qwembed-kernels")


def shares_torchs_threads(threads_of_library: Callable[[], int]) -> bool:
    """Whether the library's OpenMP thread count follows ``torch.set_num_threads`` in this thread,
    i.e. it runs on torch's own OpenMP runtime and thread pool (a second runtime would start a
    second pool, whose threads compete with torch's)."""
    before = torch.get_num_threads()
    try:
        agree = []
        for count in {1, max(2, before)}:
            torch.set_num_threads(count)
            agree.append(threads_of_library() == count)
        return all(agree)
    finally:
        torch.set_num_threads(before)


def open_on_torchs_threads(path: Path, threads_symbol: str) -> ctypes.CDLL:
    """The library at ``path``, refused (RuntimeError) unless its OpenMP runtime is torch's: its
    ``threads_symbol`` returns ``omp_get_max_threads()``."""
    library = ctypes.CDLL(str(path))
    if not shares_torchs_threads(getattr(library, threads_symbol)):
        raise RuntimeError("its OpenMP runtime is not torch's: its threads would compete with torch's")
    return library


def function(library: ctypes.CDLL, name: str, *argtypes: type) -> Callable[..., int]:
    """``library``'s C function ``name`` returning int, with its argument types declared."""
    found = getattr(library, name)
    found.restype = ctypes.c_int
    found.argtypes = list(argtypes)
    return found


def named_in_profiles(name: str) -> AbstractContextManager:
    """A torch profiler range named ``name`` around a kernel call (ctypes calls are not torch
    operators, so profiles would not show them), only while a profiler runs: entering one costs
    the GIL-holding Python work that a busy server's event loop competes for."""
    return torch.profiler.record_function(name) if torch.autograd._profiler_enabled() else nullcontext()


class Loader(Generic[K]):
    """A kernel's load-once state: the first :meth:`get` builds, opens and checks it, or logs why
    PyTorch's path stays and remembers None. ``flags`` build it, for a CPU with ``cpu_flags``
    (default: the AVX-512 and bf16 every kernel needs)."""

    def __init__(
        self,
        *,
        name: str,
        fallback: str,
        switch: str,
        source: Path,
        flags: tuple[str, ...] = BASE_FLAGS,
        cpu_flags: tuple[str, ...] = BASE_CPU_FLAGS,
        open_library: Callable[[Path], K],
        check: Callable[[K], float],
        tolerance: float,
        log: logging.Logger,
        unit: str = "",
    ):
        self.name, self.fallback, self.switch = name, fallback, switch
        self.source, self.flags, self.cpu_flags = source, flags, cpu_flags
        self.open_library, self.check, self.tolerance, self.log = open_library, check, tolerance, log
        #: what ``check`` measures its difference in, for the log (" rounding steps"; "": absolute)
        self.unit = unit
        self._lock = threading.Lock()
        self._loaded: list[K | None] = []  # empty until the first get()

    def unavailable_reason(self) -> str | None:
        """Why the kernel cannot serve before any build: the switch, the platform, the CPU."""
        if os.environ.get(self.switch, "1") == "0":
            return f"{self.switch}=0"
        return unsupported_machine(self.cpu_flags)

    def get(self) -> K | None:
        """The checked kernel, or None where it cannot serve."""
        with self._lock:
            if not self._loaded:
                self._loaded.append(self._load())
            return self._loaded[0]

    def set(self, kernel: K | None) -> None:
        """Serve ``kernel`` (None: PyTorch's path) from now on: tests and benchmarks compare both."""
        with self._lock:
            self._loaded[:] = [kernel]

    def reset(self) -> None:
        """Forget the kernel: the next :meth:`get` loads again (after changing the switch, say)."""
        with self._lock:
            self._loaded.clear()

    def _load(self) -> K | None:
        reason = self.unavailable_reason()
        if reason is not None:
            self.log.info("%s (the %s is not used: %s)", self.fallback, self.name, reason)
            return None
        cc = compiler()
        if cc is None:
            self.log.warning("%s (no C compiler found to build the %s; set CC)", self.fallback, self.name)
            return None
        try:
            path = build_cached(self.source, self.flags, cc)
            kernel = self.open_library(path)
            # the first get() may come from inside a forward under bf16 autocast: the check's
            # PyTorch reference must be float32 all the same
            with torch.autocast("cpu", enabled=False):
                worst = self.check(kernel)
        except Exception as error:  # any failure leaves PyTorch's path in place
            self.log.warning("%s (the %s failed to build or load: %s)", self.fallback, self.name, error)
            return None
        if not worst <= self.tolerance:
            message = "%s (the %s is off by %.3g%s > %.3g in its check)"
            self.log.warning(message, self.fallback, self.name, worst, self.unit, self.tolerance)
            return None
        self.log.info(
            "%s %s serves (within %.3g%s of PyTorch's in its check, limit %.3g)",
            self.name,
            path.name,
            worst,
            self.unit,
            self.tolerance,
        )
        return kernel
