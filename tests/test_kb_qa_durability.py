"""Regression tests for a QA pass over the knowledge base's writes and inputs: two processes
writing one collection, duplicate rows hiding ids, lone surrogates, out-of-range integers and
offsets, null bytes in paths, JSONL records through the CLI, document ids over HTTP."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, kb_app
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb import cli as kb_cli
from qwembed.kb.errors import CollectionNotFoundError, InvalidFilterError
from qwembed.kb.filters import parse_filter

AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture
def stub() -> StubEmbedder:
    return StubEmbedder()


@pytest.fixture
def manager(tmp_path: Path, stub) -> KnowledgeBaseManager:
    m = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, file_roots=[tmp_path])
    m.create("docs", "stub")
    return m


def _post(client: TestClient, path: str, raw: str):
    """A raw JSON body: ``\\ud800`` escapes and huge integers reach the server as written."""
    return client.post(path, content=raw, headers={"Content-Type": "application/json"})


def _run(argv: list[str], monkeypatch, stub, capsys) -> tuple[int, str, str]:
    """``qwembed kb …`` in this process with the stub model (as in test_kb_qa_fixes.py)."""
    from qwembed.cli import main

    monkeypatch.setattr(kb_cli, "_manager", lambda args: KnowledgeBaseManager(args.kb_dir, lambda m: stub))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- 1. two processes writing one collection ---------------------------------------------------
ROUNDS, IDS_PER_ROUND = 8, 4


def _writer(root: str, writer: int, barrier) -> None:
    """One process: each round, wait for the others, then add the round's ids (new to the
    collection) and the id ``shared`` with this writer's own text."""
    manager = KnowledgeBaseManager(Path(root), lambda model: StubEmbedder())
    manager.open("race")  # store opened before the race starts
    reports = []
    for r in range(ROUNDS):
        documents = [
            Document(f"r{r}-{i}", f"writer {writer} round {r} item {i} " + "word " * (i * 40))
            for i in range(IDS_PER_ROUND)
        ]
        documents.append(Document("shared", f"writer {writer} says round {r}"))
        barrier.wait(timeout=120)
        report = manager.add("race", documents)
        reports.append({"added": report.added, "replaced": report.replaced, "failed": report.failed})
    Path(root, f"report-{writer}.json").write_text(json.dumps(reports))


