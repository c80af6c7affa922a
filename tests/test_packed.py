"""The padding-free BERT forward equals the padded one, and batches are budgeted by real tokens."""

from __future__ import annotations

import numpy as np
import torch

from qwembed.backends.packing import PackedBatch, length_groups
from qwembed.engine import Embedder
from qwembed.engine.batching import plan_batches

TEXTS = [
    "x",
    "short",  # as many tokens as "x": an attention group with no padding
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


def test_attention_groups_pad_each_run_of_similar_lengths_to_its_own_longest_row():
    assert length_groups([58, 57, 50, 49, 20, 19, 12, 5, 5]) == [range(0, 4), range(4, 7), range(7, 9)]
    assert length_groups([]) == []
    batch = PackedBatch.of([[1] * 3, [2] * 40, [3] * 3, [4] * 38], rows=4, longest=40)
    # tokens are laid out longest row first; the two 3-token rows form a group with no padding
    assert [(g.start, g.stop, g.rows, g.longest) for g in batch.groups] == [(0, 78, 2, 40), (78, 84, 2, 3)]
    assert batch.groups[1].slots is None
    assert batch.ids[:40].eq(2).all() and batch.ids[78:].eq(1).logical_or(batch.ids[78:].eq(3)).all()
    # the caller's padded view keeps the caller's row order
    padded = batch.pad(batch.ids[:, None].float())[..., 0]
    assert padded[0, :3].eq(1).all() and padded[0, 3:].eq(0).all() and padded[3, :38].eq(4).all()


def test_fused_projections_follow_a_dtype_change(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    before = embedder.embed(TEXTS)
    embedder.encoder.compile_target().to(torch.bfloat16)  # replaces every weight tensor
    after = embedder.embed(TEXTS)
    assert np.all((before * after).sum(axis=1) > 0.99)


def test_packed_qwen3_equals_the_padded_forward(qwen3_dirs):
    embedder = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")
    assert embedder.encoder.packed
    packed = embedder.embed(TEXTS)
    embedder.encoder.packed = False  # left-padded batch, pooled at the last column
    padded = embedder.embed(TEXTS)
    np.testing.assert_allclose(packed, padded, atol=1e-6)
    embedder.encoder.packed = True
    alone = np.vstack([embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(packed, alone, atol=1e-6)


def test_packed_batches_count_real_tokens_not_padding():
    lengths = [100, 10, 10, 10, 10, 10, 10]  # one long row would pad six short ones to 100
    assert plan_batches(lengths, 200, 128) == [[0, 1], [2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 200, 128, padded=False) == [[0, 1, 2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 150, 128, padded=False) == [[0, 1, 2, 3, 4, 5], [6]]
