"""``normalize: false`` (TEI's /embed, vLLM's /v1/embeddings, ``Embedder.embed(normalize=False)``):
the model's pooled vectors before L2 normalisation, checked against sentence-transformers' modules
before its ``Normalize`` (MiniLM) and transformers' last hidden state at the last token (Qwen3);
normalised vectors unchanged; one batch serving requests with and without normalisation."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Sequence

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Normalize
from transformers import AutoModel, AutoTokenizer

from fake_encoders import SlowEncoder
from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_encoder
from qwembed.backends.base import Encoder, TokenIds
from qwembed.backends.universal_sentence_encoder import UniversalSentenceEncoder
from qwembed.engine import Embedder
from qwembed.engine.inputs import EmbedOptions
from qwembed.engine.pool import BatchSettings, ModelPool
from qwembed.engine.postprocess import NormalizeUnsupportedError, finish
from qwembed.engine.remote import RemoteEmbedder

TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog, again and again, " * 3,
    "你好，世界",
    "ok",
]
OPTIONS = LoadOptions(device="cpu", dtype="float32")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.sum(a64 * b64, axis=1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def assert_same_vectors(actual: np.ndarray, reference: np.ndarray) -> None:
    """Same direction (cosine ≥ 0.9999) and the same length (within 1e-3, relative)."""
    assert actual.shape == reference.shape
    assert cosines(actual, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(actual, axis=1), np.linalg.norm(reference, axis=1), rtol=1e-3)


def unit(vectors: np.ndarray) -> np.ndarray:
    """As the backends normalised before pooled vectors existed (torch's F.normalize)."""
    return torch.nn.functional.normalize(torch.from_numpy(vectors), p=2, dim=-1).numpy()


# ---- references, computed without qwembed ------------------------------------------------------------


def minilm_pooled_reference(folder, texts: list[str]) -> np.ndarray:
    """sentence-transformers' own modules up to its Pooling: the model without its Normalize."""
    model = SentenceTransformer(str(folder), device="cpu")
    modules = list(model)
    assert isinstance(modules[-1], Normalize)  # (else this would test nothing)
    without = SentenceTransformer(modules=modules[:-1], device="cpu")
    return without.encode(texts, convert_to_numpy=True, normalize_embeddings=False)


@torch.inference_mode()
def qwen3_last_token_states(folder, texts: list[str]) -> np.ndarray:
    """transformers' last_hidden_state at each text's last token (the official-style tokenizer
    appends <|endoftext|>), one text at a time so that no padding is involved."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    rows = [model(**tokenizer([text], return_tensors="pt")).last_hidden_state[0, -1] for text in texts]
    return torch.stack(rows).numpy()


@pytest.fixture(scope="module")
def minilm():
    return load_encoder("minilm", options=OPTIONS)


@pytest.fixture(scope="module")
def qwen3(qwen3_dirs):
    return load_encoder(str(qwen3_dirs["appends"]), name="qwen3-tiny", options=OPTIONS)


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir) -> np.ndarray:
    return minilm_pooled_reference(minilm_dir, TEXTS)


@pytest.fixture(scope="module")
def qwen3_reference(qwen3_dirs) -> np.ndarray:
    return qwen3_last_token_states(qwen3_dirs["appends"], TEXTS)


# ---- the backends' pooled vectors ----------------------------------------------------------------------


@pytest.mark.parametrize("packed", [True, False])
def test_minilm_pooled_vectors_are_sentence_transformers_before_normalize(
    minilm, minilm_reference, monkeypatch, packed
):
    if not packed:  # the padded path runs the model's modules themselves, but its Normalize
        monkeypatch.setattr(minilm, "packed", False)
    assert minilm.packed == packed
    raw = Embedder(minilm).embed(TEXTS, normalize=False)
    assert_same_vectors(raw, minilm_reference)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.05)  # mean pooling: not unit
    np.testing.assert_allclose(minilm.pool_token_ids(minilm.tokenize(TEXTS)), raw, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("packed", [True, False])
def test_qwen3_pooled_vectors_are_the_last_tokens_final_hidden_state(
    qwen3, qwen3_reference, monkeypatch, packed
):
    if not packed:
        monkeypatch.setattr(qwen3, "packed", False)
    assert qwen3.packed == packed
    raw = Embedder(qwen3).embed(TEXTS, normalize=False)
    assert_same_vectors(raw, qwen3_reference)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0, atol=0.05)


def test_normalised_vectors_are_what_they_were(minilm, qwen3, minilm_dir, minilm_reference, qwen3_reference):
    """The default path: the pooled vectors L2-normalised, as the backends did in their forward."""
    full = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    for encoder, independent in ((minilm, full), (qwen3, unit(qwen3_reference))):
        embedder = Embedder(encoder)
        vectors = embedder.embed(TEXTS)
        assert embedder.embed(TEXTS, normalize=True).tobytes() == vectors.tobytes()
        ids = encoder.tokenize(TEXTS)
        before = unit(encoder.pool_token_ids(ids))  # the code these paths replaced
        np.testing.assert_allclose(vectors, before, atol=1e-6)
        np.testing.assert_allclose(encoder.embed_token_ids(ids), before, atol=1e-6)
        np.testing.assert_allclose(embedder.embed_token_ids(ids), before, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(vectors, independent, atol=1e-5)
    np.testing.assert_allclose(unit(minilm_reference), full, atol=1e-6)  # (the two references agree)


def test_dimensions_keep_the_first_components_normalised_or_not(minilm, minilm_reference):
    embedder = Embedder(minilm)
    cut = embedder.embed(TEXTS, dimensions=64, normalize=False)
    assert cut.shape == (len(TEXTS), 64) and cut.flags.c_contiguous
    assert_same_vectors(cut, minilm_reference[:, :64])  # the first 64, not re-normalised (as vLLM)
    assert_same_vectors(embedder.embed(TEXTS, dimensions=64), unit(minilm_reference[:, :64]))
    np.testing.assert_allclose(np.linalg.norm(embedder.embed(TEXTS, dimensions=64), axis=1), 1.0, atol=1e-6)
    single = embedder.embed(TEXTS[0], normalize=False)
    assert single.shape == (384,)
    np.testing.assert_allclose(single, embedder.embed(TEXTS[:1], normalize=False)[0], rtol=1e-5, atol=1e-6)


def test_finish_cuts_then_normalises_in_one_pass():
    vectors = np.array([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(finish(vectors.copy(), 2, normalize=False), vectors[:, :2])
    np.testing.assert_allclose(finish(vectors.copy(), 2), [[0.6, 0.8], [0, 0], [1, 0]], atol=1e-7)
    np.testing.assert_allclose(finish(vectors.copy()), [[3 / 13, 4 / 13, 12 / 13], [0, 0, 0], [1, 0, 0]])
    owned = vectors.copy()
    assert finish(owned) is owned  # (a request's own rows: normalised in place)
    assert finish(vectors, 3, normalize=False) is vectors  # (no cut: as they are)
    # unit vectors only (an encoder without pooled vectors): as they are unless cut
    assert finish(vectors, pooled=False) is vectors
    np.testing.assert_allclose(finish(vectors.copy(), 2, pooled=False)[0], [0.6, 0.8])


# ---- one batch, requests with and without normalisation --------------------------------------------------


class GatedBatches:
    """Stands in for an encoder's ``pool_token_ids``: records each batch, holds the first until
    released (so that the requests after it queue up and share the next batch)."""

    def __init__(self, run):
        self.run = run
        self.batches: list[list[TokenIds]] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, batch: Sequence[TokenIds]) -> np.ndarray:
        self.batches.append([list(ids) for ids in batch])
        self.entered.set()
        assert self.release.wait(30)
        return self.run(batch)


def test_a_batch_mixing_normalize_true_and_false_gives_each_request_its_own(minilm, monkeypatch):
    groups = {
        "unit": ["alpha one", "alpha two, a little longer"],
        "raw": ["beta one", "beta two, a little longer"],
        "cut": ["gamma one", "gamma two"],
    }
    pooled = {name: minilm.pool_token_ids(minilm.tokenize(texts)) for name, texts in groups.items()}
    gate = GatedBatches(minilm.pool_token_ids)
    monkeypatch.setattr(minilm, "pool_token_ids", gate)  # (before the pool takes its batch function)
    pool = ModelPool(BatchSettings(streams=1, max_queue_wait=None))
    pool.add_encoder(minilm)
    pool.start()

    async def requests():
        blocker = asyncio.ensure_future(pool.embed("minilm", ["blocker"], EmbedOptions()))
        assert await asyncio.to_thread(gate.entered.wait, 30)
        answers = [
            asyncio.ensure_future(pool.embed("minilm", groups["unit"], EmbedOptions())),
            asyncio.ensure_future(pool.embed("minilm", groups["raw"], EmbedOptions(), normalize=False)),
            asyncio.ensure_future(pool.embed("minilm", groups["cut"], EmbedOptions(), 32, normalize=False)),
        ]
        while pool.queue_depth("minilm") < 6:
            await asyncio.sleep(0.01)
        gate.release.set()
        await blocker
        return [answer.vectors for answer in await asyncio.wait_for(asyncio.gather(*answers), 30)]

    try:
        unit_vectors, raw, cut = asyncio.run(requests())
    finally:
        pool.close()
    ids = {name: minilm.tokenize(texts) for name, texts in groups.items()}
    shared = [batch for batch in gate.batches if all(any(x in batch for x in ids[n]) for n in ids)]
    assert shared, gate.batches  # the three requests met in one batch
    np.testing.assert_allclose(unit_vectors, unit(pooled["unit"]), atol=1e-6)
    np.testing.assert_allclose(raw, pooled["raw"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cut, pooled["cut"][:, :32], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(unit_vectors, axis=1), 1.0, atol=1e-6)
    assert np.linalg.norm(raw, axis=1).min() > 1.5


# ---- encoders with unit vectors only -----------------------------------------------------------------------


def test_an_encoder_with_unit_vectors_only_refuses_normalize_false():
    encoder = SlowEncoder(delay=0.0)  # (overrides embed_token_ids alone, as the USE backend does)
    assert not encoder.has_pooled_vectors
    assert UniversalSentenceEncoder.pool_token_ids is Encoder.pool_token_ids  # its kernel normalises
    embedder = Embedder(encoder)
    with pytest.raises(NormalizeUnsupportedError, match=r"\(normalize: false\) are not available from slow"):
        embedder.embed(["abc"], normalize=False)
    with pytest.raises(TypeError, match="normalize must be True or False"):
        embedder.embed(["abc"], normalize="false")
    np.testing.assert_array_equal(embedder.embed(["abc"]), [[1.0, 0, 0, 0]])  # served as they are


# ---- HTTP --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(minilm, qwen3):
    pool = ModelPool()
    for encoder in (minilm, qwen3, SlowEncoder(delay=0.0)):
        pool.add_encoder(encoder)
    with TestClient(create_app(pool, ServerSettings(accept_token_ids=True))) as test_client:
        yield test_client


def openai_vectors(client, body: dict) -> np.ndarray:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    items = sorted(response.json()["data"], key=lambda item: item["index"])
    if body.get("encoding_format") == "base64":
        return np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4") for item in items])
    return np.array([item["embedding"] for item in items], dtype=np.float32)


def tei_vectors(client, body: dict) -> np.ndarray:
    response = client.post("/embed", json=body)
    assert response.status_code == 200, response.text
    return np.array(response.json(), dtype=np.float32)


@pytest.mark.parametrize("model", ["minilm", "qwen3-tiny"])
def test_both_routes_answer_pooled_vectors_for_normalize_false(
    client, model, minilm_reference, qwen3_reference
):
    reference = minilm_reference if model == "minilm" else qwen3_reference
    raw = {
        fmt: openai_vectors(
            client, {"model": model, "input": TEXTS, "normalize": False, "encoding_format": fmt}
        )
        for fmt in ("float", "base64")
    }
    assert_same_vectors(raw["float"], reference)
    np.testing.assert_array_equal(raw["base64"], raw["float"])  # (JSON floats round-trip float32)
    tei = tei_vectors(client, {"model": model, "inputs": TEXTS, "normalize": False})
    np.testing.assert_allclose(tei, raw["float"], rtol=1e-5, atol=1e-5)
    # true, null or absent: unit vectors, as before
    default = openai_vectors(client, {"model": model, "input": TEXTS})
    assert_same_vectors(default, unit(reference))
    for normalize in (True, None):
        np.testing.assert_allclose(
            openai_vectors(client, {"model": model, "input": TEXTS, "normalize": normalize}),
            default,
            atol=1e-6,
        )
        np.testing.assert_allclose(
            tei_vectors(client, {"model": model, "inputs": TEXTS, "normalize": normalize}), default, atol=1e-6
        )


def test_dimensions_with_normalize_false_over_http(client, minilm_reference):
    body = {"model": "minilm", "dimensions": 48, "normalize": False}
    cut = openai_vectors(client, {**body, "input": TEXTS, "encoding_format": "base64"})
    assert_same_vectors(cut, minilm_reference[:, :48])
    np.testing.assert_allclose(tei_vectors(client, {**body, "inputs": TEXTS}), cut, rtol=1e-5, atol=1e-5)
    unit_cut = tei_vectors(client, {"model": "minilm", "inputs": TEXTS, "dimensions": 48})
    assert_same_vectors(unit_cut, unit(minilm_reference[:, :48]))


def test_token_ids_with_normalize_false(client, qwen3, qwen3_reference):
    ids = qwen3.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]
    raw = openai_vectors(client, {"model": "qwen3-tiny", "input": [ids], "normalize": False})
    assert_same_vectors(raw, qwen3_reference[:1])
    assert_same_vectors(tei_vectors(client, {"model": "qwen3-tiny", "inputs": ids, "normalize": False}), raw)


@pytest.mark.parametrize(("route", "field"), [("/v1/embeddings", "input"), ("/embed", "inputs")])
def test_normalize_false_on_a_model_with_unit_vectors_only_is_a_400(client, route, field):
    response = client.post(route, json={"model": "slow", field: ["abc"], "normalize": False})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "normalize"), error
    assert "(normalize: false) are not available from slow" in error["message"]
    assert client.post(route, json={"model": "slow", field: ["abc"], "normalize": True}).status_code == 200


# ---- the OpenAI-compatible client ------------------------------------------------------------------------


def test_remote_embedder_asks_for_pooled_vectors_only_when_told():
    bodies: list[dict] = []

    def service(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        bodies.append(body)
        rows = [np.array([3.0, 4.0], dtype="<f4")] * len(body["input"])
        data = [{"index": i, "embedding": base64.b64encode(r.tobytes()).decode()} for i, r in enumerate(rows)]
        return httpx.Response(200, json={"data": data, "usage": {"total_tokens": 1}})

    remote = RemoteEmbedder("http://svc/v1", "m", client=httpx.Client(transport=httpx.MockTransport(service)))
    np.testing.assert_allclose(remote.embed(["a"]), [[0.6, 0.8]])
    assert "normalize" not in bodies[-1]  # (strict OpenAI-compatible services refuse unknown fields)
    np.testing.assert_array_equal(remote.embed(["a", "b"], normalize=False), [[3.0, 4.0], [3.0, 4.0]])
    assert bodies[-1]["normalize"] is False


def test_remote_embedder_against_qwembed(client, minilm):
    remote = RemoteEmbedder("http://testserver/v1", "minilm", client=client)
    local = Embedder(minilm)
    np.testing.assert_allclose(
        remote.embed(TEXTS, normalize=False), local.embed(TEXTS, normalize=False), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(remote.embed(TEXTS), local.embed(TEXTS), atol=1e-6)
