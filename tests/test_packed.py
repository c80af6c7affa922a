"""The padding-free BERT forward equals the padded one, and batches are budgeted by real tokens."""

from __future__ import annotations

import numpy as np

from qwembed.engine import Embedder
from qwembed.engine.batching import plan_batches

TEXTS = [
    "x",
    "short",
    "a sentence of middling length about banks",
    "如何申请信用卡的分期付款？",
    "a much longer text that makes every other row of the batch mostly padding " * 8,
]


def test_packed_bert_equals_the_padded_forward(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    assert embedder.encoder.packed  # all-MiniLM-L6-v2 is a plain BERT
    packed = embedder.embed(TEXTS)
    embedder.encoder.packed = False
    padded = embedder.embed(TEXTS)
    np.testing.assert_allclose(packed, padded, atol=1e-6)
    alone = np.vstack([embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(packed, alone, atol=1e-6)


def test_qwen3_is_not_packed(qwen3_dirs):
    assert not Embedder.load(str(qwen3_dirs["plain"]), device="cpu", dtype="float32").encoder.packed


def test_packed_batches_count_real_tokens_not_padding():
    lengths = [100, 10, 10, 10, 10, 10, 10]  # one long row would pad six short ones to 100
    assert plan_batches(lengths, 200, 128) == [[0, 1], [2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 200, 128, padded=False) == [[0, 1, 2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 150, 128, padded=False) == [[0, 1, 2, 3, 4, 5], [6]]
