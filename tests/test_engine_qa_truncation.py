"""Over-long inputs are cut where the user's text is, never the prompt around it.

* Qwen3-Reranker: an over-long (query, document) pair is cut longest first, so a long query no
  longer pushes the document out of the pair (every document then scored the same), and the pair
  is the official recipe's tokens for the shortened texts. Cross-encoders cut the same way, as
  ``CrossEncoder.predict`` does.
* Embedders: truncation cuts the text, never the instruction; an instruction that leaves no room
  for any text is an error (``PromptTooLongError``, a 400 ``input_too_long``) with or without
  truncation, instead of the same vector for every text.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from qwembed.api import ServerSettings, create_app
from qwembed.backends import InputTooLongError, LoadOptions, load_encoder
from qwembed.backends.base import PromptTooLongError
from qwembed.backends.cross_encoder import CrossEncoderReranker
from qwembed.backends.qwen3_reranker import Qwen3Reranker, longest_first
from qwembed.engine import Embedder
from qwembed.engine.pool import ModelPool

# The model card's template and truncation, spelled out independently of qwembed's constants.
REF_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
REF_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
REF_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

SHORT_DOCUMENTS = ["Beijing is the capital of China", "completely different text about gravity", "zzz"]
LONG_QUERY = "word " * 9000  # the QA report's query
LIMIT = 128  # a small reranker limit keeps the forward passes cheap


def _reference_body(query: str, document: str, instruction: str | None = None) -> str:
    return f"<Instruct>: {instruction or REF_INSTRUCTION}\n<Query>: {query}\n<Document>: {document}"


@pytest.fixture(scope="module")
def small(qwen3_reranker_dir) -> Qwen3Reranker:
    return Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32", max_tokens=LIMIT)


@pytest.fixture(scope="module")
def reference(qwen3_reranker_dir):
    """The official recipe for one pair, with its truncation (the body's tail) at ``max_length``:
    token ids and P(yes) from the full-vocabulary logits."""
    tokenizer = AutoTokenizer.from_pretrained(qwen3_reranker_dir)
    model = AutoModelForCausalLM.from_pretrained(qwen3_reranker_dir, dtype=torch.float32).eval()
    prefix = tokenizer.encode(REF_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(REF_SUFFIX, add_special_tokens=False)
    no_id, yes_id = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")

    def ids(query: str, document: str, max_length: int = LIMIT) -> list[int]:
        budget = max_length - len(prefix) - len(suffix)
        body = tokenizer(_reference_body(query, document), truncation=True, max_length=budget)["input_ids"]
        return prefix + body + suffix

    def score(sequence: list[int]) -> float:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([sequence])).logits[:, -1, :]
        return float(torch.softmax(logits[0, [no_id, yes_id]], dim=0)[1])

    ids.score, ids.tokenizer, ids.prefix, ids.suffix = score, tokenizer, prefix, suffix
    return ids


def _body_text(reference, ids: list[int]) -> str:
    return reference.tokenizer.decode(ids[len(reference.prefix) : len(ids) - len(reference.suffix)])


def _query_and_document(reference, ids: list[int]) -> tuple[str, str]:
    """The (cut) query and document a pair's token ids carry."""
    head, document = _body_text(reference, ids).split("\n<Document>: ")
    return head.split("\n<Query>: ", 1)[1], document


def test_longest_first_is_the_tokenizers_rule():
    def one_at_a_time(first: int, second: int, budget: int) -> tuple[int, int]:
        while first + second > budget:  # transformers' longest_first: the second goes on ties
            if first > second:
                first -= 1
            else:
                second -= 1
        return first, second

    for first in range(12):
        for second in range(12):
            for budget in range(2, 14):
                assert longest_first(first, second, budget) == one_at_a_time(first, second, budget)


def test_a_long_query_keeps_every_document_in_its_pair(small, reference):
    pairs = small.tokenize_pairs(LONG_QUERY, SHORT_DOCUMENTS, None)
    for ids, document in zip(pairs, SHORT_DOCUMENTS, strict=True):
        assert len(ids) <= LIMIT
        assert ids[: len(reference.prefix)] == reference.prefix
        assert ids[-len(reference.suffix) :] == reference.suffix
        query, kept = _query_and_document(reference, ids)
        assert kept == document  # the short side is kept whole: only the long query was cut
        assert query.startswith("word word") and len(query) < len(LONG_QUERY)
        # exactly the official recipe's tokens for the shortened query
        assert ids == reference(query, document)
    scores = small.score_token_ids(pairs)
    assert len(set(scores.tolist())) == len(SHORT_DOCUMENTS)  # each pair scores its own document
    for ids, score in zip(pairs, scores, strict=True):
        assert score == pytest.approx(reference.score(ids), abs=1e-5)


def test_a_long_query_and_a_long_document_share_the_room(small, reference):
    query = "Where does the Rhine flow, and why? " * 80  # punctuation: BPE merges "?" with the newline
    document = "The Rhine flows north through Basel, Strasbourg and Cologne. " * 80
    (ids,) = small.tokenize_pairs(query, [document], None)
    assert len(ids) == LIMIT  # the document's tail fills what the query leaves
    kept_query, kept_document = _query_and_document(reference, ids)
    assert query.startswith(kept_query) and document.startswith(kept_document)
    n_query = len(reference.tokenizer(kept_query, add_special_tokens=False)["input_ids"])
    n_document = len(reference.tokenizer(kept_document, add_special_tokens=False)["input_ids"])
    assert abs(n_query - n_document) <= 2  # longest first: both cut to about half the room each
    assert ids == reference(kept_query, document)  # the recipe's tokens and cut for the cut query
    assert float(small.score_token_ids([ids])[0]) == pytest.approx(reference.score(ids), abs=1e-5)


def test_a_short_query_with_a_long_document_is_cut_as_the_reference_cuts(small, reference):
    document = "The Rhine flows north through Basel, Strasbourg and Cologne. " * 80
    (ids,) = small.tokenize_pairs("Where does the Rhine flow?", [document], None)
    assert ids == reference("Where does the Rhine flow?", document)


def test_an_instruction_that_leaves_no_room_is_an_error(small):
    with pytest.raises(PromptTooLongError, match="instruction") as refused:
        small.tokenize_pairs("capital?", ["Beijing"], "Find " * 200)
    assert isinstance(refused.value, InputTooLongError)  # the API's 400 input_too_long
    assert refused.value.max_tokens == LIMIT and refused.value.n_tokens > LIMIT
    # an instruction that leaves room keeps it whole, and cuts the long query instead
    instruction = "Find passages " * 10
    (ids,) = small.tokenize_pairs(LONG_QUERY, ["Beijing"], instruction)
    assert len(ids) <= LIMIT and f"<Instruct>: {instruction}\n<Query>: word" in small.tokenizer.decode(ids)


@pytest.fixture(scope="module")
def rerank_client(qwen3_reranker_dir):
    """The QA report's server: the tiny reranker as ``tinyrr``, at its default limit (8,192)."""
    pool = ModelPool()
    pool.add_reranker(
        Qwen3Reranker.load(str(qwen3_reranker_dir), name="tinyrr", device="cpu", dtype="float32")
    )
    with TestClient(create_app(pool, ServerSettings())) as client:
        yield client


def test_the_rerank_route_scores_each_document_under_a_long_query(rerank_client):
    body = {"model": "tinyrr", "query": LONG_QUERY, "documents": SHORT_DOCUMENTS}
    response = rerank_client.post("/v1/rerank", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len({r["relevance_score"] for r in results}) == len(SHORT_DOCUMENTS)
    assert response.json()["usage"]["prompt_tokens"] <= len(SHORT_DOCUMENTS) * 8192


def test_the_rerank_route_refuses_an_instruction_that_leaves_no_room(rerank_client):
    body = {"model": "tinyrr", "query": "q", "documents": ["d"], "instruction": "Find " * 9000}
    response = rerank_client.post("/v1/rerank", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (
        error["code"] == "input_too_long"
        and error["param"] == "instruction"
        and "instruction" in error["message"]
    )


def test_a_cross_encoder_cuts_the_longer_side_as_predict_does(cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    limit = 48
    # 25 tokens: more than half the room the limit leaves (45 of 48)
    query = (
        "How many people lived in Berlin in the years after the war, "
        "and in which districts did most of them live and work?"
    )
    document = " ".join(["Berlin is the capital and largest city of Germany by area and population."] * 4)
    cross = CrossEncoderReranker.load(str(cross_encoder_dir), device="cpu", dtype="float32", max_tokens=limit)
    (ids,) = cross.tokenize_pairs(query, [document], None)
    tokenizer = cross.tokenizer
    n_query = len(tokenizer(query, add_special_tokens=False)["input_ids"])
    kept_query = ids.index(tokenizer.sep_token_id) - 1  # [CLS] query [SEP] document [SEP]
    kept_document = limit - kept_query - 3
    # the query is over half the room: cut to about half, leaving the document the other half
    assert len(ids) == limit and kept_query < n_query and abs(kept_query - kept_document) <= 1
    reference = CrossEncoder(str(cross_encoder_dir), device="cpu", max_length=limit)
    expected = reference.predict([(query, document)])
    np.testing.assert_allclose(cross.score_token_ids([ids]), expected, atol=1e-5, rtol=0)


# ---- embedders ---------------------------------------------------------------------------------

LONG_INSTRUCTION = "Find " * 600  # the QA report's: more than the tiny Qwen3's 512 tokens by itself


@pytest.fixture(scope="module")
def qwen3(qwen3_dirs) -> Embedder:
    return Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")


@pytest.mark.parametrize("truncate", [True, False])
def test_an_instruction_that_leaves_no_room_for_the_text_is_refused(qwen3, truncate):
    with pytest.raises(PromptTooLongError, match="instruction") as refused:
        qwen3.embed("apples and oranges", instruction=LONG_INSTRUCTION, truncate=truncate)
    assert refused.value.max_tokens == qwen3.max_tokens == 512 and refused.value.n_tokens > 512


def test_truncation_cuts_the_text_and_keeps_the_instruction(qwen3):
    instruction = "Find " * 300  # fits, with room for part of each text
    texts = ["apples and oranges " * 200, "quantum chromodynamics " * 200]
    ids = qwen3.tokenize(texts, instruction=instruction, truncate=True)
    # the prompt's tokens but its last (":"), which BPE may merge with a text's first letters
    prompt = qwen3.tokenize([""], instruction=instruction)[0][:-2]  # (and the end token)
    for sequence in ids:
        assert len(sequence) == 512 and sequence[-1] == qwen3.encoder.end_id
        assert sequence[: len(prompt)] == prompt
    a, b = qwen3.embed(texts, instruction=instruction, truncate=True)
    assert float(a @ b) < 0.99  # the texts, not only the instruction, reach the model


def test_the_models_own_query_prompt_is_kept_too(qwen3_dirs):
    tight = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32", max_tokens=12)
    with pytest.raises(PromptTooLongError, match="max-tokens"):  # the default task is ~20 tokens
        tight.embed("a long query " * 20, input_type="query", truncate=True)
    assert tight.embed("a long document " * 20, input_type="document", truncate=True).shape == (64,)


def test_a_sentence_transformers_instruction_is_kept_and_checked_the_same_way(minilm_dir):
    minilm = Embedder(load_encoder("minilm", options=LoadOptions(device="cpu", dtype="float32")))
    limit = minilm.max_tokens
    with pytest.raises(PromptTooLongError):
        minilm.embed("apples and oranges", instruction="find " * limit, truncate=True)
    instruction = "Represent this sentence for searching relevant passages: "
    (ids,) = minilm.tokenize(["apples " * limit], instruction=instruction, truncate=True)
    prompt = minilm.tokenize([""], instruction=instruction)[0][:-1]  # [CLS] + instruction
    assert len(ids) == limit and ids[: len(prompt)] == prompt
    assert ids[-1] == minilm.encoder.tokenizer.sep_token_id


@pytest.mark.parametrize("truncate", [True, False])
def test_the_embeddings_route_answers_400_for_an_instruction_that_leaves_no_room(qwen3, truncate):
    pool = ModelPool()
    pool.add_encoder(qwen3.encoder)
    with TestClient(create_app(pool, ServerSettings())) as client:
        for text in ("apples and oranges", "quantum chromodynamics"):
            body = {"input": text, "instruction": LONG_INSTRUCTION, "truncate": truncate}
            response = client.post("/v1/embeddings", json=body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (
                error["code"] == "input_too_long"
                and error["param"] == "instruction"
                and "instruction" in error["message"]
            )
        body = {"input": "apples", "instruction": "Find fruit", "truncate": truncate}
        assert client.post("/v1/embeddings", json=body).status_code == 200


# ---- a cap below the model's limit: vLLM's truncate_prompt_tokens, the library's max_tokens ----------

CAPPED_TEXTS = ["apples and oranges " * 60, "short text", "长江是中国最长的河流。" * 30]


def test_a_cap_cuts_as_a_model_with_that_limit_truncates(qwen3, qwen3_dirs):
    tight = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32", max_tokens=40)
    for options in ({}, {"input_type": "query"}, {"instruction": "Find fruit"}):
        capped = qwen3.tokenize(CAPPED_TEXTS, max_tokens=40, **options)  # (no truncate: the cap cuts)
        assert capped == tight.tokenize(CAPPED_TEXTS, truncate=True, **options)
        assert max(map(len, capped)) == 40 and all(ids[-1] == qwen3.encoder.end_id for ids in capped)
    np.testing.assert_array_equal(
        qwen3.embed(CAPPED_TEXTS, max_tokens=40), tight.embed(CAPPED_TEXTS, truncate=True)
    )
    # a cap above the model's limit is the limit, and over it truncation is still the caller's call
    assert qwen3.tokenize(CAPPED_TEXTS, max_tokens=10**6) == qwen3.tokenize(CAPPED_TEXTS)
    with pytest.raises(InputTooLongError):
        qwen3.embed("word " * 2000, max_tokens=10**6)
    with pytest.raises(PromptTooLongError, match="the request's token cap of 8") as refused:
        qwen3.embed("apples", instruction="Find fruit among the texts", max_tokens=8)
    assert refused.value.capped
    with pytest.raises(ValueError, match="positive integer"):
        qwen3.embed("apples", max_tokens=0)


def test_the_embeddings_route_takes_vllms_truncate_prompt_tokens(qwen3):
    pool = ModelPool()
    pool.add_encoder(qwen3.encoder)
    with TestClient(create_app(pool, ServerSettings())) as client:

        def post(**fields):
            body = {"input": CAPPED_TEXTS, "encoding_format": "float", **fields}
            return client.post("/v1/embeddings", json=body)

        answer = post(truncate_prompt_tokens=40).json()
        vectors = np.array([item["embedding"] for item in answer["data"]], dtype=np.float32)
        np.testing.assert_allclose(vectors, qwen3.embed(CAPPED_TEXTS, max_tokens=40), atol=1e-6)
        tokens = sum(map(len, qwen3.tokenize(CAPPED_TEXTS, max_tokens=40)))
        assert answer["usage"]["prompt_tokens"] == tokens < post().json()["usage"]["prompt_tokens"]
        # -1: the model's limit, i.e. truncate; without either an over-long text is a 400
        long = {"input": "word " * 2000}
        assert client.post("/v1/embeddings", json={**long, "truncate_prompt_tokens": -1}).status_code == 200
        assert client.post("/v1/embeddings", json=long).status_code == 400
        for fields, code, param in (
            ({"truncate_prompt_tokens": 0}, "invalid_request", "truncate_prompt_tokens"),
            (
                {"truncate_prompt_tokens": 4, "instruction": "Find fruit"},
                "input_too_long",
                "truncate_prompt_tokens",
            ),
        ):
            response = post(**fields)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert (error["code"], error["param"]) == (code, param), error
        assert post(normalize=True).status_code == 200
        # vLLM's normalize: false, the pooled vectors (tests/test_normalize_option.py checks them)
        raw = np.array([item["embedding"] for item in post(normalize=False).json()["data"]], dtype=np.float32)
        np.testing.assert_allclose(raw, qwen3.embed(CAPPED_TEXTS, normalize=False), rtol=1e-5, atol=1e-5)
        # vLLM's truncation_side: left cuts keep each input's end (tests/test_left_truncation.py)
        left = post(truncate_prompt_tokens=40, truncation_side="left").json()["data"]
        want = qwen3.embed(CAPPED_TEXTS, max_tokens=40, truncation_side="left")
        np.testing.assert_allclose([item["embedding"] for item in left], want, atol=1e-6)
        assert not np.allclose(want, vectors, atol=1e-3)
        assert post(truncation_side="middle").status_code == 400
