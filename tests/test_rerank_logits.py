"""Raw scores are the model's logits, not probabilities read back (a QA pass's finding).

TEI's ``raw_scores``, Infinity's and vLLM's ``use_activation: false`` used to rebuild each logit
from the float32 probability, clipped to [1e-7, 1 - 1e-7]: every confident pair came back as
±16.118, tied. Rerankers now give their logits (``Reranker.logits_token_ids``), the engine ranks on
them and activates each request's after the batch. Checked here on a tiny Qwen3-Reranker whose
``yes``/``no`` rows are scaled up until its pairs are confident, against the official recipe's
logits computed with transformers in the test.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from scipy.special import expit

from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, load_reranker
from qwembed.engine.pool import BatchSettings, ModelPool
from qwembed.engine.rerank import rerank, score_pairs
from rerank_fixtures import build_tiny_qwen3_reranker

QUERY = "capital of China"
DOCUMENTS = [
    "Beijing is the capital of China.",
    "Cats purr when they are content.",
    "The Great Wall stretches across northern China.",
    "Shanghai is China's largest city.",
    "Photosynthesis turns light into sugar.",
    "北京是中国的首都。",
]


@pytest.fixture(scope="module")
def sharp_dir(tmp_path_factory, qwen3_reranker_dir):
    """The tiny reranker with its yes/no rows of the LM head swapped and × 40: its logits are
    far past ±16 and mostly positive (the random model says "no" to every pair, as it happens), so
    that several pairs' probabilities round to 1.0 in float32."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = build_tiny_qwen3_reranker(tmp_path_factory.mktemp("sharp") / "model")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    yes, no = (tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
    with torch.no_grad():
        rows = model.lm_head.weight
        rows[[yes, no]] = rows[[no, yes]] * 40
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def sharp(sharp_dir):
    return load_reranker(str(sharp_dir), options=LoadOptions(device="cpu", dtype="float32"))


@pytest.fixture(scope="module")
def official_logits(sharp_dir, sharp):
    """yes-minus-no at the last position of each pair, from transformers' full forward."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(sharp_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(sharp_dir)
    yes, no = (tokenizer.convert_tokens_to_ids(word) for word in ("yes", "no"))
    logits = []
    with torch.no_grad():
        for ids in sharp.tokenize_pairs(QUERY, DOCUMENTS, None):
            last = model(input_ids=torch.tensor([ids])).logits[0, -1]
            logits.append(float(last[yes] - last[no]))
    return np.array(logits)


def test_the_fixture_is_confident_past_what_float32_probabilities_hold(official_logits):
    assert (np.abs(official_logits) > 16.2).sum() >= 3  # (past the old clip's ±16.118)
    assert (expit(official_logits).astype(np.float32) == np.float32(1.0)).sum() >= 2  # tied as probabilities


def test_raw_scores_are_the_logits(sharp, official_logits):
    raw = score_pairs(sharp, QUERY, DOCUMENTS, raw=True)
    np.testing.assert_allclose(raw, official_logits, rtol=1e-4, atol=1e-3)
    scores = score_pairs(sharp, QUERY, DOCUMENTS)
    np.testing.assert_allclose(scores, expit(official_logits), rtol=0, atol=1e-6)


def test_the_ranking_is_the_logits_order_even_where_probabilities_tie(sharp, official_logits):
    results = rerank(sharp, QUERY, DOCUMENTS)
    assert [r.index for r in results] == list(np.argsort(-official_logits, kind="stable"))
    raw = rerank(sharp, QUERY, DOCUMENTS, raw=True)
    assert [r.index for r in raw] == [r.index for r in results]
    np.testing.assert_allclose(
        [r.score for r in raw], official_logits[[r.index for r in raw]], atol=1e-3, rtol=1e-4
    )


def test_one_batch_serves_raw_and_activated_requests_each_their_own(sharp, official_logits):
    pool = ModelPool(BatchSettings())
    pool.add_reranker(sharp)
    pool.start()

    async def both():
        return await asyncio.gather(
            pool.rerank(sharp.name, QUERY, DOCUMENTS, raw=True), pool.rerank(sharp.name, QUERY, DOCUMENTS)
        )

    try:
        raw, scores = asyncio.run(both())
    finally:
        pool.close()
    by_index = {r.index: r.score for r in raw.results}
    np.testing.assert_allclose(
        [by_index[i] for i in range(len(DOCUMENTS))], official_logits, atol=1e-3, rtol=1e-4
    )
    assert [r.index for r in scores.results] == [r.index for r in raw.results]
    np.testing.assert_allclose(
        [r.score for r in scores.results], expit([r.score for r in raw.results]), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "path, body",
    [
        ("/rerank", {"texts": DOCUMENTS, "raw_scores": True}),  # TEI
        ("/v1/rerank", {"documents": DOCUMENTS, "raw_scores": True}),  # Infinity
        ("/v1/rerank", {"documents": DOCUMENTS, "use_activation": False}),  # vLLM
    ],
)
def test_http_raw_scores_are_the_logits(sharp, official_logits, path, body):
    pool = ModelPool(BatchSettings())
    pool.add_reranker(sharp)
    with TestClient(create_app(pool, ServerSettings())) as client:
        answer = client.post(path, json={"query": QUERY, **body})
    assert answer.status_code == 200, answer.text
    items = answer.json() if path == "/rerank" else answer.json()["results"]
    got = {item["index"]: item.get("score", item.get("relevance_score")) for item in items}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], official_logits, atol=1e-3, rtol=1e-4)
    assert len({round(score, 3) for score in got.values()}) == len(DOCUMENTS)  # no ±16.118 ties


def test_contradictory_activation_fields_are_refused(sharp):
    pool = ModelPool(BatchSettings())
    pool.add_reranker(sharp)
    with TestClient(create_app(pool, ServerSettings())) as client:
        body = {"query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
        answer = client.post("/v1/rerank", json={**body, "use_activation": True})
        assert answer.status_code == 400
        assert answer.json()["error"]["param"] == "use_activation"
        for agreeing in ({"use_activation": False}, {"use_activation": None}, {}):
            assert client.post("/v1/rerank", json={**body, **agreeing}).status_code == 200
