"""The HTTP API: OpenAI's schema, qwembed's extensions, every bad input's status and shape."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_encoder
from qwembed.engine import Embedder
from qwembed.engine.pool import BatchSettings, ModelPool

GOOD = {"model": "minilm", "input": ["a good request"]}


@pytest.fixture(scope="module")
def encoders(qwen3_dirs):
    options = LoadOptions(device="cpu", dtype="float32")
    return {
        "minilm": load_encoder("minilm", options=options),
        "qwen3-tiny": load_encoder(str(qwen3_dirs["plain"]), name="qwen3-tiny", options=options),
    }


def make_client(encoders, settings: ServerSettings | None = None, batch: BatchSettings | None = None):
    pool = ModelPool(batch)
    for encoder in encoders.values():
        pool.add_encoder(encoder)
    # (token ids accepted: the tests below send the model's own)
    settings = settings or ServerSettings(
        max_client_batch_size=8, max_body_bytes=50_000, accept_token_ids=True
    )
    return TestClient(create_app(pool, settings))


@pytest.fixture(scope="module")
def client(encoders):
    with make_client(encoders) as test_client:
        yield test_client


def post(client, body, **kwargs):
    return client.post("/v1/embeddings", json=body, **kwargs)


def vectors(response) -> np.ndarray:
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def test_openai_response_shape_and_exact_usage(client, encoders):
    response = post(client, {"model": "qwen3-tiny", "input": ["hello world", "你好"]})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "qwen3-tiny"
    assert [item["index"] for item in body["data"]] == [0, 1]
    assert all(item["object"] == "embedding" and len(item["embedding"]) == 64 for item in body["data"])
    expected_tokens = sum(
        len(ids) for ids in Embedder(encoders["qwen3-tiny"]).tokenize(["hello world", "你好"])
    )
    assert body["usage"] == {"prompt_tokens": expected_tokens, "total_tokens": expected_tokens}


def test_same_vector_as_the_library(client, encoders):
    texts = ["short", "a much longer text that sits in the same request " * 5]
    for model in encoders:
        served = vectors(post(client, {"model": model, "input": texts, "input_type": "query"}))
        local = Embedder(encoders[model]).embed(texts, input_type="query")
        np.testing.assert_allclose(served, local, atol=1e-6)


def test_base64_equals_float(client):
    body = {"model": "qwen3-tiny", "input": ["base64 please", "二"]}
    floats = vectors(post(client, body))
    encoded = post(client, {**body, "encoding_format": "base64"}).json()["data"]
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in encoded])
    np.testing.assert_array_equal(decoded, floats)


def test_dimensions_prefix_and_renormalise(client):
    full = vectors(post(client, {"model": "qwen3-tiny", "input": ["matryoshka"]}))
    cut = vectors(post(client, {"model": "qwen3-tiny", "input": ["matryoshka"], "dimensions": 32}))
    assert cut.shape == (1, 32)
    np.testing.assert_allclose(cut[0], full[0, :32] / np.linalg.norm(full[0, :32]), atol=1e-6)
    assert np.linalg.norm(cut[0]) == pytest.approx(1.0, abs=1e-6)


def test_instruction_and_input_type(client, encoders):
    embedder = Embedder(encoders["qwen3-tiny"])
    body = {"model": "qwen3-tiny", "input": ["q"], "instruction": "Find FAQ answers"}
    np.testing.assert_allclose(
        vectors(post(client, body)), embedder.embed(["q"], instruction="Find FAQ answers"), atol=1e-6
    )
    document = vectors(post(client, {**body, "input_type": "document"}))
    np.testing.assert_allclose(document, embedder.embed(["q"]), atol=1e-6)


def test_token_id_inputs(client, encoders):
    ids = encoders["qwen3-tiny"].tokenizer("token ids", add_special_tokens=False)["input_ids"]
    one = vectors(post(client, {"model": "qwen3-tiny", "input": ids}))
    many = vectors(post(client, {"model": "qwen3-tiny", "input": [ids, ids[:1]]}))
    text = vectors(post(client, {"model": "qwen3-tiny", "input": "token ids"}))
    np.testing.assert_allclose(one, text, atol=1e-6)
    np.testing.assert_allclose(many[:1], text, atol=1e-6)


@pytest.mark.parametrize("route", ["/v1/embeddings", "/embed"])
def test_token_ids_are_refused_unless_the_server_accepts_them(encoders, route):
    # LangChain's OpenAIEmbeddings sends OpenAI tokenizer ids by default: embedded as the model's
    # own ids they are unrelated text, so a server accepts ids only when told to
    field = "input" if route == "/v1/embeddings" else "inputs"
    with make_client(encoders, ServerSettings()) as default_client:
        response = default_client.post(route, json={"model": "minilm", field: [[101, 7592, 102]]})
        error = response.json()["error"]
        assert response.status_code == 400 and error["code"] == "token_ids_not_accepted"
        assert error["param"] == field
        assert "check_embedding_ctx_length=False" in error["message"]
        assert "--accept-token-ids" in error["message"]
        assert default_client.post(route, json={"model": "minilm", field: ["text"]}).status_code == 200


@pytest.mark.parametrize(("route", "field"), [("/v1/embeddings", "input"), ("/embed", "inputs")])
def test_an_empty_text_in_a_list_is_named_by_its_index(client, route, field):
    response = client.post(route, json={"model": "minilm", field: ["a", "b", ""]})
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "empty_input" and error["param"] == field
    assert error["message"].startswith(f"{field}[2] is an empty string")


def test_truncate_on_request(client, encoders):
    long_text = "word " * 400  # the tiny Qwen3 accepts 512 tokens, MiniLM 256
    response = post(client, {"model": "minilm", "input": [long_text]})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "input_too_long"
    assert "256" in response.json()["error"]["message"]
    truncated = post(client, {"model": "minilm", "input": [long_text], "truncate": True})
    assert truncated.status_code == 200
    # truncation keeps the model's special tokens: equal to embedding the cut token ids
    ids = encoders["minilm"].truncate(encoders["minilm"].tokenize([long_text])[0])
    assert len(ids) == 256 and ids[-1] == 102
    assert truncated.json()["usage"]["prompt_tokens"] == 256


def test_auto_truncate_server_flag(encoders):
    settings = ServerSettings(auto_truncate=True)
    with make_client(encoders, settings) as test_client:
        assert post(test_client, {"model": "minilm", "input": ["word " * 400]}).status_code == 200
        refused = post(test_client, {"model": "minilm", "input": ["word " * 400], "truncate": False})
        assert refused.status_code == 400


def test_models_and_health(client):
    models = client.get("/v1/models").json()
    assert {m["id"]: m["kind"] for m in models["data"]} == {"minilm": "embedding", "qwen3-tiny": "embedding"}
    assert {m["id"]: m["dimension"] for m in models["data"]} == {"minilm": 384, "qwen3-tiny": 64}
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200


def test_metrics_count_requests_errors_and_batches(client):
    post(client, GOOD)
    post(client, {"model": "nope", "input": "x"})
    text = client.get("/metrics").text
    assert 'qwembed_requests_total{route="/v1/embeddings",status="200"}' in text
    assert 'qwembed_errors_total{code="model_not_found"}' in text
    assert 'qwembed_batch_size_count{model="minilm"}' in text
    assert 'qwembed_queue_depth{model="minilm"}' in text
    assert "qwembed_inference_seconds_bucket" in text and "qwembed_queue_seconds_bucket" in text
    assert "process_resident_memory_bytes" in text  # (Linux: read from /proc)


def test_openapi_spec_describes_the_extensions(client):
    spec = client.get("/openapi.json").json()
    request = spec["components"]["schemas"]["EmbeddingRequest"]["properties"]
    assert {
        "input",
        "model",
        "dimensions",
        "encoding_format",
        "input_type",
        "instruction",
        "truncate",
    } <= set(request)


BAD_REQUESTS = [
    # (name, raw body or json, headers, status, code)
    ("invalid json", b'{"input": ', {"content-type": "application/json"}, 400, "invalid_json"),
    (
        "lone surrogate",
        b'{"model": "minilm", "input": ["ok", "bad \\ud800 text"]}',
        {"content-type": "application/json"},
        400,
        "invalid_text",
    ),
    ("wrong content type", b'{"input": "x"}', {"content-type": "text/plain"}, 415, "unsupported_media_type"),
    ("missing input", {"model": "minilm"}, None, 400, "missing_field"),
    ("empty list", {"model": "minilm", "input": []}, None, 400, "empty_input"),
    ("empty string", {"model": "minilm", "input": ""}, None, 400, "empty_input"),
    ("empty string in list", {"model": "minilm", "input": ["a", ""]}, None, 400, "empty_input"),
    ("non-string items", {"model": "minilm", "input": [{"a": 1}]}, None, 400, "invalid_input"),
    ("mixed strings and ids", {"model": "minilm", "input": ["a", 1]}, None, 400, "invalid_input"),
    ("negative token id", {"model": "minilm", "input": [1, -5]}, None, 400, "invalid_input"),
    ("token id beyond vocab", {"model": "minilm", "input": [1, 10**9]}, None, 400, "invalid_token_ids"),
    ("wrong nesting depth", {"model": "minilm", "input": [[[1]]]}, None, 400, "invalid_input"),
    ("too long", {"model": "minilm", "input": "word " * 400}, None, 400, "input_too_long"),
    ("too many inputs", {"model": "minilm", "input": ["x"] * 9}, None, 400, "too_many_inputs"),
    ("body too large", {"model": "minilm", "input": ["x" * 60_000]}, None, 413, "body_too_large"),
    ("dimensions 0", {**GOOD, "dimensions": 0}, None, 400, "invalid_dimensions"),
    ("dimensions negative", {**GOOD, "dimensions": -3}, None, 400, "invalid_dimensions"),
    ("dimensions too large", {**GOOD, "dimensions": 385}, None, 400, "invalid_dimensions"),
    ("dimensions non-integer", {**GOOD, "dimensions": 1.5}, None, 400, "invalid_request"),
    ("unknown encoding", {**GOOD, "encoding_format": "int8"}, None, 400, "invalid_request"),
    ("unknown model", {**GOOD, "model": "gpt-4"}, None, 404, "model_not_found"),
    ("no model with two served", {"input": "x"}, None, 400, "model_required"),
    (
        "instruction with token ids",
        {"model": "minilm", "input": [1, 2], "instruction": "t"},
        None,
        400,
        "invalid_request",
    ),
]


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_documented_error_and_server_recovers(client, body, headers, status, code):
    if isinstance(body, bytes):
        response = client.post("/v1/embeddings", content=body, headers=headers)
    else:
        response = post(client, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["type"]
    assert set(error) == {"message", "type", "param", "code"}
    assert post(client, GOOD).status_code == 200


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"instruction": "t"}, "instruction"),
        ({"input_type": "query"}, "input_type"),
        ({"instruction": "t", "input_type": "query"}, "instruction"),
    ],
)
def test_a_prompt_field_with_token_ids_is_named_in_param(client, extra, param):
    response = post(client, {"model": "minilm", "input": [1, 2], **extra})
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_unknown_model_lists_served_names(client):
    message = post(client, {**GOOD, "model": "gpt-4"}).json()["error"]["message"]
    assert "minilm" in message and "qwen3-tiny" in message


def test_dimensions_error_names_the_range(client):
    assert "between 1 and 384" in post(client, {**GOOD, "dimensions": 0}).json()["error"]["message"]


def test_api_keys(encoders):
    with make_client({"minilm": encoders["minilm"]}, ServerSettings(api_keys=["k1", "k2"])) as test_client:
        assert post(test_client, GOOD).status_code == 401
        assert post(test_client, GOOD).json()["error"]["code"] == "invalid_api_key"
        assert post(test_client, GOOD, headers={"Authorization": "Bearer nope"}).status_code == 401
        assert post(test_client, GOOD, headers={"Authorization": "Bearer k2"}).status_code == 200
        assert test_client.get("/v1/models").status_code == 401
        assert test_client.get("/health").status_code == 200  # health stays open
        assert test_client.get("/metrics").status_code == 200  # open unless --protect-metrics
    settings = ServerSettings(api_keys=["k1"], protect_metrics=True)
    with make_client({"minilm": encoders["minilm"]}, settings) as test_client:
        assert test_client.get("/metrics").status_code == 401
        assert test_client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert test_client.get("/ready").status_code == 200


def test_single_served_model_may_be_omitted(encoders):
    with make_client({"minilm": encoders["minilm"]}) as test_client:
        assert post(test_client, {"input": "no model named"}).status_code == 200


def test_full_queue_answers_429_at_once(encoders):
    with make_client({"minilm": encoders["minilm"]}, batch=BatchSettings(max_queue_items=2)) as test_client:
        response = post(test_client, {"input": ["a", "b", "c"]})
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "overloaded"
        assert response.headers["retry-after"]
        assert post(test_client, {"input": ["a"]}).status_code == 200


UNICODE_EDGE_CASES = {
    "nul": "before\x00after",
    "control characters": "bell\x07 escape\x1b[31m tab\t",
    "rtl marks": "\u202eright-to-left\u202c שלום עולם",
    "combining sequences": "e\u0301 a\u0308\u0301 Z\u0351\u0352\u0353",
    "emoji zwj sequences": "👨‍👩‍👧‍👦 🏳️‍🌈 🧑🏽‍💻",
    "noncharacters": "\ufffe\uffff \U0010ffff",
}


@pytest.mark.parametrize("text", list(UNICODE_EDGE_CASES.values()), ids=list(UNICODE_EDGE_CASES))
def test_unicode_edge_cases_are_embedded(client, text):
    for model in ("minilm", "qwen3-tiny"):
        response = post(client, {"model": model, "input": [text]})
        assert response.status_code == 200, response.text
        assert np.isfinite(vectors(response)).all()


def test_one_character_repeated_a_million_times(encoders):
    with make_client(encoders, ServerSettings()) as test_client:
        for model in ("minilm", "qwen3-tiny"):
            response = post(test_client, {"model": model, "input": ["好" * 1_000_000]})
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "input_too_long"
            cut = post(test_client, {"model": model, "input": ["好" * 1_000_000], "truncate": True})
            assert cut.status_code == 200
        assert post(test_client, GOOD).status_code == 200


def test_missing_content_type_is_refused_clearly(client):
    import json

    response = client.post("/v1/embeddings", content=json.dumps(GOOD).encode(), headers={"content-type": ""})
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"
    assert "application/json" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(20):
            yield b" " * 4096  # no Content-Length: the limit applies while the body streams in

    response = client.post("/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert post(client, GOOD).status_code == 200


def test_a_failing_batch_answers_500_and_the_server_goes_on():
    from fake_encoders import SlowEncoder

    class PoisonEncoder(SlowEncoder):
        def embed_token_ids(self, batch):
            if any(ids == [ord(c) for c in "poison"] for ids in batch):
                raise RuntimeError("out of memory on this batch")
            return super().embed_token_ids(batch)

    pool = ModelPool()
    pool.add_encoder(PoisonEncoder(delay=0.0))
    with TestClient(create_app(pool)) as test_client:
        failed = test_client.post("/v1/embeddings", json={"input": ["fine", "poison"]})
        assert failed.status_code == 500
        assert failed.json()["error"]["code"] == "internal_error"
        assert "out of memory" not in failed.json()["error"]["message"]  # no internals leak
        assert test_client.post("/v1/embeddings", json={"input": ["fine"]}).status_code == 200


def test_api_keys_from_flag_environment_and_file(tmp_path, monkeypatch):
    from qwembed.cli import _api_keys, _build_parser

    key_file = tmp_path / "keys"
    key_file.write_text("k3\n\nk4\n")
    monkeypatch.setenv("QWEMBED_API_KEYS", "k2, k5")
    args = _build_parser().parse_args(
        ["serve", "--model", "minilm", "--api-key", "k1", "--api-key-file", str(key_file)]
    )
    assert sorted(_api_keys(args)) == ["k1", "k2", "k3", "k4", "k5"]
