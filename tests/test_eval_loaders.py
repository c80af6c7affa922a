"""Loaders: the supported layouts, and errors that name the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qwembed.eval.errors import DataError
from qwembed.eval.pairs_data import is_pairs_file, load_pairs
from qwembed.eval.retrieval_data import builtin_names, is_retrieval_spec, load_retrieval

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ---- pairs ---------------------------------------------------------------------------------
def test_tsv_and_jsonl_pairs(tmp_path):
    tsv = load_pairs(write(tmp_path, "p.tsv", "a\tb\t1\n\nc\td\t0.5\n"))
    assert tsv.sentence1 == ["a", "c"] and tsv.sentence2 == ["b", "d"]
    np.testing.assert_array_equal(tsv.labels, [1.0, 0.5])
    assert tsv.lines == [1, 3] and len(tsv.sha256) == 64

    rows = [
        {"sentence1": "甲", "sentence2": "乙", "label": 5},
        {"sentence1": "丙", "sentence2": "丁", "label": 0},
    ]
    jl = load_pairs(write(tmp_path, "p.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows)))
    assert jl.sentence1 == ["甲", "丙"] and list(jl.labels) == [5.0, 0.0]


def test_tsv_header_line_is_skipped(tmp_path):
    data = load_pairs(write(tmp_path, "p.tsv", "sentence1\tsentence2\tlabel\nx\ty\t1\n"))
    assert len(data) == 1


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.tsv", "a\tb\t1\nonly two\tcolumns\n", "missing.tsv:2: expected 3 tab-separated columns"),
        ("label.tsv", "a\tb\t1\nc\td\tyes\n", "label.tsv:2: label 'yes' is not a number"),
        ("empty.tsv", "", "empty.tsv: no sentence pairs found"),
        ("blank.tsv", "a\t\t1\n", "blank.tsv:1: sentence2 is empty"),
        ("bytes.tsv", b"a\tb\t1\n\xff\xfe\t1\t0\n", "bytes.tsv:2: not valid UTF-8"),
        (
            "keys.jsonl",
            '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "a"}\n',
            "keys.jsonl:2: missing key(s) sentence2, label",
        ),
        (
            "json.jsonl",
            '{"sentence1": "a", "sentence2": "b", "label": 1}\n{oops\n',
            "json.jsonl:2: invalid JSON",
        ),
    ],
)
def test_bad_pair_files_name_file_and_line(tmp_path, name, content, expected):
    with pytest.raises(DataError) as err:
        load_pairs(write(tmp_path, name, content))
    assert expected in str(err.value)


def test_binary_labels_reports_the_line(tmp_path):
    data = load_pairs(write(tmp_path, "p.tsv", "a\tb\t1\nc\td\t0\ne\tf\t3\n"))
    with pytest.raises(DataError, match=r"p\.tsv:3: label 3 is not 0 or 1"):
        data.binary_labels()


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.tsv")


# ---- retrieval -----------------------------------------------------------------------------
def test_simple_jsonl(tmp_path):
    lines = [
        {"id": "q1", "query": "q one", "positive": "doc A", "negatives": ["doc B", "doc C"], "category": "x"},
        {"query": "q two", "positive": ["doc B", "doc D"]},
    ]
    path = write(tmp_path, "r.jsonl", "\n".join(json.dumps(x) for x in lines))
    rs = load_retrieval(str(path))
    assert list(rs.corpus.values()) == ["doc A", "doc B", "doc C", "doc D"]  # shared text = one doc
    assert rs.queries == {"q1": "q one", "q2": "q two"}
    assert rs.qrels == {"q1": {"d1": 1}, "q2": {"d2": 1, "d4": 1}}
    assert rs.categories == {"q1": "x"}
    assert is_retrieval_spec(str(path)) and not is_pairs_file(path)


def test_simple_jsonl_errors(tmp_path):
    path = write(tmp_path, "r.jsonl", '{"query": "q", "positive": "d"}\n{"query": "q2", "positive": []}\n')
    with pytest.raises(DataError, match=r"r\.jsonl:2: 'positive'"):
        load_retrieval(str(path))
    path = write(
        tmp_path,
        "s.jsonl",
        '{"query": "q", "positive": "d", "id": "a"}\n{"query": "x", "positive": "d", "id": "a"}\n',
    )
    with pytest.raises(DataError, match=r"s\.jsonl:2: duplicate query id 'a'"):
        load_retrieval(str(path))


def make_beir(root: Path, qrels: str) -> Path:
    (root / "qrels").mkdir(parents=True)
    write(root, "corpus.jsonl", '{"_id": "d1", "title": "T", "text": "one"}\n{"_id": "d2", "text": "two"}\n')
    write(root, "queries.jsonl", '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "unjudged"}\n')
    write(root / "qrels", "test.tsv", qrels)
    return root


def test_beir_folder(tmp_path):
    rs = load_retrieval(str(make_beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t0\n")))
    assert rs.corpus == {"d1": "T one", "d2": "two"}
    assert rs.queries == {"q1": "first"}  # queries without a positive judgement are not evaluated
    assert rs.qrels == {"q1": {"d2": 2}}


def test_a_beir_query_judged_only_zero_is_left_out_and_said_so(tmp_path, caplog):
    root = make_beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td2\t1\nq2\td1\t0\n")
    with caplog.at_level("WARNING"):
        rs = load_retrieval(str(root))
    assert rs.queries == {"q1": "first"}
    assert "1 of the 2 judged queries have no relevant document" in caplog.text and "q2" in caplog.text


def test_beir_unknown_doc_names_qrels_line(tmp_path):
    root = make_beir(tmp_path / "b", "query-id\tcorpus-id\tscore\nq1\td9\t1\n")
    with pytest.raises(DataError, match=r"test\.tsv:2: corpus id 'd9' is not in corpus\.jsonl"):
        load_retrieval(str(root))


def test_unknown_builtin():
    assert "zh-hard" in builtin_names()
    with pytest.raises(
        DataError, match="builtin:nope: unknown built-in data set; available: builtin:zh-hard"
    ):
        load_retrieval("builtin:nope")


def test_zh_hard_shape():
    rs = load_retrieval("builtin:zh-hard")
    cats: dict[str, int] = {}
    for q in rs.queries:
        cats[rs.categories[q]] = cats.get(rs.categories[q], 0) + 1
        assert len(rs.qrels[q]) == 1
    assert len(cats) >= 8 and min(cats.values()) >= 5
    assert len(rs.corpus) >= 120
    path = Path(rs.path)
    for line in path.read_text(encoding="utf-8").splitlines():
        assert len(json.loads(line)["negatives"]) >= 3


# ---- real data (small slices) ----------------------------------------------------------------
@needs_data
def test_real_lcqmc_slice(tmp_path):
    head = "".join((DATA / "LCQMC" / "LCQMC.test.data").read_text(encoding="utf-8").splitlines(True)[:200])
    data = load_pairs(write(tmp_path, "lcqmc200.data", head))
    assert len(data) == 200 and set(np.unique(data.binary_labels())) == {0, 1}


@needs_data
def test_real_stackfaq():
    rs = load_retrieval(str(DATA / "StackFAQ"))
    assert len(rs.corpus) == 125
    assert all(len(rel) == 1 for rel in rs.qrels.values())
    assert "*" not in rs.queries.values() and len(rs.queries) > 1000
