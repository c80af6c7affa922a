"""Fusing dense and keyword results (reciprocal rank fusion) and the optional rerank stage."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal

from .store import Hit

Mode = Literal["dense", "keyword", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "keyword", "hybrid")
# The constant from Cormack et al. (2009): damps the head so one list's top hit cannot dominate.
RRF_K = 60


def hit_json(hit: Hit) -> dict[str, Any]:
    """The result shape shared by the HTTP API and ``kb search --json``."""
    return {
        "document_id": hit.document_id,
        "chunk_id": hit.chunk_id,
        "position": hit.position,
        "score": hit.score,
        "text": hit.text,
        "metadata": hit.metadata,
        "source": hit.source,
    }


def candidates_for(k: int, rerank: bool) -> int:
    """How deep each list is read: fusion and reranking need more than the final k."""
    return max(k * 4, 40) if rerank else max(k * 2, 20)


def reciprocal_rank_fusion(lists: Sequence[Sequence[Hit]], k: int, constant: int = RRF_K) -> list[Hit]:
    """Score = Σ 1/(constant + rank) over the lists a chunk appears in; ties keep first-seen order."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for hits in lists:
        for rank, hit in enumerate(hits, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (constant + rank)
            first.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda chunk_id: -scores[chunk_id])
    return [replace(first[chunk_id], score=scores[chunk_id]) for chunk_id in order[:k]]


def rerank_hits(
    reranker, query: str, hits: Sequence[Hit], k: int, instruction: str | None = None
) -> list[Hit]:
    """Re-order ``hits`` by the reranker's (query, chunk text) scores and keep the best ``k``."""
    if not hits:
        return []
    from ..engine.rerank import rerank

    ranked = rerank(reranker, query, [hit.text for hit in hits], instruction=instruction, top_n=k)
    return [replace(hits[result.index], score=float(result.score)) for result in ranked]
