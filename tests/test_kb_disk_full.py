"""A full disk under the knowledge base: a clear 507, nothing half-written, nothing acknowledged lost.

LanceDB reports the disk's ``ENOSPC`` as ``RuntimeError("lance error: LanceError(IO): No space
left on device (os error 28), …")``, which reached clients as a bland 500 before. One test fills
a real 1 MiB tmpfs (where this machine lets the tests mount one); the others simulate the
store's error so that they run everywhere.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, kb_app
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb.errors import StorageFullError, is_out_of_space
from qwembed.kb.lance_store import LanceStore

LANCE_ENOSPC = (
    "lance error: LanceError(IO): No space left on device (os error 28), "
    "lance-file-13.0.0/src/writer/structural.rs:191:9"
)


def _disk_full(*args, **kwargs):
    raise RuntimeError(LANCE_ENOSPC)


def _other_store_error(*args, **kwargs):
    raise RuntimeError("lance error: LanceError(IO): Not found (os error 2)")


def _documents(prefix: str, count: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"Document {prefix}{i}. " + "word " * 300} for i in range(count)]


@pytest.fixture
def client(tmp_path):
    stub = StubEmbedder()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    with TestClient(kb_app(manager), headers={"Authorization": "Bearer secret"}) as test_client:
        yield test_client


def test_out_of_space_is_recognised_in_each_form():
    assert is_out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert is_out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_out_of_space(RuntimeError(LANCE_ENOSPC))
    try:
        raise ValueError("write failed") from OSError(errno.ENOSPC, "No space left on device")
    except ValueError as chained:
        assert is_out_of_space(chained)
    assert not is_out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert not is_out_of_space(RuntimeError("lance error: LanceError(IO): Not found (os error 2)"))


def _storage_full(response, outcome: str) -> None:
    assert response.status_code == 507, response.text
    error = response.json()["error"]
    assert error["code"] == "insufficient_storage" and set(error) == {"message", "type", "param", "code"}
    assert "disk under the knowledge base is full" in error["message"] and outcome in error["message"]


def test_a_full_disk_is_a_507_and_what_was_acknowledged_stays(client, monkeypatch):
    assert client.put("/v1/kb/faq", json={"model": "stub"}).status_code == 200
    assert client.post("/v1/kb/faq/documents", json={"documents": _documents("a", 3)}).status_code == 200

    with monkeypatch.context() as full:
        full.setattr(LanceStore, "replace_documents", _disk_full)
        full.setattr(LanceStore, "delete_documents", _disk_full)
        refused = client.post("/v1/kb/faq/documents", json={"documents": _documents("b", 2)})
        _storage_full(refused, "none of these documents was stored")
        _storage_full(client.delete("/v1/kb/faq/documents/a0"), "the document was not deleted")
        # reads go on while the disk is full
        hits = client.post("/v1/kb/faq/search", json={"query": "Document a1", "k": 3}).json()["results"]
        assert hits

    listed = {d["id"] for d in client.get("/v1/kb/faq/documents").json()["data"]}
    assert listed == {"a0", "a1", "a2"}
    # another error from the store is still a logged 500, not mistaken for a full disk
    with monkeypatch.context() as broken:
        broken.setattr(LanceStore, "replace_documents", _other_store_error)
        failed = client.post("/v1/kb/faq/documents", json={"documents": _documents("c", 1)})
        assert failed.status_code == 500 and failed.json()["error"]["code"] == "internal_error"
    # space freed: the refused request succeeds as it was
    again = client.post("/v1/kb/faq/documents", json={"documents": _documents("b", 2)})
    assert again.status_code == 200 and again.json()["added"] == ["b0", "b1"]


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs at ``tmp_path / "disk"``, unmounted afterwards; skips where mounting is not
    permitted (it needs root and the mount capability, which containers often drop)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_really_full_disk_keeps_every_acknowledged_document(small_disk):
    stub = StubEmbedder()
    manager = KnowledgeBaseManager(small_disk / "kb", lambda model: stub)
    manager.create("full", "stub")
    acknowledged: list[str] = []
    refused: list[Document] = []
    for step in range(200):  # ~12 KB of chunks per document: 1 MiB fills within ~20 steps
        batch = [Document(f"d{step}-{i}", f"Document {step} {i}. " + "word " * 300) for i in range(8)]
        try:
            report = manager.add("full", batch)
        except StorageFullError as error:
            assert "none of these documents was stored" in str(error)
            refused = batch
            break
        acknowledged += report.added
    assert refused, "the 1 MiB disk never filled"
    assert acknowledged

    # the same process and a fresh one (a restart) see exactly the acknowledged documents
    for reader in (manager, KnowledgeBaseManager(small_disk / "kb", lambda model: stub)):
        listed = {info.document_id for info in reader.get("full").documents(10_000, 0)}
        assert listed == set(acknowledged)
        assert reader.search("full", "Document 0 1", k=3)

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    assert manager.add("full", refused).added == [d.id for d in refused]
