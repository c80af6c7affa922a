"""STS, few-shot pairs and retrieval tasks, run with model-free embedders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from qwembed.eval.encoding import encode
from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.pairs import pair_features, parse_shots, run_pairs, stratified_sample
from qwembed.eval.pairs_data import load_pairs
from qwembed.eval.retrieval import rank, run_retrieval, run_retrieval_stages
from qwembed.eval.retrieval_data import load_retrieval
from qwembed.eval.sts import run_sts

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


class LookupEmbedder:
    """Vectors from a table, so that every cosine in a test is known in advance."""

    name = "lookup"
    dimension = 2

    def __init__(self, table: dict[str, Sequence[float]]):
        self.table = table
        self.calls: list[tuple[list[str], str | None, str | None]] = []

    def embed(self, texts, *, input_type=None, instruction=None, dimensions=None):
        self.calls.append((list(texts), input_type, instruction))
        v = np.array([self.table[t] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


class TruncatingEmbedder(LookupEmbedder):
    def embed(self, texts, *, input_type=None, instruction=None, dimensions=None, truncate=False):
        assert truncate is True  # evaluations cut over-long documents instead of failing
        return super().embed(texts, input_type=input_type, instruction=instruction)


def test_encode_asks_embedders_that_can_truncate_to_do_so():
    model = TruncatingEmbedder({"a": (1, 0), "b": (0, 1)})
    assert encode(model, ["a", "b", "a"], progress=False).shape == (3, 2)


def slice_file(tmp_path: Path, src: Path, n: int, start: int = 0) -> Path:
    lines = src.read_text(encoding="utf-8").splitlines(True)[start : start + n]
    out = tmp_path / f"{src.stem}-{start}-{n}{src.suffix}"
    out.write_text("".join(lines), encoding="utf-8")
    return out


# ---- STS -----------------------------------------------------------------------------------
def test_sts_known_spearman(tmp_path):
    angles = {"a": 0.0, "b": 0.2, "c": 0.6, "d": 0.4, "e": 1.2}  # cos(a, x) falls as the angle grows
    model = LookupEmbedder({k: (np.cos(t), np.sin(t)) for k, t in angles.items()})
    path = tmp_path / "p.tsv"
    path.write_text("a\tb\t4\na\tc\t3\na\td\t2\na\te\t1\n", encoding="utf-8")  # cos order b > d > c > e
    rec = run_sts(model, load_pairs(path), progress=False)
    # cos ranks (high→low): b, d, c, e vs labels 4, 2, 3, 1 → d² = 0+1+1+0 → rho = 0.8
    assert rec.metrics["cosine_spearman"] == pytest.approx(0.8)
    assert rec.task == "sts" and rec.data["pairs"] == 4
    assert all(call[1] is None for call in model.calls)  # no instruction → plain text
    assert len(model.calls[0][0]) == 5  # "a" repeated four times, embedded once


@needs_data
def test_sts_on_real_slice_is_deterministic(tmp_path):
    data = load_pairs(slice_file(tmp_path, DATA / "STS-B-zh" / "STS-B.test.data", 200))
    a = run_sts(HashingEmbedder(64), data, progress=False)
    b = run_sts(HashingEmbedder(64), data, progress=False)
    assert a.metrics == b.metrics and 0 < a.metrics["cosine_spearman"] < 1


# ---- few-shot pairs --------------------------------------------------------------------------
def test_pair_features_layout():
    u = np.array([[1.0, -2.0]])
    v = np.array([[3.0, 4.0]])
    np.testing.assert_array_equal(pair_features(u, v), [[1, -2, 3, 4, 2, 6, 3, -8]])


def test_stratified_sample_is_stratified_and_seeded():
    labels = np.array([0] * 300 + [1] * 100)
    idx = stratified_sample(labels, 40, seed=3)
    assert len(idx) == 40 and (labels[idx] == 1).sum() == 10  # 25 % positives, as in the pool
    np.testing.assert_array_equal(idx, stratified_sample(labels, 40, seed=3))
    assert not np.array_equal(idx, stratified_sample(labels, 40, seed=4))
    np.testing.assert_array_equal(stratified_sample(labels, 1000, seed=0), np.arange(400))


@pytest.mark.parametrize(
    ("labels", "n"),
    [
        ([0] * 30 + [1] * 30, 59),  # one pair left out: fewer than the classes for scikit-learn
        ([0] * 59 + [1], 10),  # a class of one pair
        ([0] * 5 + [1] + [2] * 50, 3),
    ],
)
def test_stratified_sample_draws_where_scikit_learn_cannot(labels, n):
    """These once ended ``eval pairs`` in a scikit-learn traceback."""
    labels = np.array(labels)
    idx = stratified_sample(labels, n, seed=1)
    assert len(idx) == n == len(set(idx.tolist()))
    assert set(labels[idx].tolist()) == set(labels.tolist())  # every class drawn
    np.testing.assert_array_equal(idx, stratified_sample(labels, n, seed=1))


def test_pairs_count_test_pairs_seen_in_training(tmp_path, caplog):
    path = tmp_path / "p.tsv"
    path.write_text("".join(f"甲{i}\t乙{i}\t{i % 2}\n" for i in range(20)), encoding="utf-8")
    swapped = tmp_path / "s.tsv"
    swapped.write_text("乙0\t甲0\t0\n新的\t句子\t1\n", encoding="utf-8")
    pairs = load_pairs(path)
    with caplog.at_level("WARNING"):
        rec = run_pairs(HashingEmbedder(32), pairs, load_pairs(swapped), shots=[None], progress=False)
    assert rec.data["test_pairs_in_train"] == 1 and "1 of the 2 test pairs" in caplog.text
    same = run_pairs(HashingEmbedder(32), pairs, pairs, shots=[None], progress=False)
    assert same.data["test_pairs_in_train"] == 20


def test_parse_shots():
    assert parse_shots("50, 100,all") == [50, 100, None]
    with pytest.raises(Exception, match="neither a positive integer"):
        parse_shots("50,lots")
    assert parse_shots("5000,all") == [5000, None]  # (may meet at run time: one row, see below)
    with pytest.raises(Exception, match="'50' and '050' are the same; give each once"):
        parse_shots("50,100,050")


@needs_data
def test_pairs_on_real_slices(tmp_path):
    train = load_pairs(slice_file(tmp_path, DATA / "LCQMC" / "LCQMC.valid.data", 200))
    test = load_pairs(slice_file(tmp_path, DATA / "LCQMC" / "LCQMC.test.data", 200))
    run = lambda: run_pairs(HashingEmbedder(64), train, test, shots=[20, None], seeds=3, progress=False)  # noqa: E731
    rec = run()
    rows = rec.details["shots"]
    assert [r["shots"] for r in rows] == [20, "all"]
    assert rows[0]["runs"] == 3 and len(rows[0]["accuracy_runs"]) == 3 and rows[0]["accuracy_std"] > 0
    assert rows[1]["runs"] == 1 and rows[1]["train_size"] == 200
    assert rec.metrics["accuracy"] == rows[1]["accuracy_mean"]
    assert 0 <= rec.metrics["zero_shot_accuracy"] <= 1
    assert rec.data["train_pairs"] == 200 and len(rec.data["train_sha256"]) == 64
    assert run().details == rec.details  # same seeds → same numbers


# ---- retrieval -------------------------------------------------------------------------------
def test_rank_breaks_ties_by_corpus_order():
    q = np.array([[1.0, 0.0]])
    d = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.5]])
    assert rank(q, d, top_k=2).tolist() == [[1, 2]]
    assert rank(q, d).tolist() == [[1, 2, 3, 0]]


def test_retrieval_known_ranking_and_categories(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"id": "q1", "query": "Q1", "positive": "A", "negatives": ["B"], "category": "easy"}\n'
        '{"id": "q2", "query": "Q2", "positive": "C", "negatives": ["D"], "category": "hard"}\n',
        encoding="utf-8",
    )
    table = {"Q1": (1, 0), "Q2": (0, 1), "A": (1, 0.1), "B": (1, 0.5), "C": (0.6, 1), "D": (0.2, 1)}
    model = LookupEmbedder(table)
    rec = run_retrieval(model, load_retrieval(str(path)), instruction="find it", progress=False)
    # q1: A first (MRR 1); q2: D (0.98) beats C (0.86) → C at rank 2 (MRR 0.5)
    assert rec.metrics["mrr_at_10"] == pytest.approx(0.75)
    assert rec.metrics["top1_accuracy"] == 0.5 and rec.metrics["top3_accuracy"] == 1
    assert rec.details["by_category"]["easy"]["mrr_at_10"] == 1
    assert rec.details["by_category"]["hard"]["mrr_at_10"] == 0.5
    # instruction on queries only, documents never
    assert ("document", None) in [(c[1], c[2]) for c in model.calls]
    assert ("query", "find it") in [(c[1], c[2]) for c in model.calls]


class OracleReranker:
    """Scores a document 1 when it is the query's positive: reranking must then fix every query."""

    name = "oracle"

    def __init__(self, positives: dict[str, str]):
        self.positives = positives

    def tokenize_pairs(self, query, documents, instruction, truncate=True, max_tokens=None):
        return [[1 if self.positives[query] == d else 0, 0] for d in documents]

    def score_token_ids(self, batch):
        return np.array([ids[0] for ids in batch], dtype=np.float32)


