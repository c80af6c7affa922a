"""The /v1/kb routes on a bare app: create, add (200 = durable), search, stats, delete, errors, keys."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, kb_app
from qwembed.kb import KnowledgeBaseManager


@pytest.fixture
def client(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "faq.md").write_text("Reset your password from the account page.")
    (tmp_path / "outside.txt").write_text("private")
    stub = StubEmbedder()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, file_roots=[tmp_path / "files"])
    with TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"}) as test_client:
        test_client.files = tmp_path
        yield test_client


def test_collection_lifecycle(client):
    created = client.put(
        "/v1/kb/faq", json={"model": "stub", "chunking": {"chunk_tokens": 64, "overlap_tokens": 8}}
    )
    assert created.status_code == 200 and created.json()["created"] is True
    assert client.put("/v1/kb/faq", json={"model": "stub"}).json()["created"] is False
    documents = [
        {"id": "pw", "text": "How to reset a forgotten password.", "metadata": {"lang": "en"}},
        {"id": "zh", "text": "密码忘了怎么办？可以在账户页面重置密码。", "metadata": {"lang": "zh"}},
        {"id": "", "text": "bad"},
    ]
    added = client.post("/v1/kb/faq/documents", json={"documents": documents[:2]})
    assert added.status_code == 200
    assert added.json()["added"] == ["pw", "zh"] and added.json()["chunks"] == 2
    results = client.post("/v1/kb/faq/search", json={"query": "密码", "mode": "keyword"}).json()["results"]
    assert results[0]["document_id"] == "zh"
    assert set(results[0]) == {"document_id", "chunk_id", "position", "score", "text", "metadata", "source"}
    hybrid = client.post(
        "/v1/kb/faq/search", json={"query": "reset password", "k": 1, "filter": {"lang": "en"}}
    )
    assert [r["document_id"] for r in hybrid.json()["results"]] == ["pw"]
    stats = client.get("/v1/kb/faq").json()
    assert (stats["documents"], stats["chunks"]) == (2, 2)
    assert stats["settings"]["chunking"] == {"chunk_tokens": 64, "overlap_tokens": 8}
    assert client.get("/v1/kb").json()["data"][0]["name"] == "faq"
    assert [d["id"] for d in client.get("/v1/kb/faq/documents").json()["data"]] == ["pw", "zh"]
    assert client.delete("/v1/kb/faq/documents/pw").json() == {"id": "pw", "deleted": True}
    assert client.get("/v1/kb/faq").json()["documents"] == 1


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    return error


def test_errors_use_the_api_shape(client):
    client.put("/v1/kb/faq", json={"model": "stub"})
    _error(client.put("/v1/kb/faq", json={"model": "stub", "dimensions": 8}), 409, "settings_mismatch")
    _error(client.post("/v1/kb/nope/search", json={"query": "x"}), 404, "collection_not_found")
    _error(client.delete("/v1/kb/faq/documents/missing"), 404, "document_not_found")
    _error(client.post("/v1/kb/faq/search", json={"query": "x", "mode": "fuzzy"}), 400, "invalid_request")
    _error(
        client.post("/v1/kb/faq/search", json={"query": "x", "filter": {"a": {"$re": 1}}}),
        400,
        "invalid_filter",
    )
    _error(client.post("/v1/kb/faq/search", json={"query": "x", "rerank": "m"}), 400, "rerank_unavailable")
    _error(client.put("/v1/kb/..bad", json={"model": "stub"}), 400, "invalid_name")
    _error(client.post("/v1/kb/faq/documents", json={}), 400, "missing_field")
    _error(client.get("/v1/kb", headers={"Authorization": "Bearer wrong"}), 401, "invalid_api_key")
    bad = client.post(
        "/v1/kb/faq/documents", json={"documents": [{"id": "e", "text": "  "}, {"id": "ok", "text": "y"}]}
    )
    assert bad.status_code == 200 and bad.json()["added"] == ["ok"]
    assert bad.json()["failed"] == [{"id": "e", "message": "the document is empty"}]


def test_server_side_files_are_confined(client):
    client.put("/v1/kb/faq", json={"model": "stub"})
    files = client.files
    ok = client.post("/v1/kb/faq/documents", json={"paths": [str(files / "files" / "faq.md")]})
    # a file's document id is its absolute path
    assert ok.status_code == 200 and ok.json()["added"] == [(files / "files" / "faq.md").resolve().as_posix()]
    for path in [files / "outside.txt", files / "files" / ".." / "outside.txt"]:
        _error(client.post("/v1/kb/faq/documents", json={"paths": [str(path)]}), 403, "path_not_allowed")


def test_search_options_warnings_and_dropping_a_collection(client):
    client.put("/v1/kb/faq", json={"model": "stub", "chunking": {"chunk_tokens": 16, "overlap_tokens": 0}})
    long_text = " ".join(f"password reset step {i} of the account page." for i in range(12))
    client.post("/v1/kb/faq/documents", json={"documents": [{"id": "long", "text": long_text}]})
    client.post("/v1/kb/faq/documents", json={"documents": [{"id": "other", "text": "gravity and apples"}]})

    def search(**options):
        return client.post("/v1/kb/faq/search", json={"query": "password reset", "k": 3, **options}).json()

    assert [hit["document_id"] for hit in search()["results"]] == ["long", "other"]  # a document once
    chunks = search(per_document=False, fusion="rrf")["results"]
    assert [hit["document_id"] for hit in chunks] == ["long"] * 3  # one document's chunks
    _error(client.post("/v1/kb/faq/search", json={"query": "x", "fusion": "max"}), 400, "invalid_request")
    answer = search(query="password " * 400, mode="dense")  # over the stub's 128 tokens
    assert answer["results"] and "longer than the model's 128 tokens" in answer["warnings"][0]
    assert "warnings" not in search()
    assert client.delete("/v1/kb/faq").json() == {"name": "faq", "dropped": True}
    _error(client.get("/v1/kb/faq"), 404, "collection_not_found")
    _error(client.delete("/v1/kb/faq"), 404, "collection_not_found")
