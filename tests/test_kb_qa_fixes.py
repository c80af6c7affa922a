"""Regression tests for a QA pass over the knowledge base: document ids of files, Milvus Lite across
processes, listings with a broken collection, unreachable Milvus, bad stores, bad JSONL values,
non-finite metadata, long queries, all-or-none deletes, skipped files, fusion and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, kb_app
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb import cli as kb_cli
from qwembed.kb.errors import DocumentNotFoundError, KBError, StoreUnavailableError, is_out_of_space
from qwembed.kb.ingest import Failure, Skipped, file_document_id, read_paths
from qwembed.kb.search import distribution_based_score_fusion, fuse, reciprocal_rank_fusion
from qwembed.kb.store import Hit

TESTS = Path(__file__).parent


@pytest.fixture
def stub() -> StubEmbedder:
    return StubEmbedder()


@pytest.fixture
def manager(tmp_path: Path, stub) -> KnowledgeBaseManager:
    m = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    m.create("docs", "stub")
    return m


def _documents(items) -> list[Document]:
    return [item for item in items if not isinstance(item, Failure)]


def _run(argv: list[str], monkeypatch, stub, capsys) -> tuple[int, str, str]:
    """``qwembed kb …`` in this process with the stub model."""
    from qwembed.cli import main

    monkeypatch.setattr(kb_cli, "_manager", lambda args: KnowledgeBaseManager(args.kb_dir, lambda m: stub))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- 1. files with the same name ---------------------------------------------------------------
@pytest.fixture
def two_notes(tmp_path: Path) -> Path:
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    (files / "notes.txt").write_text("alpha notes at the top", encoding="utf-8")
    (files / "sub" / "notes.txt").write_text("beta notes in the subfolder", encoding="utf-8")
    return files


def test_files_with_the_same_name_get_their_own_ids(manager, two_notes):
    lone = _documents(read_paths([two_notes / "notes.txt", two_notes / "sub" / "notes.txt"]))
    report = manager.add("docs", lone)
    assert sorted(report.added) == [
        (two_notes / "notes.txt").resolve().as_posix(),
        (two_notes / "sub" / "notes.txt").resolve().as_posix(),
    ]
    assert manager.get("docs").stats().documents == 2
    # the same files through their folder get the same ids: nothing new, no second copy
    again = manager.add("docs", _documents(read_paths([two_notes])))
    assert sorted(again.unchanged) == sorted(report.added) and not again.added
    assert manager.get("docs").stats().documents == 2
    # a file named alone and inside its folder in one call is read once
    items = _documents(read_paths([two_notes, two_notes / "sub" / "notes.txt"]))
    assert len(items) == 2
    assert file_document_id(two_notes / "sub" / ".." / "notes.txt") == report.added[0]


def test_files_with_the_same_name_over_http(tmp_path, two_notes, stub):
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, file_roots=[two_notes])
    with TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"}) as client:
        client.put("/v1/kb/c1", json={"model": "stub"})
        paths = [str(two_notes / "notes.txt"), str(two_notes / "sub" / "notes.txt")]
        added = client.post("/v1/kb/c1/documents", json={"paths": paths})
        assert added.status_code == 200 and len(added.json()["added"]) == 2
        assert client.get("/v1/kb/c1").json()["documents"] == 2


# ---- 2. Milvus Lite across processes --------------------------------------------------------
_MILVUS_CHILD = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from kb_fixtures import StubEmbedder
    from qwembed.kb import Document, KnowledgeBaseManager
    from qwembed.kb.errors import KBError

    stub = StubEmbedder()
    manager = KnowledgeBaseManager(Path({root!r}), lambda model: stub)
    try:
        if {create!r}:
            manager.create("c7", "stub", store={store!r})
            manager.add("c7", [Document("weather", "nice weather today"), Document("bank", "lost my card")])
        print("OK", manager.get("c7").stats().documents)
    except KBError as error:
        print("KBError", type(error).__name__, error)
    """
)


