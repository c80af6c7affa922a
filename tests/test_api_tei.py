"""text-embeddings-inference's routes (/embed, POST /, /info): TEI's fields and defaults, the same
vectors as /v1/embeddings, a 400 naming every option qwembed cannot honour, and TEI's own client
(huggingface_hub's InferenceClient) against a live server. /rerank: tests/test_api_rerank.py."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from qwembed import __version__
from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_encoder, load_reranker
from qwembed.engine.pool import BatchSettings, ModelPool
from server_fixtures import running_server

#: every key of TEI's /info (router/src/lib.rs, ``Info``)
TEI_INFO_KEYS = {
    "model_id",
    "model_sha",
    "model_dtype",
    "served_model_name",
    "model_type",
    "max_concurrent_requests",
    "max_input_length",
    "max_batch_tokens",
    "max_batch_requests",
    "max_client_batch_size",
    "auto_truncate",
    "tokenization_workers",
    "version",
    "sha",
    "docker_label",
}
LONG_TEXT = "word " * 400  # MiniLM accepts 256 tokens


@pytest.fixture(scope="module")
def models(qwen3_dirs, cross_encoder_dir):
    options = LoadOptions(device="cpu", dtype="float32")
    return {
        "minilm": load_encoder("minilm", options=options),
        "qwen3-tiny": load_encoder(str(qwen3_dirs["plain"]), name="qwen3-tiny", options=options),
        "cross": load_reranker(str(cross_encoder_dir), name="cross", options=options),
    }


def make_client(models, names, settings: ServerSettings | None = None, batch: BatchSettings | None = None):
    pool = ModelPool(batch)
    for name in names:
        model = models[name]
        (pool.add_reranker if name == "cross" else pool.add_encoder)(model)
    settings = settings or ServerSettings(max_client_batch_size=8, accept_token_ids=True)
    return TestClient(create_app(pool, settings))


@pytest.fixture(scope="module")
def client(models):
    with make_client(models, ["minilm", "qwen3-tiny", "cross"]) as test_client:
        yield test_client


def embed(client, body, route="/embed", **kwargs) -> np.ndarray:
    response = client.post(route, json=body, **kwargs)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    return np.array(response.json(), dtype=np.float32)


def openai(client, body) -> np.ndarray:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return np.array([item["embedding"] for item in response.json()["data"]], dtype=np.float32)


def error_of(response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# ---- vectors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["minilm", "qwen3-tiny"])
def test_string_and_list_inputs_equal_the_openai_route(client, model):
    texts = ["hello world", "a much longer text that shares the request " * 4, "你好"]
    one = client.post("/embed", json={"model": model, "inputs": texts[0]}).json()
    assert isinstance(one, list) and len(one) == 1 and all(isinstance(x, float) for x in one[0])  # bare
    np.testing.assert_allclose(np.array(one), openai(client, {"model": model, "input": texts[0]}), atol=1e-6)
    many = embed(client, {"model": model, "inputs": texts})
    np.testing.assert_allclose(many, openai(client, {"model": model, "input": texts}), atol=1e-6)
    assert many.shape == (3, 384 if model == "minilm" else 64)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)


def test_post_to_root_is_embed(client):
    """Where InferenceClient(url).feature_extraction and LangChain post: TEI serves /embed at / too."""
    body = {"model": "minilm", "inputs": ["root", "route"]}
    np.testing.assert_array_equal(embed(client, body, route="/"), embed(client, body))
    assert "/" not in client.get("/openapi.json").json()["paths"]  # (as in TEI's spec)


def test_token_id_inputs(client, models):
    ids = models["qwen3-tiny"].tokenizer("token ids", add_special_tokens=False)["input_ids"]
    text = embed(client, {"model": "qwen3-tiny", "inputs": "token ids"})
    np.testing.assert_allclose(embed(client, {"model": "qwen3-tiny", "inputs": ids}), text, atol=1e-6)
    many = embed(client, {"model": "qwen3-tiny", "inputs": [ids, ids[:1]]})
    assert many.shape == (2, 64)
    np.testing.assert_allclose(many[:1], text, atol=1e-6)
    assert not np.allclose(many[1], text[0], atol=1e-3)


@pytest.mark.parametrize("normalize", [True, None])
def test_normalize_true_or_null_gives_unit_vectors(client, normalize):
    body = {"model": "qwen3-tiny", "inputs": ["unit", "length"]}
    vectors = embed(client, {**body, "normalize": normalize})
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        vectors, openai(client, {"model": "qwen3-tiny", "input": body["inputs"]}), atol=1e-6
    )


def test_normalize_false_gives_the_pooled_vectors(client, models):
    # the model's last-token state before normalisation (tests/test_normalize_option.py checks it
    # against transformers'); here: the route answers that, not unit vectors
    response = client.post("/embed", json={"model": "qwen3-tiny", "inputs": "raw", "normalize": False})
    assert response.status_code == 200, response.text
    encoder = models["qwen3-tiny"]
    pooled = encoder.pool_token_ids(encoder.tokenize(["raw"]))
    np.testing.assert_allclose(np.array(response.json(), dtype=np.float32), pooled, rtol=1e-5, atol=1e-5)
    assert not np.isclose(np.linalg.norm(pooled), 1.0, atol=0.05)


def test_dimensions_truncate_then_renormalise_as_the_openai_route(client):
    full = embed(client, {"model": "qwen3-tiny", "inputs": ["matryoshka"]})
    cut = embed(client, {"model": "qwen3-tiny", "inputs": ["matryoshka"], "dimensions": 32})
    assert cut.shape == (1, 32)
    np.testing.assert_allclose(cut[0], full[0, :32] / np.linalg.norm(full[0, :32]), atol=1e-6)
    openai_cut = openai(client, {"model": "qwen3-tiny", "input": ["matryoshka"], "dimensions": 32})
    np.testing.assert_allclose(cut, openai_cut, atol=1e-6)
    error = error_of(
        client.post("/embed", json={"model": "qwen3-tiny", "inputs": "x", "dimensions": 65}),
        400,
        "invalid_dimensions",
        "dimensions",
    )
    assert "between 1 and 64" in error["message"]


@pytest.mark.parametrize("prompt_name", ["query", "document"])
def test_prompt_name_is_the_models_prompt_for_that_input_type(client, prompt_name):
    texts = ["what is the capital of China?"]
    for model in ("qwen3-tiny", "minilm"):
        got = embed(client, {"model": model, "inputs": texts, "prompt_name": prompt_name})
        want = openai(client, {"model": model, "input": texts, "input_type": prompt_name})
        np.testing.assert_allclose(got, want, atol=1e-6)
    plain = embed(client, {"model": "qwen3-tiny", "inputs": texts})
    query = embed(client, {"model": "qwen3-tiny", "inputs": texts, "prompt_name": "query"})
    assert not np.allclose(plain, query, atol=1e-3)  # (Qwen3's query prompt is the instruction)


def test_unknown_prompt_name_is_refused_saying_what_to_use(client):
    response = client.post("/embed", json={"model": "qwen3-tiny", "inputs": "x", "prompt_name": "passage"})
    error = error_of(response, 400, "invalid_request", "prompt_name")
    assert "'query'" in error["message"] and "instruction" in error["message"]


def test_prompt_name_with_token_ids_names_prompt_name(client):
    response = client.post("/embed", json={"model": "qwen3-tiny", "inputs": [1, 2], "prompt_name": "query"})
    error_of(response, 400, "invalid_request", "prompt_name")


# ---- truncation --------------------------------------------------------------------------------------


def test_truncate_false_refuses_an_over_long_input_and_true_cuts_it(client):
    for truncate in (False, None):  # null: the server's --auto-truncate, off here
        response = client.post(
            "/embed", json={"model": "minilm", "inputs": [LONG_TEXT], "truncate": truncate}
        )
        error = error_of(response, 400, "input_too_long", "inputs")
        assert "256" in error["message"]
        assert error["message"].startswith("inputs[0] has ")  # (the field as TEI names it)
    cut = embed(client, {"model": "minilm", "inputs": [LONG_TEXT], "truncate": True})
    want = openai(client, {"model": "minilm", "input": [LONG_TEXT], "truncate": True})
    np.testing.assert_allclose(cut, want, atol=1e-6)


def test_truncate_null_follows_auto_truncate(models):
    with make_client(models, ["minilm"], ServerSettings(auto_truncate=True)) as test_client:
        assert test_client.post("/embed", json={"inputs": LONG_TEXT}).status_code == 200
        assert test_client.post("/embed", json={"inputs": LONG_TEXT, "truncate": None}).status_code == 200
        error_of(
            test_client.post("/embed", json={"inputs": LONG_TEXT, "truncate": False}), 400, "input_too_long"
        )


@pytest.mark.parametrize("direction", ["Right", "right", None])
def test_right_truncation_is_what_truncate_does(client, direction):
    body = {"model": "minilm", "inputs": [LONG_TEXT], "truncate": True}
    np.testing.assert_array_equal(
        embed(client, {**body, "truncation_direction": direction}), embed(client, body)
    )


@pytest.mark.parametrize("direction", ["Left", "left"])
def test_left_truncation_keeps_the_end_of_the_text(client, direction):
    text = " ".join(f"w{i}" for i in range(600))  # (distinct words: the two ends differ)
    body = {"model": "minilm", "inputs": [text], "truncate": True, "truncation_direction": direction}
    left = embed(client, body)
    assert not np.allclose(left, embed(client, {**body, "truncation_direction": "Right"}), atol=1e-3)
    # what the model sees: [CLS], the text's last tokens, [SEP]
    encoder = client.app.state.pool.encoder("minilm")
    ids = encoder.tokenize([text])[0]
    kept = [ids[0], *ids[len(ids) - encoder.max_tokens + 1 :]]
    assert len(kept) == encoder.max_tokens and kept[-1] == ids[-1]
    expected = encoder.embed_token_ids([kept])
    np.testing.assert_allclose(left, expected, atol=2e-3)
    # a text that fits is not cut from either side
    short = {**body, "inputs": ["short"]}
    np.testing.assert_array_equal(
        embed(client, short), embed(client, {**short, "truncation_direction": "Right"})
    )


# ---- bad bodies --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({}, 400, "missing_field", "inputs"),
        ({"inputs": []}, 400, "empty_input", "inputs"),
        ({"inputs": ""}, 400, "empty_input", "inputs"),
        ({"inputs": ["a", ""]}, 400, "empty_input", "inputs"),
        ({"inputs": [[]]}, 400, "empty_input", "inputs"),
        ({"inputs": [[1], []]}, 400, "empty_input", "inputs"),
        ({"inputs": None}, 400, "invalid_input", "inputs"),
        ({"inputs": 5}, 400, "invalid_input", "inputs"),
        ({"inputs": {"text": "x"}}, 400, "invalid_input", "inputs"),
        ({"inputs": ["a", [1]]}, 400, "invalid_input", "inputs"),
        ({"inputs": [1, -1]}, 400, "invalid_input", "inputs"),
        ({"inputs": [True]}, 400, "invalid_input", "inputs"),
        ({"inputs": [1.0]}, 400, "invalid_input", "inputs"),
        ({"inputs": [[1, "a"]]}, 400, "invalid_input", "inputs"),
        ({"inputs": [[10**9]]}, 400, "invalid_token_ids", "inputs"),
        ({"inputs": "x", "normalize": "yes"}, 400, "invalid_request", "normalize"),
        ({"inputs": "x", "truncate": 1}, 400, "invalid_request", "truncate"),
        ({"inputs": "x", "truncation_direction": "up"}, 400, "invalid_request", "truncation_direction"),
        ({"inputs": "x", "dimensions": "3"}, 400, "invalid_request", "dimensions"),
        ({"inputs": "x", "dimensions": 0}, 400, "invalid_dimensions", "dimensions"),
        ({"inputs": "x", "prompt_name": 1}, 400, "invalid_request", "prompt_name"),
        ({"inputs": ["x"] * 9}, 413, "too_many_inputs", "inputs"),
    ],
    ids=lambda value: str(value)[:40],
)
def test_bad_bodies_get_clear_errors_and_the_server_goes_on(client, body, status, code, param):
    error_of(client.post("/embed", json={"model": "minilm", **body}), status, code, param)
    assert client.post("/embed", json={"model": "minilm", "inputs": "fine"}).status_code == 200


def test_lone_surrogate_is_named_by_its_index(client):
    body = b'{"model": "minilm", "inputs": ["fine", "bad \\ud800"]}'
    response = client.post("/embed", content=body, headers={"content-type": "application/json"})
    error = error_of(response, 400, "invalid_text", "inputs")
    assert error["message"].startswith("inputs[1] ")


def test_too_many_inputs_counts_them(client):
    error = error_of(
        client.post("/embed", json={"model": "minilm", "inputs": ["x"] * 9}), 413, "too_many_inputs"
    )
    assert error["message"] == "9 inputs exceed --max-client-batch-size 8"


def test_model_is_required_when_several_embedders_are_served(client):
    error_of(client.post("/embed", json={"inputs": "x"}), 400, "model_required", "model")
    error_of(client.post("/embed", json={"model": "cross", "inputs": "x"}), 404, "model_not_found", "model")


def test_single_served_model_needs_no_model_field(models):
    with make_client(models, ["minilm"]) as test_client:
        assert embed(test_client, {"inputs": "x"}).shape == (1, 384)


# ---- keys, info, spec, metrics -----------------------------------------------------------------------


def test_api_keys_are_enforced_on_every_tei_route(models):
    settings = ServerSettings(api_keys=["k1"])
    calls = [
        ("post", "/embed", {"inputs": "x"}),
        ("post", "/", {"inputs": "x"}),
        ("post", "/rerank", {"query": "q", "texts": ["a"]}),
        ("get", "/info", None),
    ]
    with make_client(models, ["minilm", "cross"], settings) as test_client:
        for method, route, body in calls:
            kwargs = {"json": body} if body is not None else {}
            refused = getattr(test_client, method)(route, **kwargs)
            error_of(refused, 401, "invalid_api_key")
            wrong = getattr(test_client, method)(route, headers={"Authorization": "Bearer nope"}, **kwargs)
            assert wrong.status_code == 401
            ok = getattr(test_client, method)(route, headers={"Authorization": "Bearer k1"}, **kwargs)
            assert ok.status_code == 200, (route, ok.text)


def test_info_describes_the_model_and_the_settings(models):
    settings = ServerSettings(max_client_batch_size=7, auto_truncate=True)
    batch = BatchSettings(max_batch_tokens=1234, max_batch_size=56)
    with make_client(models, ["minilm"], settings, batch) as test_client:
        info = test_client.get("/info").json()
    assert set(info) == TEI_INFO_KEYS
    assert info["model_id"] == models["minilm"].source and info["served_model_name"] == "minilm"
    assert info["model_type"] == {"embedding": {"pooling": None}}
    assert info["model_dtype"] == "float32"
    assert info["max_input_length"] == 256
    assert (info["max_batch_tokens"], info["max_batch_requests"]) == (1234, 56)
    assert (info["max_client_batch_size"], info["auto_truncate"]) == (7, True)
    assert info["version"] == __version__
    # nothing invented: what qwembed does not know is null
    unknown = ("model_sha", "max_concurrent_requests", "tokenization_workers", "sha", "docker_label")
    assert all(info[key] is None for key in unknown)


def test_info_of_a_named_model_and_of_a_reranker(client, models):
    qwen3 = client.get("/info", params={"model": "qwen3-tiny"}).json()
    assert (
        qwen3["served_model_name"] == "qwen3-tiny"
        and qwen3["max_input_length"] == models["qwen3-tiny"].max_tokens
    )
    assert qwen3["model_id"] == models["qwen3-tiny"].source
    cross = client.get("/info", params={"model": "cross"}).json()
    assert set(cross) == TEI_INFO_KEYS
    assert cross["model_type"] == {"reranker": {"id2label": None, "label2id": None}}
    assert cross["model_dtype"] is None  # (rerankers do not report what they compute in)
    error_of(client.get("/info"), 400, "model_required", "model")  # two embedders, none named
    error_of(client.get("/info", params={"model": "nope"}), 404, "model_not_found", "model")


def test_info_on_a_reranker_only_server_is_the_reranker(models):
    with make_client(models, ["cross"]) as test_client:
        assert test_client.get("/info").json()["served_model_name"] == "cross"


def test_spec_and_metrics_name_the_tei_routes(client):
    spec = client.get("/openapi.json").json()
    assert {"/embed", "/rerank", "/info"} <= set(spec["paths"])
    request = spec["components"]["schemas"]["TEIEmbedRequest"]["properties"]
    assert {"inputs", "normalize", "truncate", "truncation_direction", "prompt_name", "dimensions"} <= set(
        request
    )
    assert request["normalize"]["default"] is True and request["truncation_direction"]["default"] == "Right"
    embed(client, {"model": "minilm", "inputs": "counted"})
    text = client.get("/metrics").text
    assert 'qwembed_requests_total{route="/embed",status="200"}' in text


# ---- TEI's own client --------------------------------------------------------------------------------


def test_huggingface_hub_inference_client(models, monkeypatch):
    """huggingface_hub's InferenceClient, as TEI users (and LangChain's HuggingFaceEndpointEmbeddings)
    call it: the server's URL as the model, so it posts to /."""
    huggingface_hub = pytest.importorskip("huggingface_hub", reason="huggingface_hub is not installed")
    # the tests run with HF_HUB_OFFLINE=1 (conftest), which blocks every request huggingface_hub
    # makes; this client only ever talks to the local server below
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    pool = ModelPool()
    pool.add_encoder(models["minilm"])
    app = create_app(pool, ServerSettings(api_keys=["k1"]))
    with running_server(app) as url:
        inference = huggingface_hub.InferenceClient(base_url=url, api_key="k1")
        texts = ["hello world", "你好"]
        vectors = inference.feature_extraction(texts)
        answer = httpx.post(
            f"{url}/v1/embeddings", json={"input": texts}, headers={"Authorization": "Bearer k1"}
        )
        want = np.array([item["embedding"] for item in answer.json()["data"]], dtype=np.float32)
        assert vectors.shape == (2, 384)
        np.testing.assert_allclose(vectors, want, atol=1e-6)
        single = inference.feature_extraction(
            texts[0], prompt_name="query", truncate=True, truncation_direction="right"
        )
        np.testing.assert_allclose(single, want[:1], atol=1e-6)  # (MiniLM has no query prompt)
        raw = inference.feature_extraction(texts, normalize=False)  # the pooled vectors
        np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), want, atol=1e-6)
        assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.05)
        # its errors carry the status and qwembed's message
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
            inference.feature_extraction("x", prompt_name="passage")
        assert raised.value.response.status_code == 400
        assert "prompt_name 'passage' is not known" in str(raised.value)
        with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as raised:
            huggingface_hub.InferenceClient(base_url=url).feature_extraction("x")
        assert raised.value.response.status_code == 401
