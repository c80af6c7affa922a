"""``torch.compile`` for a model's forward pass (``--compile``).

On a CPU, once the matrix multiplications run in bf16 on AMX, the time left is in the small
operations between them (GELU, softmax, norms, casts) and in Python. Inductor fuses those; on
all-MiniLM-L6-v2 with mixed bf16 it measured 1.35× the eager speed (docs/benchmarks.md). The price
is a compile at load time (20–90 s on 2 cores; cached on disk by inductor for the next start).
Models with a padding-free forward (``packed_bert.py``, ``packed_qwen3.py``) keep that instead:
on the Qwen3 0.6B shape the compiled padded forward measured 1.2× slower on 512-token documents
and 1.8× slower on short texts than the packed eager one.
"""

from __future__ import annotations

import logging
import time

import torch

log = logging.getLogger("qwembed.compile")

#: Compiled graphs are shape-generic, except that torch specialises sizes 0 and 1, so a batch of
#: one text (or a one-token input) would trigger a fresh compile mid-serving. Backends pad batches
#: and sequences up to this size instead, with masked rows and columns that change nothing.
MIN_COMPILED_SIZE = 2


def compile_model(model: torch.nn.Module) -> None:
    """Compile ``model.forward`` in place with dynamic shapes (one graph for every batch shape)."""
    # The model's own attention (SDPA) is kept. Plain matmul + softmax attention fuses better on
    # short texts (MiniLM, compiled: 1,326 vs 1,268 texts/s) but collapses on long ones (32 vs 80
    # documents/s at 256 tokens), where SDPA's kernel avoids materialising the score matrix.
    model.forward = torch.compile(model.forward, dynamic=True)


def timed_warm_up(run, what: str) -> None:
    """Run the first (compiling) forward now, at load time, instead of on a client's request."""
    start = time.perf_counter()
    run()
    log.info("compiled %s in %.1f s", what, time.perf_counter() - start)
