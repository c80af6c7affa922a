"""``qwembed kb`` and ``/v1/kb`` QA gaps: ``--dtype`` reaches the embedder and reranker loaders of
``kb create|add|search`` (and is not one of a collection's settings), and ``kb search --rerank``
gives the reranker an instruction: ``--rerank-instruction`` / ``rerank_instruction``, by default
the collection's query instruction (cross-encoders ignore it)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from kb_fixtures import StubEmbedder, StubReranker, kb_app
from qwembed.cli import _build_parser
from qwembed.kb import Document, KnowledgeBaseManager
from qwembed.kb import cli as kb_cli
from qwembed.kb.errors import KBError

AUTH = {"Authorization": "Bearer secret"}
TASK = "Given a question about European rivers, retrieve the passage that answers it"
OTHER_TASK = "Given a recipe title, find recipes that use the same main ingredient"
QUERY = "which river flows through Basel"
DOCS = [
    Document("rhine", "The Rhine flows north through Basel, Strasbourg and Cologne."),
    Document("danube", "The Danube flows east through Vienna, Budapest and Belgrade."),
    Document("bread", "Knead the dough, let it rise for an hour, then bake the bread."),
    Document("basel", "Basel is a Swiss city on the river, known for its art fair."),
    Document("tea", "Green tea is steeped at 80 degrees for two minutes."),
]


class RecordingReranker(StubReranker):
    """The stub reranker, remembering the instruction of each call."""

    def __init__(self) -> None:
        self.instructions: list[str | None] = []

    def tokenize_pairs(self, query, documents, instruction, truncate=True, max_tokens=None):
        self.instructions.append(instruction)
        return super().tokenize_pairs(query, documents, instruction, truncate, max_tokens)


@pytest.fixture
def stub() -> StubEmbedder:
    return StubEmbedder()


def _collection(kb_dir: Path, stub: StubEmbedder, instruction: str | None = None, name: str = "docs") -> None:
    manager = KnowledgeBaseManager(kb_dir, lambda model: stub)
    manager.create(name, "stub", query_instruction=instruction)
    manager.add(name, DOCS)


def _main(argv: list[str], capsys) -> tuple[int, str, str]:
    from qwembed.cli import main

    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _capture_managers(monkeypatch) -> list[KnowledgeBaseManager]:
    """The real ``kb_cli._manager`` (its loaders), each manager it built kept for inspection."""
    managers: list[KnowledgeBaseManager] = []
    real = kb_cli._manager

    def capturing(args):
        managers.append(real(args))
        return managers[-1]

    monkeypatch.setattr(kb_cli, "_manager", capturing)
    return managers


def _stub_embedder_loader(monkeypatch, stub: StubEmbedder) -> list[dict]:
    """``Embedder.load`` replaced by one that records its keywords and returns the stub."""
    from qwembed.engine import Embedder

    calls: list[dict] = []

    def load(cls, model, **options):
        calls.append({"model": model, **options})
        return stub

    monkeypatch.setattr(Embedder, "load", classmethod(load))
    return calls


# ---- 1. --dtype ---------------------------------------------------------------------------------
def test_the_kb_commands_that_load_a_model_share_serves_dtype_option():
    parser = _build_parser()
    commands = {a.dest: a for a in parser._subparsers._group_actions}["command"].choices
    serve_dtype = next(a for a in commands["serve"]._actions if a.dest == "dtype")
    kb = {a.dest: a for a in commands["kb"]._subparsers._group_actions}["kb_command"].choices
    for name in ("create", "add", "search"):
        dtype = next(a for a in kb[name]._actions if a.dest == "dtype")
        assert (dtype.default, dtype.help) == (serve_dtype.default, serve_dtype.help), name
        assert any(a.dest == "device" for a in kb[name]._actions), name
    for name in ("list", "stats", "delete", "drop"):  # (no model: nothing for --dtype to do)
        assert all(a.dest != "dtype" for a in kb[name]._actions), name


def test_dtype_and_device_reach_the_embedder_and_reranker_loaders(tmp_path, monkeypatch, capsys, stub):
    embedder_calls = _stub_embedder_loader(monkeypatch, stub)
    reranker_options = []

    def load_reranker(model, *, name=None, options=None):
        reranker_options.append(options)
        return StubReranker()

    import qwembed.backends

    monkeypatch.setattr(qwembed.backends, "load_reranker", load_reranker)
    kb = ["--kb-dir", str(tmp_path / "kb"), "--device", "cpu", "--quiet"]
    assert _main(["kb", "create", "docs", "--model", "stub", "--dtype", "float32", *kb], capsys)[0] == 0
    assert [(c["model"], c["device"], c["dtype"]) for c in embedder_calls] == [("stub", "cpu", "float32")]
    notes = tmp_path / "notes.txt"
    notes.write_text("The Rhine flows north through Basel.", encoding="utf-8")
    assert _main(["kb", "add", "docs", str(notes), "--dtype", "bfloat16", *kb], capsys)[0] == 0
    assert embedder_calls[-1]["dtype"] == "bfloat16"  # a collection made in float32 takes bf16 adds
    (tmp_path / "reranker").mkdir()  # (a folder that exists: the name is checked before loading)
    search = [
        "kb",
        "search",
        "docs",
        "Basel",
        "--rerank",
        str(tmp_path / "reranker"),
        "--dtype",
        "float32",
        *kb,
    ]
    code, out, err = _main(search, capsys)
    assert code == 0, err
    assert embedder_calls[-1]["dtype"] == "float32" and "Basel" in out
    assert [(o.device, o.dtype) for o in reranker_options] == [("cpu", "float32")]
    # without the option: auto, as before
    assert _main(["kb", "search", "docs", "Basel", *kb], capsys)[0] == 0
    assert embedder_calls[-1]["dtype"] == "auto"


def test_dtype_is_not_one_of_the_collections_settings(tmp_path, monkeypatch, capsys, stub):
    _stub_embedder_loader(monkeypatch, stub)
    kb = ["--kb-dir", str(tmp_path / "kb"), "--quiet"]
    assert _main(["kb", "create", "docs", "--model", "stub", "--dtype", "bfloat16", *kb], capsys)[0] == 0
    settings = json.loads((tmp_path / "kb" / "docs" / "collection.json").read_text())
    assert "dtype" not in settings and "bfloat16" not in json.dumps(settings)
    # the same create in another precision is the same collection, not a 409
    code, out, err = _main(["kb", "create", "docs", "--model", "stub", "--dtype", "float32", *kb], capsys)
    assert code == 0 and out.startswith("exists:"), err


def test_an_unknown_dtype_is_one_line_before_any_model_loads(tmp_path, monkeypatch, capsys, stub):
    calls = _stub_embedder_loader(monkeypatch, stub)
    argv = ["kb", "create", "docs", "--model", "stub", "--dtype", "fp8", "--kb-dir", str(tmp_path / "kb")]
    code, out, err = _main(argv, capsys)
    assert code == 2 and out == "" and calls == []
    assert err == (
        "qwembed kb create: --dtype: unknown dtype 'fp8'; choose auto, float32, fp32, bfloat16, bf16, "
        "float16, fp16\n"
    )


def test_dtype_float32_search_matches_a_float32_embedder_and_bf16_shares_the_collection(
    tmp_path, monkeypatch, capsys, minilm_dir
):
    """The QA report: dense scores of `kb search` differed by ~0.006 from a float32 server's,
    because the CLI always ran auto (bf16 on this CPU). With --dtype float32 they are the same."""
    import torch

    from qwembed.engine import Embedder

    managers = _capture_managers(monkeypatch)
    kb = ["--kb-dir", str(tmp_path / "kb"), "--quiet", "--device", "cpu"]
    notes = tmp_path / "rivers.txt"
    notes.write_text(DOCS[0].text, encoding="utf-8")
    assert _main(["kb", "create", "docs", "--model", "minilm", "--dtype", "float32", *kb], capsys)[0] == 0
    assert managers[-1].embedder("minilm").encoder.precision.dtype == torch.float32
    assert _main(["kb", "add", "docs", str(notes), "--dtype", "float32", *kb], capsys)[0] == 0
    search = ["kb", "search", "docs", QUERY, "--mode", "dense", "--json", *kb]
    code, out, err = _main([*search, "--dtype", "float32"], capsys)
    assert code == 0, err
    assert managers[-1].embedder("minilm").encoder.precision.dtype == torch.float32
    score = json.loads(out.splitlines()[0])["score"]
    reference = Embedder.load("minilm", device="cpu", dtype="float32")
    query, chunk = reference.embed([QUERY], input_type="query"), reference.embed([DOCS[0].text])
    assert score == pytest.approx(float(query[0] @ chunk[0]), abs=1e-5)
    # bf16 reads the same collection (no settings mismatch): the precision is the run's choice
    code, out, err = _main([*search, "--dtype", "bfloat16"], capsys)
    assert code == 0, err
    assert managers[-1].embedder("minilm").encoder.precision.dtype == torch.bfloat16
    assert json.loads(out.splitlines()[0])["score"] == pytest.approx(score, abs=0.02)


# ---- 2. the rerank stage's instruction: library and HTTP ----------------------------------------
def test_the_rerank_instruction_defaults_to_the_collections_query_instruction(tmp_path, stub):
    _collection(tmp_path / "kb", stub, instruction=TASK)
    _collection(tmp_path / "kb", stub, name="plain")
    reranker = RecordingReranker()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, reranker_factory=lambda m: reranker)
    manager.search("docs", QUERY, rerank="r")
    manager.search("docs", QUERY, rerank="r", rerank_instruction=OTHER_TASK)
    manager.search("plain", QUERY, rerank="r")  # no query instruction: the reranker's own default
    manager.search("plain", QUERY, rerank="r", rerank_instruction=OTHER_TASK)
    assert reranker.instructions == [TASK, OTHER_TASK, None, OTHER_TASK]


def test_a_rerank_instruction_that_would_be_dropped_or_is_empty_is_refused(tmp_path, stub):
    _collection(tmp_path / "kb", stub, instruction=TASK)
    reranker = RecordingReranker()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, reranker_factory=lambda m: reranker)
    with pytest.raises(KBError, match="rerank_instruction needs rerank") as caught:
        manager.search("docs", QUERY, rerank_instruction=OTHER_TASK)
    assert (caught.value.status, caught.value.param) == (400, "rerank_instruction")
    with pytest.raises(KBError, match="rerank_instruction is empty") as caught:
        manager.search("docs", QUERY, rerank="r", rerank_instruction="  ")
    assert caught.value.param == "rerank_instruction" and reranker.instructions == []


def test_http_search_takes_rerank_instruction(tmp_path, stub):
    _collection(tmp_path / "kb", stub, instruction=TASK)
    reranker = RecordingReranker()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub, reranker_factory=lambda m: reranker)
    with TestClient(kb_app(manager), headers=AUTH) as client:
        body = {"query": QUERY, "rerank": "r"}
        assert client.post("/v1/kb/docs/search", json=body).status_code == 200
        answer = client.post("/v1/kb/docs/search", json={**body, "rerank_instruction": OTHER_TASK})
        assert answer.status_code == 200 and answer.json()["results"]
        assert reranker.instructions == [TASK, OTHER_TASK]
        for wrong in ({**body, "rerank_instruction": " "}, {"query": QUERY, "rerank_instruction": TASK}):
            error = client.post("/v1/kb/docs/search", json=wrong)
            assert error.status_code == 400, error.text
            assert (error.json()["error"]["code"], error.json()["error"]["param"]) == (
                "invalid_request",
                "rerank_instruction",
            )
        strict = client.post("/v1/kb/docs/search", json={**body, "rerank_instruction": 7})
        assert strict.status_code == 400  # a string or null, as the schema says
    assert reranker.instructions == [TASK, OTHER_TASK]


# ---- 2. the rerank stage's instruction: the command line, real rerankers ------------------------
def _rerank_search(argv: list[str], capsys) -> list[dict]:
    code, out, err = _main(argv, capsys)
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines()]


def _expected(reranker, hits: list[dict], instruction: str | None) -> list[float]:
    from qwembed.engine.rerank import score_pairs

    return [
        float(s) for s in score_pairs(reranker, QUERY, [h["text"] for h in hits], instruction=instruction)
    ]


def test_kb_search_gives_a_qwen3_reranker_its_instruction(
    tmp_path, monkeypatch, capsys, stub, qwen3_reranker_dir
):
    import torch

    from qwembed.backends.qwen3_reranker import Qwen3Reranker

    _stub_embedder_loader(monkeypatch, stub)
    managers = _capture_managers(monkeypatch)
    _collection(tmp_path / "kb", stub, instruction=TASK)
    _collection(tmp_path / "kb", stub, name="plain")
    model = str(qwen3_reranker_dir)
    kb = ["--kb-dir", str(tmp_path / "kb"), "--quiet", "--device", "cpu", "--json", "-k", "5"]
    search = ["kb", "search", "docs", QUERY, "--rerank", model, *kb]
    reference = Qwen3Reranker.load(model, device="cpu", dtype="float32")

    given = _rerank_search([*search, "--dtype", "float32", "--rerank-instruction", OTHER_TASK], capsys)
    assert managers[-1].reranker(model).precision.dtype == torch.float32  # --dtype reached it
    assert len(given) == 5
    assert [h["score"] for h in given] == pytest.approx(_expected(reference, given, OTHER_TASK), abs=1e-4)

    default = _rerank_search([*search, "--dtype", "float32"], capsys)  # the collection's TASK
    assert [h["score"] for h in default] == pytest.approx(_expected(reference, default, TASK), abs=1e-4)
    by_document = {h["document_id"]: h["score"] for h in given}
    assert max(abs(h["score"] - by_document[h["document_id"]]) for h in default) > 1e-3
    # (and the reranker's own default would have scored them otherwise again)
    assert (
        max(
            abs(a - b)
            for a, b in zip(
                _expected(reference, default, None), _expected(reference, default, TASK), strict=True
            )
        )
        > 1e-3
    )

    plain = _rerank_search(
        ["kb", "search", "plain", QUERY, "--rerank", model, *kb, "--dtype", "float32"], capsys
    )
    assert [h["score"] for h in plain] == pytest.approx(_expected(reference, plain, None), abs=1e-4)

    _rerank_search([*search, "--dtype", "bfloat16"], capsys)
    assert managers[-1].reranker(model).precision.dtype == torch.bfloat16


def test_a_cross_encoder_reranks_a_collection_with_an_instruction(
    tmp_path, monkeypatch, capsys, stub, cross_encoder_dir
):
    """Cross-encoders take no instruction: the default (the collection's) must not fail them."""
    from qwembed.backends.cross_encoder import CrossEncoderReranker

    _stub_embedder_loader(monkeypatch, stub)
    _collection(tmp_path / "kb", stub, instruction=TASK)
    model = str(cross_encoder_dir)
    kb = ["--kb-dir", str(tmp_path / "kb"), "--quiet", "--device", "cpu", "--json", "-k", "5"]
    hits = _rerank_search(
        ["kb", "search", "docs", QUERY, "--rerank", model, "--dtype", "float32", *kb], capsys
    )
    reference = CrossEncoderReranker.load(model, device="cpu", dtype="float32")
    assert len(hits) == 5
    assert [h["score"] for h in hits] == pytest.approx(_expected(reference, hits, None), abs=1e-4)
    assert np.all(np.diff([h["score"] for h in hits]) <= 0)  # best first


def test_kb_search_rerank_instruction_needs_rerank_and_text(tmp_path, monkeypatch, capsys, stub):
    calls = _stub_embedder_loader(monkeypatch, stub)
    _collection(tmp_path / "kb", stub, instruction=TASK)
    kb = ["--kb-dir", str(tmp_path / "kb")]
    code, out, err = _main(["kb", "search", "docs", QUERY, "--rerank-instruction", TASK, *kb], capsys)
    assert (code, out, err) == (2, "", "qwembed kb search: --rerank-instruction needs --rerank\n")
    with pytest.raises(SystemExit) as usage:  # an empty one: a usage error, as every --instruction
        _main(["kb", "search", "docs", QUERY, "--rerank", "r", "--rerank-instruction", " ", *kb], capsys)
    assert usage.value.code == 2 and calls == []
