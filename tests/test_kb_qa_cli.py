"""Regression tests for a QA pass over the knowledge base's settings checks and command line: an
invalid setting of a new collection (400, not 409), bounds of the CLI's numbers, the hint of
`kb delete` for a file that is gone, a closed stdout pipe, and JSONL sources (absolute)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, kb_app
from qwembed.cli import BROKEN_PIPE_STATUS, _build_parser
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb import cli as kb_cli
from qwembed.kb.errors import InvalidSettingError, SettingsMismatchError
from qwembed.kb.ingest import Failure, file_document_id, read_paths
from qwembed.kb.manager import MAX_K, MAX_LISTING, MAX_PAGE

AUTH = {"Authorization": "Bearer secret"}


@pytest.fixture
def stub() -> StubEmbedder:
    return StubEmbedder()  # 64 dimensions, 128 tokens


@pytest.fixture
def manager(tmp_path: Path, stub) -> KnowledgeBaseManager:
    m = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    m.create("docs", "stub")
    return m


def _run(argv: list[str], monkeypatch, stub, capsys) -> tuple[int, str, str]:
    """``qwembed …`` in this process, the knowledge base with the stub model."""
    from qwembed.cli import main

    monkeypatch.setattr(kb_cli, "_manager", lambda args: KnowledgeBaseManager(args.kb_dir, lambda m: stub))
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- 1. an invalid setting for a new collection ------------------------------------------------
def _error(response, status: int, code: str, param: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
    return error["message"]


def test_an_invalid_setting_of_a_new_collection_is_a_400_and_a_conflict_a_409(manager):
    with TestClient(kb_app(manager), headers=AUTH) as client:
        wide = client.put("/v1/kb/web3", json={"model": "stub", "dimensions": 100000})
        assert _error(wide, 400, "invalid_request", "dimensions") == (
            "dimensions must be between 1 and the model's width, 64, got 100000"
        )
        overlap = {"model": "stub", "chunking": {"chunk_tokens": 64, "overlap_tokens": 64}}
        message = _error(client.put("/v1/kb/web3", json=overlap), 400, "invalid_request", "chunking")
        assert message == "chunking.overlap_tokens must be between 0 and half the chunk size (32), got 64"
        long = {"model": "stub", "chunking": {"chunk_tokens": 1000, "overlap_tokens": 0}}
        message = _error(client.put("/v1/kb/web3", json=long), 400, "invalid_request", "chunking")
        assert message.startswith("chunking.chunk_tokens must be between 8 and the model's limit of 128")
        _error(client.get("/v1/kb/web3"), 404, "collection_not_found", "name")  # nothing half-made
        # the same values against a collection that exists conflict with its settings: 409
        _error(
            client.put("/v1/kb/docs", json={"model": "stub", "dimensions": 100000}),
            409,
            "settings_mismatch",
            "dimensions",
        )
        _error(client.put("/v1/kb/docs", json=overlap), 409, "settings_mismatch", "chunking")
    with pytest.raises(InvalidSettingError) as caught:
        manager.create("web3", "stub", dimensions=65)
    assert not isinstance(caught.value, SettingsMismatchError) and caught.value.status == 400


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--dimensions", "100000"], "--dimensions must be between 1 and the model's width, 64, got 100000"),
        (
            ["--chunk-tokens", "64", "--overlap-tokens", "64"],
            "--overlap-tokens must be between 0 and half the chunk size (32), got 64",
        ),
        (
            ["--chunk-tokens", "1000"],
            "--chunk-tokens must be between 8 and the model's limit of 128 tokens, got 1000",
        ),
        # (an overlap alone was dropped without a word)
        (["--overlap-tokens", "4"], "--overlap-tokens needs --chunk-tokens"),
    ],
)
def test_kb_create_names_the_option_at_fault(tmp_path, stub, monkeypatch, capsys, options, message):
    argv = ["kb", "create", "web3", "--model", "stub", *options, "--kb-dir", str(tmp_path / "kb")]
    code, out, err = _run(argv, monkeypatch, stub, capsys)
    assert (code, out) == (2, "")
    assert err.startswith(f"qwembed kb create: {message}") and len(err.splitlines()) == 1


# ---- 3. deleting a file that is gone, by the path typed ------------------------------------------
def test_deleting_a_gone_file_by_its_relative_path_points_to_its_id(
    tmp_path, manager, stub, monkeypatch, capsys
):
    gone = tmp_path / "gone.txt"
    gone.write_text("a file removed after it was added", encoding="utf-8")
    manager.add("docs", [d for d in read_paths([gone]) if not isinstance(d, Failure)])
    manager.add("docs", [Document("record", "a JSONL-style record")])
    gone.unlink()
    monkeypatch.chdir(tmp_path)
    kb = ["--kb-dir", str(tmp_path / "kb")]
    code, _, err = _run(["kb", "delete", "docs", "gone.txt", *kb], monkeypatch, stub, capsys)
    absolute = file_document_id(gone)
    assert code == 2 and err.strip() == (
        "qwembed kb delete: no document 'gone.txt' in collection 'docs' (a file's id is its absolute "
        f"path, as `qwembed kb list docs` shows: 'gone.txt' was stored as '{absolute}')"
    )
    code, _, err = _run(["kb", "delete", "docs", "never.md", "nosuch", *kb], monkeypatch, stub, capsys)
    assert code == 2 and f"'never.md' would be '{tmp_path.resolve().as_posix()}/never.md', not stored" in err
    assert "'nosuch'" in err and "'nosuch' would" not in err  # a record's id is no path
    # a missing record id alone gets no hint
    code, _, err = _run(["kb", "delete", "docs", "nosuch", *kb], monkeypatch, stub, capsys)
    assert code == 2 and err.strip() == "qwembed kb delete: no document 'nosuch' in collection 'docs'"
    assert manager.get("docs").stats().documents == 2  # nothing deleted


# ---- 4. the CLI's numbers: refused when parsed, within the library's and the route's bounds ------
@pytest.mark.parametrize(
    "argv",
    [
        ["kb", "list", "docs", "--limit", str(MAX_PAGE + 1)],
        ["kb", "list", "docs", "--limit", "0"],
        ["kb", "list", "docs", "--offset", "-1"],
        ["kb", "list", "docs", "--offset", str(MAX_LISTING + 1)],
        ["kb", "search", "docs", "q", "-k", "0"],
        ["kb", "search", "docs", "q", "-k", str(MAX_K + 1)],
        ["kb", "create", "c", "--model", "m", "--dimensions", "0"],
        ["kb", "create", "c", "--model", "m", "--chunk-tokens", "7"],
        ["kb", "create", "c", "--model", "m", "--chunk-tokens", "8", "--overlap-tokens", "-1"],
        ["kb", "add", "docs", "f.txt", "--batch-documents", "0"],
        ["kb", "add", "docs", "f.txt", "--batch-documents", "x"],
    ],
)
def test_kb_numbers_out_of_bounds_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        _build_parser().parse_args(argv)
    err = capsys.readouterr().err
    assert caught.value.code == 2 and ("must be" in err or "is not an integer" in err), err


def test_kb_list_limits_match_the_route(manager):
    parsed = _build_parser().parse_args(
        ["kb", "list", "docs", "--limit", str(MAX_PAGE), "--offset", str(MAX_LISTING)]
    )
    assert (parsed.limit, parsed.offset) == (MAX_PAGE, MAX_LISTING)
    assert _build_parser().parse_args(["kb", "search", "docs", "q", "-k", str(MAX_K)]).k == MAX_K
    with TestClient(kb_app(manager), headers=AUTH) as client:
        assert client.get(f"/v1/kb/docs/documents?limit={MAX_PAGE}").status_code == 200
        _error(client.get(f"/v1/kb/docs/documents?limit={MAX_PAGE + 1}"), 400, "invalid_request", "limit")
        assert client.post("/v1/kb/docs/search", json={"query": "q", "k": MAX_K + 1}).status_code == 400


# ---- 5. a reader that closed the pipe ----------------------------------------------------------
class _ClosedPipe(io.StringIO):
    """A stdout whose reader went away (``| head`` that has its lines)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_ends_a_command_quietly(tmp_path, manager, stub, monkeypatch, capsys):
    monkeypatch.setattr(kb_cli, "_manager", lambda args: KnowledgeBaseManager(args.kb_dir, lambda m: stub))
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    from qwembed.cli import main

    assert main(["kb", "stats", "docs", "--kb-dir", str(tmp_path / "kb")]) == BROKEN_PIPE_STATUS
    assert capsys.readouterr().err == ""  # (was "qwembed kb stats: [Errno 32] Broken pipe")


