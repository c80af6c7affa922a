"""Shared prefixes: a causal batch's common leading tokens become one trie node each, the Qwen3
forward runs its layers on the nodes, and every vector and score stays what it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qwembed.backends import packed_qwen3, shared_prefixes
from qwembed.backends.packing import PackedBatch
from qwembed.backends.shared_prefixes import SharedPrefixes
from qwembed.engine import Embedder

QUERIES = [
    "What is the capital of China?",
    "中国的首都是哪里？",
    "a",
    "how much protein should a female eat",
    "how much protein should a male eat",
    "Gravity is a force that attracts two bodies towards each other. " * 4,
]


def packed(rows: list[list[int]]) -> PackedBatch:
    return PackedBatch.of(rows, len(rows), max(map(len, rows)), causal=True)


def test_nodes_are_the_trie_of_the_sequences():
    rows = [[1, 2, 3, 4], [1, 2, 3, 5, 6], [7, 8], [1, 2, 9], [1, 2, 3, 4]]
    batch = packed(rows)
    shared = SharedPrefixes.of(batch, min_saving=0)
    # 1 → 2 → {3 → {4, 5 → 6}, 9}; 7 → 8: nine nodes for eighteen tokens
    assert len(shared.ids) == 9 and len(batch.ids) == 18
    assert torch.equal(shared.ids[shared.expand], batch.ids)
    assert torch.equal(shared.positions[shared.expand], batch.positions)
    assert torch.equal(shared.expand[shared.collapse], torch.arange(9))
    # the two equal sequences end at one node, and every sequence's first token 1 is one node
    last = shared.expand[batch.last_token]
    assert last[0] == last[4] and len(set(last.tolist())) == 4
    assert len(set(shared.expand[batch.first_token].tolist())) == 2


def test_nothing_shared_or_too_little_keeps_the_plain_layout():
    assert SharedPrefixes.of(packed([[1, 2], [3, 4], [5, 6]]), min_saving=0) is None  # no first token twice
    rows = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [1, 11, 12, 13, 14, 15, 16, 17, 18, 19]]  # 1 of 20 shared
    assert SharedPrefixes.of(packed(rows), min_saving=0.1) is None
    assert len(SharedPrefixes.of(packed(rows), min_saving=0.05).ids) == 19


@pytest.fixture(scope="module")
def embedder(qwen3_dirs) -> Embedder:
    return Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")


def test_queries_share_their_instruction_and_keep_their_vectors(embedder, monkeypatch):
    monkeypatch.setattr(embedder.encoder, "prefix_cache", None)  # within the batch only
    batch = embedder.tokenize(QUERIES, input_type="query")
    layout = packed(batch)
    shared = SharedPrefixes.of(layout)
    assert shared is not None and len(shared.ids) < 0.7 * len(layout.ids)  # the instruction, once
    rows_seen: list[int] = []
    mlp = packed_qwen3._mlp
    monkeypatch.setattr(
        packed_qwen3, "_mlp", lambda module, x, *a: rows_seen.append(len(x)) or mlp(module, x, *a)
    )
    with_sharing = embedder.encoder.embed_token_ids(batch)
    assert rows_seen[0] == len(shared.ids)  # the layers ran on the nodes

    monkeypatch.setattr(shared_prefixes, "MIN_SAVING", 2.0)  # never worth it: the plain layout
    rows_seen.clear()
    plain = embedder.encoder.embed_token_ids(batch)
    assert rows_seen[0] == len(layout.ids)
    np.testing.assert_allclose(with_sharing, plain, atol=1e-6)
    embedder.encoder.packed = False  # the Hugging Face model's left-padded forward
    try:
        np.testing.assert_allclose(with_sharing, embedder.encoder.embed_token_ids(batch), atol=1e-6)
    finally:
        embedder.encoder.packed = True


def test_common_prefix_is_right_whatever_the_guess():
    import random

    from qwembed.backends.shared_prefixes import _common_prefix

    rng = random.Random(0)
    for _ in range(5000):
        base = [rng.randint(0, 2) for _ in range(12)]
        a = base[: rng.randint(0, 12)]
        b = [token if rng.random() < 0.8 else rng.randint(0, 2) for token in base[: rng.randint(0, 12)]]
        expected = next(
            (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
        )
        assert _common_prefix(a, b, guess=rng.randint(0, 14)) == expected


def test_the_environment_can_switch_sharing_off(monkeypatch):
    import importlib

    rows = [[1, 2, 3, 4], [1, 2, 3, 5]]
    try:
        monkeypatch.setenv(shared_prefixes.ENV_SWITCH, "0")
        assert importlib.reload(shared_prefixes).SharedPrefixes.of(packed(rows)) is None
        monkeypatch.setenv(shared_prefixes.ENV_SWITCH, "1")
        assert importlib.reload(shared_prefixes).SharedPrefixes.of(packed(rows)) is not None
    finally:
        monkeypatch.delenv(shared_prefixes.ENV_SWITCH)
        importlib.reload(shared_prefixes)


def test_two_instructions_in_one_batch_each_share_their_own(embedder):
    """Requests with different instructions meet in one server window: two branches of the trie."""
    first = embedder.tokenize(QUERIES, input_type="query")
    second = embedder.tokenize(QUERIES, instruction="Given a question, retrieve FAQ answers")
    together = embedder.encoder.embed_token_ids(first + second)
    layout = packed(first + second)
    assert len(SharedPrefixes.of(layout).ids) < 0.7 * len(layout.ids)
    apart = np.vstack([embedder.encoder.embed_token_ids(first), embedder.encoder.embed_token_ids(second)])
    np.testing.assert_allclose(together, apart, atol=1e-6)
    assert not np.allclose(together[: len(QUERIES)], together[len(QUERIES) :], atol=1e-3)
