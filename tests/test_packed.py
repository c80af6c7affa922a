"""The padding-free BERT forward equals the padded one, and batches are budgeted by real tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from qwembed.backends import packed_bert, packed_qwen3, sentence_transformer, shape_caches
from qwembed.backends.packed_bert import packed_bert_forward
from qwembed.backends.packing import TILE_TOKENS, PackedBatch, filled_to_bucket, length_groups, tile_rows
from qwembed.engine import Embedder
from qwembed.engine.batching import plan_batches
from xlmr_fixtures import build_xlmr_embedder

TEXTS = [
    "x",
    "short",  # as many tokens as "x": an attention group with no padding
    "a sentence of middling length about banks",
    "如何申请信用卡的分期付款？",
    "a much longer text that makes every other row of the batch mostly padding " * 8,
    # short rows of many lengths: several attention tiles of sequences side by side
    *(f"question {i}: " + "how do I repay my card " * (i % 5) for i in range(12)),
]


def test_packed_bert_equals_the_padded_forward(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    assert embedder.encoder.packed  # all-MiniLM-L6-v2 is a plain BERT
    batch = embedder.tokenize(TEXTS)  # one batch in the caller's order, not sorted by length
    packed = embedder.encoder.embed_token_ids(batch)
    embedder.encoder.packed = False
    padded = embedder.encoder.embed_token_ids(batch)
    np.testing.assert_allclose(packed, padded, atol=1e-6)
    alone = np.vstack([embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(packed, alone, atol=1e-6)


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory, minilm_dir):  # (the bundled MiniLM lends its vocabulary)
    return build_xlmr_embedder(tmp_path_factory.mktemp("xlmr"))


def test_packed_xlm_roberta_equals_the_padded_forward_and_sentence_transformers(xlmr_dir):
    from sentence_transformers import SentenceTransformer

    embedder = Embedder.load(str(xlmr_dir), device="cpu", dtype="float32")
    assert embedder.encoder.packed  # BERT's layers; only its positions are numbered from pad + 1
    batch = embedder.tokenize(TEXTS)
    packed = embedder.encoder.embed_token_ids(batch)
    embedder.encoder.packed = False
    padded = embedder.encoder.embed_token_ids(batch)
    np.testing.assert_allclose(packed, padded, atol=1e-6)
    reference = SentenceTransformer(str(xlmr_dir), device="cpu").encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(packed, reference, atol=1e-5)


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_pooling_on_packed_tokens_equals_pooling_the_padded_view(minilm_dir, mode):
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    encoder = embedder.encoder
    encoder.model[1] = Pooling(encoder.dimension, pooling_mode=mode)
    assert encoder._pools_packed_tokens()
    assert encoder._pools_first_tokens() == (mode == "cls")  # then the final layer runs for them alone
    batch = embedder.tokenize(TEXTS)  # one batch in the caller's order, not sorted by length
    packed = encoder.embed_token_ids(batch)
    encoder._pools_packed_tokens = lambda: False  # the padded view and attention mask
    padded = encoder.embed_token_ids(batch)
    np.testing.assert_allclose(packed, padded, atol=1e-6)


def test_packed_bert_runs_its_final_layer_on_the_rows_asked_for_only(minilm_dir, monkeypatch):
    """``rows`` (a CLS head's first tokens): the same states as the full forward's at those tokens,
    with the final layer's feed-forward run on them alone."""
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    bert = embedder.encoder.compile_target()
    batch = embedder.tokenize(TEXTS)
    packed = PackedBatch.of(batch, len(batch), max(len(ids) for ids in batch))
    rows_seen: list[int] = []
    feed_forward = packed_bert.linear_activation

    def counting(x, *args):
        rows_seen.append(len(x))
        return feed_forward(x, *args)

    monkeypatch.setattr(packed_bert, "linear_activation", counting)
    with torch.inference_mode():
        every_token = packed_bert_forward(bert, packed)
        layers, tokens = len(rows_seen), len(packed.ids)
        rows_seen.clear()
        first = packed_bert_forward(bert, packed, rows=packed.first_token)
    assert rows_seen == [tokens] * (layers - 1) + [len(TEXTS)]
    torch.testing.assert_close(first, every_token[packed.first_token], atol=1e-6, rtol=0)


def test_attention_groups_pad_each_run_of_similar_lengths_to_its_own_longest_row():
    assert length_groups([58, 57, 50, 49, 20, 19, 12, 5, 5]) == [range(0, 4), range(4, 7), range(7, 9)]
    assert length_groups([]) == []
    batch = PackedBatch.of([[1] * 50, [2] * 50, [3] * 3, [4] * 36, [5] * 2], rows=5, longest=50)
    # tokens are laid out longest row first: the two 50-token rows form a group with no padding,
    # the 36-token row its own, and the short rows share one tile
    layout = [(g.start, g.stop, g.rows, g.longest) for g in batch.groups]
    assert layout == [(0, 100, 2, 50), (100, 136, 1, 36), (136, 141, 1, TILE_TOKENS)]
    assert batch.groups[0].slots is None and batch.groups[0].allowed is None
    assert batch.ids[100:136].eq(4).all() and batch.ids[136:139].eq(3).all()
    # the caller's padded view keeps the caller's row order
    padded = batch.pad(batch.ids[:, None].float())[..., 0]
    assert padded[2, :3].eq(3).all() and padded[2, 3:].eq(0).all() and padded[3, :36].eq(4).all()


def test_short_rows_share_tiles_and_see_only_themselves():
    assert tile_rows([20, 20, 20, 10, 10, 5], width=64) == [0, 20, 40, 64, 74, 84]
    lengths = [30, 20, 20, 10, 3]
    for causal in (False, True):
        batch = PackedBatch.of([[i] * n for i, n in enumerate(lengths)], rows=5, longest=30, causal=causal)
        (tile,) = batch.groups
        assert (tile.rows, tile.longest) == (2, TILE_TOKENS)
        view = torch.zeros(tile.rows * tile.longest, dtype=torch.long)
        view[tile.slots] = batch.ids + 1  # 0 marks padding
        view = view.view(tile.rows, tile.longest)
        assert view[0, :50].tolist() == [1] * 30 + [2] * 20 and view[0, 50:].eq(0).all()
        assert view[1, :33].tolist() == [3] * 20 + [4] * 10 + [5] * 3 and view[1, 33:].eq(0).all()
        # the padded view holds each token in its slot, and padding repeats a real token
        padded = tile.pad(batch.ids[:, None] + 1)[..., 0]
        assert torch.equal(padded[view > 0], view[view > 0]) and padded.gt(0).all()
        assert torch.equal(tile.unpad(padded[..., None])[:, 0], batch.ids + 1)
        allowed = tile.allowed[:, 0]
        expected = view[:, :, None] == view[:, None, :]  # same sequence (or both padding)
        if causal:
            expected &= torch.ones(TILE_TOKENS, TILE_TOKENS, dtype=torch.bool).tril()
        assert torch.equal(allowed, expected)


def test_fused_projections_follow_a_dtype_change(minilm_dir):
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    before = embedder.embed(TEXTS)
    embedder.encoder.compile_target().to(torch.bfloat16)  # replaces every weight tensor
    after = embedder.embed(TEXTS)
    assert np.all((before * after).sum(axis=1) > 0.99)


def test_packed_qwen3_equals_the_padded_forward(qwen3_dirs):
    embedder = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")
    assert embedder.encoder.packed
    batch = embedder.tokenize(TEXTS)
    packed = embedder.encoder.embed_token_ids(batch)
    embedder.encoder.packed = False  # left-padded batch, pooled at the last column
    padded = embedder.encoder.embed_token_ids(batch)
    np.testing.assert_allclose(packed, padded, atol=1e-6)
    embedder.encoder.packed = True
    alone = np.vstack([embedder.embed([text]) for text in TEXTS])
    np.testing.assert_allclose(packed, alone, atol=1e-6)


def test_packed_qwen3_runs_its_final_mlp_on_the_pooled_tokens_only(qwen3_dirs, monkeypatch):
    """Every layer's MLP sees all tokens but the last one's, which sees one row per text; the
    states equal those of the forward with every token through the final layer."""
    embedder = Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")
    rows_seen: list[int] = []
    mlp = packed_qwen3._mlp

    def counting_mlp(module, x, *args):
        rows_seen.append(len(x))
        return mlp(module, x, *args)

    monkeypatch.setattr(packed_qwen3, "_mlp", counting_mlp)
    batch = embedder.tokenize(TEXTS)
    packed = PackedBatch.of(batch, len(batch), max(len(ids) for ids in batch), causal=True)
    model = embedder.encoder.model
    with torch.inference_mode():
        pooled = packed_qwen3.packed_qwen3_pooled(model, packed)
        tokens, layers = len(packed.ids), model.config.num_hidden_layers
        assert rows_seen == [tokens] * (layers - 1) + [len(TEXTS)]
        every_token = packed_qwen3.packed_qwen3_forward(model, packed)
    assert rows_seen[layers:] == [tokens] * layers
    torch.testing.assert_close(pooled, every_token[packed.last_token], atol=1e-6, rtol=0)


def test_packed_batches_count_real_tokens_not_padding():
    lengths = [100, 10, 10, 10, 10, 10, 10]  # one long row would pad six short ones to 100
    assert plan_batches(lengths, 200, 128) == [[0, 1], [2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 200, 128, padded=False) == [[0, 1, 2, 3, 4, 5, 6]]
    assert plan_batches(lengths, 150, 128, padded=False) == [[0, 1, 2, 3, 4, 5], [6]]


def test_filler_brings_a_cpu_batch_to_its_bucket_in_sequences_the_model_can_take():
    batch = [[5] * 700, [6] * 300]  # 1,000 tokens: bucket 1,024
    filled = filled_to_bucket(batch, 0, 16, torch.device("cpu"))
    assert filled[:2] == batch
    assert sum(map(len, filled)) == shape_caches.token_bucket(1000) == 1024
    assert [len(ids) for ids in filled[2:]] == [16, 8] and {t for ids in filled[2:] for t in ids} == {0}
    assert filled_to_bucket(batch, 0, 16, torch.device("cuda")) == batch  # nothing compiled per shape


def test_cpu_batches_run_at_bucketed_token_counts_with_the_same_vectors(minilm_dir, monkeypatch):
    """The Linear layers see the bucket's token count, and the caller gets its own rows, equal to
    those of the batch run at its exact count."""
    embedder = Embedder.load("minilm", device="cpu", dtype="float32")
    batch = embedder.tokenize(TEXTS)
    tokens = sum(map(len, batch))
    bucket = shape_caches.token_bucket(tokens)
    assert bucket != tokens  # (else the test could not tell)
    seen: list[int] = []
    forward = sentence_transformer.packed_bert_forward

    def counting_forward(bert, packed, *args, **kwargs):
        seen.append(len(packed.ids))
        return forward(bert, packed, *args, **kwargs)

    monkeypatch.setattr(sentence_transformer, "packed_bert_forward", counting_forward)
    bucketed = embedder.encoder.embed_token_ids(batch)
    monkeypatch.setattr(shape_caches, "MIN_TOKEN_STEP", 1)
    monkeypatch.setattr(shape_caches, "TOKEN_STEPS_PER_DOUBLING", 1 << 30)
    exact = embedder.encoder.embed_token_ids(batch)
    assert seen == [bucket, tokens]
    assert bucketed.shape == exact.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(bucketed, exact, atol=1e-6)
