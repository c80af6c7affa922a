"""PCA / whitening: fit, transform, and a round trip through the saved file; the sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwembed.eval.errors import EvalError
from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.pairs_data import load_pairs
from qwembed.eval.retrieval_data import load_retrieval
from qwembed.eval.sweep import parse_dims, run_sweep
from qwembed.eval.transforms import (
    PCA,
    LinearTransform,
    NotFittedError,
    Whitening,
    load_transform,
    parse_post,
)


def sample(n: int = 300, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # anisotropic: a shared offset and very different variances per direction
    return rng.normal(size=(n, d)) * np.linspace(5, 0.1, d) + 3.0


def test_whitening_gives_identity_covariance():
    x = sample()
    w = Whitening(normalize=False).fit(x)
    y = w.transform(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(16), atol=1e-4)


def test_pca_keeps_the_strongest_directions():
    x = sample()
    p = PCA(4, normalize=False).fit(x)
    y = p.transform(x)
    assert y.shape == (300, 4)
    var = y.var(axis=0)
    top4 = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True)))[::-1][:4]
    np.testing.assert_allclose(var, top4, rtol=1e-4)  # the strongest directions, strongest first
    np.testing.assert_allclose(p.components_.T @ p.components_, np.eye(4), atol=1e-8)  # a rotation


@pytest.mark.parametrize("transform", [PCA(8), Whitening(), Whitening(5)])
def test_save_load_round_trip(tmp_path, transform: LinearTransform):
    x = sample()
    transform.fit(x)
    path = transform.save(tmp_path / "t")
    assert path.suffix == ".npz"
    loaded = LinearTransform.load(path)
    assert type(loaded) is type(transform)
    np.testing.assert_array_equal(loaded.transform(x), transform.transform(x))
    np.testing.assert_allclose(np.linalg.norm(loaded.transform(x), axis=1), 1, atol=1e-5)
    assert load_transform(path).output_dimension == transform.output_dimension


def test_refit_is_deterministic():
    x = sample()
    np.testing.assert_array_equal(Whitening().fit(x).components_, Whitening().fit(x).components_)


def test_whitening_drops_the_null_space():
    x = sample(n=5, d=16)  # 5 points span at most 4 directions around their mean
    assert Whitening().fit(x).output_dimension == 4


def test_errors():
    with pytest.raises(NotFittedError):
        PCA(2).transform(np.ones((2, 3)))
    with pytest.raises(ValueError, match="n_components=9"):
        PCA(9).fit(sample(d=4))
    assert parse_post("none") is None
    assert isinstance(parse_post("pca:32"), PCA) and isinstance(parse_post("whiten"), Whitening)
    with pytest.raises(ValueError, match="unknown post-processing"):
        parse_post("zca")
    with pytest.raises(ValueError, match="pca needs a size"):
        parse_post("pca")


# ---- sweep ---------------------------------------------------------------------------------
def test_sweep_on_retrieval_saves_reusable_transforms(tmp_path):
    data = load_retrieval("builtin:zh-hard")
    rec = run_sweep(
        HashingEmbedder(64),
        data,
        dims=parse_dims("16,32,full,128"),
        posts=["none", "pca:24", "whiten"],
        instruction="检索相关文档",
        progress=False,
        save_dir=tmp_path,
    )
    rows = rec.details["rows"]
    assert len(rows) == 2 * 4 * 3
    skipped = {(r["dims"], r["post"]) for r in rows if "skipped" in r}
    assert skipped == {(16, "pca:24"), (128, "none"), (128, "pca:24"), (128, "whiten")}
    by = {(r["dims"], r["instruction"], r["post"]): r for r in rows}
    assert by[(32, True, "pca:24")]["output_dims"] == 24
    assert rec.metrics == by[(64, True, "none")]["metrics"]  # the reference row
    # the saved whitening reproduces the sweep's vectors
    saved = load_transform(tmp_path / "hashing_64-32-whiten.npz")
    assert saved.input_dimension == 32
    json.dumps(rec.as_dict())  # serialisable


def test_sweep_on_sts(tmp_path):
    path = tmp_path / "p.tsv"
    path.write_text("".join(f"句子{i}号\t第{i}个句子\t{i % 3}\n" for i in range(30)), encoding="utf-8")
    rec = run_sweep(
        HashingEmbedder(32), load_pairs(path), dims=[8, None], posts=["none", "whiten"], progress=False
    )
    assert rec.config["kind"] == "sts" and "cosine_spearman" in rec.metrics
    assert len(rec.details["rows"]) == 8


def test_a_whitening_fitted_on_too_few_vectors_is_flagged(tmp_path):
    """30 pairs' 60 sentences cannot estimate 32 directions' variances: the row and the report say
    so (a real STS sweep's whitened Spearman moved from 0.17 to 0.47 with the tolerance alone)."""
    from qwembed.eval.report import render_report

    path = tmp_path / "p.tsv"
    path.write_text("".join(f"句子{i}号\t第{i}个句子\t{i % 3}\n" for i in range(30)), encoding="utf-8")
    posts = ["whiten", "pca:4"]
    rec = run_sweep(HashingEmbedder(32), load_pairs(path), dims=[4, None], posts=posts, progress=False)
    flagged = {(r["dims"], r["post"]) for r in rec.details["rows"] if r.get("warning")}
    assert flagged == {(32, "whiten")}  # 60 vectors: enough for 4 directions; PCA never flagged
    assert "fewer than 10 per direction" in render_report([rec.as_dict()])


def test_sweep_everything_skipped():
    with pytest.raises(EvalError, match="every sweep setting was skipped"):
        run_sweep(
            HashingEmbedder(16), load_retrieval("builtin:zh-hard"), dims=[64], posts=["none"], progress=False
        )
