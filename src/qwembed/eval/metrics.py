"""Metric computations, delegated to scipy, scikit-learn and trec_eval (via pytrec_eval).

Names follow MTEB (``cosine_spearman``, ``ndcg_at_10``, ...) so that numbers can be put next
to leaderboard numbers. Correlations stay in [-1, 1] as MTEB stores them (not × 100).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytrec_eval
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score

#: cut-offs reported for retrieval; ``top{k}_accuracy`` is trec_eval's success@k
TOPK_ACCURACY = (1, 3, 5)
RECALL_AT = (1, 3, 5, 10, 100)
NDCG_AT = (1, 3, 5, 10)
MRR_AT = 10


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row pair; rows are re-normalised so un-normalised input is safe."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.einsum("ij,ij->i", a.astype(np.float64), b.astype(np.float64))


def sts_scores(cosines: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MTEB's STS scores: Spearman and Pearson of the pair cosines against the gold labels."""
    if len(np.unique(labels)) < 2 or len(np.unique(cosines)) < 2:
        raise ValueError("correlation is undefined: labels or cosines are constant")
    return {
        "cosine_spearman": float(spearmanr(cosines, labels).statistic),
        "cosine_pearson": float(pearsonr(cosines, labels).statistic),
    }


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 of the positive class (label 1), as MTEB's pair classification."""
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1": float(f1_score(y_true, y_pred, pos_label=1, zero_division=0.0)),
    }


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The cosine threshold (predict 1 when ``score >= t``) with the highest accuracy on
    these pairs; mid-points between neighbouring scores, so it generalises to unseen ones.

    Equally good cuts go to the one with the fewest positives, so the choice is deterministic.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order].astype(np.int64)
    # predicting the top i pairs as positive: correct = positives among them + negatives after
    pos_before = np.concatenate([[0], np.cumsum(y)])
    neg_total = int((y == 0).sum())
    neg_before = np.arange(len(y) + 1) - pos_before
    correct = pos_before + (neg_total - neg_before)
    # only cut between distinct scores: a threshold cannot split equal cosines
    valid = np.concatenate([[True], s[1:] != s[:-1], [True]])
    candidates = np.flatnonzero(valid)
    best = int(candidates[np.argmax(correct[candidates])])
    if best == 0:
        return float(s[0]) + 1e-6  # everything negative
    if best == len(s):
        return float(s[-1])  # everything positive
    return float((s[best - 1] + s[best]) / 2)


def retrieval_scores(
    qrels: Mapping[str, Mapping[str, int]],
    ranking: Mapping[str, Sequence[str]],
) -> dict[str, dict[str, float]]:
    """Per-query metrics from trec_eval for ranked doc ids (best first).

    ``ranking`` is passed to trec_eval with scores derived from the rank, so trec_eval sees
    exactly our order (it would otherwise break score ties by doc id). MRR@10 is trec_eval's
    reciprocal rank on the ranking cut to 10, which is MTEB's definition. Queries without a
    ranking score 0, as they would in MTEB.
    """
    qrels = {q: {d: int(r) for d, r in rel.items()} for q, rel in qrels.items()}
    run = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q, docs in ranking.items()}
    run_10 = {q: {d: float(MRR_AT - i) for i, d in enumerate(docs[:MRR_AT])} for q, docs in ranking.items()}
    measures = {
        "success." + ",".join(map(str, TOPK_ACCURACY)),
        "recall." + ",".join(map(str, RECALL_AT)),
        "ndcg_cut." + ",".join(map(str, NDCG_AT)),
    }
    full = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    cut = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run_10)
    names = (
        [(f"success_{k}", f"top{k}_accuracy") for k in TOPK_ACCURACY]
        + [(f"recall_{k}", f"recall_at_{k}") for k in RECALL_AT]
        + [(f"ndcg_cut_{k}", f"ndcg_at_{k}") for k in NDCG_AT]
    )
    per_query: dict[str, dict[str, float]] = {}
    for q in qrels:
        scores = {ours: float(full.get(q, {}).get(theirs, 0.0)) for theirs, ours in names}
        scores[f"mrr_at_{MRR_AT}"] = float(cut.get(q, {}).get("recip_rank", 0.0))
        per_query[q] = scores
    return per_query


def mean_scores(
    per_query: Mapping[str, Mapping[str, float]], queries: Sequence[str] | None = None
) -> dict[str, float]:
    """Average of per-query metrics over ``queries`` (all when None), in a stable key order."""
    chosen = list(per_query) if queries is None else list(queries)
    if not chosen:
        return {}
    keys = list(per_query[chosen[0]])
    return {k: float(np.mean([per_query[q][k] for q in chosen])) for k in keys}
