"""Reranking as other servers' clients speak it: Cohere's v2 (`POST /v2/rerank`), vLLM's and
Infinity's body at `POST /rerank`, the fields litellm's providers send, and readable errors for
documents of the wrong shape. The bodies below are what the clients send (captured from cohere 5.21,
langchain-cohere 0.6, llama-index-postprocessor-cohere-rerank 0.10 and litellm 1.110); the same
clients were run against a live server with /tmp/qa-clients/repros (cohere_client.py,
cohere_v2_integrations.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_reranker
from qwembed.engine.pool import ModelPool

QUERY = "What is the capital of China?"
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity pulls bodies together.",
    "猫",
    "Paris is in France.",
]
LIMIT = 512  # the MiniLM cross-encoder's token limit on a (query, document) pair
LONG = "river " * 2000  # far over LIMIT


@pytest.fixture(scope="module")
def reranker(cross_encoder_dir):
    return load_reranker(
        str(cross_encoder_dir), name="cross", options=LoadOptions(device="cpu", dtype="float32")
    )


@pytest.fixture(scope="module")
def client(reranker):
    pool = ModelPool()
    pool.add_reranker(reranker)
    with TestClient(create_app(pool, ServerSettings(max_client_batch_size=256))) as test_client:
        yield test_client


def error_of(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


def v1(client, **fields) -> dict:
    response = client.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def scores(results: list[dict], key: str = "relevance_score") -> list[tuple[int, float]]:
    return [(r["index"], r[key]) for r in results]


# ---- POST /v2/rerank ---------------------------------------------------------------------------


def test_v2_answers_cohere_v2s_shape_with_v1s_scores(client):
    response = client.post("/v2/rerank", json={"model": "cross", "query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"id", "results", "meta"}
    assert answer["id"].startswith("rerank-")
    assert all(set(r) == {"index", "relevance_score"} for r in answer["results"])
    expected = v1(client)
    assert scores(answer["results"]) == scores(expected["results"])
    assert answer["meta"] == {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": expected["usage"]["total_tokens"]},
    }
    assert (
        client.post("/v2/rerank", json={"model": "cross", "query": QUERY, "documents": DOCUMENTS}).json()[
            "id"
        ]
        != answer["id"]
    )


@pytest.mark.parametrize(
    ("extra", "count", "echoed"),
    [
        ({}, 4, False),  # cohere.ClientV2 / AsyncClientV2
        ({"top_n": 3, "max_tokens_per_doc": None}, 3, False),  # langchain-cohere's CohereRerank
        ({"top_n": 2}, 2, False),  # llama-index's CohereRerank
        ({"return_documents": True}, 4, True),  # litellm.rerank(model="cohere/...")
        ({"priority": 5, "max_tokens_per_doc": 4096}, 4, False),  # the SDK's other fields
    ],
    ids=["cohere ClientV2", "langchain-cohere", "llama-index", "litellm cohere", "priority and 4096"],
)
def test_v2_takes_what_the_cohere_clients_send(client, extra, count, echoed):
    response = client.post(
        "/v2/rerank", json={"model": "cross", "query": QUERY, "documents": DOCUMENTS, **extra}
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert scores(results) == scores(v1(client)["results"])[:count]
    for result in results:
        assert result.get("document") == ({"text": DOCUMENTS[result["index"]]} if echoed else None)


def test_v2_requires_a_model_as_cohere_does(client):
    error = error_of(
        client.post("/v2/rerank", json={"query": QUERY, "documents": DOCUMENTS}), 400, "missing_field"
    )
    assert error["param"] == "model" and error["message"] == "model is required"


def test_v2_counts_search_units_per_hundred_documents(client):
    body = {"model": "cross", "query": "q", "documents": [f"document {i}" for i in range(150)], "top_n": 1}
    assert client.post("/v2/rerank", json=body).json()["meta"]["billed_units"] == {"search_units": 2}


# ---- fields that would rank otherwise (token caps: test_rerank_token_caps.py) ------------------------


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
@pytest.mark.parametrize(
    ("field", "accepted", "refused"),
    [
        ("rank_fields", [None, ["text"]], [["title"], ["text", "title"], []]),
        ("max_chunks_per_doc", [None, 1], [2, 10]),
        ("truncation_side", [None, "right"], ["left"]),
    ],
)
def test_fields_that_would_rank_otherwise_are_refused_naming_them(client, route, field, accepted, refused):
    body = {"model": "cross", "query": QUERY, "documents": DOCUMENTS}
    for value in accepted:
        assert client.post(route, json={**body, field: value}).status_code == 200
    for value in refused:
        error_of(client.post(route, json={**body, field: value}), 400, "unsupported_parameter", field)


@pytest.mark.parametrize("flag", [{"raw_scores": True}, {"use_activation": False}], ids=["infinity", "vllm"])
def test_logits_when_asked_as_tei_gives_them(client, flag):
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "raw_scores": True}).json()
    for route in ("/v1/rerank", "/rerank"):
        results = client.post(route, json={"query": QUERY, "documents": DOCUMENTS, **flag}).json()["results"]
        assert scores(results) == scores(tei, "score")
        assert any(r["relevance_score"] > 1 or r["relevance_score"] < 0 for r in results)  # logits
    assert all(0 <= r["relevance_score"] <= 1 for r in v1(client, use_activation=True)["results"])


# ---- POST /rerank: TEI's body or vLLM / Infinity's ------------------------------------------------


def test_rerank_takes_vllms_body_and_answers_as_vllm(client):
    """litellm's hosted_vllm/ and infinity/ providers post this to /rerank."""
    body = {"model": "cross", "query": QUERY, "top_n": 2, "documents": DOCUMENTS, "return_documents": True}
    response = client.post("/rerank", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert {"id", "model", "usage", "results"} <= set(answer) and answer["model"] == "cross"
    expected = v1(client, top_n=2, return_documents=True)
    assert answer["results"] == expected["results"] and answer["usage"] == expected["usage"]
    assert all(r["document"] == {"text": DOCUMENTS[r["index"]]} for r in answer["results"])
    plain = client.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()  # (one reranker)
    assert all("document" not in r for r in plain["results"]) and len(plain["results"]) == 4


@pytest.mark.parametrize(
    ("body", "code", "param", "says"),
    [
        ({"query": QUERY, "texts": DOCUMENTS, "documents": DOCUMENTS}, "invalid_request", None, "not both"),
        (
            {"query": QUERY},
            "missing_field",
            "texts",
            "texts (text-embeddings-inference's shape) or documents",
        ),
        ({"query": QUERY, "texts": None, "documents": None}, "missing_field", "texts", "is required"),
        ([QUERY], "invalid_request", None, "must be a JSON object"),
    ],
    ids=["both", "neither", "both null", "not an object"],
)
def test_rerank_needs_exactly_one_of_texts_and_documents(client, body, code, param, says):
    error = error_of(client.post("/rerank", json=body), 400, code, param)
    assert says in error["message"]


def test_a_null_texts_or_documents_counts_as_absent(client):
    tei = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "documents": None})
    assert tei.status_code == 200 and isinstance(tei.json(), list)
    cohere = client.post("/rerank", json={"query": QUERY, "texts": None, "documents": DOCUMENTS})
    assert cohere.status_code == 200 and cohere.json()["object"] == "rerank"


