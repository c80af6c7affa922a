"""Token-budget batching: group inputs of similar length so little compute goes to padding."""

from __future__ import annotations

import heapq
from collections.abc import Sequence


def check_sizes(**sizes: int | None) -> None:
    """Batch and queue sizes are counts of at least 1 (None: the default): below that a batch
    never fills, and a worker would spin instead of failing."""
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_batch_size: int,
    *,
    padded: bool = True,
    streams: int = 1,
) -> list[list[int]]:
    """Split input positions into batches, longest first.

    A batch's cost is ``rows × longest row`` (what a padded forward pass computes), or for a
    padding-free model (``padded=False``) its real tokens; it is kept within ``max_batch_tokens``.
    An input longer than the budget runs alone rather than being refused. Sorting by length keeps
    every batch's rows close in size.

    ``streams``: how many of the batches run at once, each taking the next when it is free
    (``streams.py``). Filling every batch to the budget can leave one stream with most of a short
    plan's work — 256 short texts made a batch of 1,326 tokens and one of 663, so two streams took
    as long as the first alone — so a plan of a few rounds is cut again, with smaller budgets,
    into the batches that finish soonest (``_finish_time``).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    plan = _fill(order, lengths, max_batch_tokens, max_batch_size, padded)
    if streams < 2 or not 1 < len(plan) <= BALANCED_ROUNDS * streams:
        return plan
    total = sum(_cost(batch, lengths, padded) for batch in plan)
    best, soonest = plan, _finish_time(plan, lengths, padded, streams)
    for parts in range(max(2, -(-total // max_batch_tokens)), len(plan) + streams + 1):
        budget = min(max_batch_tokens, -(-total // parts))
        candidate = _fill(order, lengths, budget, max_batch_size, padded)
        finish = _finish_time(candidate, lengths, padded, streams)
        if finish < soonest:  # strictly: of equally good plans, the one with fewer batches
            best, soonest = candidate, finish
    return best


#: plans of at most this many batches per stream are cut for balance; in a longer one the last
#: round's unevenness is at most one batch of many, and trying budgets would cost more than it saves
BALANCED_ROUNDS = 8

#: what a batch costs whatever its size, in tokens' worth of a full batch's work (Python between
#: operators, reading every weight once): measured one thread, a lone short text cost as much as
#: about 20 tokens of a 32-text batch on the Qwen3-0.6B shape and 50 on all-MiniLM-L6-v2
BATCH_OVERHEAD_TOKENS = 64


def _fill(
    order: list[int], lengths: Sequence[int], budget: int, max_batch_size: int, padded: bool
) -> list[list[int]]:
    """Positions in ``order`` (longest first) cut into batches, each filled up to ``budget``."""
    batches: list[list[int]] = []
    current: list[int] = []
    cost = 0
    for index in order:
        # Longest first: the batch's first row fixes its padded width.
        width = lengths[current[0]] if current else lengths[index]
        added = width if padded else lengths[index]
        if current and (cost + added > budget or len(current) >= max_batch_size):
            batches.append(current)
            current, cost = [], 0
            added = lengths[index]
        current.append(index)
        cost += added
    if current:
        batches.append(current)
    return batches


def _cost(batch: list[int], lengths: Sequence[int], padded: bool) -> int:
    if padded:
        return len(batch) * max(lengths[i] for i in batch)
    return sum(lengths[i] for i in batch)


def _finish_time(plan: list[list[int]], lengths: Sequence[int], padded: bool, streams: int) -> int:
    """When the last of ``streams`` finishes ``plan``, in tokens' worth of work, each stream taking
    the next batch in order as soon as it is free (``ThreadPoolExecutor.map``)."""
    free_at = [0] * streams
    for batch in plan:
        heapq.heapreplace(free_at, free_at[0] + _cost(batch, lengths, padded) + BATCH_OVERHEAD_TOKENS)
    return max(free_at)


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
