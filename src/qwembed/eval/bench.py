"""Speed and memory of models: load time, peak memory, latency per batch size, throughput.

Each local model is measured in a fresh child process, so its load time and peak memory are
its own and not inflated by the models measured before it. Endpoints are measured from this
process (their memory lives on the server, so none is reported).
"""

from __future__ import annotations

import multiprocessing
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from queue import Empty
from typing import Any

import numpy as np

from .encoding import truncation_kwargs
from .errors import EvalError, refuse_repeats
from .protocol import TextEmbedder
from .results import EvalRecord

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_REPEATS = 10
#: how often the parent looks whether a benchmarking child still lives while it waits for it
CHILD_POLL_S = 1.0


def parse_batch_sizes(text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",")]
    for part in parts:
        if not (part.isdigit() and int(part) > 0):
            raise EvalError(f"--batch-sizes: {part!r} is not a positive integer")
    refuse_repeats("--batch-sizes", parts, key=int)  # (a repeat would time the same size twice)
    return [int(part) for part in parts]


def measure_latency(
    model: TextEmbedder,
    texts: Sequence[str],
    batch_sizes: Sequence[int],
    repeats: int = DEFAULT_REPEATS,
    concurrency: int = 1,
) -> list[dict[str, Any]]:
    """Per batch size: one warm-up call, then ``repeats`` timed calls on consecutive slices
    of ``texts`` (cycled), so every batch size sees the same mix of lengths. With ``concurrency``
    above 1, that many callers share the calls (threads; for a server, concurrent clients), and
    texts/s counts all of them over the wall time."""
    if not texts:
        raise EvalError("bench needs at least one text")
    if concurrency < 1:
        raise EvalError("--concurrency must be at least 1")
    rows = []
    extra = truncation_kwargs(model)
    for size in batch_sizes:
        batches = [
            [texts[(start + i) % len(texts)] for i in range(size)]
            for start in range(0, size * (repeats + 1), size)
        ]
        model.embed(batches[0], **extra)  # warm-up: lazy initialisation, first-call allocations
        before = _tokens_used(model)
        latencies, wall = _timed_calls(model, batches[1:], extra, concurrency)
        after = _tokens_used(model)
        if before is not None and after is not None:
            total_tokens: int | None = after - before
        else:
            counts = [_count_tokens(model, batch, extra) for batch in batches[1:]]
            total_tokens = None if any(c is None for c in counts) else sum(c for c in counts if c is not None)
        lat = np.array(latencies)
        rows.append(
            {
                "batch_size": size,
                "concurrency": concurrency,
                "calls": len(latencies),
                "latency_ms_mean": float(lat.mean() * 1000),
                "latency_ms_p50": float(np.percentile(lat, 50) * 1000),
                "latency_ms_p95": float(np.percentile(lat, 95) * 1000),
                "texts_per_s": float(size * len(lat) / wall),
                "tokens_per_s": None if total_tokens is None else float(total_tokens / wall),
            }
        )
    return rows


def _timed_calls(
    model: TextEmbedder, batches: Sequence[list[str]], extra: dict[str, Any], concurrency: int
) -> tuple[list[float], float]:
    """Each call's latency, and the wall time of them all, ``concurrency`` calls at a time."""

    def timed(batch: list[str]) -> float:
        start = time.perf_counter()
        model.embed(batch, **extra)
        return time.perf_counter() - start

    start = time.perf_counter()
    if concurrency == 1:
        latencies = [timed(batch) for batch in batches]
    else:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="qwembed-bench") as callers:
            latencies = list(callers.map(timed, batches))
    return latencies, time.perf_counter() - start


def _tokens_used(model: TextEmbedder) -> int | None:
    used = getattr(model, "tokens_used", None)  # the remote client's count of reported usage
    return used if isinstance(used, int) else None


def _count_tokens(model: TextEmbedder, batch: Sequence[str], truncation: dict[str, bool]) -> int | None:
    """The tokens the model computed for ``batch``: cut as the timed calls cut them
    (``truncation``), so an over-long text counts what was embedded, and fails nothing."""
    tokenize = getattr(model, "tokenize", None)  # the local Embedder's exact tokenisation
    if not callable(tokenize):
        return None
    return int(sum(len(ids) for ids in tokenize(batch, **truncation)))