def test_a_closed_stdout_pipe_in_a_real_process(tmp_path, manager):
    """The output is still buffered when the command returns: the write that fails is the flush
    at exit, which Python reported as "Exception ignored … BrokenPipeError" (status 120)."""
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the command writes anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "qwembed.cli", "kb", "stats", "docs", "--kb-dir", str(tmp_path / "kb")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (BROKEN_PIPE_STATUS, "")


# ---- 6. a JSONL record's default source ----------------------------------------------------------
def test_jsonl_sources_are_absolute_like_file_ids(tmp_path, manager, monkeypatch):
    folder = tmp_path / "files"
    folder.mkdir()
    records = folder / "recs.jsonl"
    records.write_text('{"id": "r1", "text": "first"}\n\n{"id": "r2", "text": "second", "source": "own"}\n')
    monkeypatch.chdir(tmp_path)
    documents = [d for d in read_paths(["files/recs.jsonl"]) if not isinstance(d, Failure)]
    assert [d.source for d in documents] == [f"{file_document_id(records)}:1", "own"]
    assert manager.add("docs", documents).added == ["r1", "r2"]
    # the same file, named from another folder: the same records, so nothing to replace
    monkeypatch.chdir(folder)
    again = [d for d in read_paths(["recs.jsonl"]) if not isinstance(d, Failure)]
    assert manager.add("docs", again).unchanged == ["r1", "r2"]
    # a bad line is still named as the path was given
    records.write_text("not json\n")
    [failure] = read_paths(["recs.jsonl"])
    assert isinstance(failure, Failure) and failure.item == "recs.jsonl:1"


# ---- 2. (the kb side) a bundled embedder named as the reranker ---------------------------------
def test_kb_search_refuses_a_bundled_embedder_as_reranker_at_once(
    tmp_path, manager, stub, monkeypatch, capsys
):
    embedded = stub.calls
    argv = ["kb", "search", "docs", "install", "--rerank", "minilm", "--kb-dir", str(tmp_path / "kb")]
    code, out, err = _run(argv, monkeypatch, stub, capsys)
    assert (code, out) == (2, "")
    assert err.startswith("qwembed kb search: 'minilm' is a bundled embedding model, not a reranker; give")
    assert stub.calls == embedded  # refused before the query was embedded


def test_the_library_refuses_a_batch_size_below_one(tmp_path):
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: StubEmbedder())
    manager.create("docs", "stub")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            list(manager.add_stream("docs", [Document("a", "text")], batch_size=bad))
    assert [report.added for report in manager.add_stream("docs", [Document("a", "text")], batch_size=1)] == [
        ["a"]
    ]
