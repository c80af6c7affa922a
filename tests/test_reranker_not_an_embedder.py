"""An embedding model given as a reranker is refused with a clear error, not served with
meaningless scores: Qwen3-Embedding and Qwen3-Reranker share one architecture (a tied-embedding
checkpoint has no missing weight to give it away), but Qwen3-Embedding's modules.json pools."""

from __future__ import annotations

import json
import shutil

import pytest

from qwembed.backends import ModelNotFoundError, load_reranker, registry

POOLING_LAST_TOKEN = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
]


def _nothing_loads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(registry, "detect_backend", refuse)


def test_a_sentence_transformers_folder_is_refused_before_loading(minilm_dir, tmp_path, monkeypatch):
    folder = tmp_path / "all-MiniLM-L6-v2"
    shutil.copytree(minilm_dir, folder)
    _nothing_loads(monkeypatch)
    with pytest.raises(ModelNotFoundError) as caught:
        load_reranker(str(folder))
    message = str(caught.value)
    assert message.startswith(f"{str(folder)!r} is a sentence-transformers embedding model")
    assert "not a reranker" in message and "Qwen/Qwen3-Reranker-0.6B" in message


def test_a_qwen3_embedding_folder_is_refused_and_a_reranker_folder_is_not(tmp_path, monkeypatch):
    embedding = tmp_path / "Qwen3-Embedding-0.6B"
    embedding.mkdir()
    (embedding / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    (embedding / "modules.json").write_text(json.dumps(POOLING_LAST_TOKEN))
    _nothing_loads(monkeypatch)
    with pytest.raises(ModelNotFoundError, match="is a sentence-transformers embedding model"):
        load_reranker(str(embedding))
    reranker = tmp_path / "Qwen3-Reranker-0.6B"  # no modules.json: on to the loader
    reranker.mkdir()
    (reranker / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
    with pytest.raises(AssertionError, match="a model was loaded"):
        load_reranker(str(reranker))
    # a cross-encoder saved by sentence-transformers lists no Pooling module
    (reranker / "modules.json").write_text(json.dumps(POOLING_LAST_TOKEN[:1]))
    with pytest.raises(AssertionError, match="a model was loaded"):
        load_reranker(str(reranker))
    # and one that pools into a head says it is a CrossEncoder
    (reranker / "modules.json").write_text(json.dumps(POOLING_LAST_TOKEN))
    (reranker / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"}))
    with pytest.raises(AssertionError, match="a model was loaded"):
        load_reranker(str(reranker))


def test_a_cross_encoder_saved_by_sentence_transformers_still_loads(tmp_path):
    from rerank_fixtures import build_minilm_cross_encoder

    reranker = load_reranker(str(build_minilm_cross_encoder(tmp_path / "cross-encoder")))
    assert type(reranker).__name__ == "CrossEncoderReranker"
    assert reranker.score_token_ids(reranker.tokenize_pairs("q", ["a document"], None)).shape == (1,)


def test_a_hub_id_is_checked_once_its_load_succeeded(tmp_path, monkeypatch):
    import huggingface_hub

    listing = tmp_path / "modules.json"
    listing.write_text(json.dumps(POOLING_LAST_TOKEN))
    asked: list[str] = []

    def download(repo, filename, **kwargs):
        asked.append(f"{repo}/{filename}")
        if filename != "modules.json":
            raise OSError(f"no {filename}")  # (Qwen3-Embedding's names no model_type)
        return str(listing)

    loaded: list[str] = []

    class FakeReranker:
        @classmethod
        def load(cls, name_or_path, **kwargs):
            loaded.append(name_or_path)
            return cls()

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(registry, "detect_backend", lambda *args: "sentence-transformers")
    monkeypatch.setattr("qwembed.backends.cross_encoder.CrossEncoderReranker", FakeReranker)
    with pytest.raises(ModelNotFoundError, match=r"'Qwen/Qwen3-Embedding-0\.6B' is a sentence-transformers"):
        load_reranker("Qwen/Qwen3-Embedding-0.6B")
    assert loaded == ["Qwen/Qwen3-Embedding-0.6B"]
    assert asked == [
        "Qwen/Qwen3-Embedding-0.6B/modules.json",
        "Qwen/Qwen3-Embedding-0.6B/config_sentence_transformers.json",
    ]

    def unreachable(repo, filename, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)  # nothing to tell from
    assert isinstance(load_reranker("Qwen/Qwen3-Reranker-0.6B"), FakeReranker)