def _milvus_child(root: Path, store: str, create: bool) -> str:
    code = _MILVUS_CHILD.format(tests=str(TESTS), root=str(root), store=store, create=create)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_milvus_lite_collection_outlives_the_process_that_made_it(tmp_path, stub):
    pytest.importorskip("milvus_lite")
    root, store = tmp_path / "kb", f"milvus-lite:{tmp_path / 'm.db'}"
    assert _milvus_child(root, store, create=True) == "OK 2"
    # a new process: the collection starts released in Milvus Lite; stats, search and add work
    manager = KnowledgeBaseManager(root, lambda model: stub)
    assert manager.get("c7").stats().documents == 2
    assert manager.search("c7", "weather", mode="hybrid", k=1)[0].document_id == "weather"
    assert manager.add("c7", [Document("more", "more text")]).added == ["more"]
    # while this process holds the file, another one gets a clear error, not a traceback
    line = _milvus_child(root, store, create=False)
    assert line.startswith("KBError StoreUnavailableError") and "open in another process" in line
    manager.get("c7").store.close()


# ---- 3. one broken collection does not break the listing ------------------------------------
def test_listing_reports_broken_collections_and_lists_the_rest(tmp_path, manager, stub, monkeypatch, capsys):
    manager.add("docs", [Document("a", "some text")])
    manager.create("wrong", "stub")
    settings = json.loads((tmp_path / "kb" / "wrong" / "collection.json").read_text())
    settings["model_dimension"] = 32  # the stored table holds 64-wide vectors: the store refuses it
    (tmp_path / "kb" / "wrong" / "collection.json").write_text(json.dumps(settings))
    (tmp_path / "kb" / "torn").mkdir()
    (tmp_path / "kb" / "torn" / "collection.json").write_text("{")

    fresh = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    listing = {entry.to_json()["name"]: entry.to_json() for entry in fresh.all_stats()}
    assert listing["docs"]["documents"] == 1 and "error" not in listing["docs"]
    assert listing["wrong"]["error"]["code"] == "collection_unavailable"
    assert "64-dimensional" in listing["wrong"]["error"]["message"]
    assert listing["wrong"]["settings"]["model"] == "stub"
    assert listing["torn"]["error"]["code"] == "collection_damaged" and listing["torn"]["settings"] is None

    with TestClient(kb_app(fresh), headers={"Authorization": "Bearer secret"}) as client:
        response = client.get("/v1/kb")
        assert response.status_code == 200
        assert [entry["name"] for entry in response.json()["data"]] == ["docs", "torn", "wrong"]

    code, out, err = _run(["kb", "list", "--kb-dir", str(tmp_path / "kb")], monkeypatch, stub, capsys)
    assert code == 1 and "Traceback" not in err
    lines = out.splitlines()
    assert lines[0].startswith("docs\tstub\t1 documents")
    assert lines[1].startswith("torn\t-\tunavailable:") and lines[2].startswith("wrong\tstub\tunavailable:")


# ---- 4. unreachable Milvus --------------------------------------------------------------------
def test_an_error_that_is_its_own_cause_is_inspected_once():
    error = RuntimeError("grpc errors are their own __cause__")
    error.__cause__ = error
    result: list[bool] = []
    worker = threading.Thread(target=lambda: result.append(is_out_of_space(error)), daemon=True)
    worker.start()
    worker.join(60)  # a guard against the old endless loop, not a timing
    assert result == [False]


def test_unreachable_milvus_is_a_clear_error(manager):
    pytest.importorskip("pymilvus")
    with pytest.raises(StoreUnavailableError, match=r"cannot connect to Milvus at http://127\.0\.0\.1:1 "):
        manager.create("c8", "stub", store="milvus://127.0.0.1:1")
    assert manager.names() == ["docs"]  # nothing half-created


