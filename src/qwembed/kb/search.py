"""Fusing dense and keyword results, one passage per document, and the optional rerank stage.

Hybrid search fuses by default with *distribution-based score fusion* (DBSF, as in Qdrant): each
list's scores are mapped from [mean − 3σ, mean + 3σ] over the candidates read to [0, 1], and a
chunk's fused score is the sum over the lists it is in. A keyword list that came back shorter than
asked holds every chunk with a query word, so the dense list's other chunks count in its mean and σ
with their keyword score, 0: a rare word's lone match is then the standout it is. A clear winner
(a score far above its list's spread) counts for more than a list's noise, and neither list is
weighted by hand. Options:
``relative_score`` (Weaviate's default: min-max normalised, 0.75 dense + 0.25 keyword) and ``rrf``
(reciprocal rank fusion, k = 60: Elastic, OpenSearch). docs/knowledge-base.md, "Hybrid fusion",
has the measurements behind the choice: DBSF was the only one at or above RRF on every set, and the
only one that stays good when one side cannot read the text (MiniLM on Chinese).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np

from .store import Hit

Mode = Literal["dense", "keyword", "hybrid"]
MODES: tuple[Mode, ...] = ("dense", "keyword", "hybrid")
Fusion = Literal["dbsf", "relative_score", "rrf"]
FUSIONS: tuple[Fusion, ...] = ("dbsf", "relative_score", "rrf")
# The constant from Cormack et al. (2009): damps the head so one list's top hit cannot dominate.
RRF_K = 60
# Weaviate's default weight of the vector side in its relative score fusion.
DENSE_WEIGHT = 0.75


class SearchResults(list[Hit]):
    """Hits, best first, plus ``warnings``: what the search did that a caller should know (a query
    cut to the model's limit). A plain list otherwise."""

    def __init__(self, hits: Sequence[Hit] = (), warnings: Sequence[str] = ()):
        super().__init__(hits)
        self.warnings = list(warnings)


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


def candidates_for(k: int, deep: bool) -> int:
    """How deep each list is read first: fusion needs more than k, and reranking or keeping one
    chunk per document (``deep``) more still."""
    return max(k * 4, 40) if deep else max(k * 2, 20)


def _summed(scored: Iterable[tuple[Sequence[Hit], Iterable[float]]], k: int) -> list[Hit]:
    """Each chunk's contributions (a list's hits, and what each brings) summed over the lists it
    is in; the ``k`` best, carrying their sums. Ties keep first-seen order, so the first list's
    (dense) order breaks them."""
    scores: dict[str, float] = {}
    first: dict[str, Hit] = {}
    for hits, contributions in scored:
        for hit, value in zip(hits, contributions, strict=True):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + value
            first.setdefault(hit.chunk_id, hit)
    order = sorted(scores, key=lambda chunk_id: -scores[chunk_id])
    return [replace(first[chunk_id], score=scores[chunk_id]) for chunk_id in order[:k]]


def reciprocal_rank_fusion(lists: Sequence[Sequence[Hit]], k: int, constant: int = RRF_K) -> list[Hit]:
    """Score = Σ 1/(constant + rank) over the lists a chunk appears in; ties keep first-seen order."""
    ranked = ((hits, [1.0 / (constant + rank) for rank in range(1, len(hits) + 1)]) for hits in lists)
    return _summed(ranked, k)


def relative_score_fusion(
    dense: Sequence[Hit], keyword: Sequence[Hit], k: int, alpha: float = DENSE_WEIGHT
) -> list[Hit]:
    """``alpha`` × min-max-normalised dense score + (1 − ``alpha``) × normalised keyword score.

    Normalising makes cosine and BM25 comparable; keeping the scores (not only ranks) lets a clear
    winner in the stronger list stay ahead. A list whose scores are all equal counts as 1 for each.
    """

    def weighted(hits: Sequence[Hit], weight: float) -> list[float]:
        if not hits:
            return []
        high = max(hit.score for hit in hits)
        low = min(hit.score for hit in hits)
        return [weight * ((hit.score - low) / (high - low) if high > low else 1.0) for hit in hits]

    return _summed(((dense, weighted(dense, alpha)), (keyword, weighted(keyword, 1.0 - alpha))), k)


def distribution_based_score_fusion(
    lists: Sequence[Sequence[Hit]], k: int, zeros: Sequence[int] | None = None
) -> list[Hit]:
    """Σ over lists of (score − (μ − 3σ)) / 6σ, μ and σ over that list's candidates; a list whose
    candidates all score alike gives each of them 0.5 (its mean).

    ``zeros``: per list, how many other candidates are known to score 0 in it, counted in μ and σ.
    A keyword list that holds every chunk with a query word (it came back shorter than asked)
    scores 0 for the dense list's other chunks; left out, its lone hit (a rare, exact word) was
    its own mean, 0.5, below a dense list's noise, and a few hits barely above it."""

    def normalised(hits: Sequence[Hit], zeros: int) -> list[float]:
        if not hits:
            return []
        values = np.array([hit.score for hit in hits], dtype=np.float64)
        scored = np.concatenate([values, np.zeros(zeros)])
        mean, spread = float(scored.mean()), float(scored.std())
        if not spread > 0:
            return [0.5] * len(hits)
        return [float((value - (mean - 3 * spread)) / (6 * spread)) for value in values]

    zeros = zeros or [0] * len(lists)
    return _summed(((hits, normalised(hits, n)) for hits, n in zip(lists, zeros, strict=True)), k)


def fuse(
    fusion: Fusion, dense: Sequence[Hit], keyword: Sequence[Hit], k: int, keyword_complete: bool = False
) -> list[Hit]:
    """The two lists as one, best first. ``keyword_complete``: the keyword list holds every chunk
    with a query word (the store had fewer than asked), so the dense list's others score 0 there."""
    if fusion == "rrf":
        return reciprocal_rank_fusion([dense, keyword], k)
    if fusion == "relative_score":
        return relative_score_fusion(dense, keyword, k)
    unmatched = 0
    if keyword_complete:
        matched = {hit.chunk_id for hit in keyword}
        unmatched = sum(hit.chunk_id not in matched for hit in dense)
    return distribution_based_score_fusion([dense, keyword], k, zeros=[0, unmatched])


def best_per_document(hits: Sequence[Hit]) -> list[Hit]:
    """The first (best) chunk of each document, in order."""
    seen: set[str] = set()
    kept: list[Hit] = []
    for hit in hits:
        if hit.document_id not in seen:
            seen.add(hit.document_id)
            kept.append(hit)
    return kept


def rerank_hits(
    reranker, query: str, hits: Sequence[Hit], k: int, instruction: str | None = None
) -> list[Hit]:
    """Re-order ``hits`` by the reranker's (query, chunk text) scores and keep the best ``k``."""
    if not hits:
        return []
    from ..engine.rerank import rerank

    ranked = rerank(reranker, query, [hit.text for hit in hits], instruction=instruction, top_n=k)
    return [replace(hits[result.index], score=float(result.score)) for result in ranked]