def test_tei_top_n_returns_the_best_n(client):
    everything = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()
    best = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "top_n": 2}).json()
    assert best == everything[:2]
    assert client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "top_n": 10}).json() == everything
    error_of(
        client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "top_n": 0}), 400, "invalid_request"
    )


def test_tei_truncate_true_or_null_cuts_and_false_refuses_an_over_long_pair(client):
    texts = [*DOCUMENTS, LONG]
    cut = client.post("/rerank", json={"query": QUERY, "texts": texts, "truncate": True})
    assert cut.status_code == 200, cut.text
    assert (
        client.post("/rerank", json={"query": QUERY, "texts": texts, "truncate": None}).json() == cut.json()
    )
    assert client.post("/rerank", json={"query": QUERY, "texts": texts}).json() == cut.json()
    # false: TEI's answer to an over-long pair, a 400 naming the text, not a cut
    error = error_of(
        client.post("/rerank", json={"query": QUERY, "texts": texts, "truncate": False}),
        400,
        "input_too_long",
        "texts",
    )
    assert error["message"].startswith(f"document {len(DOCUMENTS)} (counting from 0) with the query")
    assert f"at most {LIMIT}" in error["message"]
    # pairs that fit are ranked as with truncation
    fits = client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS, "truncate": False})
    assert fits.status_code == 200
    assert fits.json() == client.post("/rerank", json={"query": QUERY, "texts": DOCUMENTS}).json()


