"""The HTTP layer as a client migrating from OpenAI or TEI expects it (a QA pass's findings): lone
surrogates named where they are, no reranker served, unparsable bodies, the key checked first,
models.retrieve, HEAD probes, plural counts, null for an optional field's default."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from fake_encoders import LengthReranker, SlowEncoder
from kb_fixtures import StubEmbedder, kb_app
from qwembed.api import ServerSettings, create_app
from qwembed.engine.pool import ModelPool
from server_fixtures import running_server

JSON = {"content-type": "application/json"}


def make_pool(encoder: bool = True, reranker: bool = True, encoder_name: str = "slow") -> ModelPool:
    pool = ModelPool()
    if encoder:
        fake = SlowEncoder(delay=0.0)
        fake.name = encoder_name
        pool.add_encoder(fake)
    if reranker:
        pool.add_reranker(LengthReranker())
    return pool


def make_client(pool: ModelPool | None = None, **settings) -> TestClient:
    return TestClient(create_app(pool or make_pool(), ServerSettings(**settings)))


@pytest.fixture(scope="module")
def client():
    with make_client(max_client_batch_size=8, max_body_bytes=50_000) as test_client:
        yield test_client


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and set(error) == {"message", "type", "param", "code"}
    return error


def still_serves(client: TestClient) -> None:
    assert client.post("/v1/embeddings", json={"input": "fine"}).status_code == 200


# ---- 1. lone surrogates: invalid_text, named by field and index, on every route --------------------

SURROGATES = [
    # (route, raw JSON body, param, where the message says it is)
    ("/v1/rerank", rb'{"model":"R","query":"q\ud800","documents":["a"]}', "query", "query "),
    ("/v1/rerank", rb'{"model":"R","query":"q","documents":["\udc00"]}', "documents", "documents[0] "),
    ("/v1/rerank", rb'{"query":"q","documents":["a",{"text":"x\udc00"}]}', "documents", "documents[1] "),
    ("/v1/rerank", rb'{"query":"q","documents":["a"],"instruction":"\ud800"}', "instruction", "instruction "),
    ("/rerank", rb'{"query":"q\ud800","texts":["a"]}', "query", "query "),
    ("/rerank", rb'{"query":"q","texts":["a","b","\udfff"]}', "texts", "texts[2] "),
    ("/v1/embeddings", rb'{"input":"q\ud800"}', "input", "input "),
    ("/v1/embeddings", rb'{"input":["ok","bad \ud800"]}', "input", "input[1] "),
    ("/v1/embeddings", rb'{"input":"a","instruction":"\ud800"}', "instruction", "instruction "),
]


@pytest.mark.parametrize(("route", "body", "param", "where"), SURROGATES)
def test_lone_surrogate_is_invalid_text_naming_the_field(client, route, body, param, where):
    error = error_of(client.post(route, content=body, headers=JSON), 400, "invalid_text")
    assert error["param"] == param
    assert error["message"].startswith(where) and "surrogate" in error["message"]
    still_serves(client)


# ---- 2. no model of the kind served: 404, not "several are served ()" ------------------------------


@pytest.mark.parametrize(
    ("route", "body"),
    [
        ("/v1/rerank", {"query": "q", "documents": ["a"]}),
        ("/v1/rerank", {"model": "R", "query": "q", "documents": ["a"]}),
        ("/rerank", {"query": "q", "texts": ["a"]}),
    ],
)
def test_no_reranker_served_is_404(route, body):
    with make_client(make_pool(reranker=False)) as test_client:
        error = error_of(test_client.post(route, json=body), 404, "model_not_found")
        assert error["param"] == "model"
        assert error["message"].startswith("no reranker model is served")
        assert "slow (embedding)" in error["message"]


def test_no_embedding_model_served_is_404():
    with make_client(make_pool(encoder=False)) as test_client:
        for body in ({"input": "x"}, {"model": "R", "input": "x"}):
            error = error_of(test_client.post("/v1/embeddings", json=body), 404, "model_not_found")
            assert error["message"].startswith("no embedding model is served")
            assert "R (reranker)" in error["message"]
        assert test_client.post("/v1/rerank", json={"query": "q", "documents": ["a"]}).status_code == 200


# ---- 3. bodies that cannot be read: invalid_json, 415 for a content coding, 499 for a hang-up ------

UNPARSABLE = [
    # (name, body, where the message says what is wrong)
    ("invalid utf-8", b'{"input": "caf\xe9"}', "not valid UTF-8"),
    ("utf-16", '{"input": "x"}'.encode("utf-16"), "not valid UTF-8"),
    ("empty", b"", "empty"),
    ("whitespace only", b" \r\n ", "empty"),
    ("deeply nested", b"[" * 100_000, "nested too deeply"),
    ("truncated", b'{"input": ', "not valid JSON"),
    ("a number of 5,000 digits", b'{"input": "a", "dimensions": ' + b"9" * 5000 + b"}", "digits"),
]


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/rerank", "/rerank"])
@pytest.mark.parametrize(("body", "says"), [c[1:] for c in UNPARSABLE], ids=[c[0] for c in UNPARSABLE])
def test_unparsable_body_is_invalid_json(route, body, says):
    with make_client(max_body_bytes=200_000) as test_client:
        error = error_of(test_client.post(route, content=body, headers=JSON), 400, "invalid_json")
        assert says in error["message"] and error["param"] is None
        still_serves(test_client)


def test_utf8_byte_order_mark_is_tolerated(client):
    body = b"\xef\xbb\xbf" + json.dumps({"input": "bom"}).encode()
    assert client.post("/v1/embeddings", content=body, headers=JSON).status_code == 200


@pytest.mark.parametrize("coding", ["gzip", "br", "deflate", "GZIP", "identity, gzip"])
def test_compressed_body_is_415_naming_the_coding(client, coding):
    body = gzip.compress(json.dumps({"input": "x"}).encode())
    response = client.post("/v1/embeddings", content=body, headers={**JSON, "content-encoding": coding})
    error = error_of(response, 415, "unsupported_content_encoding")
    assert coding.split(",")[-1].strip().lower() in error["message"]
    assert response.headers["accept-encoding"] == "identity"  # RFC 7694
    still_serves(client)


def test_identity_content_encoding_is_accepted(client):
    headers = {**JSON, "content-encoding": "identity"}
    assert client.post("/v1/embeddings", json={"input": "x"}, headers=headers).status_code == 200


def _asgi_post(app, path: str, messages: list[dict]) -> list[dict]:
    """Run one POST through the ASGI app with the given receive messages; return what it sent."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    inbox = list(messages)
    sent: list[dict] = []

    async def receive() -> dict:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def test_hang_up_mid_upload_is_counted_as_client_closed():
    app = create_app(make_pool())
    partial = {"type": "http.request", "body": b'{"input": ["half a bo', "more_body": True}
    sent = _asgi_post(app, "/v1/embeddings", [partial, {"type": "http.disconnect"}])
    assert sent[0]["status"] == 499
    text = app.state.metrics.render().decode()
    assert 'qwembed_requests_total{route="/v1/embeddings",status="499"} 1.0' in text
    assert 'qwembed_errors_total{code="client_closed_request"} 1.0' in text
    assert "bad_request" not in text and 'status="400"' not in text


