"""A request's token caps below the model's limit, honoured as the APIs that define them describe:
Cohere's ``max_tokens_per_doc`` / ``max_tokens_per_query`` cut each text after its N-th token,
vLLM's ``truncate_prompt_tokens`` fits each whole pair to N tokens. Checked against independent
cuts: the same texts cut by the tokenizer's offsets here, and rerankers loaded with ``max_tokens=N``."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from transformers import AutoTokenizer

from qwembed.api import ServerSettings, create_app
from qwembed.backends import LoadOptions, PairTooLongError, PromptTooLongError, load_reranker
from qwembed.backends.cross_encoder import CrossEncoderReranker
from qwembed.backends.qwen3_reranker import Qwen3Reranker
from qwembed.backends.token_caps import cut_after_tokens
from qwembed.engine.pool import ModelPool
from qwembed.engine.rerank import TokenCaps, score_pairs

QUERY = "Where does the Rhine flow, and through which cities?"
LONG_EN = " ".join(f"Paragraph {i}: the Rhine flows north through Basel and Cologne." for i in range(30))
LONG_ZH = "长江是中国最长的河流，流经青海、西藏、四川、重庆、湖北、湖南、江西、安徽、江苏和上海。" * 8
DOCUMENTS = ["The Rhine flows into the North Sea.", LONG_EN, "北京是首都。", LONG_ZH, "🌊🌊🌊 rivers 🌊"]


def first_tokens(tokenizer, text: str, n: int) -> str:
    """The text up to its n-th token's end, from the tokenizer's offsets (the reference cut)."""
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return text if len(offsets) <= n else text[: offsets[n - 1][1]]


@pytest.fixture(scope="module")
def qwen3(qwen3_reranker_dir):
    return Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def cross(cross_encoder_dir):
    return CrossEncoderReranker.load(str(cross_encoder_dir), device="cpu", dtype="float32")


# ---- cutting a text after its N-th token ------------------------------------------------------------


@pytest.mark.parametrize("folder", ["qwen3_reranker_dir", "cross_encoder_dir"])
@pytest.mark.parametrize("cap", [1, 3, 17, 64])
def test_a_text_is_cut_after_its_nth_token(request, folder, cap):
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(folder))
    texts = [*DOCUMENTS, "short", "中文 and English mixed, 混合文本 with more words than the cap" * 3]
    cut = cut_after_tokens(tokenizer, texts, cap)
    for text, shorter in zip(texts, cut, strict=True):
        n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        assert text.startswith(shorter)
        if n_tokens <= cap:
            assert shorter == text
        else:
            assert len(tokenizer(shorter, add_special_tokens=False)["input_ids"]) <= cap
            assert len(shorter) >= len(first_tokens(tokenizer, text, cap - 1)) or cap == 1


def test_a_character_spread_over_tokens_is_kept_whole_or_left_out(qwen3_reranker_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen3_reranker_dir)
    # rare CJK characters and emoji take several byte-level tokens each
    text = "𠀀𠀁𠀂𠀃 🌊🌊"
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    for cap in range(1, n_tokens):
        shorter = cut_after_tokens(tokenizer, [text], cap)[0]
        assert text.startswith(shorter) and "\ufffd" not in shorter
        assert len(tokenizer(shorter, add_special_tokens=False)["input_ids"]) <= cap


def test_a_cap_below_one_is_refused(qwen3_reranker_dir):
    tokenizer = AutoTokenizer.from_pretrained(qwen3_reranker_dir)
    with pytest.raises(ValueError, match="at least 1"):
        cut_after_tokens(tokenizer, ["text"], 0)
    for bad in (0, -1, 2.5, True, "4"):
        with pytest.raises(ValueError, match="positive integer"):
            TokenCaps(document=bad)


# ---- a cap on the whole pair is a smaller model limit -----------------------------------------------


@pytest.mark.parametrize("cap", [90, 120, 200])
def test_qwen3_pair_cap_fits_pairs_as_a_model_with_that_limit_does(qwen3_reranker_dir, qwen3, cap):
    limited = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32", max_tokens=cap)
    capped = qwen3.tokenize_pairs(QUERY, DOCUMENTS, None, max_tokens=cap)
    assert capped == limited.tokenize_pairs(QUERY, DOCUMENTS, None)
    assert max(map(len, capped)) == cap  # (the long documents are cut to exactly the cap)
    for ids in capped:
        assert ids[: len(qwen3.prefix_ids)] == qwen3.prefix_ids
        assert ids[-len(qwen3.suffix_ids) :] == qwen3.suffix_ids
    # a cap at or above the model's own limit changes nothing
    assert qwen3.tokenize_pairs(QUERY, DOCUMENTS, None, max_tokens=10**6) == qwen3.tokenize_pairs(
        QUERY, DOCUMENTS, None
    )


@pytest.mark.parametrize("cap", [16, 40, 128])
def test_cross_encoder_pair_cap_fits_pairs_as_a_model_with_that_limit_does(cross_encoder_dir, cross, cap):
    limited = CrossEncoderReranker.load(str(cross_encoder_dir), device="cpu", dtype="float32", max_tokens=cap)
    capped = cross.tokenize_pairs(QUERY, DOCUMENTS, None, max_tokens=cap)
    assert capped == limited.tokenize_pairs(QUERY, DOCUMENTS, None)
    assert max(map(len, capped)) == cap


def test_a_pair_cap_that_leaves_no_room_blames_the_cap(qwen3, cross):
    for reranker, cap in ((qwen3, 30), (cross, 3)):
        with pytest.raises(PromptTooLongError) as refused:
            reranker.tokenize_pairs(QUERY, [LONG_EN], None, max_tokens=cap)
        assert refused.value.capped and refused.value.max_tokens == cap
        assert "the request's token cap of" in str(refused.value) and "raise the cap" in str(refused.value)


def test_a_pair_over_the_cap_without_truncation_is_refused_at_the_cap(qwen3):
    with pytest.raises(PairTooLongError) as refused:
        qwen3.tokenize_pairs(QUERY, DOCUMENTS, None, truncate=False, max_tokens=100)
    assert refused.value.index == 1 and refused.value.max_tokens == 100


# ---- the library call -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["qwen3", "cross"])
def test_library_caps_score_as_the_texts_cut_beforehand(request, name):
    reranker = request.getfixturevalue(name)
    tokenizer = reranker.tokenizer
    caps = TokenCaps(query=5, document=12)
    capped = score_pairs(reranker, QUERY, DOCUMENTS, caps=caps)
    cut_query = first_tokens(tokenizer, QUERY, 5)
    expected = score_pairs(reranker, cut_query, [first_tokens(tokenizer, d, 12) for d in DOCUMENTS])
    assert capped.tolist() == expected.tolist()
    assert capped.tolist() != score_pairs(reranker, QUERY, DOCUMENTS).tolist()


# ---- over HTTP: Cohere's and vLLM's fields ----------------------------------------------------------


@pytest.fixture(scope="module")
def client(qwen3_reranker_dir):
    reranker = load_reranker(
        str(qwen3_reranker_dir), name="qwen3", options=LoadOptions(device="cpu", dtype="float32")
    )
    pool = ModelPool()
    pool.add_reranker(reranker)
    with TestClient(create_app(pool, ServerSettings())) as test_client:
        yield test_client


def ranked(client, route: str = "/v1/rerank", **fields) -> dict:
    body = {"model": "qwen3", "query": QUERY, "documents": DOCUMENTS, **fields}
    response = client.post(route, json=body)
    assert response.status_code == 200, response.text
    return response.json()


def by_index(answer: dict) -> dict[int, float]:
    return {result["index"]: result["relevance_score"] for result in answer["results"]}


@pytest.mark.parametrize("route", ["/v1/rerank", "/v2/rerank", "/rerank"])
def test_cohere_caps_cut_each_text_as_its_tokenizer_counts(client, qwen3, route):
    capped = ranked(client, route, max_tokens_per_doc=12, max_tokens_per_query=5, return_documents=True)
    tokenizer = qwen3.tokenizer
    cut = ranked(
        client,
        query=first_tokens(tokenizer, QUERY, 5),
        documents=[first_tokens(tokenizer, d, 12) for d in DOCUMENTS],
    )
    assert by_index(capped) == by_index(cut) != by_index(ranked(client))
    # the answer echoes the documents as sent, not as cut
    assert {r["index"]: r["document"]["text"] for r in capped["results"]} == dict(enumerate(DOCUMENTS))


def test_cohere_default_cap_of_4096_is_taken_by_a_model_with_a_longer_limit(client):
    """Cohere's documented default, sent explicitly to a Qwen3-Reranker (limit 8192): no 400."""
    assert by_index(ranked(client, "/v2/rerank", max_tokens_per_doc=4096)) == by_index(ranked(client))


def test_vllm_pair_cap_limits_every_pair(client):
    whole = ranked(client)
    capped = ranked(client, truncate_prompt_tokens=100)
    assert capped["usage"]["total_tokens"] < whole["usage"]["total_tokens"]
    assert capped["usage"]["total_tokens"] <= 100 * len(DOCUMENTS)
    assert by_index(ranked(client, truncate_prompt_tokens=-1)) == by_index(whole)


@pytest.mark.parametrize(
    ("fields", "status", "code", "param"),
    [
        ({"truncate_prompt_tokens": 0}, 400, "invalid_request", "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": -2}, 400, "invalid_request", "truncate_prompt_tokens"),
        ({"truncate_prompt_tokens": 20}, 400, "input_too_long", "truncate_prompt_tokens"),
        ({"max_tokens_per_doc": 0}, 400, "invalid_request", "max_tokens_per_doc"),
    ],
)
def test_caps_that_cannot_be_honoured_are_400s_naming_them(client, fields, status, code, param):
    body = {"model": "qwen3", "query": QUERY, "documents": DOCUMENTS, **fields}
    response = client.post("/v1/rerank", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param), error