@pytest.mark.parametrize("direction", ["Left", "left"])
def test_tei_left_truncation_is_refused(client, direction):
    body = {"query": QUERY, "texts": DOCUMENTS, "truncation_direction": direction}
    error = error_of(client.post("/rerank", json=body), 400, "unsupported_parameter", "truncation_direction")
    assert "Left is not supported" in error["message"]


@pytest.mark.parametrize("direction", ["Right", "right", None])
def test_tei_right_truncation_is_what_rerank_does(client, direction):
    body = {"query": QUERY, "texts": DOCUMENTS}
    plain = client.post("/rerank", json=body).json()
    assert client.post("/rerank", json={**body, "truncation_direction": direction}).json() == plain


def test_litellm_huggingface_body(client):
    """litellm.rerank(model="huggingface/...") posts this (its defaults, top_n and return_documents)."""
    body = {"raw_scores": False, "truncation_direction": "Right", "query": QUERY, "top_n": 2}
    response = client.post("/rerank", json={**body, "texts": DOCUMENTS, "return_text": True})
    assert response.status_code == 200, response.text
    items = response.json()
    assert [(i["index"], i["score"]) for i in items] == scores(v1(client, top_n=2)["results"])
    assert all(item["text"] == DOCUMENTS[item["index"]] for item in items)


# ---- documents of the wrong shape: messages that say what is expected -------------------------------

_DOCUMENT = 'must be a string or an object with a "text" string'


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([{"body": "Beijing"}], f"documents[0] {_DOCUMENT}"),  # Cohere v1's structured documents
        ([{"title": "t", "body": "Beijing"}], f"documents[0] {_DOCUMENT}"),
        ([1], f"documents[0] {_DOCUMENT}"),
        (["fine", None], f"documents[1] {_DOCUMENT}"),
        (["fine", {"text": 3}], f"documents[1] {_DOCUMENT}"),
        ([["nested"]], f"documents[0] {_DOCUMENT}"),
        ("one string", 'documents must be a list, each item a string or an object with a "text" string'),
    ],
    ids=["cohere v1 object", "object without text", "number", "null", "text not a string", "list", "string"],
)
def test_documents_of_the_wrong_shape_read_clearly(client, route, documents, message):
    body = {"model": "cross", "query": QUERY, "documents": documents}
    error = error_of(client.post(route, json=body), 400, "invalid_input", "documents")
    assert error["message"] == message


def test_tei_texts_of_the_wrong_type_read_clearly(client):
    error = error_of(
        client.post("/rerank", json={"query": QUERY, "texts": ["a", 1]}), 400, "invalid_input", "texts"
    )
    assert error["message"] == "texts[1] must be a string"