# ---- 5. an unknown store ------------------------------------------------------------------------
def test_unknown_store_is_a_one_line_error(tmp_path, manager, stub, monkeypatch, capsys):
    with pytest.raises(KBError, match="unknown store 'bogus'"):
        manager.create("c9", "stub", store="bogus")
    argv = ["kb", "create", "c9", "--model", "stub", "--store", "bogus", "--kb-dir", str(tmp_path / "kb")]
    code, _, err = _run(argv, monkeypatch, stub, capsys)
    assert code == 2 and err.strip().startswith("qwembed kb create: unknown store 'bogus'")
    assert len(err.strip().splitlines()) == 1
    for bad in ("milvus-lite:file.txt", "milvus://", "lancedb"):
        with pytest.raises(KBError, match="unknown store"):
            manager.create("c9", "stub", store=bad)


def test_a_blank_query_instruction_is_refused_when_the_collection_is_made(tmp_path, manager, stub):
    """Else every later search of the collection would fail on it."""
    with pytest.raises(KBError, match="instruction is empty") as caught:
        manager.create("c8", "stub", query_instruction=" ")
    assert caught.value.param == "instruction"
    assert "c8" not in manager.names()
    client = TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"})
    response = client.put("/v1/kb/c8", json={"model": "stub", "instruction": ""})
    assert response.status_code == 400 and response.json()["error"]["param"] == "instruction"


# ---- 6. and 7. JSONL values: null or numeric text, non-finite metadata ------------------------
def test_jsonl_null_and_numeric_text_are_bad_documents(tmp_path, manager):
    records = tmp_path / "r.jsonl"
    records.write_text(
        "\n".join(
            [
                '{"id": "j1", "text": null}',
                '{"id": "j2", "text": 12}',
                '{"id": "j3", "text": "fine text", "source": null}',
                '{"id": null, "text": "no id"}',
                '{"id": 7, "text": "numeric id"}',
                '{"id": "j4"}',
            ]
        ),
        encoding="utf-8",
    )
    items = list(read_paths([records]))
    failures = {f.item.rsplit(":", 1)[1]: f.reason for f in items if isinstance(f, Failure)}
    assert "'text' must be a string, not int" in failures["2"]
    assert "needs an 'id'" in failures["4"]
    report = manager.add("docs", _documents(items))
    assert report.added == ["j3", "7"]
    assert dict(report.failed) == {"j1": "the document is empty", "j4": "the document is empty"}
    stored = {info.document_id: info for info in manager.get("docs").documents()}
    assert stored["j3"].source == f"{records}:3"
    assert not any("None" in hit.text for hit in manager.search("docs", "None", mode="keyword"))


def test_non_finite_metadata_is_a_bad_document_and_filters_keep_working(tmp_path, manager, stub):
    records = tmp_path / "m.jsonl"
    records.write_text(
        "\n".join(
            [
                '{"id": "big", "text": "first", "metadata": {"score": 1e400}}',
                '{"id": "nan", "text": "second", "metadata": {"score": NaN}}',
                '{"id": "inf", "text": "third", "metadata": {"a": {"b": [1, -Infinity]}}}',
                '{"id": "ok", "text": "fourth", "metadata": {"score": 2.5}}',
            ]
        ),
        encoding="utf-8",
    )
    report = manager.add("docs", _documents(read_paths([records])))
    assert report.added == ["ok"]
    reasons = dict(report.failed)
    assert reasons["big"] == "metadata.score is not a finite number (NaN, Infinity or out of range)"
    assert reasons["nan"].startswith("metadata.score is not a finite")
    assert reasons["inf"].startswith("metadata.a.b[1] is not a finite")
    hits = manager.search("docs", "fourth", mode="hybrid", filter={"score": {"$gte": 1.0}})
    assert [hit.document_id for hit in hits] == ["ok"]
    # the same over HTTP (Python's JSON parser reads NaN in a request body too)
    with TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"}) as client:
        body = '{"documents": [{"id": "h", "text": "x", "metadata": {"v": NaN}}, {"id": "g", "text": "y"}]}'
        response = client.post(
            "/v1/kb/docs/documents", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 200 and response.json()["added"] == ["g"]
        assert response.json()["failed"][0]["id"] == "h"


# ---- b. long queries ----------------------------------------------------------------------------
class _StrictStub(StubEmbedder):
    """Like the real engine: an input over the limit is an error unless ``truncate``."""

    def embed(self, texts, *, truncate=False, **options):
        self.tokenize([texts] if isinstance(texts, str) else texts, truncate=truncate)
        return super().embed(texts, truncate=truncate, **options)


def test_a_query_longer_than_the_model_limit_is_cut_and_said_so(tmp_path):
    strict = _StrictStub()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: strict)
    manager.create("docs", "stub")
    manager.add("docs", [Document("w", "the weather is nice today"), Document("b", "my bank card")])
    long_query = "weather " + "word " * 300  # the stub model reads 128 tokens
    for mode in ("dense", "hybrid"):
        hits = manager.search("docs", long_query, mode=mode, k=2)
        assert hits[0].document_id == "w"
        assert len(hits.warnings) == 1 and "longer than the model's 128 tokens" in hits.warnings[0]
    assert manager.search("docs", "weather", mode="dense").warnings == []


