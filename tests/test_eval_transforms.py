"""PCA / whitening: fit, transform, and a round trip through the saved file; the sweep."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qwembed.eval.errors import EvalError
from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.pairs_data import load_pairs
from qwembed.eval.retrieval_data import load_retrieval
from qwembed.eval.sweep import parse_dims, parse_posts, run_sweep
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


def few_documents(tmp_path, n: int = 30):
    """A retrieval set of ``n`` queries and documents: too few vectors for most whitenings."""
    path = tmp_path / "few.jsonl"
    lines = (json.dumps({"query": f"问题{i}", "positive": f"第{i}个答案的文字"}) for i in range(n))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return load_retrieval(str(path))


def test_each_warned_sweep_row_has_a_footnote_naming_it(tmp_path, caplog):
    """Footnotes were keyed by the directions kept: "32 / whiten:16 ⚠" and "64 / whiten:16 ⚠" shared
    one "⚠ whiten:16 at 16 dims", which names no row; and each warning was logged twice, though one
    corpus fit serves both instruction settings."""
    from qwembed.eval.report import render_report

    with caplog.at_level("WARNING", logger="qwembed.eval.sweep"):
        rec = run_sweep(
            HashingEmbedder(64),
            few_documents(tmp_path),
            dims=parse_dims("16,32,full"),
            posts=["none", "whiten", "whiten:8"],
            progress=False,
        )
    warned = {(r["dims"], r["post"]) for r in rec.details["rows"] if r.get("warning")}
    assert warned == {
        (16, "whiten"),
        (32, "whiten"),
        (64, "whiten"),
        (16, "whiten:8"),
        (32, "whiten:8"),
        (64, "whiten:8"),
    }
    report = render_report([rec.as_dict()])
    notes = dict(re.findall(r"^⚠(\d+) (\d+ dims, [\w:]+): ", report, flags=re.MULTILINE))
    marked = re.findall(r"^\| (\d+) \| (on|off) \| ([\w:]+) ⚠(\d+) \|", report, flags=re.MULTILINE)
    assert len(marked) == 2 * len(warned) and len(notes) == len(warned)
    for dims, _, post, number in marked:
        assert notes[number] == f"{dims} dims, {post}"  # the note a row points to names that row
    assert len(caplog.records) == len(warned)  # one fit each, one warning each


def test_an_sts_sweep_warns_once_per_fit(tmp_path, caplog):
    """STS fits each instruction setting on its own sentences: one warning for each, saying which."""
    path = tmp_path / "p.tsv"
    path.write_text("".join(f"句子{i}号\t第{i}个句子\t{i % 3}\n" for i in range(30)), encoding="utf-8")
    with caplog.at_level("WARNING", logger="qwembed.eval.sweep"):
        run_sweep(HashingEmbedder(32), load_pairs(path), dims=[None], posts=["whiten"], progress=False)
    assert [("instruction on" in m, "instruction off" in m) for m in caplog.messages] == [
        (True, False),
        (False, True),
    ]


def test_sizes_that_meet_at_run_time_give_one_row_each():
    """``64,full`` on a 64-dimensional model is one size, not two identical sets of rows."""
    rec = run_sweep(
        HashingEmbedder(64),
        load_retrieval("builtin:zh-hard"),
        dims=parse_dims("32,64,full"),
        posts=parse_posts("none,whitening"),
        progress=False,
    )
    keys = [(r["dims"], r["instruction"], r["post"]) for r in rec.details["rows"]]
    assert len(keys) == len(set(keys)) == 2 * 2 * 2
    assert {post for _, _, post in keys} == {"none", "whiten"}  # one spelling, in rows and file names


def test_parse_posts_and_dims_refuse_repeats():
    assert parse_posts(" None,PCA:064,whitening:8") == ["none", "pca:64", "whiten:8"]
    for text in ("none,none", "pca:8,pca:08", "whiten,whitening"):
        with pytest.raises(EvalError, match=r"--post: .* give each once"):
            parse_posts(text)
    for text in ("8,8", "full,all", "8,08"):
        with pytest.raises(EvalError, match=r"--dims: .* give each once"):
            parse_dims(text)
