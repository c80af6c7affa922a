"""The OpenAI-compatible client: wire format with a mock transport, and eval against a real
qwembed server started by the test."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from qwembed.engine.remote import RemoteEmbedder, RemoteError, normalize_base_url
from qwembed.eval.bench import measure_latency
from qwembed.eval.cli import main
from qwembed.eval.hashing_embedder import HashingEmbedder
from qwembed.eval.models import open_embedder, split_endpoint_spec


class FakeService:
    """An OpenAI-style /v1/embeddings over the hashing baseline, recording each request."""

    def __init__(self, status: list[int] | None = None):
        self.model = HashingEmbedder(32)
        self.requests: list[dict] = []
        self.status = status or []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.status:
            return httpx.Response(self.status.pop(0), json={"error": {"message": "busy"}})
        if request.url.path == "/v1/models":
            return httpx.Response(404)
        body = json.loads(request.content)
        self.requests.append({**body, "auth": request.headers.get("authorization")})
        vecs = self.model.embed(
            body["input"],
            input_type=body.get("input_type"),
            instruction=body.get("instruction"),
            dimensions=body.get("dimensions"),
        )
        data = [
            {
                "object": "embedding",
                "index": i,
                "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode(),
            }
            for i, v in enumerate(vecs)
        ]
        return httpx.Response(200, json={"object": "list", "data": data[::-1], "model": "m", "usage": {}})


def client_for(service: FakeService, **kw) -> RemoteEmbedder:
    return RemoteEmbedder(
        "http://svc/v1", "m", client=httpx.Client(transport=httpx.MockTransport(service)), **kw
    )


def test_batches_decodes_and_matches_the_model():
    service = FakeService()
    remote = client_for(service, batch_size=2, api_key="k")
    texts = ["一", "二", "三", "四", "五"]
    got = remote.embed(texts, input_type="query", instruction="找", dimensions=16)
    np.testing.assert_allclose(
        got, service.model.embed(texts, input_type="query", instruction="找", dimensions=16)
    )
    assert [len(r["input"]) for r in service.requests] == [2, 2, 1]
    first = service.requests[0]
    assert first["encoding_format"] == "base64" and first["model"] == "m" and first["dimensions"] == 16
    assert first["input_type"] == "query" and first["instruction"] == "找" and first["auth"] == "Bearer k"


def test_extensions_only_sent_when_set():
    service = FakeService()
    client_for(service, api_key="").embed(["x"])
    sent = service.requests[0]
    assert not {"input_type", "instruction", "dimensions"} & sent.keys() and sent["auth"] is None


def test_dimension_probe_when_models_are_not_listed():
    assert client_for(FakeService()).dimension == 32


def test_retries_then_reports_errors(monkeypatch):
    monkeypatch.setattr("qwembed.engine.remote.time.sleep", lambda s: None)
    service = FakeService(status=[503, 429])
    assert client_for(service).embed(["x"]).shape == (1, 32)
    with pytest.raises(RemoteError, match="HTTP 400: busy"):
        client_for(FakeService(status=[400])).embed(["x"])


def test_specs():
    assert normalize_base_url("http://h:8000") == "http://h:8000/v1"
    assert normalize_base_url("https://api.example.com/v1/") == "https://api.example.com/v1"
    assert split_endpoint_spec("http://h:1/v1#qwen3") == ("http://h:1/v1", "qwen3")
    remote = open_embedder("http://h:1/v1#qwen3")
    assert isinstance(remote, RemoteEmbedder) and remote.name == "qwen3"
    assert open_embedder("hashing:48").dimension == 48


# ---- a real qwembed server -------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    from qwembed.api import create_app
    from qwembed.backends import load_encoder
    from qwembed.engine.pool import ModelPool
    from server_fixtures import running_server

    pool = ModelPool()
    pool.add_encoder(load_encoder("use-multilingual"))
    with running_server(create_app(pool)) as url:
        yield url


def test_remote_equals_local_through_a_qwembed_server(server):
    from qwembed.engine import Embedder

    local = Embedder.load("use-multilingual")
    remote = RemoteEmbedder(f"{server}/v1", "use-multilingual", batch_size=2)
    texts = ["苹果发布了新手机", "我喜欢吃苹果", "Apple released a phone"]
    assert remote.dimension == local.dimension
    for kwargs in (
        {},
        {"input_type": "query", "instruction": "检索"},
        {"input_type": "document", "dimensions": 64},
    ):
        np.testing.assert_allclose(remote.embed(texts, **kwargs), local.embed(texts, **kwargs), atol=1e-5)


def test_cli_against_the_server_matches_local(server, tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text(
        '{"query": "苹果手机", "positive": "苹果公司发布了新款iPhone", "negatives": ["苹果又甜又脆"]}\n'
        '{"query": "水果", "positive": "苹果又甜又脆", "negatives": ["苹果公司发布了新款iPhone"]}\n',
        encoding="utf-8",
    )
    out = tmp_path / "r.json"
    argv = [
        "eval",
        "retrieval",
        "--quiet",
        "--data",
        str(data),
        "--out",
        str(out),
        "--model",
        f"{server}/v1#use-multilingual",
        "--model",
        "use-multilingual",
    ]
    assert main(argv) == 0
    remote, local = json.loads(out.read_text(encoding="utf-8"))["records"]
    # one model, served and local: the second is labelled with its --model value, so that the
    # report's rows and plots keep the two apart
    assert (remote["model"], local["model"]) == ("use-multilingual", "use-multilingual (--model 2)")
    assert remote["model_spec"].startswith("http://127.0.0.1")
    assert local["config"]["compute"] == "float32 on cpu" and "compute" not in remote["config"]
    assert remote["metrics"] == pytest.approx(local["metrics"])


def test_usage_is_counted_across_concurrent_callers():
    class Usage(FakeService):
        def __call__(self, request: httpx.Request) -> httpx.Response:
            response = super().__call__(request)
            body = json.loads(response.content)
            body["usage"] = {"prompt_tokens": 3, "total_tokens": 3}
            return httpx.Response(200, json=body)

    remote = client_for(Usage())
    (row,) = measure_latency(remote, ["一", "二", "三"], [1], repeats=40, concurrency=8)
    assert remote.tokens_used == 3 * 41  # the warm-up call too
    assert row["tokens_per_s"] == pytest.approx(3 * row["texts_per_s"])
