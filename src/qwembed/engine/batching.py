"""Token-budget batching: group inputs of similar length so little compute goes to padding."""

from __future__ import annotations

from collections.abc import Sequence


def plan_batches(
    lengths: Sequence[int], max_batch_tokens: int, max_batch_size: int, *, padded: bool = True
) -> list[list[int]]:
    """Split input positions into batches, longest first.

    A batch's cost is ``rows × longest row`` (what a padded forward pass computes), or for a
    padding-free model (``padded=False``) its real tokens; it is kept within ``max_batch_tokens``.
    An input longer than the budget runs alone rather than being refused. Sorting by length keeps
    every batch's rows close in size.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    cost = 0
    for index in order:
        # Longest first: the batch's first row fixes its padded width.
        width = lengths[current[0]] if current else lengths[index]
        added = width if padded else lengths[index]
        if current and (cost + added > max_batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current, cost = [], 0
            added = lengths[index]
        current.append(index)
        cost += added
    if current:
        batches.append(current)
    return batches


#: padded tokens per forward pass when the caller does not say: on a CPU, small batches stay in
#: cache and beat large ones (measured on all-MiniLM-L6-v2, docs/benchmarks.md); a GPU needs large
#: ones to fill its units
CPU_BATCH_TOKENS = 2048
GPU_BATCH_TOKENS = 16384


#: inputs per forward pass when the caller does not say. The token budget is what bounds a batch's
#: work; this caps its rows. On a CPU, 128 keeps a server's batches short. On a GPU, rows were what
#: ran out first for short texts: on an H100 (Qwen3-Embedding-4B shape, 2,048 BQ sentences of 8.6
#: tokens) 128 rows per batch embedded 1,587 texts/s and 1,024 rows 6,043 (docs/benchmarks.md)
CPU_BATCH_SIZE = 128
GPU_BATCH_SIZE = 1024


def _on_gpu(model: object) -> bool:
    device = getattr(model, "device", None)
    return getattr(device, "type", str(device)) == "cuda"


def default_batch_tokens(model: object) -> int:
    return GPU_BATCH_TOKENS if _on_gpu(model) else CPU_BATCH_TOKENS


def default_batch_size(model: object) -> int:
    return GPU_BATCH_SIZE if _on_gpu(model) else CPU_BATCH_SIZE
