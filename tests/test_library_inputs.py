"""The library as an application developer calls it (a QA pass's findings): typos and wrong types
fail at once with the argument's name, generators and empty lists work, errors import from one
place, and a knowledge-base handle behaves after its collection is gone."""

from __future__ import annotations

import numpy as np
import pytest

from fake_encoders import LengthReranker, SlowEncoder
from kb_fixtures import StubEmbedder
from qwembed.engine import Embedder, InvalidTextError, InvalidTokenIdsError
from qwembed.engine.rerank import rerank


@pytest.fixture
def embedder() -> Embedder:
    return Embedder(SlowEncoder(delay=0.0))


@pytest.mark.parametrize("input_type", ["Query", "passage", "QUERY", ""])
def test_an_input_type_typo_is_an_error_not_a_text_without_its_prompt(embedder, input_type):
    with pytest.raises(ValueError, match="input_type must be 'query', 'document' or None"):
        embedder.embed(["hello"], input_type=input_type)


def test_any_iterable_of_strings_is_embedded_and_nothing_gives_no_rows(embedder):
    texts = ["a", "bc"]
    np.testing.assert_array_equal(embedder.embed(t for t in texts), embedder.embed(texts))
    np.testing.assert_array_equal(embedder.embed(tuple(texts)), embedder.embed(texts))
    assert embedder.embed([]).shape == (0, 4) and embedder.embed_token_ids([]).shape == (0, 4)


@pytest.mark.parametrize(
    ("texts", "says"),
    [
        (b"hello", "texts must be a list of strings, not bytes"),
        ({"a": 1}, "not dict"),
        ({"a", "b"}, "not set"),
        (["a", None], r"texts\[1\] must be a string, not NoneType"),
        ([b"x"], r"texts\[0\] must be a string, not bytes"),
        (None, "texts must be a list of strings, not NoneType"),
        (5, "texts must be a list of strings, not int"),
    ],
)
def test_a_wrong_type_names_the_argument(embedder, texts, says):
    with pytest.raises(TypeError, match=says):
        embedder.embed(texts)


def test_options_and_token_ids_are_checked(embedder):
    with pytest.raises(TypeError, match="instruction must be a string"):
        embedder.embed(["a"], instruction=123)
    with pytest.raises(TypeError, match="wrap one input's ids"):
        embedder.embed_token_ids([101, 7592, 102])
    for bad in (7592.7, True):
        with pytest.raises(InvalidTokenIdsError, match="must be integers"):
            embedder.embed_token_ids([[101, bad, 102]])
    assert embedder.embed(["abc"], dimensions=np.int64(2)).shape == (1, 2)
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        Embedder(SlowEncoder(delay=0.0), max_batch_size=0)


def test_rerank_checks_its_arguments_as_the_server_does():
    reranker = LengthReranker()
    assert [r.index for r in rerank(reranker, "q", (d for d in ["a", "abc"]))] == [1, 0]
    with pytest.raises(TypeError, match="documents must be a list of strings, not str"):
        rerank(reranker, "q", "abc")  # once scored as three documents
    with pytest.raises(TypeError, match="query must be a string"):
        rerank(reranker, None, ["a"])
    with pytest.raises(InvalidTextError, match=r"documents\[1\]"):
        rerank(reranker, "q", ["a", "\ud800"])


def test_errors_import_from_the_engine():
    from qwembed import backends, engine

    assert engine.InputTooLongError is backends.InputTooLongError
    inputs = ["EmptyInstructionError", "InputTooLongError", "InvalidDimensionsError", "InvalidTextError"]
    inputs += ["InvalidTokenIdsError", "PromptTooLongError", "NormalizeUnsupportedError"]
    assert all(issubclass(getattr(engine, name), ValueError) for name in inputs)


def test_a_collection_handle_after_its_collection_is_dropped(tmp_path):
    from qwembed.kb import Document, KnowledgeBaseManager
    from qwembed.kb.errors import CollectionNotFoundError

    stub = StubEmbedder()
    manager = KnowledgeBaseManager(tmp_path / "kb", lambda model: stub)
    manager.create("c", "stub")
    collection = manager.get("c")
    assert Document(id=5, text="five").id == "5"  # as a JSONL or HTTP integer id
    assert collection.add([Document(id=5, text="five")]).added == ["5"]
    with pytest.raises(TypeError, match="query must be a string"):
        collection.search(None)
    with pytest.raises(TypeError, match="documents must be a list of Document"):
        collection.add("a string")
    manager.drop("c")
    with pytest.raises(CollectionNotFoundError):  # once lance's raw "Not found" RuntimeError
        collection.search("five")


@pytest.mark.parametrize("family", ["minilm", "qwen3"])
def test_no_texts_give_no_rows_with_a_real_tokenizer(family, request):
    # (a Hugging Face tokenizer given an empty list raises IndexError: the fakes above never did)
    if family == "minilm":
        folder = request.getfixturevalue("minilm_dir")
    else:
        folder = request.getfixturevalue("qwen3_dirs")["appends"]
    embedder = Embedder.load(str(folder), dtype="float32")
    for input_type in (None, "query", "document"):
        assert embedder.embed([], input_type=input_type).shape == (0, embedder.dimension)
    assert embedder.tokenize([]) == []