def test_two_processes_adding_the_same_ids_store_one_version_of_each(tmp_path):
    root = tmp_path / "kb"
    # chunks of 16 tokens: the longer documents have several chunks, so a mix of two versions
    # (or two copies of one) would show in the layout
    KnowledgeBaseManager(root, lambda model: StubEmbedder()).create(
        "race", "stub", chunking={"chunk_tokens": 16, "overlap_tokens": 0}
    )
    context = multiprocessing.get_context("spawn")  # (no fork of a process with LanceDB threads)
    writers = 2
    barrier = context.Barrier(writers)
    processes = [context.Process(target=_writer, args=(str(root), w, barrier)) for w in range(writers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [process.exitcode for process in processes] == [0] * writers

    collection = KnowledgeBaseManager(root, lambda model: StubEmbedder()).get("race")
    layout = collection.store.chunk_layout()
    expected = {"shared"} | {f"r{r}-{i}" for r in range(ROUNDS) for i in range(IDS_PER_ROUND)}
    assert set(layout) == expected
    for doc_id, (counts, positions, hashes) in layout.items():
        assert len(hashes) == 1, f"{doc_id}: {len(hashes)} versions stored"
        assert len(counts) == 1 and sorted(positions) == list(range(counts.pop())), doc_id
    assert collection.stats().documents == len(expected)
    # each id was "added" by exactly one writer; the other replaced it (or found it unchanged)
    reports = [json.loads((root / f"report-{w}.json").read_text()) for w in range(writers)]
    for doc_id in expected:
        adders = sum(doc_id in rnd["added"] for writer in reports for rnd in writer)
        assert adders == 1, f"{doc_id} reported added {adders} times"
    assert not any(rnd["failed"] for writer in reports for rnd in writer)


def test_duplicate_rows_of_one_id_do_not_hide_another(manager):
    """A document stored twice (by two writers before the lock) must not crowd another id out of
    ``document_hashes``: that made a stored document look new ("added", not "replaced")."""
    collection = manager.get("docs")
    manager.add("docs", [Document("a", "first text")])
    table = collection.store._table
    table.add(table.search().where("document_id = 'a'").limit(None).to_arrow())  # a second copy of a
    manager.add("docs", [Document("b", "second text")])
    assert set(collection.store.document_hashes(["a", "b"])) == {"a", "b"}
    report = manager.add("docs", [Document("b", "second text, changed")])
    assert report.replaced == ["b"] and report.added == []
    # replacing the doubled document leaves one copy of it
    assert collection.store.count_chunks() == 3
    assert manager.add("docs", [Document("a", "first text, changed")]).replaced == ["a"]
    assert collection.store.count_chunks() == 2 and collection.stats().documents == 2


def test_a_write_to_a_collection_another_process_dropped_is_not_found(tmp_path, stub):
    first = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    first.create("gone", "stub")
    collection = first.open("gone")  # cached, as a server holds it
    KnowledgeBaseManager(tmp_path / "kb", lambda model: stub).drop("gone")  # "another process"
    with pytest.raises(CollectionNotFoundError):
        collection.add([Document("x", "some text")])
    assert not (tmp_path / "kb" / "gone").exists()


# ---- 2a. lone surrogates in metadata and source -------------------------------------------------
def test_lone_surrogates_in_metadata_or_source_are_that_documents_failure(manager):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        raw = (
            '{"documents": ['
            '{"id": "value", "text": "x", "metadata": {"k": "bad \\ud800"}},'
            '{"id": "key", "text": "x", "metadata": {"\\ud800": 1}},'
            '{"id": "nested", "text": "x", "metadata": {"a": [{"b": "\\udfff"}]}},'
            '{"id": "source", "text": "x", "source": "\\ud800"},'
            '{"id": "good", "text": "fine text", "metadata": {"k": "ok"}}]}'
        )
        response = _post(client, "/v1/kb/docs/documents", raw)
        assert response.status_code == 200, response.text
        assert response.json()["added"] == ["good"]
        failed = {f["id"]: f["message"] for f in response.json()["failed"]}
        assert failed == {
            "value": "metadata.k is not valid Unicode (a lone surrogate)",
            "key": "metadata has a key that is not valid Unicode (a lone surrogate): '\\ud800'",
            "nested": "metadata.a[0].b is not valid Unicode (a lone surrogate)",
            "source": "source is not valid Unicode (a lone surrogate)",
        }
        assert client.get("/v1/kb/docs").json()["documents"] == 1


# ---- 2b and 2c. filters: lone surrogates, integers past 64 bits, mixed types --------------------
def test_filters_that_the_store_cannot_run_are_invalid_filter(manager):
    manager.add(
        "docs",
        [
            Document("a", "some text", {"year": 2020, "tag": "x"}),
            Document("b", "more text", {"year": "unknown", "tag": "y"}),
        ],
    )
    with TestClient(kb_app(manager), headers=AUTH) as client:
        for raw_filter in (
            '{"tag": "\\ud800"}',
            '{"tag": {"$in": ["x", "\\udc00"]}}',
            '{"year": 1180591620717411303424}',
            '{"year": {"$lt": -9223372036854775809}}',
            '{"year": 1e400}',
            '{"year": 2020}',  # "unknown" in document b cannot be read as an integer
        ):
            raw = f'{{"query": "text", "mode": "keyword", "filter": {raw_filter}}}'
            response = _post(client, "/v1/kb/docs/search", raw)
            assert response.status_code == 400, (raw_filter, response.text)
            assert response.json()["error"]["code"] == "invalid_filter"
        # the edges of the range are fine
        for edge in ("9223372036854775807", "-9223372036854775808"):
            raw = f'{{"query": "text", "mode": "keyword", "filter": {{"tag": "x", "n": {edge}}}}}'
            assert _post(client, "/v1/kb/docs/search", raw).status_code == 200
    with pytest.raises(InvalidFilterError, match="64-bit"):
        parse_filter({"year": 2**63})


def test_integers_past_64_bits_in_metadata_are_that_documents_failure(manager):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        raw = (
            '{"documents": [{"id": "big", "text": "x", "metadata": {"n": 1180591620717411303424}},'
            '{"id": "ok", "text": "fine", "metadata": {"n": 9223372036854775807}}]}'
        )
        response = _post(client, "/v1/kb/docs/documents", raw)
        assert response.status_code == 200 and response.json()["added"] == ["ok"]
        [failure] = response.json()["failed"]
        assert failure["id"] == "big" and "outside the signed 64-bit range" in failure["message"]
        # an integer filter on the field keeps working (the big value would have broken it)
        raw = '{"query": "fine", "mode": "keyword", "filter": {"n": {"$gt": 0}}}'
        hits = _post(client, "/v1/kb/docs/search", raw)
        assert hits.status_code == 200 and [h["document_id"] for h in hits.json()["results"]] == ["ok"]


# ---- 2d. listing offsets -----------------------------------------------------------------------
def test_huge_listing_offsets_are_a_400(manager, tmp_path, stub, monkeypatch, capsys):
    manager.add("docs", [Document("a", "text")])
    with TestClient(kb_app(manager), headers=AUTH) as client:
        for query in ("offset=99999999999999999999", "offset=4294967296", "offset=-1", "limit=0"):
            response = client.get(f"/v1/kb/docs/documents?{query}")
            assert response.status_code == 400, (query, response.text)
        assert client.get("/v1/kb/docs/documents?offset=2147483647").json() == {"data": []}
    kb = ["--kb-dir", str(tmp_path / "kb")]
    with pytest.raises(SystemExit) as caught:  # a usage error, refused as the options are read
        _run(["kb", "list", "docs", "--offset", "99999999999999999999", *kb], monkeypatch, stub, capsys)
    err = capsys.readouterr().err
    assert caught.value.code == 2
    assert err.strip().endswith("argument --offset: '99999999999999999999': must be between 0 and 2147483647")


# ---- 2e. paths with a null byte, or not UTF-8 ------------------------------------------------------
def test_a_path_with_a_null_byte_is_a_400(manager):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        response = _post(client, "/v1/kb/docs/documents", '{"paths": ["\\u0000"]}')
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == "paths"
        assert "null character" in response.json()["error"]["message"]


def test_a_path_that_is_not_unicode_is_reported_not_a_500(manager, tmp_path):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        raw = json.dumps({"paths": [str(tmp_path / "missing")]})[:-3] + '\\udc80"]}'
        response = _post(client, "/v1/kb/docs/documents", raw)
        assert response.status_code == 200, response.text
        [failure] = response.json()["failed"]
        assert failure["id"].endswith("missing\\udc80") and failure["message"] == "no such file or folder"


# ---- 3. the CLI with a bad JSONL record ----------------------------------------------------------
def test_cli_skips_a_record_with_a_surrogate_in_metadata_and_stores_the_rest(
    tmp_path, manager, stub, monkeypatch, capsys
):
    records = tmp_path / "r.jsonl"
    records.write_text(
        "\n".join(
            [
                '{"id": "one", "text": "first good record"}',
                '{"id": "bad", "text": "broken", "metadata": {"k": "\\ud800"}}',
                '{"id": "src", "text": "broken source", "source": "\\udfff"}',
                '{"id": "two", "text": "second good record"}',
            ]
        ),
        encoding="utf-8",
    )
    kb = ["--kb-dir", str(tmp_path / "kb")]
    code, out, err = _run(["kb", "add", "docs", str(records), "--quiet", *kb], monkeypatch, stub, capsys)
    assert code == 1
    assert out.splitlines() == ["added one", "added two"]
    assert err.splitlines()[:2] == [  # (then maintain's "indexed 2 new chunks")
        "skipped bad: metadata.k is not valid Unicode (a lone surrogate)",
        "skipped src: source is not valid Unicode (a lone surrogate)",
    ]
    assert "Traceback" not in err
    assert sorted(d.document_id for d in manager.get("docs").documents()) == ["one", "two"]


# ---- 4. document ids over HTTP -----------------------------------------------------------------
def test_document_ids_over_http_match_jsonl(manager):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        documents = [
            {"id": 7, "text": "an integer id, as JSONL allows"},
            {"id": "", "text": "an empty id"},
            {"id": " ", "text": "a blank id"},
            {"id": "x" * 513, "text": "a long id"},
            {"id": "fine", "text": "a string id"},
        ]
        response = client.post("/v1/kb/docs/documents", json={"documents": documents})
        assert response.status_code == 200, response.text
        assert response.json()["added"] == ["7", "fine"]
        failed = [(f["id"][:3], f["message"]) for f in response.json()["failed"]]
        assert failed == [
            ("", "document id is empty"),
            (" ", "document id is empty"),
            ("xxx", "document id is longer than 512 characters"),
        ]
        # 7 and "7" are one document, as in JSONL
        again = client.post("/v1/kb/docs/documents", json={"documents": [{"id": "7", "text": "changed"}]})
        assert again.json()["replaced"] == ["7"]
        # a boolean or a float is not an id
        for bad in (True, 1.5, None):
            response = client.post("/v1/kb/docs/documents", json={"documents": [{"id": bad, "text": "t"}]})
            assert response.status_code == 400, (bad, response.text)
