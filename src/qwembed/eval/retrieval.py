"""Retrieval: rank the corpus for each query by cosine; trec_eval scores the ranking.

Queries are embedded as ``input_type="query"`` with the instruction (the model's default
when none is given); documents as ``"document"`` and never with an instruction.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .encoding import DEFAULT_BATCH_SIZE, EncodeStats, encode
from .metrics import mean_scores, retrieval_scores
from .protocol import TextEmbedder
from .results import EvalRecord
from .retrieval_data import RetrievalSet

#: documents kept per query; enough for recall@100, the deepest cut-off reported
TOP_K = 100
#: queries scored against the corpus at once: bounds the (queries × docs) score matrix
_QUERY_BLOCK = 512


def rank(queries: np.ndarray, docs: np.ndarray, top_k: int = TOP_K) -> np.ndarray:
    """Indices of the ``top_k`` best documents per query, best first; equal scores keep
    corpus order, so rankings are reproducible."""
    k = min(top_k, docs.shape[0])
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    for lo in range(0, queries.shape[0], _QUERY_BLOCK):
        scores = queries[lo : lo + _QUERY_BLOCK] @ docs.T
        if k < scores.shape[1]:
            # take the k-th best score and keep everything at least that good, so a tie at
            # the boundary is resolved by corpus order below, not by argpartition's whims
            kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]
            candidates = np.where(scores >= kth, scores, -np.inf)
        else:
            candidates = scores
        out[lo : lo + _QUERY_BLOCK] = np.argsort(-candidates, axis=1, kind="stable")[:, :k]
    return out


def score_rankings(
    data: RetrievalSet, query_vecs: np.ndarray, doc_vecs: np.ndarray
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean metrics, per-query metrics) for the given query and document vectors."""
    doc_ids = list(data.corpus)
    qids = list(data.queries)
    top = rank(query_vecs, doc_vecs)
    ranking = {q: [doc_ids[i] for i in row] for q, row in zip(qids, top, strict=True)}
    per_query = retrieval_scores(data.qrels, ranking)
    return mean_scores(per_query, qids), per_query


def by_category(data: RetrievalSet, per_query: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean metrics per query category, categories in order of first appearance."""
    groups: dict[str, list[str]] = {}
    for qid in data.queries:
        if qid in data.categories:
            groups.setdefault(data.categories[qid], []).append(qid)
    return {cat: {**mean_scores(per_query, qids), "queries": len(qids)} for cat, qids in groups.items()}


def embed_retrieval_set(
    model: TextEmbedder,
    data: RetrievalSet,
    *,
    instruction: str | None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    stats: EncodeStats | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(query vectors, document vectors) in the set's query and corpus order."""
    docs = encode(
        model,
        list(data.corpus.values()),
        input_type="document",
        batch_size=batch_size,
        stats=stats,
        progress=progress,
        desc=f"{data.name} corpus",
    )
    queries = encode(
        model,
        list(data.queries.values()),
        input_type="query",
        instruction=instruction,
        batch_size=batch_size,
        stats=stats,
        progress=progress,
        desc=f"{data.name} queries",
    )
    return queries, docs


def run_retrieval(
    model: TextEmbedder,
    data: RetrievalSet,
    *,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
) -> EvalRecord:
    start = time.perf_counter()
    stats = EncodeStats()
    query_vecs, doc_vecs = embed_retrieval_set(
        model, data, instruction=instruction, batch_size=batch_size, stats=stats, progress=progress
    )
    metrics, per_query = score_rankings(data, query_vecs, doc_vecs)
    details: dict[str, Any] = {}
    if data.categories:
        details["by_category"] = by_category(data, per_query)
    return EvalRecord(
        task="retrieval",
        dataset=data.name,
        data={
            "path": data.path,
            "sha256": data.sha256,
            "queries": len(data.queries),
            "documents": len(data.corpus),
        },
        model=model.name,
        dimension=int(doc_vecs.shape[1]),
        metrics=metrics,
        config={"instruction": instruction, "top_k": TOP_K},
        timing={**stats.as_dict(), "total_s": round(time.perf_counter() - start, 3)},
        details=details,
    )