def bench_model(
    spec: str,
    texts: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    repeats: int = DEFAULT_REPEATS,
    concurrency: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    compile: bool = False,
) -> dict[str, Any]:
    """Load ``spec`` and measure it, in the calling process; returns a plain dict."""
    from .models import is_endpoint, open_embedder, runs_elsewhere

    remote = is_endpoint(spec)
    if not runs_elsewhere(spec):
        # import the engine (torch, transformers) first: load time is the model's, not the libraries'
        import qwembed.engine.embedder  # noqa: F401

    start = time.perf_counter()
    model = open_embedder(spec, device=device, dtype=dtype, compile=compile)
    load_s = time.perf_counter() - start
    rows = measure_latency(model, texts, batch_sizes, repeats, concurrency)
    return {
        "name": model.name,
        "dimension": int(model.dimension),
        "compute": getattr(model, "compute", None),
        "load_s": load_s,
        "peak_rss_mib": None if remote else _peak_rss_mib(),
        "cuda_peak_mib": None if remote else _cuda_peak_mib(),
        "rows": rows,
    }


def _child(queue: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        queue.put(("ok", bench_model(*args, **kwargs)))
    except EvalError as exc:
        queue.put(("error", str(exc)))
    except Exception as exc:  # reported by the parent; a child traceback would be lost
        queue.put(("crash", f"{type(exc).__name__}: {exc}"))


def bench_isolated(
    spec: str, texts: Sequence[str], batch_sizes: Sequence[int], **kwargs: Any
) -> dict[str, Any]:
    """``bench_model`` in a fresh ``spawn`` child for local models (clean memory figures)."""
    from .models import runs_elsewhere

    if runs_elsewhere(spec):
        return bench_model(spec, list(texts), batch_sizes, **kwargs)
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, (spec, list(texts), list(batch_sizes)), kwargs))
    proc.start()
    status, payload = _answer(queue, proc, spec)
    proc.join()
    if status == "error":
        raise EvalError(payload)
    if status == "crash":
        raise EvalError(f"benchmarking {spec!r} failed: {payload}")
    return payload


def _answer(queue: Any, proc: Any, spec: str) -> tuple[str, Any]:
    """The child's answer; EvalError if it died without one (killed for memory, a crash in native
    code), instead of waiting for it for ever."""
    while True:
        try:
            return queue.get(timeout=CHILD_POLL_S)
        except Empty:
            if proc.is_alive():
                continue
        try:  # (an answer put just before the child exited may still be on its way)
            return queue.get(timeout=CHILD_POLL_S)
        except Empty:
            code = proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            raise EvalError(f"benchmarking {spec!r}: its process ended without a result ({how})") from None


def run_bench(
    spec: str,
    texts: Sequence[str],
    dataset: str,
    data_meta: dict[str, Any],
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    **kwargs: Any,
) -> EvalRecord:
    result = bench_isolated(spec, texts, batch_sizes, **kwargs)
    best = max(result["rows"], key=lambda r: r["texts_per_s"])
    return EvalRecord(
        task="bench",
        dataset=dataset,
        data=data_meta,
        model=result["name"],
        dimension=result["dimension"],
        metrics={"max_texts_per_s": best["texts_per_s"]},
        config={
            "batch_sizes": list(batch_sizes),
            "repeats": kwargs.get("repeats", DEFAULT_REPEATS),
            "concurrency": kwargs.get("concurrency", 1),
            **({"compute": result["compute"]} if result["compute"] else {}),
        },
        timing={
            "load_s": round(result["load_s"], 3),
            "peak_rss_mib": result["peak_rss_mib"],
            "cuda_peak_mib": result["cuda_peak_mib"],
        },
        details={"rows": result["rows"]},
        model_spec=spec,
    )


def _peak_rss_mib() -> float | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _cuda_peak_mib() -> float | None:
    torch = sys.modules.get("torch")  # only if the model already imported it
    if torch is None or not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)