# ---- c. multi-id delete --------------------------------------------------------------------------
def test_deleting_several_ids_is_all_or_none(tmp_path, manager, stub, monkeypatch, capsys, two_notes):
    manager.add("docs", [Document("a", "first"), Document("b", "second")])
    collection = manager.get("docs")
    for ids in (["a", "nosuch"], ["nosuch", "a"]):
        with pytest.raises(DocumentNotFoundError, match=r"'nosuch'.*nothing was deleted"):
            collection.delete_many(ids)
        assert collection.stats().documents == 2
    kb = ["--kb-dir", str(tmp_path / "kb")]
    code, out, err = _run(["kb", "delete", "docs", "nosuch", "a", *kb], monkeypatch, stub, capsys)
    assert code == 2 and "nothing was deleted" in err and collection.stats().documents == 2
    code, out, err = _run(["kb", "delete", "docs", "b", "a", *kb], monkeypatch, stub, capsys)
    assert code == 0 and out.splitlines() == ["deleted b", "deleted a"]
    assert collection.stats().documents == 0
    # a file's id may be given as its path, as typed
    manager.add("docs", _documents(read_paths([two_notes / "notes.txt"])))
    monkeypatch.chdir(two_notes)
    code, out, err = _run(["kb", "delete", "docs", "notes.txt", *kb], monkeypatch, stub, capsys)
    assert code == 0 and out.strip() == f"deleted {(two_notes / 'notes.txt').resolve().as_posix()}"


# ---- d. unsupported files in folders --------------------------------------------------------
def test_unsupported_files_in_a_folder_are_reported_as_skipped(tmp_path, stub, monkeypatch, capsys):
    folder = tmp_path / "mixed"
    (folder / ".git").mkdir(parents=True)
    (folder / "a.txt").write_text("text to index", encoding="utf-8")
    (folder / "table.csv").write_text("a,b\n1,2\n", encoding="utf-8")
    (folder / "blob.bin").write_bytes(b"\x00\x01")
    (folder / ".git" / "config").write_text("[core]")  # hidden folders are not walked
    items = list(read_paths([folder]))
    skipped = [item for item in items if isinstance(item, Skipped)]
    assert len(skipped) == 1 and skipped[0].item == str(folder)
    assert skipped[0].reason == "2 files of unsupported types (.bin ×1, .csv ×1): blob.bin, table.csv"
    assert len(_documents(items)) == 1
    # the CLI prints it and still succeeds (skipping unsupported types in a folder is by design)
    kb = ["--kb-dir", str(tmp_path / "kb")]
    KnowledgeBaseManager(tmp_path / "kb", lambda m: stub).create("c", "stub")
    code, out, err = _run(["kb", "add", "c", str(folder), "--quiet", *kb], monkeypatch, stub, capsys)
    assert code == 0 and "2 files of unsupported types" in err and "added " in out


