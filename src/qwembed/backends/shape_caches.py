"""oneDNN's caches of compiled kernels, bounded to a few dozen shapes.

On CPUs torch runs Linear layers and bf16 matmuls through oneDNN (``fused_linear.py`` calls it
directly), which compiles a kernel for each input shape and keeps it in two caches: oneDNN's own
primitive cache and ideep's (torch's oneDNN wrapper). Each holds up to 1,024 entries by default,
and a padding-free batch's shape is its token count, which differs from batch to batch. One entry
of a 384 × 1,536 bf16 layer held ~0.5 MiB, so a server or a library loop seeing widely varied
batches kept growing by hundreds of MiB that no ``malloc_trim`` could return: 300 library calls of
1–128 texts of 1–200 words (all-MiniLM-L6-v2, 2-core Zen 4) took the process from 632 to 2,394 MiB,
1,409 MiB after a trim; with both caches capped, 641 to 1,061 MiB and 695 after a trim, at the
same speed (``bench/memory_varied_batches.py``, ``docs/reliability.md``).

A batch reuses its few shapes in every layer (one per Linear layer, the same in each layer), and
two streams run two batches at once, so a few dozen entries keep every reuse within a batch and
the recent shapes besides; a new shape costs ~0.4 ms to compile, against ~6 ms for one such
layer pair on 256 tokens. With no cache at all that compile is paid per layer: 1.3× slower at 256
tokens.

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

#: entries in each cache: a few batches' shapes (~4–8 each) with room to spare
SHAPE_CACHE_CAPACITY = 64

#: oneDNN's primitive cache, and ideep's cache (``LRU_CACHE_CAPACITY``, torch's name for it)
CAPACITY_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")

#: a packed batch's token count is rounded up to a multiple of 1/``TOKEN_STEPS_PER_DOUBLING`` of
#: the power of two below it (at most 6.25 % more tokens, ~3 % on average), and of at least
#: ``MIN_TOKEN_STEP``: 16 sizes per doubling, so the few dozen cache entries hold every size a
#: server's windows take (windows of 1,024–2,048 tokens: 16 sizes of four shapes each)
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
