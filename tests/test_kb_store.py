"""Collections with a stub model: add/replace/delete, filters, Chinese keywords, settings checks,
files (good and bad), path confinement, precomputed vectors, and the Milvus Lite adapter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from kb_fixtures import StubEmbedder, StubReranker
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb.errors import (
    BadDocumentError,
    CollectionNotFoundError,
    DocumentNotFoundError,
    InvalidFilterError,
    PathNotAllowedError,
    SettingsMismatchError,
)
from qwembed.kb.ingest import Failure, confine, read_paths

ZH = [
    Document("weather", "今天天气很好，我们去公园散步。", {"lang": "zh", "year": 2024}),
    Document("bank", "我的银行卡丢了，怎么挂失？", {"lang": "zh", "year": 2023}),
    Document("cn", "中华人民共和国成立于一九四九年。", {"lang": "zh", "year": 2020}),
    Document("en", "The weather is nice; we walk in the park.", {"lang": "en", "year": 2024}),
]


@pytest.fixture
def manager(tmp_path: Path) -> KnowledgeBaseManager:
    stub = StubEmbedder()
    m = KnowledgeBaseManager(
        tmp_path / "kb", lambda model: stub, reranker_factory=lambda model: StubReranker()
    )
    m.create("docs", "stub")
    return m


def test_add_replace_unchanged_delete(manager):
    report = manager.add("docs", ZH)
    assert report.added == ["weather", "bank", "cn", "en"] and report.chunks == 4
    again = manager.add("docs", [ZH[0], Document("en", "Dogs bark at night.")])
    assert again.unchanged == ["weather"] and again.replaced == ["en"]
    collection = manager.get("docs")
    assert collection.stats().documents == 4 and collection.stats().chunks == 4
    assert [h.document_id for h in collection.search("dogs bark", mode="keyword")] == ["en"]
    assert collection.search("walk park", mode="keyword") == []  # the old text is gone
    collection.delete("en")
    assert collection.stats().documents == 3
    with pytest.raises(DocumentNotFoundError):
        collection.delete("en")


def test_long_document_replaced_by_shorter_leaves_no_stale_chunks(manager):
    long_text = "\n\n".join(f"Paragraph {i} " + "word " * 60 for i in range(6))
    manager.add("docs", [Document("d", long_text)])
    assert manager.get("docs").stats().chunks >= 3
    manager.add("docs", [Document("d", "now short")])
    assert manager.get("docs").stats().chunks == 1
    assert [i.chunks for i in manager.get("docs").documents()] == [1]


def test_chinese_two_character_words_hit(manager):
    manager.add("docs", ZH)
    for word, expected in [
        ("天气", "weather"),
        ("公园", "weather"),
        ("挂失", "bank"),
        ("人民", "cn"),
        ("银行", "bank"),
    ]:
        hits = manager.search("docs", word, mode="keyword", k=3)
        assert hits and hits[0].document_id == expected, word


def test_filters(manager):
    manager.add("docs", ZH)
    search = manager.get("docs").search
    assert {h.document_id for h in search("天气", mode="dense", k=10, filter={"lang": "en"})} == {"en"}
    hits = search("天气 公园", mode="hybrid", k=10, filter={"year": {"$gte": 2024}, "lang": {"$in": ["zh"]}})
    assert {h.document_id for h in hits} == {"weather"}
    assert {h.document_id for h in search("x", mode="dense", k=10, filter={"document_id": "bank"})} == {
        "bank"
    }
    with pytest.raises(InvalidFilterError):
        search("x", filter={"lang": {"$regex": "z"}})
    with pytest.raises(InvalidFilterError):
        search("x", filter={"bad key'); drop": 1})


def test_rerank_stage_uses_the_reranker_interface(manager):
    manager.add("docs", ZH)
    hits = manager.search("docs", "the weather is nice", k=2, mode="hybrid", rerank="stub")
    assert hits[0].document_id == "en" and len(hits) == 2


def test_settings_mismatch_is_an_error(manager, tmp_path):
    with pytest.raises(SettingsMismatchError):
        manager.create("docs", "stub", dimensions=32)
    with pytest.raises(SettingsMismatchError):
        manager.create("docs", "other-model")
    assert manager.create("docs", "stub")[1] is False  # same settings: accepted, not re-created
    # another model under the same name: detected by name/dimension, then by the probe vector
    other = KnowledgeBaseManager(tmp_path / "kb", lambda model: StubEmbedder(name="other"))
    with pytest.raises(SettingsMismatchError, match="built with stub"):
        other.add("docs", ZH)
    wide = KnowledgeBaseManager(tmp_path / "kb", lambda model: StubEmbedder(dimension=96))
    with pytest.raises(SettingsMismatchError):
        wide.search("docs", "天气")

    class Shifted(StubEmbedder):
        def embed(self, texts, **options):
            return np.roll(super().embed(texts, **options), 7, axis=-1)

    shifted = KnowledgeBaseManager(tmp_path / "kb", lambda model: Shifted())
    with pytest.raises(SettingsMismatchError, match="probe-vector"):
        shifted.search("docs", "天气")
    with pytest.raises(CollectionNotFoundError):
        manager.search("nope", "x")


def test_precomputed_vectors(manager):
    vector = np.ones(64, dtype=np.float32)
    report = manager.add("docs", [Document("p", chunks=[("first part", vector), ("second part", -vector)])])
    assert report.chunks == 2
    assert manager.search("docs", "x", mode="dense", k=1)[0].document_id == "p"
    bad = manager.add("docs", [Document("q", chunks=[("wrong width", np.ones(3))])])
    assert bad.failed and "64 components" in bad.failed[0][1]


def _pdf(text: str | None, password: str | None = None) -> bytes:
    from pypdf import PdfWriter
    from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

    writer = PdfWriter()
    page = writer.add_blank_page(300, 200)
    if text:
        font = DictionaryObject(
            {NameObject("/Type"): NameObject("/Font"), NameObject("/Subtype"): NameObject("/Type1"),
             NameObject("/BaseFont"): NameObject("/Helvetica")}
        )  # fmt: skip
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): writer._add_object(font)})}
        )
        stream = DecodedStreamObject()
        stream.set_data(f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode())
        page[NameObject("/Contents")] = writer._add_object(stream)
    if password:
        writer.encrypt(password, algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_files_good_and_bad_are_reported_per_file(manager, tmp_path):
    import docx

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("Plain text about parsers.", encoding="utf-8")
    (folder / "sub" / "b.md").write_text("# Title\n\nMarkdown body.", encoding="utf-8")
    (folder / "c.html").write_text(
        "<html><head><script>var x=1;</script></head>"
        "<body><p>Hello <b>bold</b> world.</p><p>Next.</p></body></html>"
    )
    document = docx.Document()
    document.add_paragraph("A docx paragraph.")
    document.save(str(folder / "d.docx"))
    (folder / "e.pdf").write_bytes(_pdf("Hello PDF world"))
    (folder / "junk.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.txt").write_bytes("café déjà vu".encode("latin-1"))
    (folder / "empty.md").write_text("   \n")
    (folder / "locked.pdf").write_bytes(_pdf("secret", password="pw"))
    (folder / "broken.docx").write_bytes(b"PK not really a zip")
    (folder / "records.jsonl").write_text('{"id": "r1", "text": "a record"}\nnot json\n')

    items = list(read_paths([folder]))
    # a file's id is its absolute path (JSONL records keep their own)
    root = folder.resolve().as_posix() + "/"
    documents = {d.id.removeprefix(root): d for d in items if not isinstance(d, Failure)}
    failures = {Path(f.item).name.split(":")[0]: f.reason for f in items if isinstance(f, Failure)}
    assert set(documents) == {"a.txt", "sub/b.md", "c.html", "d.docx", "e.pdf", "r1"}
    assert documents["c.html"].text == "Hello bold world.\n\nNext."
    assert documents["e.pdf"].text == "Hello PDF world"
    assert documents["d.docx"].text == "A docx paragraph."
    assert "binary" in failures["junk.txt"]
    assert "UTF-8" in failures["latin1.txt"]
    assert "empty" in failures["empty.md"]
    assert "encrypted" in failures["locked.pdf"]
    assert "docx" in failures["broken.docx"]
    assert "JSONL" in failures["records.jsonl"]
    report = manager.add("docs", list(documents.values()))
    assert len(report.added) == 6 and not report.failed


def test_paths_are_confined_to_roots(tmp_path):
    root = tmp_path / "allowed"
    root.mkdir()
    (root / "ok.txt").write_text("fine")
    (tmp_path / "secret.txt").write_text("no")
    (root / "link.txt").symlink_to(tmp_path / "secret.txt")
    assert confine(root / "ok.txt", [root.resolve()]) == (root / "ok.txt").resolve()
    for bad in [tmp_path / "secret.txt", root / ".." / "secret.txt", root / "link.txt"]:
        with pytest.raises(PathNotAllowedError):
            confine(bad, [root.resolve()])
    with pytest.raises(PathNotAllowedError):
        confine(root / "ok.txt", [])


def test_bad_documents_do_not_block_the_batch(manager):
    report = manager.add("docs", [Document("ok", "fine text"), Document("", "no id"), Document("e", " ")])
    assert report.added == ["ok"] and len(report.failed) == 2
    with pytest.raises(BadDocumentError):
        Document("x", "bad \ud800 surrogate").validate()


def test_milvus_lite_adapter(tmp_path):
    pytest.importorskip("milvus_lite")
    stub = StubEmbedder()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    manager.create("m", "stub", store="milvus-lite:kb.db")
    assert manager.add("m", ZH).added == ["weather", "bank", "cn", "en"]
    manager.add("m", [Document("en", "Dogs bark at night.")])
    assert manager.search("m", "天气", mode="keyword", k=1)[0].document_id == "weather"
    assert {h.document_id for h in manager.search("m", "x", mode="dense", k=9, filter={"year": 2023})} == {
        "bank"
    }
    assert [h.document_id for h in manager.search("m", "dogs bark", mode="hybrid", k=1)] == ["en"]
    collection = manager.get("m")
    assert (collection.stats().documents, collection.stats().chunks) == (4, 4)
    collection.delete("bank")
    assert collection.stats().documents == 3


def _store_with_vectors(path: Path, vectors: np.ndarray, **options):
    from qwembed.kb.lance_store import LanceStore
    from qwembed.kb.store import ChunkBatch

    n = len(vectors)
    store = LanceStore(path, vectors.shape[1], ann_threshold=n, **options)
    ids = [f"d{i}" for i in range(n)]
    metadata = [f'{{"g": {i % 100}}}' for i in range(n)]
    batch = ChunkBatch([f"{d}#0" for d in ids], ids, [0] * n, [1] * n, ["t"] * n, ["t"] * n, [""] * n,
                       metadata, ["h"] * n, vectors)  # fmt: skip
    store.replace_documents([], batch)
    return store


def test_probes_scan_about_the_same_number_of_vectors_as_the_table_grows():
    from qwembed.kb.lance_store import MAX_NPROBES, MIN_NPROBES, default_nprobes

    assert default_nprobes("IVF_FLAT", 100_000) == 52  # 316 partitions of 316 vectors
    assert default_nprobes("IVF_FLAT", 1_000_000) == 16  # 1,000 of 1,000
    assert default_nprobes("IVF_FLAT", 100_000_000) == MIN_NPROBES
    assert default_nprobes("IVF_FLAT", 60_000) == MAX_NPROBES
    assert default_nprobes("IVF_HNSW_SQ", 1_000_000) == 32  # a probe searches a graph, not a scan


def test_lance_ann_index_default_type_and_narrow_filters(tmp_path):
    from qwembed.kb.filters import Condition
    from qwembed.kb.lance_store import VECTOR_INDEX, LanceStore

    vectors = np.random.default_rng(0).standard_normal((2000, 16)).astype(np.float32)
    store = _store_with_vectors(tmp_path / "s", vectors, nprobes=1)
    assert store.maintain()[0] == "built the vector index over 2000 chunks"
    assert store.has_vector_index() and VECTOR_INDEX == "IVF_FLAT"
    assert store.vector_index_type() == "IvfFlat"
    # a stored vector finds itself first through the index
    for i in (3, 700, 1999):
        assert store.dense_search(vectors[i], 1, [])[0].chunk_id == f"d{i}#0"
    # 20 rows match the filter, scattered over ~45 partitions: one probe alone would miss most of
    # them, so the search widens (maximum_nprobes 0) until k rows pass the prefilter
    hits = store.dense_search(vectors[5], 20, [Condition("g", "$eq", 7)])
    assert sorted(int(h.chunk_id[1:-2]) for h in hits) == list(range(7, 2000, 100))
    store.build_vector_index("IVF_HNSW_SQ", num_partitions=2)
    store.ef = 40
    assert store.vector_index_type() == "IvfHnswSq"
    assert store.dense_search(vectors[42], 1, [])[0].chunk_id == "d42#0"
    # an index of another kind (say, from an older version) is replaced by the configured one
    assert store.maintain() == ["rebuilt the vector index (IvfHnswSq) as IVF_FLAT over 2000 chunks"]
    assert store.vector_index_type() == "IvfFlat" and store.maintain() == []
    with pytest.raises(ValueError, match="unknown vector index type"):
        LanceStore(tmp_path / "t", 16, index_type="HNSW_MAGIC")
