"""/v1/rerank (Cohere/Jina shape) and /rerank (TEI shape) next to embeddings in one server. Cohere v2,
vLLM / Infinity bodies at /rerank and the fields other clients send: tests/test_api_rerank_compat.py."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_encoder, load_reranker
from qwembed.engine.pool import ModelPool
from qwembed.engine.rerank import rerank
from rerank_fixtures import build_minilm_cross_encoder, build_tiny_qwen3_reranker

QUERY = "What is the capital of China?"
DOCUMENTS = ["The capital of China is Beijing.", "北京是中国的首都。", "Gravity pulls bodies together.", "猫"]


@pytest.fixture(scope="module")
def models(tmp_path_factory, qwen3_dirs):
    root = tmp_path_factory.mktemp("rerankers")
    options = LoadOptions(device="cpu", dtype="float32")
    return {
        "qwen3": load_reranker(str(build_tiny_qwen3_reranker(root / "qwen3-reranker")), options=options),
        "cross": load_reranker(str(build_minilm_cross_encoder(root / "cross-encoder")), options=options),
        "minilm": load_encoder("minilm", options=options),
    }


@pytest.fixture(scope="module")
def client(models):
    pool = ModelPool()
    pool.add_reranker(models["qwen3"])
    pool.add_reranker(models["cross"])
    pool.add_encoder(models["minilm"])
    with TestClient(create_app(pool, ServerSettings(max_client_batch_size=8))) as test_client:
        yield test_client


def test_backends_are_chosen_by_config(models):
    assert models["qwen3"].backend == "qwen3-reranker" and models["cross"].backend == "cross-encoder"


@pytest.mark.parametrize("model", ["qwen3", "cross"])
def test_rerank_equals_the_library_and_is_sorted(client, models, model):
    name = models[model].name
    body = {"model": name, "query": QUERY, "documents": DOCUMENTS, "return_documents": True}
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    payload = response.json()
    expected = rerank(models[model], QUERY, DOCUMENTS)
    assert [r["index"] for r in payload["results"]] == [r.index for r in expected]
    for got, want in zip(payload["results"], expected, strict=True):
        assert got["relevance_score"] == pytest.approx(want.score, abs=1e-5)
        assert got["document"] == {"text": DOCUMENTS[got["index"]]}
    scores = [r["relevance_score"] for r in payload["results"]]
    assert scores == sorted(scores, reverse=True)
    assert payload["model"] == name and payload["id"].startswith("rerank-")  # (Cohere's and vLLM's id)
    assert payload["usage"]["prompt_tokens"] == sum(
        len(ids) for ids in models[model].tokenize_pairs(QUERY, DOCUMENTS, None)
    )


def test_top_n_objects_and_instruction(client, models):
    name = models["qwen3"].name
    body = {"model": name, "query": QUERY, "documents": [{"text": d} for d in DOCUMENTS], "top_n": 2}
    results = client.post("/v1/rerank", json=body).json()["results"]
    assert len(results) == 2 and all("document" not in r for r in results)
    with_task = client.post("/v1/rerank", json={**body, "instruction": "Judge topical relevance"}).json()
    expected = rerank(models["qwen3"], QUERY, DOCUMENTS, instruction="Judge topical relevance", top_n=2)
    assert [r["relevance_score"] for r in with_task["results"]] == pytest.approx([r.score for r in expected])


@pytest.mark.parametrize("model", ["qwen3", "cross"])
def test_tei_rerank_shape(client, models, model):
    name = models[model].name
    body = {"model": name, "query": QUERY, "texts": DOCUMENTS, "return_text": True}
    items = client.post("/rerank", json=body).json()
    assert {item["index"] for item in items} == set(range(len(DOCUMENTS)))
    assert all(item["text"] == DOCUMENTS[item["index"]] for item in items)
    raw = client.post("/rerank", json={**body, "raw_scores": True}).json()
    for item, raw_item in zip(items, raw, strict=True):
        assert raw_item["score"] == pytest.approx(math.log(item["score"] / (1 - item["score"])), abs=1e-4)


def test_models_lists_both_kinds(client, models):
    kinds = {m["id"]: m["kind"] for m in client.get("/v1/models").json()["data"]}
    assert kinds == {
        models["qwen3"].name: "reranker",
        models["cross"].name: "reranker",
        "minilm": "embedding",
    }


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"query": QUERY, "documents": DOCUMENTS}, 400, "model_required"),
        ({"model": "qwen3-reranker", "query": QUERY, "documents": []}, 400, "empty_input"),
        ({"model": "qwen3-reranker", "documents": DOCUMENTS}, 400, "missing_field"),
        ({"model": "qwen3-reranker", "query": "", "documents": DOCUMENTS}, 400, "empty_input"),
        ({"model": "qwen3-reranker", "query": QUERY, "documents": ["d"] * 9}, 400, "too_many_inputs"),
        (
            {"model": "qwen3-reranker", "query": QUERY, "documents": DOCUMENTS, "top_n": 0},
            400,
            "invalid_request",
        ),
        ({"model": "nope", "query": QUERY, "documents": DOCUMENTS}, 404, "model_not_found"),
        ({"model": "minilm", "query": QUERY, "documents": DOCUMENTS}, 404, "model_not_found"),
        (
            {"model": "qwen3-reranker", "query": QUERY, "documents": DOCUMENTS, "instruction": " "},
            400,
            "invalid_request",
        ),
    ],
    ids=[
        "two rerankers, no model",
        "no documents",
        "no query",
        "empty query",
        "too many",
        "top_n 0",
        "unknown model",
        "embedding model",
        "blank instruction",
    ],
)
def test_rerank_errors(client, body, status, code):
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    ok = client.post("/v1/rerank", json={"model": "qwen3-reranker", "query": QUERY, "documents": DOCUMENTS})
    assert ok.status_code == 200


def test_reranker_is_not_an_embedding_model(client):
    response = client.post("/v1/embeddings", json={"model": "qwen3-reranker", "input": "x"})
    assert response.status_code == 404
    assert "minilm" in response.json()["error"]["message"]


def test_long_document_keeps_the_template(client, models):
    long_document = "长江是中国最长的河流。" * 5000
    response = client.post(
        "/v1/rerank",
        json={"model": "qwen3-reranker", "query": QUERY, "documents": [long_document, DOCUMENTS[0]]},
    )
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] <= 2 * models["qwen3"].max_tokens
