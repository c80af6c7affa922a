"""qwembed's Qwen3 vectors equal the model card's procedure and sentence-transformers' to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest

from qwembed.backends.qwen3 import DEFAULT_QUERY_TASK
from qwembed.engine import Embedder
from qwen3_fixtures import END_OF_TEXT_ID, get_detailed_instruct, reference_embeddings

TEXTS = [
    "What is the capital of China?",
    "中国的首都是北京。",
    "Qwen3 支持 multilingual 检索, mixed 中英文 text.",
    "emoji 🚀🔥 and a ZWJ family 👨‍👩‍👧‍👦",
    "a",
    "Gravity is a force that attracts two bodies towards each other. " * 6,
]
TASK = "Given a web search query, retrieve relevant passages that answer the query"


@pytest.fixture(scope="module", params=["appends", "plain"])
def embedder(request, qwen3_dirs) -> Embedder:
    """Both tokenizer variants must give identical results."""
    return Embedder.load(str(qwen3_dirs[request.param]), device="cpu", dtype="float32")


def test_backend_is_detected_from_config(embedder):
    assert embedder.encoder.backend == "qwen3"


def test_end_token_appended_exactly_once(embedder):
    for ids in embedder.tokenize(TEXTS):
        assert ids[-1] == END_OF_TEXT_ID
        assert ids.count(END_OF_TEXT_ID) == 1


def test_documents_match_model_card_reference(embedder, qwen3_dirs):
    expected = reference_embeddings(qwen3_dirs["appends"], TEXTS).numpy()
    got = embedder.embed(TEXTS, input_type="document")
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_queries_use_the_exact_official_instruction(embedder, qwen3_dirs):
    queries = ["how much protein should a female eat", "南瓜的家常做法"]
    expected = reference_embeddings(qwen3_dirs["appends"], [get_detailed_instruct(TASK, q) for q in queries])
    np.testing.assert_allclose(embedder.embed(queries, input_type="query"), expected.numpy(), atol=1e-5)
    # an explicit instruction replaces the default task; input_type may then be omitted
    custom = "Given a question, retrieve FAQ answers"
    expected = reference_embeddings(
        qwen3_dirs["appends"], [get_detailed_instruct(custom, q) for q in queries]
    )
    np.testing.assert_allclose(embedder.embed(queries, instruction=custom), expected.numpy(), atol=1e-5)
    assert embedder.encoder.format("x", "query", None) == f"Instruct: {DEFAULT_QUERY_TASK}\nQuery:x"


def test_documents_never_take_an_instruction(embedder):
    assert embedder.encoder.format("doc", "document", "some task") == "doc"


def test_matches_sentence_transformers_last_token_pooling(embedder, qwen3_dirs):
    """ST 6 wraps plain strings in a tokenizer's chat template unless the module is pinned to the
    text modality: the reference here pins it, as a Qwen3-Embedding ST config does."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    folder = str(qwen3_dirs["appends"])
    transformer = Transformer(
        folder,
        modality_config={"text": {"method": "forward", "method_output_name": "last_hidden_state"}},
        module_output_name="token_embeddings",
        processor_kwargs={"padding_side": "left"},
    )
    model = SentenceTransformer(
        modules=[transformer, Pooling(64, pooling_mode="lasttoken"), Normalize()],
        device="cpu",
        prompts={"query": f"Instruct: {TASK}\nQuery:", "document": ""},
    )
    np.testing.assert_allclose(embedder.embed(TEXTS), model.encode(TEXTS, batch_size=4), atol=1e-5)
    np.testing.assert_allclose(
        embedder.embed(TEXTS[:3], input_type="query"),
        model.encode(TEXTS[:3], prompt_name="query"),
        atol=1e-5,
    )


def test_token_id_inputs_get_the_end_token_once(embedder):
    ids = embedder.encoder.tokenizer(["hello world"], add_special_tokens=False)["input_ids"][0]
    from_ids = embedder.embed_token_ids([ids, [*ids, END_OF_TEXT_ID]])
    from_text = embedder.embed(["hello world"])
    np.testing.assert_allclose(from_ids, np.repeat(from_text, 2, axis=0), atol=1e-6)


def test_text_ending_in_a_literal_end_token_keeps_it_as_the_model_card_does(embedder, qwen3_dirs):
    """The official tokenizer reads a text's own ``<|endoftext|>`` as that token and appends
    another; both tokenizer variants must give those ids, not take the text's for the appended one."""
    text = "hello world<|endoftext|>"
    (ids,) = embedder.tokenize([text])
    assert ids[-2:] == [END_OF_TEXT_ID, END_OF_TEXT_ID]
    expected = reference_embeddings(qwen3_dirs["appends"], [text]).numpy()
    np.testing.assert_allclose(embedder.embed([text]), expected, atol=1e-5)


@pytest.mark.parametrize("instruction", ["", "  \n"])
def test_an_empty_instruction_is_refused_not_replaced_by_the_default(embedder, instruction):
    from qwembed.engine.instructions import EmptyInstructionError

    with pytest.raises(EmptyInstructionError, match="instruction is empty"):
        embedder.embed(["x"], input_type="query", instruction=instruction)
    # the backend itself is literal: the official format around whatever task it is given
    assert embedder.encoder.format("x", "query", "") == "Instruct: \nQuery:x"