def test_retrieval_before_and_after_reranking(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"id": "q1", "query": "Q1", "positive": "A", "negatives": ["B"]}\n'
        '{"id": "q2", "query": "Q2", "positive": "C", "negatives": ["D"]}\n',
        encoding="utf-8",
    )
    table = {"Q1": (1, 0), "Q2": (0, 1), "A": (1, 0.1), "B": (1, 0.5), "C": (0.6, 1), "D": (0.2, 1)}
    before, after = run_retrieval_stages(
        LookupEmbedder(table),
        load_retrieval(str(path)),
        progress=False,
        reranker=OracleReranker({"Q1": "A", "Q2": "C"}),
        rerank_top_k=2,
    )
    assert before.metrics["mrr_at_10"] == pytest.approx(0.75)
    assert after.metrics["mrr_at_10"] == 1.0 and after.metrics["top1_accuracy"] == 1.0
    assert after.model.endswith("+ oracle") and after.config["rerank_top_k"] == 2
    # the report gives the reranking its own seconds, not only the embedder's repeated
    from qwembed.eval.report import render_report

    report = render_report([before.as_dict(), after.as_dict()])
    header = next(line for line in report.splitlines() if line.startswith("| model"))
    assert header.endswith("| rerank s |")
    before_row, after_row = (line for line in report.splitlines() if line.startswith("| lookup"))
    assert before_row.endswith("| – |") and not after_row.endswith("| – |")


def test_zh_hard_runs_with_baseline():
    rec = run_retrieval(HashingEmbedder(128), load_retrieval("builtin:zh-hard"), progress=False)
    assert len(rec.details["by_category"]) >= 8
    assert 0 < rec.metrics["top1_accuracy"] < 1
