"""Prefix cache: an instruction's attention inputs, computed by one batch, read by the next — and
every vector and score what the forward without it gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from qwembed.backends import packed_qwen3
from qwembed.backends.packing import PackedBatch
from qwembed.backends.prefix_cache import PrefixCache, TemplatePrefixes
from qwembed.backends.qwen3 import DEFAULT_QUERY_TASK, query_prompt
from qwembed.backends.shared_prefixes import SharedPrefixes
from qwembed.engine import Embedder

#: texts whose first characters byte-pair encoding merges differently with what comes before
TEXTS = [
    "中国的首都是哪里？",
    "What is the capital of China?",
    "-dash",
    "'quote",
    "\nline",
    "：全角",
    "123",
    " x",
    "",
]


def test_a_templates_prefix_is_what_every_text_filled_in_begins_with(qwen3_dirs):
    tokenizer = AutoTokenizer.from_pretrained(qwen3_dirs["appends"])  # (it appends <|endoftext|>)
    prefixes = TemplatePrefixes(lambda task, text: tokenizer(query_prompt(task, text))["input_ids"])
    prefix = list(prefixes(DEFAULT_QUERY_TASK))
    prompt = tokenizer(query_prompt(DEFAULT_QUERY_TASK, ""), add_special_tokens=False)["input_ids"]
    assert prefix == prompt[:-1]  # all but ``:``, which merges with ``-``, ``'`` and a newline
    for text in TEXTS:
        assert tokenizer(query_prompt(DEFAULT_QUERY_TASK, text))["input_ids"][: len(prefix)] == prefix


def rows(tokens: int) -> tuple[torch.Tensor, ...]:
    return (torch.zeros(tokens, 1, 1),)


def test_the_cache_keeps_named_prefixes_longest_first_within_its_budget():
    cache = PrefixCache(max_tokens=10, max_named=2)
    cache.remember([1, 2, 3])  # too short to be worth a lookup
    cache.remember(list(range(20, 31)))  # longer than the whole budget
    assert cache.known() == []
    cache.remember([1, 2, 3, 4])
    cache.remember([5, 6, 7, 8, 9, 10])
    six, four = cache.known()
    assert (len(six.ids), len(four.ids)) == (6, 4) and six.rows is None
    cache.fill(four, rows(4))
    cache.fill(six, rows(6))
    assert cache.cached_tokens == 10 and all(prefix.rows is not None for prefix in cache.known())
    cache.remember([11, 12, 13, 14, 15])
    (five,) = (prefix for prefix in cache.known() if prefix.rows is None)
    cache.fill(five, rows(5))  # 15 tokens: the least recently named go until 10 or fewer are left
    assert [prefix.ids for prefix in cache.known()] == [(11, 12, 13, 14, 15)]
    cache.fill(four, rows(4))  # forgotten meanwhile: not brought back
    assert cache.cached_tokens == 5
    for first in (30, 40, 50):  # three named, none computed: only the newest two stay named
        cache.remember([first, 1, 2, 3])
    assert {prefix.ids[0] for prefix in cache.known()} == {11, 40, 50}
    cache.clear()
    assert cache.cached_tokens == 0 and len(cache.known()) == 3


@pytest.fixture
def embedder(qwen3_dirs) -> Embedder:
    """A fresh encoder for each test, so that each starts with an empty cache."""
    return Embedder.load(str(qwen3_dirs["appends"]), device="cpu", dtype="float32")


@pytest.fixture
def rows_seen(monkeypatch) -> list[int]:
    """How many rows each MLP pass of the packed forward computed."""
    seen: list[int] = []
    mlp = packed_qwen3._mlp
    monkeypatch.setattr(packed_qwen3, "_mlp", lambda module, x, *a: seen.append(len(x)) or mlp(module, x, *a))
    return seen


def without_cache(embedder: Embedder, batch: list[list[int]]) -> np.ndarray:
    cache, embedder.encoder.prefix_cache = embedder.encoder.prefix_cache, None
    try:
        return embedder.encoder.embed_token_ids(batch)
    finally:
        embedder.encoder.prefix_cache = cache


def test_a_lone_query_computes_its_instruction_once_then_reads_it(embedder, rows_seen):
    encoder = embedder.encoder
    assert encoder.prefix_cache is not None and encoder.prefix_cache.cached_tokens == 0
    (first,) = embedder.tokenize(TEXTS[:1], input_type="query")  # names the instruction's tokens
    prefix = len(encoder.prefix_cache.known()[0].ids)
    assert prefix == 18
    computed_first = encoder.embed_token_ids([first])
    assert rows_seen[0] == len(first)  # every token, and the instruction's rows kept
    assert encoder.prefix_cache.cached_tokens == prefix
    for text in TEXTS:
        rows_seen.clear()
        (ids,) = embedder.tokenize([text], input_type="query")
        vector = encoder.embed_token_ids([ids])
        assert rows_seen[0] == len(ids) - prefix  # the text's own tokens only
        np.testing.assert_allclose(vector, without_cache(embedder, [ids]), atol=1e-6)
    np.testing.assert_allclose(encoder.embed_token_ids([first]), computed_first, atol=1e-6)
    encoder.packed = False  # and as the Hugging Face model's left-padded forward computes it
    try:
        np.testing.assert_allclose(computed_first, encoder.embed_token_ids([first]), atol=1e-6)
    finally:
        encoder.packed = True


def test_documents_and_other_instructions_beside_cached_queries_keep_their_vectors(embedder, rows_seen):
    queries = embedder.tokenize(TEXTS, input_type="query")
    embedder.encoder.embed_token_ids(queries[:1])  # the default instruction, cached
    other = embedder.tokenize(TEXTS, instruction="Given a question, retrieve FAQ answers")
    documents = embedder.tokenize(TEXTS[:4], input_type="document")
    batch = queries + other + documents
    rows_seen.clear()
    together = embedder.encoder.embed_token_ids(batch)
    np.testing.assert_allclose(together, without_cache(embedder, batch), atol=1e-6)
    assert rows_seen[0] < sum(map(len, batch)) - 18 * len(queries)  # the cached instruction and more
    cache = embedder.encoder.prefix_cache
    assert len(cache.known()) == 2 and cache.cached_tokens == sum(len(p.ids) for p in cache.known())


def test_sequences_read_what_they_have_in_common_with_a_cached_prefix(embedder):
    """A sequence reads as much of a cached prefix as it shares with it, never the tokens whose
    states are read after the forward (its own last, or another sequence's), and vectors stay."""
    (query,) = embedder.tokenize(TEXTS[:1], input_type="query")
    cache = embedder.encoder.prefix_cache
    embedder.encoder.embed_token_ids([query])  # computes the instruction's rows
    prefix = list(cache.known()[0].ids)
    cut = [*prefix[:8], 7, 8, 9]  # the instruction's first 8 tokens, then elsewhere
    twelve = [*prefix[:12], 3]
    alone = [query, cut, twelve]
    layout = PackedBatch.of(alone, 3, len(query), causal=True)
    shared = SharedPrefixes.of(layout, cache=cache)
    # the query's first 18 tokens are read (the others' first 8 and 12 among them); the others add
    # 3 and 1 of their own
    assert len(shared.ids) == len(query) - 18 + 3 + 1
    together = embedder.encoder.embed_token_ids(alone)
    np.testing.assert_allclose(together, without_cache(embedder, alone), atol=1e-6)
    # texts that end inside the prefix are computed up to their ends
    batch = [*alone, prefix[:5], prefix, prefix[:3]]
    shared = SharedPrefixes.of(PackedBatch.of(batch, 6, len(query), causal=True), cache=cache)
    # (the three add no nodes of their own) nothing read: the third token is needed, and a read of
    # two tokens is not worth it
    assert shared.cached == () and len(shared.ids) == len(query) + 3 + 1
    batch = [*alone, prefix[:10]]
    shared = SharedPrefixes.of(PackedBatch.of(batch, 4, len(query), causal=True), cache=cache)
    assert len(shared.ids) == len(query) + 3 + 1 - 9  # read up to its 9th token
    together = embedder.encoder.embed_token_ids(batch)
    np.testing.assert_allclose(together, without_cache(embedder, batch), atol=1e-6)


def test_a_prefix_named_again_after_it_was_dropped_is_kept_again():
    """Encoders pass the same tuple for every text of an instruction; naming it again costs nothing,
    but once it was dropped from the cache, naming it again brings it back."""
    cache = PrefixCache(max_tokens=4)
    instruction = (1, 2, 3, 4)
    cache.remember(instruction)
    cache.remember(instruction)
    (named,) = cache.known()
    cache.fill(named, rows(4))
    cache.remember((5, 6, 7, 8))
    cache.fill(cache.known()[1], rows(4))  # over the budget: the instruction, named first, goes
    assert [prefix.ids for prefix in cache.known()] == [(5, 6, 7, 8)]
    cache.remember(instruction)
    assert {prefix.ids for prefix in cache.known()} == {(5, 6, 7, 8), instruction}