# ---- a. fusion and one result per document ----------------------------------------------------
def _hit(chunk: str, score: float) -> Hit:
    return Hit(chunk, chunk.split("#")[0], int(chunk.split("#")[1]), "", "", {}, score)


def test_a_clear_winner_in_one_list_survives_fusion():
    # dense: "a" is far ahead of a tight pack; keyword: a weak, flat list that lacks "a"
    dense = [_hit("a#0", 0.90), *(_hit(f"d{i}#0", 0.40 - i * 0.001) for i in range(19))]
    keyword = [_hit(f"d{i}#0", 5.0 - i * 0.01) for i in range(5)]
    assert reciprocal_rank_fusion([dense, keyword], 10)[0].document_id == "d0"  # ranks only
    assert distribution_based_score_fusion([dense, keyword], 10)[0].document_id == "a"
    # and the other way round: one exact keyword match far ahead of the other matches beats the
    # top of a dense list without a standout
    flat = [_hit(f"n{i}#0", 0.31 - i * 0.0005) for i in range(20)]
    exact = [_hit("k#0", 12.0), *(_hit(f"w{i}#0", 2.0) for i in range(7))]
    assert distribution_based_score_fusion([flat, exact], 10)[0].document_id == "k"


def test_a_lone_keyword_hit_outranks_dense_noise_when_the_keyword_list_is_complete():
    """The QA report: 熊猫 matched one document of a mixed folder; with minilm reading Chinese as
    noise, hybrid put it third behind two unrelated chunks, since a one-hit list was its own mean
    (0.5). Every chunk without the word scores 0 on the keyword side, which a complete list says."""
    dense = [
        _hit("apple#0", 0.62),
        _hit("junk#3", 0.55),
        *(_hit(f"n{i}#0", 0.50 - 0.002 * i) for i in range(30)),
    ]
    dense.insert(17, _hit("panda#0", 0.49))
    keyword = [_hit("panda#0", 10.8)]
    assert fuse("dbsf", dense, keyword, 10)[0].document_id != "panda"  # (a list read only so deep)
    fused = fuse("dbsf", dense, keyword, 10, keyword_complete=True)
    assert fused[0].document_id == "panda"
    # a word in a few chunks: each match counts far above the 0 of every other candidate
    keyword = [_hit("panda#0", 10.8), _hit("n5#0", 4.0)]
    assert [h.document_id for h in fuse("dbsf", dense, keyword, 10, keyword_complete=True)[:2]] == [
        "panda",
        "n5",
    ]


class NoiseEmbedder(StubEmbedder):
    """A model that cannot read the language: vectors seeded by the text, but a text about phones
    close to the query by chance (the QA report's 苹果公司发布了新款手机 at 1.41, a dense standout)."""

    QUERY = "熊猫吃什么"

    def embed(self, texts, *, input_type=None, instruction=None, dimensions=None, truncate=False):
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            vector = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dimension)
            if "手机" in text:  # the query's own vector, blurred
                vector = 0.5 * vector + np.random.default_rng(
                    zlib.crc32(self.QUERY.encode())
                ).standard_normal(self.dimension)
            rows.append(vector / np.linalg.norm(vector))
        matrix = np.stack(rows).astype(np.float32)
        return matrix[0] if single else matrix


def test_a_lone_keyword_hit_leads_a_real_hybrid_search(tmp_path):
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: NoiseEmbedder())
    manager.create("docs", "stub")
    news = "条新闻：天气预报说明天有雨，出门记得带伞。"
    documents = [
        Document("panda", "大熊猫以竹子为食，生活在四川的山林里。"),
        Document("phone", "苹果公司发布了新款手机。"),
    ]
    manager.add("docs", [*documents, *(Document(f"noise{i}", f"第{i}{news}") for i in range(40))])
    query = NoiseEmbedder.QUERY
    assert [hit.document_id for hit in manager.search("docs", query, mode="keyword", k=3)] == ["panda"]
    assert manager.search("docs", query, mode="dense", k=3)[0].document_id == "phone"
    assert manager.search("docs", query, k=3)[0].document_id == "panda"


