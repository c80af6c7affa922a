"""oneDNN's caches of compiled kernels, bounded to 512 entries each.

On CPUs torch runs Linear layers and bf16 matmuls through oneDNN (``fused_linear.py`` calls it
directly), which compiles a kernel for each input shape and keeps it in two caches: oneDNN's own
primitive cache and ideep's (torch's oneDNN wrapper). Each holds up to 1,024 entries by default,
and a padding-free batch's shape is its token count, which differs from batch to batch. One shape
of a Linear layer held 0.6–1 MiB (0.58 for 384 × 1,536 bf16, 0.98 for 2,560 × 9,728), so a server
or a library loop seeing widely varied batches kept growing by hundreds of MiB that no
``malloc_trim`` could return: 300 library calls of 1–128 texts of 1–200 words (all-MiniLM-L6-v2,
2-core Zen 4) took the process from 632 to 2,394 MiB, 1,409 MiB after a trim
(``bench/memory_varied_batches.py``, ``docs/reliability.md``).

The cap must still hold the shapes a process keeps reusing, or its batches recompile what they
evicted: a new shape costs ~0.4 ms to compile, against ~6 ms for one intermediate and output layer
pair on 256 tokens, and with no cache at all that compile is paid per layer (1.3× slower at 256
tokens). With batches at bucketed token counts (the last paragraph), a server under 8 clients ×
32 BQ sentences settled on ~12 token counts: 48 Linear shapes, 96 entries in oneDNN's cache, which
also keeps each inner-product's nested matmul; an embedding call over 4,000 sorted sentences used
more, and a second model or dtype in the process doubles them. Caps of 64 entries (qwembed's
until 2026-12-06) thrashed: the server took 1.39 s per 4,000 texts against 1.21 s at 1,024
entries, the library 3,121 texts/s against 3,940; caps of 256 held one model (1.23 s, 3,845/s) but
not two (3,545 texts/s against 4,389 at 512) (2-core AMX Xeon, docs/benchmarks.md). Full caches of
512 entries hold ~210 MiB for all-MiniLM-L6-v2 (``tests/test_shape_caches.py``).

Both caches read their capacity from the environment once, at their first use, so this must run
before the process's first oneDNN call: the loaders call it before loading. A capacity the user
set in the environment is left as it is; so is a process that already used oneDNN.

A cache only helps where shapes repeat, and a server's padding-free batches of mixed requests
almost never repeat a token count: each batch compiled its Linear layers anew. On one thread of an
AMX Xeon a window of 128 BQ sentences (~1,700 tokens, all-MiniLM-L6-v2) took 81 ms, 26 ms of it
compiling its four new shapes (oneDNN's verbose log: the fused intermediate layer alone 14 ms),
against 48 ms for a shape seen before. So on CPUs a packed batch's token count is rounded up to a
few fixed sizes (``token_bucket``: at most 1/16 more tokens), made up by a filler sequence whose
output is dropped (``packing.filled_to_bucket``); a server's windows then reuse a handful of shapes.
The BERT-family encoders and cross-encoders fill their batches so. Qwen3 does not: on the
0.6B shape a batch's matmuls take seconds against tens of milliseconds of compiling (neutral in
``bench/bench_qwen3_cpu.py``), and larger Qwen3 models would pay the filler's extra tokens for less.
"""

from __future__ import annotations

import os

#: entries in each cache: the shapes two models' batches keep reusing
SHAPE_CACHE_CAPACITY = 512

#: oneDNN's primitive cache, and ideep's cache (``LRU_CACHE_CAPACITY``, torch's name for it)
CAPACITY_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

#: a packed batch's token count is rounded up to a multiple of 1/``TOKEN_STEPS_PER_DOUBLING`` of
#: the power of two below it (at most 6.25 % more tokens, ~3 % on average), and of at least
#: ``MIN_TOKEN_STEP``: 16 sizes per doubling, which the caches above hold for a server's windows
TOKEN_STEPS_PER_DOUBLING = 16
MIN_TOKEN_STEP = 16


def bound_shape_caches(capacity: int = SHAPE_CACHE_CAPACITY) -> None:
    """Cap both caches at ``capacity`` entries unless the environment already sets them."""
    for variable in CAPACITY_VARIABLES:
        os.environ.setdefault(variable, str(capacity))


def token_bucket(tokens: int) -> int:
    """The token count a packed batch of ``tokens`` runs at on a CPU: rounded up to the next
    multiple of its step, which is 1/16 of the power of two at or below ``tokens`` (at least 16)."""
    if tokens <= 0:
        return tokens
    step = max(MIN_TOKEN_STEP, (1 << (tokens.bit_length() - 1)) // TOKEN_STEPS_PER_DOUBLING)
    return -(-tokens // step) * step
