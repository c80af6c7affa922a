"""Metric values on cases small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qwembed.eval.metrics import (
    best_threshold,
    classification_scores,
    mean_scores,
    retrieval_scores,
    sts_scores,
)


def test_spearman_and_pearson_by_hand():
    # ranks of cosines: 1, 3, 2, 4 vs labels 1, 2, 3, 4 → d² = 0+1+1+0 → rho = 1 − 6·2/(4·15) = 0.8
    scores = sts_scores(np.array([0.1, 0.3, 0.2, 0.4]), np.array([1.0, 2.0, 3.0, 4.0]))
    assert scores["cosine_spearman"] == pytest.approx(0.8)
    # perfectly linear → Pearson 1
    assert sts_scores(np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]))[
        "cosine_pearson"
    ] == pytest.approx(1.0)


def test_correlation_of_constant_is_an_error():
    with pytest.raises(ValueError, match="constant"):
        sts_scores(np.array([0.5, 0.5]), np.array([0.0, 1.0]))


def test_ranking_with_known_mrr_and_ndcg():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"z": 1}, "q4": {"a": 1, "b": 1}}
    others = [f"x{i}" for i in range(20)]
    ranking = {
        "q1": ["b", "a", *others],  # relevant at rank 2
        "q2": ["b", "a", *others],  # relevant at rank 1
        "q3": [*others[:10], "z"],  # relevant at rank 11: outside MRR@10 and nDCG@10
        "q4": ["a", "x0", "b"],  # two relevant at ranks 1 and 3
    }
    per = retrieval_scores(qrels, ranking)
    assert per["q1"]["mrr_at_10"] == pytest.approx(0.5)
    assert per["q1"]["ndcg_at_10"] == pytest.approx(1 / math.log2(3))
    assert per["q1"]["top1_accuracy"] == 0 and per["q1"]["top3_accuracy"] == 1
    assert per["q2"]["mrr_at_10"] == 1 and per["q2"]["ndcg_at_10"] == 1
    assert per["q3"]["mrr_at_10"] == 0 and per["q3"]["ndcg_at_10"] == 0
    assert per["q3"]["recall_at_10"] == 0 and per["q3"]["recall_at_100"] == 1
    # DCG = 1 + 1/log2(4) = 1.5, ideal = 1 + 1/log2(3)
    assert per["q4"]["ndcg_at_10"] == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert per["q4"]["recall_at_1"] == 0.5 and per["q4"]["recall_at_3"] == 1
    mean = mean_scores(per)
    assert mean["mrr_at_10"] == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert mean["top1_accuracy"] == pytest.approx(2 / 4)


def test_rank_order_not_score_ties_decides():
    # trec_eval breaks equal scores by doc id; we hand it rank-derived scores, so "b" stays first
    per = retrieval_scores({"q": {"a": 1}}, {"q": ["b", "a"]})
    assert per["q"]["mrr_at_10"] == 0.5


def test_query_without_ranking_scores_zero():
    per = retrieval_scores({"q": {"a": 1}, "r": {"a": 1}}, {"q": ["a"]})
    assert per["r"]["mrr_at_10"] == 0 and per["q"]["mrr_at_10"] == 1


def test_best_threshold():
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3])
    labels = np.array([1, 1, 0, 0, 0])
    t = best_threshold(scores, labels)
    assert 0.7 < t < 0.8
    assert best_threshold(np.array([0.2, 0.1]), np.array([0, 0])) > 0.2  # all negative
    assert best_threshold(np.array([0.2, 0.1]), np.array([1, 1])) <= 0.1  # all positive


def test_classification_scores():
    s = classification_scores(np.array([1, 1, 0, 0]), np.array([1, 0, 0, 0]))
    assert s["accuracy"] == 0.75 and s["f1"] == pytest.approx(2 / 3)