def test_hang_up_mid_upload_on_a_real_server():
    app = create_app(make_pool())
    with running_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            sock.sendall(
                b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"input": ["half'
            )
        # the server sees the hang-up when it next reads: wait for it to be counted (no timing asserted)
        expected = 'qwembed_errors_total{code="client_closed_request"} 1.0'
        deadline = time.monotonic() + 30
        while expected not in (text := httpx.get(f"{url}/metrics").text) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert expected in text
        assert 'qwembed_requests_total{route="/v1/embeddings",status="499"} 1.0' in text
        assert "bad_request" not in text


# ---- 4. the API key before anything about the body ------------------------------------------------

UNAUTHENTICATED = [
    # (name, body, extra headers)
    ("malformed json", b"{", {}),
    ("empty body", b"", {}),
    ("invalid utf-8", b"\xff\xfe{", {}),
    ("wrong content type", b'{"input": "x"}', {"content-type": "text/plain"}),
    ("gzip", gzip.compress(b'{"input": "x"}'), {"content-encoding": "gzip"}),
    ("schema error", b'{"input": []}', {}),
    ("over --max-body-bytes", b"{" + b" " * 2000 + b"}", {}),
]


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/rerank", "/rerank"])
@pytest.mark.parametrize(
    ("body", "headers"), [c[1:] for c in UNAUTHENTICATED], ids=[c[0] for c in UNAUTHENTICATED]
)
def test_no_key_is_401_whatever_the_body(route, body, headers):
    with make_client(api_keys=["k"], max_body_bytes=1000) as test_client:
        response = test_client.post(route, content=body, headers={**JSON, **headers})
        error_of(response, 401, "invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
        # with the key, the same malformed body is a 400 that names the problem
        keyed = test_client.post(route, content=b"{", headers={**JSON, "Authorization": "Bearer k"})
        error_of(keyed, 400, "invalid_json")


def test_no_key_is_401_on_knowledge_base_routes(tmp_path):
    from qwembed.kb import KnowledgeBaseManager

    stub = StubEmbedder()
    with TestClient(kb_app(KnowledgeBaseManager(tmp_path / "kb", lambda model: stub))) as test_client:
        for body in (b"{", b""):
            response = test_client.post("/v1/kb/faq/search", content=body, headers=JSON)
            error_of(response, 401, "invalid_api_key")
        keyed = {**JSON, "Authorization": "Bearer secret"}
        error_of(test_client.post("/v1/kb/faq/search", content=b"{", headers=keyed), 400, "invalid_json")
        error_of(test_client.put("/v1/kb/faq", content=b"", headers=keyed), 400, "invalid_json")


# ---- 5. GET /v1/models/{id} -----------------------------------------------------------------------


def test_retrieve_model_in_openai_shape():
    with make_client(make_pool(encoder_name="org/model")) as test_client:
        listed = {m["id"]: m for m in test_client.get("/v1/models").json()["data"]}
        for model_id in ("org/model", "R"):
            response = test_client.get(f"/v1/models/{model_id}")
            assert response.status_code == 200, response.text
            assert response.json() == listed[model_id]
            assert response.json()["object"] == "model"
        assert test_client.get("/v1/models/org%2Fmodel").json()["id"] == "org/model"
        error = error_of(test_client.get("/v1/models/gpt-4"), 404, "model_not_found")
        assert error["param"] == "model" and "org/model" in error["message"]


def test_retrieve_model_needs_the_key():
    with make_client(api_keys=["k"]) as test_client:
        error_of(test_client.get("/v1/models/slow"), 401, "invalid_api_key")
        assert test_client.get("/v1/models/slow", headers={"Authorization": "Bearer k"}).status_code == 200


def test_openai_client_models_retrieve():
    openai = pytest.importorskip("openai", reason="the openai client is a test dependency")
    with running_server(create_app(make_pool(encoder_name="org/model"))) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        assert client.models.retrieve("org/model").id == "org/model"
        assert client.models.retrieve("R").id == "R"
        with pytest.raises(openai.NotFoundError) as raised:
            client.models.retrieve("gpt-4")
        assert raised.value.code == "model_not_found"


# ---- 6. HEAD for the probes -----------------------------------------------------------------------


def test_head_health_and_ready():
    test_client = make_client()
    response = test_client.head("/ready")  # outside the lifespan: not ready
    assert response.status_code == 503
    with test_client:
        for path in ("/health", "/ready"):
            response = test_client.head(path)
            assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        refused = test_client.post("/health")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"
        # Allow names the methods of included routers' routes too (it was empty for every route)
        assert test_client.get("/v1/rerank").headers["allow"] == "POST"
    spec_paths = test_client.app.openapi()["paths"]
    assert set(spec_paths["/health"]) == {"get"} and set(spec_paths["/ready"]) == {"get"}


def test_head_on_a_real_server_has_no_body():
    with running_server(create_app(make_pool())) as url:
        response = httpx.head(f"{url}/health")
        assert response.status_code == 200 and response.content == b""
        assert httpx.head(f"{url}/ready").status_code == 200


# ---- 7. counts read as English --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "body", "status", "message"),
    [  # 400 as OpenAI and Cohere answer (their clients raise BadRequestError), 413 as TEI does
        ("/v1/embeddings", {"input": ["x"] * 9}, 400, "9 inputs exceed"),
        ("/v1/rerank", {"query": "q", "documents": ["d"] * 9}, 400, "9 documents exceed"),
        ("/v2/rerank", {"model": "R", "query": "q", "documents": ["d"] * 9}, 400, "9 documents exceed"),
        ("/rerank", {"query": "q", "texts": ["d"] * 9}, 413, "9 texts exceed"),
        ("/embed", {"inputs": ["x"] * 9}, 413, "9 inputs exceed"),
    ],
)
def test_too_many_inputs_message_is_plural(client, route, body, status, message):
    error = error_of(client.post(route, json=body), status, "too_many_inputs")
    assert error["message"] == f"{message} --max-client-batch-size 8"


# ---- 8. null is an optional field's default ------------------------------------------------------


def test_null_optional_fields_mean_their_defaults(client):
    nulls = {k: None for k in ("model", "encoding_format", "dimensions", "user", "input_type", "instruction")}
    response = client.post("/v1/embeddings", json={"input": ["x"], **nulls, "truncate": None})
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["embedding"] == [1.0, 0.0, 0.0, 0.0]  # floats, not base64
    rerank_nulls = {k: None for k in ("model", "top_n", "return_documents", "instruction")}
    ranked = client.post("/v1/rerank", json={"query": "q", "documents": ["a", "bb"], **rerank_nulls})
    assert ranked.status_code == 200, ranked.text
    assert all("document" not in r for r in ranked.json()["results"])
    tei_nulls = {"model": None, "raw_scores": None, "return_text": None}
    tei = client.post("/rerank", json={"query": "q", "texts": ["a"], **tei_nulls})
    assert tei.status_code == 200 and tei.json() == [{"index": 0, "score": 2.0}]
    # required fields stay required
    error_of(client.post("/v1/embeddings", json={"input": None}), 400, "invalid_input")


def test_spec_says_null_is_accepted(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    encoding = schemas["EmbeddingRequest"]["properties"]["encoding_format"]
    assert {"type": "null"} in encoding["anyOf"] and encoding["default"] == "float"
    for model, field in (("RerankRequest", "return_documents"), ("TEIRerankRequest", "raw_scores")):
        assert {"type": "null"} in schemas[model]["properties"][field]["anyOf"]


# ---- an empty instruction: refused, not silently the default task ------------------------------------


@pytest.mark.parametrize("route", ["/v1/embeddings", "/v1/rerank"])
def test_an_empty_instruction_is_a_400_naming_the_field(client, route):
    body = {"input": ["x"]} if route == "/v1/embeddings" else {"query": "q", "documents": ["d"]}
    error = error_of(client.post(route, json={**body, "instruction": ""}), 400, "invalid_request")
    assert error["param"] == "instruction" and "instruction is empty" in error["message"]
    still_serves(client)


def test_an_unhandled_error_is_counted_under_the_code_its_answer_carries():
    """The catch-all answer (500 internal_error) is sent outside the metrics middleware, which
    once counted it as http_500."""
    app = create_app(make_pool(), ServerSettings())

    @app.get("/boom")
    async def boom():
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as test_client:
        error_of(test_client.get("/boom"), 500, "internal_error")
        text = test_client.get("/metrics").text
    assert 'qwembed_errors_total{code="internal_error"} 1.0' in text and "http_500" not in text