def test_results_are_one_chunk_per_document_by_default(manager):
    long_text = "\n\n".join(f"Paragraph {i} about weather and parks. " + "filler " * 60 for i in range(5))
    manager.add("docs", [Document("long", long_text), Document("short", "weather report")])
    for mode in ("dense", "keyword", "hybrid"):
        hits = manager.search("docs", "weather", mode=mode, k=5)
        assert sorted(hit.document_id for hit in hits) == ["long", "short"], mode
    chunks = manager.search("docs", "weather", mode="keyword", k=5, per_document=False)
    assert [hit.document_id for hit in chunks].count("long") > 1


# ---- e. one Chinese character ------------------------------------------------------------------
def test_a_single_chinese_character_finds_its_words(manager):
    manager.add(
        "docs",
        [
            Document("panda", "动物园里有一只大熊猫。"),
            Document("bear", "北极熊生活在寒冷的地方。"),
            Document("cat", "我家的小猫很可爱。"),
        ],
    )
    assert {hit.document_id for hit in manager.search("docs", "熊", mode="keyword", k=5)} == {"panda", "bear"}
    assert manager.search("docs", "熊猫", mode="keyword", k=5)[0].document_id == "panda"
    assert manager.search("docs", "猫", mode="keyword", k=5)[0].document_id == "cat"


# ---- f. the CLI: drop, help, --quiet -----------------------------------------------------------
def test_drop_asks_for_yes(tmp_path, manager, stub, monkeypatch, capsys):
    manager.add("docs", [Document("a", "text")])
    kb = ["--kb-dir", str(tmp_path / "kb")]
    code, out, err = _run(["kb", "drop", "docs", *kb], monkeypatch, stub, capsys)
    assert code == 2 and "--yes" in err and "1 documents" in err
    assert manager.names() == ["docs"]
    code, out, err = _run(["kb", "drop", "docs", "--yes", *kb], monkeypatch, stub, capsys)
    assert code == 0 and out.strip() == "dropped docs"
    assert KnowledgeBaseManager(tmp_path / "kb", lambda m: stub).names() == []
    code, out, err = _run(["kb", "drop", "docs", "--yes", *kb], monkeypatch, stub, capsys)
    assert code == 2 and "no collection named 'docs'" in err
    # a collection whose settings are damaged can be dropped too
    (tmp_path / "kb" / "torn").mkdir()
    (tmp_path / "kb" / "torn" / "collection.json").write_text("{")
    code, out, err = _run(["kb", "drop", "torn", *kb], monkeypatch, stub, capsys)
    assert code == 2 and "--yes" in err
    code, out, err = _run(["kb", "drop", "torn", "--yes", *kb], monkeypatch, stub, capsys)
    assert code == 0 and not (tmp_path / "kb" / "torn").exists()


def test_cli_help_explains_options_and_ids(capsys):
    from qwembed.cli import _build_parser

    parser = _build_parser()
    for argv, wanted in (
        (["kb", "search", "--help"], ["results to show", "--all-chunks", "--fusion"]),
        (["kb", "list", "--help"], ["documents to list", "documents to skip"]),
        (["kb", "delete", "--help"], ["absolute path"]),
        (["kb", "drop", "--help"], ["--yes"]),
    ):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert all(word in text for word in wanted), (argv, text)


def test_quiet_silences_info_logs_and_loading_bars(tmp_path, manager, stub, monkeypatch, capsys):
    import logging

    from qwembed.backends import registry

    hidden: list[bool] = []
    monkeypatch.setattr(registry, "hide_loading_progress", lambda: hidden.append(True))
    monkeypatch.setattr(logging.getLogger(), "level", logging.INFO)
    argv = ["kb", "stats", "docs", "--quiet", "--kb-dir", str(tmp_path / "kb")]
    code, _, _ = _run(argv, monkeypatch, stub, capsys)
    assert code == 0 and logging.getLogger().level == logging.WARNING and hidden == [True]
