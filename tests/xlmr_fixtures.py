"""Tiny random XLM-R models: the architecture of BGE-M3, multilingual-e5 and the BGE rerankers.

No XLM-R weights or SentencePiece vocabulary can be fetched here, so the models read the bundled
all-MiniLM-L6-v2's WordPiece vocabulary, dressed as XLM-R's tokenizer: no segment ids, and padding
id 1, so that positions are numbered from 2 as in the real models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaForSequenceClassification, XLMRobertaModel

#: XLM-R's padding id; its position table's first real row is this + 1
XLMR_PAD_ID = 1


def _save_tokenizer(path: Path) -> int:
    from qwembed.backends.registry import bundled_minilm_path

    tokenizer = AutoTokenizer.from_pretrained(
        str(bundled_minilm_path()),
        model_input_names=["input_ids", "attention_mask"],  # (no segment ids)
        pad_token="[unused0]",  # id 1
    )
    assert tokenizer.pad_token_id == XLMR_PAD_ID
    tokenizer.save_pretrained(str(path))
    return len(tokenizer)


#: small enough for tests, initialised wide so that texts land apart; the benchmarks pass the real
#: shapes (``XLMR_BASE``)
TINY = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, initializer_range=0.2
)
#: XLM-R base, as in bge-reranker-base and multilingual-e5-base
XLMR_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)


def _config(vocab_size: int, shape: dict, **settings) -> XLMRobertaConfig:
    return XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=514,
        type_vocab_size=1,
        pad_token_id=XLMR_PAD_ID,
        **shape,
        **settings,
    )


def build_xlmr_embedder(path: Path, *, seed: int = 0, shape: dict = TINY) -> Path:
    """A sentence-transformers folder: the random XLM-R, mean pooling, normalisation."""
    from sentence_transformers import SentenceTransformer

    hub = path / "hf"
    vocab_size = _save_tokenizer(hub)
    torch.manual_seed(seed)
    XLMRobertaModel(_config(vocab_size, shape), add_pooling_layer=False).save_pretrained(str(hub))
    # a plain transformers folder loads as Transformer + mean Pooling
    SentenceTransformer(str(hub), device="cpu").save(str(path / "st"))
    return path / "st"


def build_xlmr_cross_encoder(path: Path, *, seed: int = 0, shape: dict = TINY) -> Path:
    """A random single-logit XLM-R sequence classifier (the BGE reranker's head), saved in ``path``."""
    vocab_size = _save_tokenizer(path)
    torch.manual_seed(seed)
    model = XLMRobertaForSequenceClassification(_config(vocab_size, shape, num_labels=1))
    with torch.no_grad():  # spread the random head's logits so scores are not all ~0.5
        model.classifier.out_proj.weight.mul_(50.0)
    model.save_pretrained(str(path))
    return path