@pytest.mark.parametrize("route", ["/v1/rerank", "/rerank"])
def test_a_surrogate_in_a_document_object_is_still_invalid_text(client, route):
    body = b'{"query": "q", "documents": ["fine", {"text": "bad \\ud800"}]}'
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    error = error_of(response, 400, "invalid_text", "documents")
    assert error["message"].startswith("documents[1] ")


def test_errors_inside_a_shape_name_the_clients_field(client):
    """The union's member names (pydantic's "RerankRequest", "function-after[…]") never reach a message."""
    missing = error_of(client.post("/rerank", json={"documents": DOCUMENTS}), 400, "missing_field", "query")
    assert missing["message"] == "query is required"
    wrong = error_of(
        client.post("/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": "2"}),
        400,
        "invalid_request",
        "top_n",
    )
    assert wrong["message"].startswith("top_n: ")
    empty = error_of(client.post("/rerank", json={"query": QUERY, "texts": []}), 400, "empty_input", "texts")
    assert empty["message"] == "texts must not be empty"


# ---- the spec ----------------------------------------------------------------------------------


def test_spec_documents_v2_and_both_rerank_bodies(client):
    spec = client.get("/openapi.json").json()
    v2 = spec["paths"]["/v2/rerank"]["post"]
    assert v2["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RerankV2Request"
    }
    assert v2["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/RerankV2Response"
    }
    schemas = spec["components"]["schemas"]
    assert "model" in schemas["RerankV2Request"]["required"]
    rerank = spec["paths"]["/rerank"]["post"]
    body = rerank["requestBody"]["content"]["application/json"]["schema"]
    assert body["oneOf"] == [
        {"$ref": "#/components/schemas/TEIRerankRequest"},
        {"$ref": "#/components/schemas/RerankRequest"},
    ]
    answer = rerank["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert {"$ref": "#/components/schemas/RerankResponse"} in answer
    assert {"items": {"$ref": "#/components/schemas/TEIRerankItem"}, "type": "array"} in answer
    assert {"top_n", "truncate", "truncation_direction"} <= set(schemas["TEIRerankRequest"]["properties"])


@pytest.mark.parametrize(
    ("errors", "expected"),
    [
        (  # a union whose object member fails first: not "documents[0].text is required"
            [
                {
                    "type": "missing",
                    "loc": ("body", "documents", 0, "RerankDocument", "text"),
                    "msg": "Field required",
                },
                {
                    "type": "string_type",
                    "loc": ("body", "documents", 0, "str"),
                    "msg": "Input should be a valid string",
                },
            ],
            (f"documents[0] {_DOCUMENT}", "documents", "invalid_input"),
        ),
        (  # a union qwembed has no description for: the item named, the members' names left out
            [
                {
                    "type": "int_type",
                    "loc": ("body", "kind", "int"),
                    "msg": "Input should be a valid integer",
                },
                {
                    "type": "bool_type",
                    "loc": ("body", "kind", "bool"),
                    "msg": "Input should be a valid boolean",
                },
            ],
            (
                "kind matches none of the forms it may take (Input should be a valid integer)",
                "kind",
                "invalid_request",
            ),
        ),
        (  # no union: a nested field named as the client wrote it
            [{"type": "missing", "loc": ("body", "documents", 2, "text"), "msg": "Field required"}],
            ("documents[2].text is required", "documents", "missing_field"),
        ),
        (  # a tagged union's tag (the /rerank body's shape) is no field either
            [
                {
                    "type": "int_type",
                    "loc": ("body", "RerankRequest", "top_n"),
                    "msg": "Input should be a valid integer",
                }
            ],
            ("top_n: Input should be a valid integer", "top_n", "invalid_request"),
        ),
    ],
    ids=["object member first", "undescribed union", "nested field", "tagged union"],
)
def test_validation_messages_name_fields_not_union_members(errors, expected):
    from fastapi.exceptions import RequestValidationError

    from qwembed.api.errors import _validation_message

    assert _validation_message(RequestValidationError(errors)) == expected
