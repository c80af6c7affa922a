"""Retrieval: rank the corpus for each query by cosine; trec_eval scores the ranking.

Queries are embedded as ``input_type="query"`` with the instruction (the model's default
when none is given); documents as ``"document"`` and never with an instruction.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from .encoding import DEFAULT_BATCH_SIZE, EncodeStats, encode
from .metrics import mean_scores, retrieval_scores
from .protocol import TextEmbedder
from .results import EvalRecord
from .retrieval_data import RetrievalSet

if TYPE_CHECKING:
    from ..backends.base import Reranker

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
    return score_top(data, rank(query_vecs, doc_vecs))


def score_top(data: RetrievalSet, top: np.ndarray) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """(mean metrics, per-query metrics) of a ranking: corpus indices per query, best first."""
    doc_ids = list(data.corpus)
    qids = list(data.queries)
    ranking = {q: [doc_ids[i] for i in row] for q, row in zip(qids, top, strict=True)}
    per_query = retrieval_scores(data.qrels, ranking)
    return mean_scores(per_query, qids), per_query


def rerank_top(
    data: RetrievalSet,
    top: np.ndarray,
    reranker: Reranker,
    *,
    top_k: int = TOP_K,
    instruction: str | None = None,
    progress: bool = True,
) -> np.ndarray:
    """The two-stage recipe: re-order each query's first ``top_k`` documents by the reranker's
    scores (the engine's ranking: on its logits, so confident documents whose probabilities both
    round to 1.0 keep their order; ties keep the embedding order); documents below the cut keep
    their embedding order."""
    from tqdm.auto import tqdm

    from ..engine.rerank import rerank

    doc_texts = list(data.corpus.values())
    reordered = top.copy()
    rows = zip(data.queries.values(), top, strict=True)
    for row, (query, candidates) in enumerate(
        tqdm(rows, total=len(top), disable=not progress, desc="rerank")
    ):
        head = candidates[:top_k]
        ranked = rerank(reranker, query, [doc_texts[i] for i in head], instruction=instruction)
        reordered[row, : len(head)] = head[[result.index for result in ranked]]
    return reordered


#: the category row of queries that have none
UNCATEGORISED = "(no category)"


def by_category(data: RetrievalSet, per_query: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """Mean metrics per query category, categories in order of first appearance; queries without
    one (in a set where others have one) under ``UNCATEGORISED``, so that the rows add up."""
    groups: dict[str, list[str]] = {}
    for qid in data.queries:
        groups.setdefault(data.categories.get(qid, UNCATEGORISED), []).append(qid)
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
    return run_retrieval_stages(
        model, data, instruction=instruction, batch_size=batch_size, progress=progress
    )[0]


def run_retrieval_stages(
    model: TextEmbedder,
    data: RetrievalSet,
    *,
    instruction: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool = True,
    reranker: Reranker | None = None,
    rerank_top_k: int = TOP_K,
    rerank_instruction: str | None = None,
) -> list[EvalRecord]:
    """The embedding ranking's record, then — with a reranker — the reranked ranking's record
    (model named ``EMBEDDER + RERANKER``), so one report shows metrics before and after."""
    start = time.perf_counter()
    stats = EncodeStats()
    query_vecs, doc_vecs = embed_retrieval_set(
        model, data, instruction=instruction, batch_size=batch_size, stats=stats, progress=progress
    )
    top = rank(query_vecs, doc_vecs)
    records = [_record(model.name, data, top, int(doc_vecs.shape[1]), instruction, stats, start)]
    if reranker is not None:
        rerank_start = time.perf_counter()
        reranked = rerank_top(
            data, top, reranker, top_k=rerank_top_k, instruction=rerank_instruction, progress=progress
        )
        record = _record(
            f"{model.name} + {reranker.name}",
            data,
            reranked,
            int(doc_vecs.shape[1]),
            instruction,
            stats,
            start,
        )
        record.config.update(
            {
                "reranker": reranker.name,
                "rerank_top_k": rerank_top_k,
                "rerank_instruction": rerank_instruction,
            }
        )
        record.timing["rerank_s"] = round(time.perf_counter() - rerank_start, 3)
        records.append(record)
    return records


def _record(
    name: str,
    data: RetrievalSet,
    top: np.ndarray,
    dimension: int,
    instruction: str | None,
    stats: EncodeStats,
    start: float,
) -> EvalRecord:
    metrics, per_query = score_top(data, top)
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
        model=name,
        dimension=dimension,
        metrics=metrics,
        config={"instruction": instruction, "top_k": TOP_K},
        timing={**stats.as_dict(), "total_s": round(time.perf_counter() - start, 3)},
        details=details,
    )
